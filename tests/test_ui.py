"""The chat page served for real on loopback, driven through gradio_client (browser tests: issue 6)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from gradio_client import Client

from app.chat import ChatService
from app.ui import build_ui
from model.loading import LoadedModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def page_url(tiny: LoadedModel) -> Iterator[str]:
    page = build_ui(ChatService.create(tiny))
    port = _free_port()
    page.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def test_page_is_served_on_loopback(page_url: str) -> None:
    with urllib.request.urlopen(page_url, timeout=30) as response:
        assert response.status == 200
        assert "Encrypted chat" in response.read().decode()


def test_reply_streams_in_growing_chunks(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    job = client.submit("Hello", "plain", 1.0, 6, 0, True, True, api_name="/respond")
    outputs = list(job)
    assert len(outputs) >= 2
    assert all(outputs[i + 1].startswith(outputs[i].split("\n\n<sub>")[0]) for i in range(len(outputs) - 1))
    assert "plain · 6 tokens" in outputs[-1]


def test_simulate_mode_streams_with_its_label(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    reply = client.predict("Hello", "simulate", 1.0, 4, 0, True, True, api_name="/respond")
    assert "simulate (TSP on, PP on, amp 3) · 4 tokens" in reply


@pytest.mark.parametrize(
    ("message", "temperature", "error"),
    [("   ", 0.3, "empty"), ("Hello", 9.0, "greater than maximum value 2.0")],
)
def test_bad_input_is_reported_and_the_page_keeps_working(
    page_url: str, message: str, temperature: float, error: str
) -> None:
    client = Client(page_url, verbose=False)
    with pytest.raises(Exception, match=error):
        client.predict(message, "plain", temperature, 6, 0, True, True, api_name="/respond")
    reply = client.predict("Hello again", "plain", 1.0, 3, 0, True, True, api_name="/respond")
    assert "plain · 3 tokens" in reply
