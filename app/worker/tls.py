"""TLS for a worker somewhere else: the worker's certificate, and what the key holder trusts.

A worker on another machine serves `wss://` with a certificate its operator gives (`--tls-cert`,
`--tls-key`); the access token in the URL then travels encrypted too. The key holder verifies the
worker's certificate against the system's certificate authorities, or against the one file named by
`HE_CHAT_WORKER_CA` (`--worker-ca`), for a worker with a self-signed certificate. Ciphertexts need no
TLS to stay private; TLS keeps the token, the settings and the shape of the traffic from the link,
and proves to the key holder that it talks to the worker it meant.

A client that never finishes its TLS handshake holds no slot: the server drops it after
`HANDSHAKE_SECONDS`; a plain `ws://` client fails its handshake at once. Neither touches other sessions.

References: Python `ssl` (create_default_context, load_cert_chain); websockets' `serve(ssl=...)`, whose
extra keyword arguments reach asyncio's `create_server` (`ssl_handshake_timeout`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from app.worker.admission import redact
from core.errors import ChatError

ENV_WORKER_CA = "HE_CHAT_WORKER_CA"
HANDSHAKE_SECONDS = 10.0  # a TLS handshake that takes longer is dropped (asyncio's default is 60 s)


def server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The worker's TLS context from its certificate chain and private key (None: plain `ws://`).

    Raises:
        ChatError: only one of the two files is given, a file is missing, or they do not load together.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ChatError("--tls-cert and --tls-key go together: give the certificate and its private key")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ChatError(
                f"{flag} {path!r} is not a file; give the PEM file your certificate authority issued"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ChatError(
            f"cannot load the TLS certificate {cert!r} with the key {key!r} ({exc}); give a PEM certificate "
            "chain and the unencrypted PEM private key that belongs to it"
        ) from exc
    return context


def client_tls(url: str) -> ssl.SSLContext | None:
    """What the key holder trusts for `url`: None for `ws://`; for `wss://` the system's authorities,
    or only the certificate authority in the file `HE_CHAT_WORKER_CA` names.

    Raises:
        ChatError: `HE_CHAT_WORKER_CA` names a file that is missing or holds no certificate.
    """
    if urlsplit(url).scheme != "wss":
        return None
    ca = os.environ.get(ENV_WORKER_CA) or None
    if ca is None:
        return ssl.create_default_context()
    if not Path(ca).is_file():
        raise ChatError(
            f"the worker's CA certificate {ca!r} (--worker-ca or {ENV_WORKER_CA}) is not a file; name the "
            "PEM file the worker's operator gave you"
        )
    try:
        return ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise ChatError(f"the worker's CA certificate {ca!r} holds no PEM certificate ({exc})") from exc


def unreachable(url: str, exc: BaseException) -> str:
    """What to tell the user when opening a connection to the worker at `url` failed with `exc`."""
    where = redact(url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the worker at {where} shows a TLS certificate this key holder does not trust "
            f"({exc.verify_message}); if the worker's operator gave you its CA certificate, name it with "
            f"{ENV_WORKER_CA}=FILE (or --worker-ca FILE)"
        )
    garbled = isinstance(exc, InvalidHandshake | ConnectionClosed) and url.startswith("ws://")
    hint = " (a worker serving TLS takes a wss:// URL)" if garbled else ""
    return (
        f"cannot reach the worker at {where} ({exc}){hint}; start it with `python -m app worker` or point "
        "--worker-url / HE_CHAT_WORKER_URL at a running one"
    )


def server_options(tls: ssl.SSLContext | None) -> dict[str, Any]:
    """websockets `serve` options every server of ours uses (the worker, a pool's front), TLS included."""
    secure: dict[str, Any] = {} if tls is None else {"ssl": tls, "ssl_handshake_timeout": HANDSHAKE_SECONDS}
    return {
        "max_queue": 2,  # frames buffered per connection (each up to max_message_bytes)
        "compression": None,  # ciphertexts do not compress
        "ping_interval": 20,
        "ping_timeout": 60,
        "close_timeout": 5,  # a peer that ignores our close (still pushing an oversized frame) is cut off
        **secure,
    }


def scheme(tls: ssl.SSLContext | None) -> str:
    """The URL scheme a worker serving with `tls` prints."""
    return "ws" if tls is None else "wss"
