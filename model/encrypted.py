"""The encrypted pipeline: the worker's side (ciphertexts only) and the key holder's side (the oracle).

Worker, per token (DESIGN.md section 4), with the same steps as the plaintext twin (`model.forward`):

    x (d,) ──30 x [rmsnorm*, q/k/v, attention*, o, +, rmsnorm*, gate/up, swiglu*, down, +]──
      ──final_norm*── LM head (pi baked in) ── softmax* ── sampler circuit (refresh* as needed)
      ──> I' (sent to the key holder as the token) ── mixture I' @ W_pi ──> next x

Steps marked * are oracle calls: the key holder decrypts, evaluates the allow-listed function (or just
re-encrypts, for refresh) and returns fresh ciphertexts. Everything with weights, the prefix sum, the
sampler polynomials and PP run on the worker under CKKS (crypto/). The key holder never chooses a
token for the worker: it sees `I'` only to display `pi[argmax I']`.

Ciphertext layout on the wire: one blob per encrypted vector (`crypto.vector.vector_to_bytes`); an
oracle call with k inputs of T rows each sends k*T blobs, inputs one after another.

The prompt is processed one position at a time (T separate products per matrix, one oracle round trip
per function for all T rows); packing several positions per ciphertext (`crypto.batch`) is the next
speed-up for long prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from crypto import arith
from crypto.engine import Engine
from crypto.keys import (
    PublicContext,
    RotationPlan,
    SecretContext,
    create_secret_context,
    public_context_bytes,
)
from crypto.matmul import MatmulPlan, PlainMatrix, matmul, plan_matmul
from crypto.ops import CkksOps, sampler_rotation_plan
from crypto.params import CKKSParams, preset
from crypto.vector import EncVector, decrypt_vector, encrypt_vector, vector_from_bytes, vector_to_bytes
from model.errors import InputError
from model.forward import KeyHolderFunctions, LlamaShape, NonLinear, PreparedModel, forward
from model.sampler import Precision, approx_one_hot, probabilities

Rows = list[EncVector]  # one encrypted vector per position
Oracle = Callable[[str, int, list[bytes]], list[bytes]]  # (fn, layer, blobs) -> blobs
ARITY: dict[str, int] = {"rmsnorm": 1, "attention": 3, "swiglu": 2, "final_norm": 1, "softmax": 1}
MATMUL_LEVEL = 1  # products run at level 1: cheapest, and their outputs feed an oracle or a residual add


@dataclass
class TokenTelemetry:
    """What one token cost on the worker, streamed in the Token message."""

    seconds: dict[str, float] = field(default_factory=dict)  # wall time by stage
    oracle_calls: dict[str, int] = field(default_factory=dict)  # by function
    bytes_to_key_holder: int = 0
    bytes_from_key_holder: int = 0
    refreshes: int = 0  # sampler refreshes (each one oracle call)
    rotations: int = 0
    levels: int = 0  # multiplicative levels consumed (sum over every ciphertext chain)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "oracle_calls": dict(self.oracle_calls),
            "bytes_to_key_holder": self.bytes_to_key_holder,
            "bytes_from_key_holder": self.bytes_from_key_holder,
            "refreshes": self.refreshes,
            "rotations": self.rotations,
        }


class EncryptedBackend:
    """`model.forward.Backend` over rows of CKKS vectors; non-linear steps go to the oracle."""

    def __init__(
        self,
        engine: Engine,
        public: PublicContext,
        matrices: Callable[[str, torch.Tensor], tuple[PlainMatrix, MatmulPlan]],
        oracle: Oracle,
        telemetry: Callable[[], TokenTelemetry],
    ) -> None:
        self.engine = engine
        self.public = public
        self.matrices = matrices
        self._oracle = oracle
        self.telemetry = telemetry

    def call(self, fn: str, layer: int, inputs: Sequence[Rows]) -> Rows:
        """One oracle round trip: k inputs of T rows out, fresh rows back."""
        blobs = [vector_to_bytes(v) for rows in inputs for v in rows]
        tel = self.telemetry()
        start = time.perf_counter()
        reply = self._oracle(fn, layer, blobs)
        tel.add_time("oracle", time.perf_counter() - start)
        tel.oracle_calls[fn] = tel.oracle_calls.get(fn, 0) + 1
        tel.bytes_to_key_holder += sum(len(b) for b in blobs)
        tel.bytes_from_key_holder += sum(len(b) for b in reply)
        return [vector_from_bytes(self.public, b) for b in reply]

    def linear(self, x: Rows, key: str, weight: torch.Tensor) -> Rows:
        start = time.perf_counter()
        mat, plan = self.matrices(key, weight)
        out = [matmul(self.engine, v, mat, plan, level=min(MATMUL_LEVEL, v.level)) for v in x]
        stage = "lm_head" if key == "lm_head" else "layers"
        self.telemetry().add_time(stage, time.perf_counter() - start)
        return out

    def add(self, a: Rows, b: Rows) -> Rows:
        return [arith.add(self.engine, u, v) for u, v in zip(a, b, strict=True)]

    def apply(self, fn: NonLinear, layer: int, xs: Sequence[Rows]) -> Rows:
        return self.call(fn, layer, xs)


class EncryptedWorkerModel:
    """The worker's computing part (app.worker.WorkerModel): the model's weights, never a secret key."""

    def __init__(
        self, prepared: PreparedModel, identity: PreparedModel, name: str, ordering: str, context_window: int
    ) -> None:
        """`prepared` has the TSP order baked in; `identity` is the same model in token-id order (TSP off)."""
        self.by_tsp = {True: prepared, False: identity}
        self.name = name
        self.context_window = context_window
        self.vocab = prepared.shape.vocab
        self.ordering = ordering
        self._matrices: dict[tuple[str, bool, str], tuple[PlainMatrix, MatmulPlan]] = {}

    @property
    def shape(self) -> LlamaShape:
        return self.by_tsp[True].shape

    def _shapes(self, slots: int) -> list[tuple[int, int, int]]:
        """(m, n, input chunk) of every product the plan performs."""
        s = self.shape
        chunk = min(slots, s.vocab)
        return [
            (s.d, s.d, slots),
            (s.d, s.kv_width, slots),
            (s.d, s.ffn, slots),
            (s.ffn, s.d, slots),
            (s.d, s.vocab, slots),
            (s.vocab, s.d, chunk),
        ]

    def rotation_plan(self, preset_name: str) -> RotationPlan:
        params = preset(preset_name)
        slots = params.slot_count
        plan = sampler_rotation_plan(slots)
        for m, n, chunk in self._shapes(slots):
            plan = plan.union(plan_matmul(m, n, slots, chunk).rotation_plan())
        return plan

    def _matrix(
        self, params: CKKSParams, tsp: bool, key: str, weight: torch.Tensor
    ) -> tuple[PlainMatrix, MatmulPlan]:
        # Layer matrices do not depend on the order; only the LM head and the embedding rows do.
        cache_key = (params.name, tsp if key in ("lm_head", "embed_pi") else True, key)
        if cache_key not in self._matrices:
            m, n = weight.shape
            mat = PlainMatrix(weight.detach().to(torch.float64).numpy())
            self._matrices[cache_key] = (mat, plan_matmul(m, n, params.slot_count, params.slot_count))
        return self._matrices[cache_key]

    def run(self, job: Any) -> str:
        """Generate for one `app.worker.JobContext`; emits Progress and Token messages; returns the reason."""
        from app import protocol as p  # the message types; the worker passes them through `emit`

        request = job.request
        prepared = self.by_tsp[request.tsp]
        params = job.public.params
        engine = Engine.for_worker(job.public)
        tel = TokenTelemetry()
        backend = EncryptedBackend(
            engine,
            job.public,
            lambda key, w: self._matrix(params, request.tsp, key, w),
            job.oracle,
            lambda: tel,
        )

        def refresh(vec: EncVector) -> EncVector:
            tel.refreshes += 1
            return backend.call("refresh", -1, [[vec]])[0]

        ops = CkksOps(engine, refresh)
        rng = np.random.default_rng(request.seed)
        layers = prepared.shape.layers
        x: Rows = [vector_from_bytes(job.public, b) for b in request.blobs]
        if len(x) != request.prompt_tokens or any(v.length != prepared.shape.d for v in x):
            raise InputError(
                f"the prompt must be {request.prompt_tokens} encrypted vectors of {prepared.shape.d} values"
            )
        budget = request.max_new_tokens
        window = self.context_window - request.prompt_tokens
        for index in range(min(budget, window)):
            on_layer = partial(_report_layer, job, "prompt" if index == 0 else "token", layers)
            rotations_before = engine.counts["rotate"]
            logits = forward(backend, prepared, x, on_layer)[0]  # (V,) in tiles, TSP order
            job.emit(p.Progress(request.request, "sampler", layers + 1, layers + 3))
            start = time.perf_counter()
            q = backend.call("softmax", -1, [[logits]])[0]  # fresh, chunk = slots
            one_hot = approx_one_hot(ops, q, float(rng.random()), request.amp_rounds, request.pp)
            tel.add_time("sampler", time.perf_counter() - start)
            job.check()
            if index + 1 < min(budget, window):
                job.emit(p.Progress(request.request, "mixture embedding", layers + 2, layers + 3))
                start = time.perf_counter()
                mat, plan = self._matrix(params, request.tsp, "embed_pi", prepared.embed_pi)
                ready = ops.ensure_levels(one_hot, MATMUL_LEVEL)
                x = [matmul(engine, ready, mat, plan, level=MATMUL_LEVEL)]
                tel.add_time("mixture", time.perf_counter() - start)
            tel.rotations = engine.counts["rotate"] - rotations_before
            job.emit(p.Token(request.request, index, tel.as_dict(), [vector_to_bytes(one_hot)]))
            tel = TokenTelemetry()
        return "length" if budget <= window else "context"


def _report_layer(job: Any, stage: str, layers: int, index: int) -> None:
    """Before each layer: stop if cancelled, else tell the key holder where the token is."""
    from app import protocol as p

    job.check()
    job.emit(p.Progress(job.request.request, f"{stage}: layer {index + 1}/{layers}", index, layers + 3))


class KeyHolderSide:
    """The key holder's math (app.keyholder.KeyHolderMath): keys, prompt, the oracle, reading I'."""

    def __init__(
        self,
        preset_name: str,
        shape: LlamaShape,
        embeddings: torch.Tensor,
        perm: npt.ArrayLike,
        softmax_precision: Precision = "fp16",
    ) -> None:
        self.preset = preset_name
        self.secret: SecretContext = create_secret_context(preset(preset_name))
        self.engine = Engine.for_key_holder(self.secret)
        self.shape = shape
        self.embeddings = embeddings  # (V, d): public model data, used to embed the prompt
        self.perm = np.asarray(perm, dtype=np.int64)
        self.softmax_precision: Precision = softmax_precision
        self.temperature = 1.0
        self.tsp = True
        self.functions = KeyHolderFunctions(shape)
        self.evaluated: dict[str, int] = {}  # what this side computed for the worker, by function

    def public_context(self, galois_steps: list[int], conjugate: bool) -> bytes:
        plan = RotationPlan.of(galois_steps, self.secret.params.slot_count, conjugate)
        return public_context_bytes(self.secret, plan)

    def new_reply(self, settings: dict[str, Any]) -> None:
        self.functions = KeyHolderFunctions(self.shape)  # the worker re-reads the whole prompt
        self.temperature = float(settings.get("temperature", 1.0))
        self.tsp = bool(settings.get("tsp", True))

    def _encrypt(self, values: npt.NDArray[np.float64], chunk: int | None = None) -> bytes:
        """Fresh ciphertexts at the top level. A vector that fits one ciphertext gets chunk = its length,
        the layout the worker's products return, so residual additions line up."""
        slots = self.secret.params.slot_count
        layout = chunk if chunk is not None else (values.size if values.size <= slots else slots)
        return vector_to_bytes(encrypt_vector(self.secret, values, chunk=layout, engine=self.engine))

    def _decrypt(self, blob: bytes) -> npt.NDArray[np.float64]:
        return decrypt_vector(self.secret, vector_from_bytes(self.secret, blob))

    def encrypt_prompt(self, prompt_ids: list[int]) -> list[bytes]:
        rows = self.embeddings[torch.tensor(prompt_ids)].to(torch.float64).numpy()  # (T, d)
        return [self._encrypt(row) for row in rows]

    def answer(self, fn: str, layer: int, blobs: list[bytes]) -> list[bytes]:
        """Evaluate one oracle call. Raises InputError for anything off the allow-list."""
        self.evaluated[fn] = self.evaluated.get(fn, 0) + 1
        if fn == "refresh":
            out = []
            for blob in blobs:
                vec = vector_from_bytes(self.secret, blob)
                out.append(self._encrypt(decrypt_vector(self.secret, vec), chunk=vec.chunk))
            return out
        if fn == "softmax":
            if len(blobs) != 1:
                raise InputError("softmax takes exactly one vector of logits")
            p = probabilities(self._decrypt(blobs[0]), self.temperature, self.softmax_precision, False)
            return [self._encrypt(p, chunk=self.secret.params.slot_count)]
        arity = ARITY.get(fn)
        if arity is None or not blobs or len(blobs) % arity:
            raise InputError(f"{fn!r} with {len(blobs)} vector(s) is not an allowed oracle call")
        rows = len(blobs) // arity
        xs = [
            torch.from_numpy(np.stack([self._decrypt(b) for b in blobs[i * rows : (i + 1) * rows]])).float()
            for i in range(arity)
        ]
        result = self.functions.evaluate(fn, layer, xs)  # type: ignore[arg-type]
        return [self._encrypt(row.double().numpy()) for row in result]

    def read_token(self, blobs: list[bytes]) -> int:
        """Post-correction: decrypt I', take the argmax position, undo the order."""
        weights = self._decrypt(blobs[0])
        position = int(np.argmax(weights))
        return int(self.perm[position]) if self.tsp else position


def worker_model_for(loaded: Any, perm: npt.ArrayLike, ordering: str) -> EncryptedWorkerModel:
    """The worker's computing part for a loaded Llama-family model and its vocabulary order."""
    prepared = PreparedModel.from_loaded(loaded, perm)
    return EncryptedWorkerModel(
        prepared,
        prepared.reordered(np.arange(prepared.shape.vocab)),  # TSP off: token-id order, same layers
        loaded.name,
        ordering,
        loaded.context_window,
    )
