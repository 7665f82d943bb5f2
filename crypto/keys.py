"""Keys and contexts: the key holder's secret context, the public bytes, and the worker's loader.

The secret context never leaves the key holder. `public_context_bytes` is the one function that
produces wire bytes for the worker: it copies the TenSEAL context, makes the copy public, refuses if
a secret key is still inside, and appends SEAL Galois keys generated (through `tenseal.sealapi`) only
for the rotation steps of the worker's `RotationPlan`; TenSEAL's high-level API can only generate all
of them (35 MB at N = 8192). `load_public_context` is its inverse on the worker and refuses any
context that holds a secret key.

Wire format (version 1), all integers big-endian:

    b"HECKKS" | u16 version | u32 header length | JSON header | TenSEAL public context | SEAL GaloisKeys

The JSON header holds the parameter dict, the normalised rotation steps, the conjugation flag and the
byte lengths of the two blobs.

References: DESIGN.md section 4; STYLE.md rule 6; SEAL `KeyGenerator::create_galois_keys(elts)` with
Galois element `3**step mod 2N` for a left rotation by `step` and `2N - 1` for conjugation.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.params import CKKSParams
from crypto.seal_io import seal_from_bytes, seal_to_bytes
from model.errors import ParamsError, SecretKeyError, WireFormatError

MAGIC = b"HECKKS"
WIRE_VERSION = 1
_PREFIX = struct.Struct(">6sHI")  # magic, version, header length


def normalise_step(step: int, slot_count: int) -> int:
    """A left-rotation step reduced to [0, slot_count) (a right rotation by k is a left one by S - k)."""
    return step % slot_count


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation by `step` slots: 3**step mod 2N."""
    slots = poly_modulus_degree // 2
    return pow(3, normalise_step(step, slots), 2 * poly_modulus_degree)


@dataclass(frozen=True)
class RotationPlan:
    """The rotations a worker will perform: Galois keys are generated for exactly these."""

    steps: frozenset[int] = field(default_factory=frozenset)
    # why: normalised left-rotation steps in [1, slots); each costs one Galois key (~1.4 MB at N=8192).
    conjugate: bool = False
    # why: complex conjugation (used by the packed prefix sum) needs its own Galois key.

    @classmethod
    def of(cls, steps: Iterable[int], slot_count: int, conjugate: bool = False) -> RotationPlan:
        """Normalise `steps` (drops rotations by 0 mod slots)."""
        norm = frozenset(s for s in (normalise_step(k, slot_count) for k in steps) if s != 0)
        return cls(norm, conjugate)

    def union(self, other: RotationPlan) -> RotationPlan:
        """The plan that allows both plans' rotations."""
        return RotationPlan(self.steps | other.steps, self.conjugate or other.conjugate)

    def galois_elements(self, poly_modulus_degree: int) -> list[int]:
        """Galois elements to generate keys for (sorted steps, then conjugation)."""
        elts = [galois_element(s, poly_modulus_degree) for s in sorted(self.steps)]
        if self.conjugate:
            elts.append(2 * poly_modulus_degree - 1)
        return elts


class SecretContext:
    """The key holder's context: parameters, secret key, public and relinearisation keys.

    Encrypts symmetrically with the secret key (noise ~100x below public-key encryption, which is what
    lets the prefix sum over 49,152 slots stay within 1e-7).
    """

    def __init__(self, params: CKKSParams, tenseal_context: ts.Context) -> None:
        if not tenseal_context.is_private():
            raise SecretKeyError("SecretContext needs a TenSEAL context that holds the secret key")
        self.params = params
        self.tenseal_context = tenseal_context
        self.seal_context: Any = tenseal_context.seal_context().data
        self.encoder = sealapi.CKKSEncoder(self.seal_context)
        self._secret_key = tenseal_context.secret_key().data
        self.encryptor = sealapi.Encryptor(self.seal_context, self._secret_key)
        self.decryptor = sealapi.Decryptor(self.seal_context, self._secret_key)

    def key_generator(self) -> Any:
        """A SEAL KeyGenerator bound to this context's secret key (for Galois keys)."""
        return sealapi.KeyGenerator(self.seal_context, self._secret_key)


