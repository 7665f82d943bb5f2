"""Test doubles of the worker wing, shared by the worker's and the key holder's tests (real CKKS and sockets).

`CounterModel` is the worker's computing part in miniature: per token it refreshes the encrypted prompt
through the oracle and adds 1 under encryption; `CounterMath` is its key holder. `LoopbackWorker` serves
them on 127.0.0.1 (port 0). `reply` and `tokens` ask for a reply; `raw_exchange`, `tamper` and
`errors` speak the wire by hand, for the tests of what a misbehaving client gets.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import (
    KeyHolderClient,
    ReplyRequest,
    TokenEvent,
)
from app.worker.admission import WorkerAccess, WorkerLimits
from app.worker.background import BackgroundWorker
from app.worker.session import JobContext
from crypto import arith
from crypto.engine import Engine
from crypto.keys import PublicContext, create_secret_context, load_public_context, public_context_bytes
from crypto.keys_wire import RotationPlan
from crypto.params import CKKSParams, preset
from crypto.vector import decrypt_vector, encrypt_vector
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from model.conversation import PublicPrefix
from model.encrypted import OracleCall

PREFIX = PublicPrefix("default", "<|im_start|>system\n", (1, 9690, 198))


class CounterModel:
    """Worker test double: token k = prompt[0] + k + 1, computed on ciphertexts."""

    name = "counter"
    vocab = 8
    ordering = "identity"
    context_window = 512
    prefixes = {PREFIX.id: (PREFIX, [b"keys", b"values"])}

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.keys: dict[str, PublicContext] = {}

    def rotation_plan(self, preset_name: str) -> RotationPlan:
        preset(preset_name)
        return RotationPlan()

    def readiness(self) -> tuple[int, int]:
        return (1, 1)

    def load_keys(self, session: str, data: bytes, params: CKKSParams) -> None:
        self.keys[session] = load_public_context(data, expected=params)

    def drop_keys(self, session: str) -> None:
        self.keys.pop(session, None)

    def run(self, job: JobContext) -> str:
        public = self.keys[job.session]
        engine = Engine.for_worker(public)
        vec = vector_from_bytes(public, job.request.blobs[0])
        if job.request.max_new_tokens == 0:  # a read-ahead: oracle calls and no token, for a while
            for _ in range(200):
                job.check()
                job.oracle(OracleCall("refresh", -1, [(0, 0)], [vector_to_bytes(vec)]))
                time.sleep(self.delay)
            return "length"
        for index in range(job.request.max_new_tokens):
            job.check()
            job.emit(p.Progress(job.request.request, "counting", index, job.request.max_new_tokens))
            (blob,) = job.oracle(OracleCall("refresh", -1, [(0, 0)], [vector_to_bytes(vec)]))
            vec = arith.add_const(engine, vector_from_bytes(public, blob), 1.0)
            time.sleep(self.delay)
            job.emit(p.Token(job.request.request, index, {"oracle_calls": 1}, [vector_to_bytes(vec)]))
        return "length"


class CounterMath:
    """Key-holder test double: real keys, real encryption, refresh = decrypt + re-encrypt."""

    def __init__(self, preset_name: str = "test") -> None:
        self.preset = preset_name
        self.secret = create_secret_context(preset(preset_name))

    def public_context(self, galois_steps: list[int], conjugate: bool) -> bytes:
        plan = RotationPlan.of(galois_steps, self.secret.params.slot_count, conjugate)
        return public_context_bytes(self.secret, plan)

    def encrypt_prompt(self, prompt_ids: list[int]) -> list[bytes]:
        return [vector_to_bytes(encrypt_vector(self.secret, [float(i)])) for i in prompt_ids]

    def answer(self, call: OracleCall) -> list[bytes]:
        assert call.fn == "refresh"
        out = []
        for blob in call.blobs:
            values = decrypt_vector(self.secret, vector_from_bytes(self.secret, blob))
            out.append(vector_to_bytes(encrypt_vector(self.secret, values)))
        return out

    def read_token(self, blobs: list[bytes]) -> int:
        return int(round(decrypt_vector(self.secret, vector_from_bytes(self.secret, blobs[0]))[0]))

    def begin_reply(self, temperature: float, tsp: bool, guard: Any = None) -> None:
        pass


class LoopbackWorker(BackgroundWorker):
    """The app's background worker on 127.0.0.1:<free port>, plus a wait for freed sessions."""

    def __init__(
        self, model: Any, limits: WorkerLimits, access: WorkerAccess | None = None, tls: Any = None
    ) -> None:
        super().__init__(model, "127.0.0.1", 0, limits, access, tls)

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (self.worker.sessions or self.worker.busy) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.worker.sessions and self.worker.busy is None, "sessions were not freed"


def reply(client: KeyHolderClient, prompt: list[int], n: int) -> list[Any]:
    return list(client.generate(prompt, 0, "", ReplyRequest(max_new_tokens=n, seed=0)))


def tokens(client: KeyHolderClient, first: int, n: int = 1) -> list[int]:
    return [e.token_id for e in reply(client, [first], n) if isinstance(e, TokenEvent)]


def raw_exchange(url: str, frames: list[bytes | str]) -> tuple[list[p.Message], int | None]:
    """Send frames on a raw connection; collect what comes back until the worker closes or goes quiet."""
    received: list[p.Message] = []
    code = None
    with connect(url, max_size=None, compression=None) as conn:
        try:
            for frame in frames:
                conn.send(frame)
            while True:
                data = conn.recv(timeout=3)
                received.append(p.decode(data))
        except TimeoutError:
            pass
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
    return received, code


HELLO = p.encode(p.Hello(p.PROTOCOL_VERSION, "test"))


def tamper(frame: bytes, **changes: Any) -> bytes:
    """Re-frame a valid message with some header fields changed."""
    (n,) = struct.unpack(">I", frame[:4])
    header = {**json.loads(frame[4 : 4 + n]), **changes}
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + frame[4 + n :]


def errors(messages: list[p.Message]) -> list[int]:
    return [m.code for m in messages if isinstance(m, p.Error)]
