"""The "What the worker saw" panel: the keys' state, the last encrypted token on the wire, the oracle calls.

Rendered as Markdown from the session's `Keyring` after every reply update: the public-key upload size,
bytes each way for the last token, the first bytes of the token's ciphertext blob, the CKKS parameters
and security level, the worker's time by stage, and which allow-listed functions (model/oracle.py) the
key holder evaluated for the worker (DESIGN.md section 4: everything else ran on ciphertexts).
"""

from __future__ import annotations

from typing import Any

from app.chat.replies import WireReport
from app.chat.ui_parts import KEY_TTL_SECONDS, Keyring
from app.chat.ui_view import BADGE, plain, seconds_text
from app.worker.admission import redact
from core.errors import ChatError
from crypto.params import CKKSParams
from model.oracle import DESCRIPTIONS


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def worker_panel(ring: Keyring, worker_url: str | None) -> str:
    """Markdown for "What the worker saw": keys, the last encrypted token on the wire, the oracle calls."""
    lines: list[str] = []
    if ring.last_label:
        lines.append(f"**Latest reply:** {ring.last_label}")
        if not ring.last_label.startswith(BADGE["encrypted"]):
            lines.append(
                "That reply ran on this server in the clear; no worker was involved. Choose *encrypted* "
                "to run the model on ciphertexts."
            )
    if ring.session is not None:
        lines.append(
            f"**Your keys:** the secret key is held in this browser session's memory on the page server "
            f"(the key holder); {_mb(ring.key_bytes)} of public keys (relinearisation, Galois) were "
            f"uploaded once to the worker at `{redact(worker_url)}`. They are forgotten after "
            f"{KEY_TTL_SECONDS // 60} minutes without a reply, after you close the tab, "
            "or with *Forget my keys*."
        )
    else:
        lines.append(
            "**Your keys:** none yet. The first encrypted reply creates a secret key in this browser "
            "session's memory on the page server and uploads only public keys to the worker."
        )
    wire = ring.last_wire
    if wire is None:
        lines.append("*No encrypted reply yet: nothing has gone to the worker.*")
        return "\n\n".join(lines)
    rows = [  # a list, not a table: the panel is narrow, and a table squeezed its label column to a letter
        f"- **Key holder → worker:** {_mb(wire.bytes_to_worker)} (ciphertexts)",
        f"- **Worker → key holder:** {_mb(wire.bytes_from_worker)} (ciphertexts)",
        f"- **Public keys (once per session):** {_mb(wire.key_upload_bytes)}",
    ]
    if wire.ciphertext_hex:  # the first bytes of the token's first SEAL ciphertext as sent
        rows.append(
            f"- **The token's encrypted one-hot vector, first bytes:** {_describe_hex(wire.ciphertext_hex)}"
        )
    rows.append(f"- **CKKS:** {_describe_params(wire.params, wire.preset)}")
    if wire.worker_seconds:
        spent = " · ".join(f"{plain(k)} {seconds_text(v)}" for k, v in wire.worker_seconds.items())
        rows.append(f"- **Worker time by stage:** {spent} ({wire.processes} compute processes)")
    rows.append(f"- **The prompt of this reply:** {_positions(wire)}")
    lines.append("**What went over the wire (last encrypted token)**\n\n" + "\n".join(rows))
    calls = [
        f"- **{plain(fn)}** ×{n}: {DESCRIPTIONS.get(fn, 'an allow-listed function')}"
        for fn, n in sorted(wire.oracle_calls.items(), key=lambda kv: -kv[1])
    ]
    lines.append(
        "**What the key holder evaluated for the worker (last token)**\n\n" + ("\n".join(calls) or "nothing")
    )
    lines.append(
        "These are the only steps done in the clear, on the key holder. The projections, LM head, sampler "
        "polynomials (prefix sum, step function, PP) and the next input embedding ran on ciphertexts on the "
        "worker; the key holder never chose a token for it. **The worker never had** the secret key, your "
        "text, the reply or any token id: only public keys and ciphertexts."
    )
    return "\n\n".join(lines)


def _positions(wire: WireReport) -> str:
    """What the worker saw of the conversation: public positions in the clear, the rest encrypted."""
    parts = []
    if wire.public_positions:
        shown = wire.public_text.replace("\n", "⏎")
        parts.append(
            f"{wire.public_positions} public positions, computed by the worker in the clear once for "
            f"everyone: `{shown}` (the template's opening; nothing of yours)"
        )
    held = wire.start - wire.public_positions
    if held > 0:
        parts.append(f"{held} positions of this conversation held by the key holder, not sent again")
    parts.append(f"{wire.new_positions} positions encrypted and sent with this reply")
    return "; ".join(parts)


def _describe_hex(hex_text: str) -> str:
    """The preview as hex words and what they are."""
    words = " ".join(hex_text[i : i + 8] for i in range(0, len(hex_text), 8))
    return (
        f"`{words}` (the first {len(hex_text) // 2} bytes of the first SEAL ciphertext: "
        "SEAL's serialisation header, then encrypted coefficients)"
    )


def _describe_params(params: dict[str, Any], preset: str) -> str:
    try:
        p = CKKSParams.from_dict(params)
    except (ChatError, KeyError, TypeError, ValueError):
        return f"preset {preset}: {params}"
    chain = "·".join(str(b) for b in p.coeff_mod_bit_sizes)
    return (
        f"preset `{preset}`: ring degree N = {p.poly_modulus_degree:,}, {p.slot_count:,} slots, "
        f"modulus chain {chain} ({p.total_bits} bits), scale 2^{p.scale_bits}, depth {p.depth}; "
        f"{p.security_bits}-bit security (HomomorphicEncryption.org standard)"
    )
