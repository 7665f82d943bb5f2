"""Tests for app/chat/ui_panel.py: the worker panel (wire, parameters, oracle calls)."""

from __future__ import annotations

from app.chat.ui_parts import Keyring

CLOSED_PORT_URL = "ws://127.0.0.1:9"


def test_worker_panel_reports_the_wire_the_parameters_and_the_oracle() -> None:
    from app.chat.replies import WireReport
    from app.chat.ui_panel import worker_panel
    from crypto.params import CKKS_DEFAULT

    ring = Keyring()
    assert "No encrypted reply yet" in worker_panel(ring, "ws://w")
    ring.last_label = "🔐 encrypted (TSP on, PP on, amp 3)"
    ring.last_wire = WireReport(
        key_upload_bytes=31_738_467,
        bytes_to_worker=129_951_868,
        bytes_from_worker=49_211_694,
        oracle_calls={"refresh": 28, "softmax": 1},
        worker_seconds={"sampler": 5.6},
        ciphertext_hex="5ea10400010000009a3102000000000028b52ffd60c9013d8c01ea4d0a8b9c11",
        preset="default",
        params=CKKS_DEFAULT.to_dict(),
        public_positions=24,
        public_text="<|im_start|>system\nYou are a helpful AI assistant",
        start=24,
        new_positions=13,
        processes=2,
    )
    panel = worker_panel(ring, "ws://w")
    for text in [
        "**Key holder → worker:** 130.0 MB",
        "**Worker → key holder:** 49.2 MB",
        "**Public keys (once per session):** 31.7 MB",
        "the first 32 bytes of the first SEAL ciphertext",
        "N = 8,192",
        "128-bit security",
        "**refresh** ×28: decrypt and re-encrypt",
        "**softmax** ×1",
        "sampler 5.6 s",
        "24 public positions",
        "`<|im_start|>system⏎You are a helpful AI assistant`",  # markers as they are, not escaped
        "13 positions encrypted",
        "2 compute processes",
    ]:
        assert text in panel, text