class PublicContext:
    """The worker's context: parameters, relinearisation keys and the planned Galois keys. No secret key."""

    def __init__(self, params: CKKSParams, tenseal_context: ts.Context, galois_keys: Any, plan: RotationPlan):
        if tenseal_context.is_private() or tenseal_context.has_secret_key():
            raise SecretKeyError("the worker refuses a context that contains a secret key")
        self.params = params
        self.tenseal_context = tenseal_context
        self.seal_context: Any = tenseal_context.seal_context().data
        self.relin_keys: Any = tenseal_context.relin_keys().data
        self.galois_keys: Any = galois_keys
        self.plan = plan


def create_secret_context(params: CKKSParams) -> SecretContext:
    """Generate fresh keys for `params` (secret, public, relinearisation; no Galois keys yet)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, -1, list(params.coeff_mod_bit_sizes))
    ctx.global_scale = params.scale
    return SecretContext(params, ctx)


def public_context_bytes(secret: SecretContext, plan: RotationPlan) -> bytes:
    """The one path from keys to wire bytes: public key, relin keys and Galois keys for `plan` only.

    Args:
        secret: the key holder's context.
        plan: the rotations the worker will perform (see `crypto.matmul`, `crypto.prefix`, `crypto.ops`).

    Returns:
        Bytes for `load_public_context` (upload them chunked with `crypto.seal_io.split_chunks`).

    Raises:
        SecretKeyError: the serialised context would contain a secret key.
    """
    public = secret.tenseal_context.copy()
    public.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    if public.is_private() or public.has_secret_key():
        raise SecretKeyError("refusing to serialise a context that still holds the secret key")
    context_blob = public.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True
    )
    galois = sealapi.GaloisKeys()
    elements = plan.galois_elements(secret.params.poly_modulus_degree)
    if elements:
        secret.key_generator().create_galois_keys(elements, galois)
    galois_blob = seal_to_bytes(galois) if elements else b""
    header = json.dumps(
        {
            "params": secret.params.to_dict(),
            "steps": sorted(plan.steps),
            "conjugate": plan.conjugate,
            "context_bytes": len(context_blob),
            "galois_bytes": len(galois_blob),
        },
        sort_keys=True,
    ).encode()
    return bytes(_PREFIX.pack(MAGIC, WIRE_VERSION, len(header)) + header + context_blob + galois_blob)


def load_public_context(data: bytes) -> PublicContext:
    """Parse bytes from `public_context_bytes` on the worker.

    Raises:
        WireFormatError: wrong magic or version, truncated or inconsistent bytes.
        SecretKeyError: the context contains a secret key.
        ParamsError: the parameters are invalid or above the security limit.
    """
    if len(data) < _PREFIX.size:
        raise WireFormatError(f"public context too short ({len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("not a CKKS public context (bad magic); send public_context_bytes() output")
    if version != WIRE_VERSION:
        raise WireFormatError(f"public context wire version {version}, this worker reads {WIRE_VERSION}")
    start = _PREFIX.size
    try:
        header = json.loads(data[start : start + header_len])
        params = CKKSParams.from_dict(header["params"])
        n_ctx, n_gal = int(header["context_bytes"]), int(header["galois_bytes"])
        steps = [int(s) for s in header["steps"]]
        conjugate = bool(header["conjugate"])
    except ParamsError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"bad public context header: {exc}") from exc
    body = start + header_len
    if len(data) != body + n_ctx + n_gal:
        raise WireFormatError(f"public context is {len(data)} bytes, header announces {body + n_ctx + n_gal}")
    try:
        ctx = ts.context_from(data[body : body + n_ctx])
    except Exception as exc:  # TenSEAL raises bare ValueError / RuntimeError on malformed protobufs
        raise WireFormatError(f"cannot parse the TenSEAL context: {exc}") from exc
    if ctx.is_private() or ctx.has_secret_key():
        raise SecretKeyError("the worker refuses a context that contains a secret key")
    galois = sealapi.GaloisKeys()
    if n_gal:
        seal_from_bytes(galois, ctx.seal_context().data, data[body + n_ctx :])
    plan = RotationPlan.of(steps, params.slot_count, conjugate)
    return PublicContext(params, ctx, galois, plan)
