"""A worker serving wss:// over real loopback sockets: the certificate, who trusts it, and bad clients.

Certificates are made by Debian's `openssl` for 127.0.0.1 in a temporary folder; the worker is
`BackgroundWorker` over the `CounterModel` double of tests/app/worker/test_server.py (real CKKS keys and
ciphertexts, the real session machinery).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.chat.keyholder import KeyHolderClient, TokenEvent
from app.worker import tls as worker_tls
from app.worker.admission import WorkerLimits
from app.worker.tls import ENV_WORKER_CA, server_tls
from core.errors import ChatError, WorkerUnavailable
from tests.app.worker.doubles import CounterMath, CounterModel, LoopbackWorker, reply


def certificate(folder: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return certificate(tmp_path_factory.mktemp("tls"), "worker")


@pytest.fixture
def tls_server(pem: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackWorker]:
    monkeypatch.setattr(worker_tls, "HANDSHAKE_SECONDS", 1.0)  # a stalled handshake is dropped sooner
    limits = WorkerLimits(max_message_bytes=4 * 1024 * 1024)
    server = LoopbackWorker(CounterModel(delay=0.02), limits, tls=server_tls(*pem))
    yield server
    server.stop()


def tokens(client: KeyHolderClient, n: int) -> list[int]:
    return [e.token_id for e in reply(client, [5, 1, 2], n) if isinstance(e, TokenEvent)]


def test_a_key_holder_given_the_operators_certificate_chats_over_wss(
    tls_server: LoopbackWorker, pem: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_server.url.startswith("wss://127.0.0.1:")
    monkeypatch.setenv(ENV_WORKER_CA, pem[0])
    client = KeyHolderClient(tls_server.url, CounterMath())
    assert tokens(client, 4) == [6, 7, 8, 9]
    client.close()


def test_an_untrusted_certificate_is_refused_with_the_fix(
    tls_server: LoopbackWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_WORKER_CA, raising=False)
    with pytest.raises(WorkerUnavailable, match=f"does not trust .*{ENV_WORKER_CA}=FILE"):
        KeyHolderClient(tls_server.url, CounterMath())
    other, _ = certificate(tmp_path, "impostor")  # a certificate for the same address, another key
    monkeypatch.setenv(ENV_WORKER_CA, other)
    with pytest.raises(WorkerUnavailable, match="does not trust"):
        KeyHolderClient(tls_server.url, CounterMath())
    monkeypatch.setenv(ENV_WORKER_CA, str(tmp_path / "missing.pem"))
    with pytest.raises(ChatError, match="is not a file"):
        KeyHolderClient(tls_server.url, CounterMath())
    (tmp_path / "garbage.pem").write_text("not a certificate")
    monkeypatch.setenv(ENV_WORKER_CA, str(tmp_path / "garbage.pem"))
    with pytest.raises(ChatError, match="holds no PEM certificate"):
        KeyHolderClient(tls_server.url, CounterMath())


def test_plain_clients_and_stalled_handshakes_are_refused_and_others_carry_on(
    tls_server: LoopbackWorker, pem: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_WORKER_CA, pem[0])
    port = int(tls_server.url.split(":")[2].split("/")[0])
    stalled = socket.create_connection(("127.0.0.1", port))  # connects, never says a word
    stalled.settimeout(10)
    with pytest.raises(WorkerUnavailable, match="takes a wss:// URL"):
        KeyHolderClient(tls_server.url.replace("wss://", "ws://"), CounterMath())
    client = KeyHolderClient(tls_server.url, CounterMath())  # served while the other handshake hangs
    assert tokens(client, 3) == [6, 7, 8]
    client.close()
    start = time.monotonic()
    assert stalled.recv(1) == b""  # the worker hung up on it after its handshake timeout
    assert time.monotonic() - start < 5
    stalled.close()
    assert not tls_server.worker.sessions or tls_server.wait_idle() is None


def test_the_worker_command_names_a_bad_certificate_before_loading_anything(
    pem: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pem
    _, foreign_key = certificate(tmp_path, "other")
    for flags, says in (
        (["--tls-cert", cert], "go together"),
        (["--tls-cert", cert, "--tls-key", str(tmp_path / "nope.key")], "is not a file"),
        (["--tls-cert", cert, "--tls-key", foreign_key], "cannot load the TLS certificate"),
    ):
        assert cli.main(["worker", "--tiny", "--port", "0", *flags]) == 2
        assert says in capsys.readouterr().err
    with pytest.raises(ChatError, match="go together"):
        server_tls(None, key)
