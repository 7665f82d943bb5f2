"""The key holder's math: the keys, the prompt's ciphertexts, the oracle's answers, and reading I'.

The key holder owns the secret key and the conversation's attention cache (its own data: keys and values
derive from the user's text). The worker calls it through a narrow oracle (DESIGN.md section 4) for the
allow-listed functions and for `refresh`; an `OracleCall` (model/encrypted.py) says where each input
share goes and which output pieces to return, in which layout and at which level. The key holder never
chooses a token for the worker: it reads `I'` only to show `pi[argmax I']`.

The cache outlives a reply: a chat continues from it (`begin_reply` keeps it; `reset` starts afresh,
from nothing or from a public prefix the worker computed in the clear), and `commit` drops the positions
of a forward that a Stop cut off half-way, so the cache always holds whole positions.

References: DESIGN.md sections 2 and 4; model/forward.py (the functions, in plaintext).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import InputError
from crypto.engine import Engine
from crypto.keys import SecretContext, create_secret_context, public_context_bytes
from crypto.keys_wire import RotationPlan
from crypto.params import preset
from crypto.vector import EncVector, decrypt_vector
from crypto.vector_wire import (
    encrypt_vector_bytes,
    split_vector_bytes,
    vector_from_bytes,
    vector_from_chunks,
    vector_ring,
)
from model.encrypted import OracleCall, PieceSpec, input_widths
from model.forward import KeyHolderFunctions, LlamaShape
from model.oracle import ORACLE_FUNCTIONS, REFRESHES, NonLinear
from model.repetition import RepetitionGuard
from model.sampler import Precision, probabilities

FloatArray = npt.NDArray[np.float64]
MAX_CALL_POSITIONS = 8192  # rows of one oracle call: a prompt never has more positions than this


class KeyHolderSide:
    """The key holder's math for one chat (app.chat.keyholder.KeyHolderMath)."""

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
        tail = self.secret.tail
        self.rings = [self.secret] if tail is None else [self.secret, tail]  # by ring
        self.engines = [self.engine] + [Engine.for_key_holder(r) for r in self.rings[1:]]
        self.shape = shape
        self.embeddings = embeddings  # (V, d): public model data, used to embed the prompt
        self.perm = np.asarray(perm, dtype=np.int64)
        self.position = np.empty_like(self.perm)  # token id -> its index in TSP order
        self.position[self.perm] = np.arange(self.perm.size)
        self.guard: RepetitionGuard | None = None
        self.softmax_precision: Precision = softmax_precision
        self.temperature = 1.0
        self.tsp = True
        self.functions = KeyHolderFunctions(shape)
        self.evaluated: dict[str, int] = {}  # what this side computed for the worker, by function
        self.packs = False  # the worker holds the conjugation key: refreshes travel two chunks a ciphertext
        self._public: dict[tuple[tuple[int, ...], bool], bytes] = {}

    # --- keys and the conversation's cache ----------------------------------------------------------

    def public_context(self, galois_steps: list[int], conjugate: bool) -> bytes:
        """The public keys for a worker's rotation plan (kept, so a reconnect uploads the same bytes)."""
        plan_key = (tuple(sorted(galois_steps)), conjugate)
        self.packs = bool(conjugate)
        if plan_key not in self._public:
            plan = RotationPlan.of(galois_steps, self.secret.params.slot_count, conjugate)
            self._public = {plan_key: public_context_bytes(self.secret, plan)}
        return self._public[plan_key]

    def begin_reply(self, temperature: float, tsp: bool, guard: RepetitionGuard | None = None) -> None:
        """Take a reply's settings; the cache stays (a chat continues from it). `guard` penalises the
        conversation's tokens in the logits' softmax and learns each token this side reads."""
        self.temperature = float(temperature)
        self.tsp = bool(tsp)
        self.guard = guard

    def reset(self, prefix: tuple[Any, Any] | None = None) -> None:
        """Forget the conversation; start from nothing or from a public prefix's (keys, values)."""
        self.functions = KeyHolderFunctions(self.shape)
        if prefix is not None:
            keys, values = prefix
            self.functions.load(
                [torch.from_numpy(np.array(k)) for k in keys], [torch.from_numpy(np.array(v)) for v in values]
            )

    @property
    def positions(self) -> int:
        """Whole positions in the attention cache."""
        return self.functions.positions

    def commit(self, keep: int | None = None) -> int:
        """After a reply: keep only whole positions (a cancelled forward fills some layers only), and at
        most `keep` of them (the chat's state can end sooner: `model.conversation.finish_turn`)."""
        whole = self.functions.positions
        self.functions.truncate(whole if keep is None else min(keep, whole))
        return self.functions.positions

    # --- ciphertexts ---------------------------------------------------------------------------------

    def _decrypt(self, blob: bytes) -> FloatArray:
        return decrypt_vector(self.secret, self._received(blob))

    def _received(self, blob: bytes) -> EncVector:
        """A worker's vector: every one comes at level 0 (`crypto.vector.for_key_holder`)."""
        return vector_from_bytes(self.secret, blob, level=0)

    def _encrypt(self, values: FloatArray, spec: PieceSpec) -> bytes:
        top = self.engine.top_level
        level = spec.level_under(top)
        if level > top:
            raise InputError(f"piece level {spec.level} is above the top level {top}")
        slots = self.secret.params.slot_count
        if spec.copies > 1:
            return encrypt_vector_bytes(
                self.secret, values, level=level, engine=self.engine, period=spec.period, copies=spec.copies
            )
        chunk = values.size if values.size <= slots else slots
        return encrypt_vector_bytes(self.secret, values, chunk=chunk, level=level, engine=self.engine)

    def encrypt_prompt(self, prompt_ids: Sequence[int]) -> list[bytes]:
        """One ciphertext per position at level 0: the residual stream's first value (its first use is
        the first rmsnorm, which comes back here, and residual additions, which run at level 0)."""
        rows = self.embeddings[torch.tensor(list(prompt_ids))].to(torch.float64).numpy()  # (T, d)
        return [self._encrypt(row, PieceSpec(0, 0, row.size, level=0)) for row in rows]

    def read_token(self, blobs: Sequence[bytes]) -> int:
        """Post-correction: decrypt I' (its parts in order), take the argmax position, undo the order."""
        if not blobs:
            raise InputError("a token needs the encrypted one-hot vector")
        weights = np.concatenate([self._decrypt(b) for b in blobs])
        if weights.size != self.shape.vocab:
            raise InputError(
                f"the one-hot vector has {weights.size} values, the vocabulary {self.shape.vocab}"
            )
        position = int(np.argmax(weights))
        token = int(self.perm[position]) if self.tsp else position
        if self.guard is not None:
            self.guard.add(token)
        return token

    # --- the oracle ------------------------------------------------------------------------------------

    def answer(self, call: OracleCall) -> list[bytes]:
        """Evaluate one oracle call. Raises InputError for anything off the allow-list or out of shape."""
        if call.fn not in ORACLE_FUNCTIONS:
            raise InputError(
                f"{call.fn!r} is not an allowed oracle call; allowed: {', '.join(ORACLE_FUNCTIONS)}"
            )
        if len(call.parts) != len(call.blobs):
            raise InputError(f"{len(call.parts)} part positions for {len(call.blobs)} ciphertexts")
        self.evaluated[call.fn] = self.evaluated.get(call.fn, 0) + 1
        if call.fn in REFRESHES:
            into = REFRESHES.index(call.fn)
            if into >= len(self.rings):
                raise InputError(f"{call.fn}: this session's preset {self.preset!r} has no sampler tail")
            return [self._refresh(blob, into) for blob in call.blobs]
        widths = input_widths(self.shape, call.fn)
        x = self._assemble(call, sum(widths))
        out = self._evaluate(call.fn, call.layer, x, widths)  # (T_out, width)
        return [self._piece(out, spec) for spec in call.pieces]

    def _refresh(self, blob: bytes, into: int) -> bytes:
        """Decrypt a vector of either ring; re-encrypt it, seeded, at the top of ring `into`."""
        chunks = split_vector_bytes(blob)
        ring = vector_ring(chunks)
        if ring >= len(self.rings):
            raise InputError(f"a vector of the sampler tail, but preset {self.preset!r} has no tail")
        source = self.rings[ring]
        vec = vector_from_chunks(source, chunks, level=0)
        values = decrypt_vector(source, vec)
        # packed only into the session's parameters (the tail has no conjugation key); the worker's
        # conjugation adds ~2e-10 per value, against 1e-7 the step can bear (never on q: the prefix
        # sum would add 49,152 of them up)
        return encrypt_vector_bytes(
            self.rings[into],
            values,
            chunk=vec.chunk,
            engine=self.engines[into],
            packed=into == 0 and self.packs,
        )

    def _assemble(self, call: OracleCall, width: int) -> FloatArray:
        """Add every input share at its place; every value of every row must be covered."""
        if not call.parts:
            raise InputError(f"{call.fn} needs at least one input ciphertext")
        rows = 1 + max(position for position, _ in call.parts)
        if not 0 < rows <= MAX_CALL_POSITIONS or min(position for position, _ in call.parts) < 0:
            raise InputError(f"{call.fn}: part positions must be in 0..{MAX_CALL_POSITIONS - 1}")
        x = np.zeros((rows, width))
        covered = np.zeros((rows, width), dtype=bool)
        for (position, offset), blob in zip(call.parts, call.blobs, strict=True):
            values = self._decrypt(blob)
            if offset < 0 or offset + values.size > width:
                raise InputError(
                    f"{call.fn}: a part of {values.size} values at {offset} exceeds the width {width}"
                )
            x[position, offset : offset + values.size] += values
            covered[position, offset : offset + values.size] = True
        if not covered.all():
            raise InputError(f"{call.fn}: the input shares leave {int((~covered).sum())} values uncovered")
        return x

    def _evaluate(self, fn: str, layer: int, x: FloatArray, widths: list[int]) -> FloatArray:
        if fn == "softmax":
            if x.shape[0] != 1:
                raise InputError("softmax takes the logits of one position")
            z = x[0]
            if self.guard is not None and self.guard.active:  # the logits come in sampling order
                z = self.guard.penalize(z, self.position if self.tsp else None)
            p = probabilities(z, self.temperature, self.softmax_precision, False)
            return p[None, :]
        splits = np.cumsum(widths)[:-1]
        xs = [torch.from_numpy(part).float() for part in np.split(x, splits, axis=1)]
        nonlinear: NonLinear = fn  # type: ignore[assignment]  # checked against ORACLE_FUNCTIONS above
        return self.functions.evaluate(nonlinear, layer, xs).double().numpy()

    def _piece(self, out: FloatArray, spec: PieceSpec) -> bytes:
        rows, width = out.shape
        slots = self.secret.params.slot_count
        if not (0 <= spec.position < rows and 0 <= spec.start < spec.stop <= width):
            raise InputError(f"piece {spec.as_list()} is outside the output of {rows} x {width} values")
        n = spec.stop - spec.start
        if spec.copies > 1 and (spec.period < n or spec.copies * spec.period > slots):
            raise InputError(
                f"piece {spec.as_list()}: {spec.copies} copies of {n} values do not fit {slots} slots"
            )
        if spec.copies < 1:
            raise InputError(f"piece {spec.as_list()}: copies must be at least 1")
        return self._encrypt(out[spec.position, spec.start : spec.stop], spec)
