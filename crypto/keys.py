"""Keys and contexts: the key holder's secret context, the public bytes, and the worker's loader.

The secret context never leaves the key holder. `public_context_bytes` is the one function that
produces wire bytes for the worker: it copies the TenSEAL context, makes the copy public, refuses if
a secret key is still inside, and appends seeded SEAL relinearisation keys and seeded Galois keys
generated (through `tenseal.sealapi`) only for the rotation steps of the worker's `RotationPlan`;
TenSEAL's high-level API can only generate all of them, unseeded (35 MB at N = 8192).
`load_public_context` is its inverse on the worker and refuses any context that holds a secret key.

The bytes format, its strict header parser, `RotationPlan` and the Galois-key check live in `crypto.keys_wire`
(import them from there). This module trusts none of the header: `load_public_context` reads the real
parameters from the TenSEAL context (`params_of_context`: N and the primes from SEAL, the scale from the
serialised `global_scale`), refuses primes other than `CoeffModulus.Create(N, bit_sizes)` and any header that
disagrees, and has the Galois keys checked to hold exactly the planned rotations.

References: DESIGN.md section 4; STYLE.md rule 6; `crypto.keys_wire` for the wire format.
"""

from __future__ import annotations

import json
import math
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from core.errors import ParamsError, SecretKeyError, WireFormatError
from crypto.keys_wire import (
    MAGIC,
    WIRE_VERSION,
    RotationPlan,
    load_galois_keys,
    load_relin_keys,
    split_public_bytes,
)
from crypto.keys_wire import PREFIX as _PREFIX
from crypto.params import PRESETS, CKKSParams, sampler_tail
from crypto.seal_io import seal_to_bytes


class SecretContext:
    """The key holder's context: parameters, secret key, public and relinearisation keys.

    Encrypts symmetrically with the secret key (noise ~100x below public-key encryption, which is what
    lets the prefix sum over 49,152 slots stay within 1e-7).
    """

    def __init__(self, params: CKKSParams, tenseal_context: ts.Context, ring: int = 0) -> None:
        if not tenseal_context.is_private():
            raise SecretKeyError("SecretContext needs a TenSEAL context that holds the secret key")
        self.params = params
        self.ring = ring  # 0: the session's parameters; 1: the sampler tail (crypto.params.sampler_tail)
        self.tail: SecretContext | None = None  # ring 1's keys, when the preset has a sampler tail
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

    def __init__(
        self,
        params: CKKSParams,
        tenseal_context: ts.Context,
        relin_keys: Any,
        galois_keys: Any,
        plan: RotationPlan,
    ) -> None:
        if tenseal_context.is_private() or tenseal_context.has_secret_key():
            raise SecretKeyError("the worker refuses a context that contains a secret key")
        self.params = params
        self.tenseal_context = tenseal_context
        self.seal_context: Any = tenseal_context.seal_context().data
        self.relin_keys: Any = relin_keys
        self.galois_keys: Any = galois_keys
        self.plan = plan
        self.ring = 0
        self.tail: PublicTail | None = None


class PublicTail:
    """The worker's sampler tail (`crypto.params.sampler_tail`): its SEAL context and relinearisation key."""

    ring = 1

    def __init__(self, params: CKKSParams, seal_context: Any, relin_keys: Any) -> None:
        self.params = params
        self.seal_context = seal_context
        self.relin_keys = relin_keys


def create_secret_context(params: CKKSParams) -> SecretContext:
    """Generate fresh keys for `params` (secret, public, relinearisation; no Galois keys yet), and a second
    secret key for its sampler tail if the preset has one (`SecretContext.tail`)."""
    secret = _secret_context(params, 0)
    tail = sampler_tail(params)
    if tail is not None:
        secret.tail = _secret_context(tail, 1)
    return secret


def _secret_context(params: CKKSParams, ring: int) -> SecretContext:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, -1, list(params.coeff_mod_bit_sizes))
    ctx.global_scale = params.scale
    return SecretContext(params, ctx, ring)


def seal_context_for(params: CKKSParams) -> Any:
    """A keyless SEAL context for `params` (SEAL derives the primes deterministically from the sizes)."""
    n = params.poly_modulus_degree
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, list(params.coeff_mod_bit_sizes)))
    return sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)


def public_context_bytes(secret: SecretContext, plan: RotationPlan) -> bytes:
    """The one path from keys to wire bytes: public key, relin keys and Galois keys for `plan` only.

    Both kinds of key are SEAL's seeded serialisation (half the bytes; the worker expands them on load).

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
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    keys = secret.key_generator()
    relin_blob = seal_to_bytes(keys.create_relin_keys())
    elements = plan.galois_elements(secret.params.poly_modulus_degree)
    galois_blob = seal_to_bytes(keys.create_galois_keys(elements)) if elements else b""
    tail = secret.tail  # the worker gets the tail's relinearisation key only: no rotation runs there
    tail_blob = seal_to_bytes(tail.key_generator().create_relin_keys()) if tail is not None else b""
    header = json.dumps(
        {
            "params": secret.params.to_dict(),
            "steps": sorted(plan.steps),
            "conjugate": plan.conjugate,
            "context_bytes": len(context_blob),
            "relin_bytes": len(relin_blob),
            "galois_bytes": len(galois_blob),
            "tail": tail.params.to_dict() if tail is not None else None,
            "tail_relin_bytes": len(tail_blob),
        },
        sort_keys=True,
    ).encode()
    prefix = _PREFIX.pack(MAGIC, WIRE_VERSION, len(header))
    return bytes(prefix + header + context_blob + relin_blob + galois_blob + tail_blob)


def _numbers(p: CKKSParams) -> tuple[int, tuple[int, ...], int]:
    return (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits)


def _custom_name(name: str) -> str:
    """A non-preset parameter set keeps the sender's name unless it claims a preset's."""
    return "custom" if name in PRESETS else name


def _describe(p: CKKSParams) -> str:
    bits = ", ".join(str(b) for b in p.coeff_mod_bit_sizes)
    return f"{p.name!r} (N={p.poly_modulus_degree}, primes of {bits} bits, scale 2^{p.scale_bits})"


def params_of_context(ctx: ts.Context, name: str = "custom") -> CKKSParams:
    """The CKKS parameters a TenSEAL context really has, read from SEAL (never from a label).

    The ring degree and the primes come from the key level's `EncryptionParameters`, the scale from
    the context's serialised `global_scale`. The primes must be exactly the ones
    `CoeffModulus.Create(N, bit_sizes)` gives, the primes of every context `create_secret_context`
    makes, so the parameter set (and every plaintext encoded for it) is fixed by its bit sizes.

    Args:
        ctx: a TenSEAL context (public or private).
        name: the name to give a parameter set that is no preset (a preset keeps its own name).

    Returns:
        The parameter set; equal to the preset (name included) when the numbers are a preset's.

    Raises:
        WireFormatError: the context is not CKKS or has no global scale.
        ParamsError: the parameters are invalid, above the security limit, the scale is not a power
            of two, or the primes are not SEAL's standard primes for the bit sizes.
    """
    parms = ctx.seal_context().data.key_context_data().parms()
    scheme = getattr(parms.scheme(), "name", str(parms.scheme()))
    if scheme != "CKKS":
        raise WireFormatError(f"the context is a {scheme} context; the worker computes on CKKS only")
    n = int(parms.poly_modulus_degree())
    moduli = parms.coeff_modulus()
    bits = tuple(int(q.bit_count()) for q in moduli)
    primes = tuple(int(q.value()) for q in moduli)
    try:
        scale = float(ctx.global_scale)
    except ValueError as exc:  # TenSEAL: "no global scale"
        raise WireFormatError(
            "the context has no global scale; create the keys with crypto.keys.create_secret_context"
        ) from exc
    mantissa, exponent = math.frexp(scale) if math.isfinite(scale) else (0.0, 0)
    if mantissa != 0.5:
        raise ParamsError(f"the context's global scale {scale!r} is not a power of two 2^scale_bits")
    numbers = (n, bits, exponent - 1)
    preset_match = next((p for p in PRESETS.values() if _numbers(p) == numbers), None)
    params = preset_match or CKKSParams(n, bits, exponent - 1, name=_custom_name(name))
    try:
        standard = tuple(int(q.value()) for q in sealapi.CoeffModulus.Create(n, list(bits)))
    except (RuntimeError, ValueError) as exc:  # unreachable for a validated CKKSParams; kept for SEAL
        raise ParamsError(f"SEAL has no standard primes for N={n}, bit sizes {bits}: {exc}") from exc
    if primes != standard:
        raise ParamsError(
            f"the context's primes {list(primes)} are not SEAL's standard primes {list(standard)} for "
            f"N={n}, bit sizes {list(bits)}; the worker serves only contexts made by "
            "crypto.keys.create_secret_context(preset)"
        )
    return params


def load_public_context(data: bytes, expected: CKKSParams | None = None) -> PublicContext:
    """Parse bytes from `public_context_bytes` on the worker, trusting nothing the header says.

    The parameters are read from the TenSEAL context itself (`params_of_context`); the header's copy
    must agree with them in every field, and the Galois keys must be SEAL keys for the same
    parameters holding exactly one key per planned rotation.

    Args:
        data: the upload, unchanged.
        expected: the parameter set the session announced (its preset); None accepts any valid set
            with SEAL's standard primes.

    Returns:
        The public context; its `params` are the context's real parameters (a preset's, name included).

    Raises:
        WireFormatError: wrong magic or version; truncated, inconsistent or malformed bytes; a header
            that is not strict JSON of the documented types (or disagrees with the context); Galois keys
            that do not load under the context or miss a planned rotation.
        SecretKeyError: the context contains a secret key.
        ParamsError: the parameters are invalid, above the security limit, use non-standard primes,
            or are not `expected`.
    """
    header, context_blob, relin_blob, galois_blob, tail_blob = split_public_bytes(data)
    try:
        ctx = ts.context_from(context_blob)
    except Exception as exc:  # TenSEAL raises bare ValueError / RuntimeError on malformed protobufs
        raise WireFormatError(f"cannot parse the TenSEAL context: {exc}") from exc
    if ctx.is_private() or ctx.has_secret_key():
        raise SecretKeyError("the worker refuses a context that contains a secret key")
    if not ctx.has_public_key() or ctx.has_relin_keys():
        raise WireFormatError(
            "the context must hold the public key and no relinearisation keys (they come seeded in their "
            "own part); upload public_context_bytes() output unchanged"
        )
    params = params_of_context(ctx, header.params.name)
    if header.params != params:
        raise WireFormatError(
            f"the header says {_describe(header.params)}, the context is {_describe(params)}; "
            "upload public_context_bytes() output unchanged"
        )
    if expected is not None and params != expected:
        raise ParamsError(
            f"the session announced preset {_describe(expected)}, the keys are for {_describe(params)}; "
            f"create the keys with create_secret_context(preset({expected.name!r})) or announce their preset"
        )
    plan = header.plan(params.slot_count)
    relin = load_relin_keys(ctx.seal_context().data, relin_blob)
    galois = load_galois_keys(ctx, galois_blob, plan, params)
    public = PublicContext(params, ctx, relin, galois, plan)
    tail = sampler_tail(params)
    if header.tail != tail:
        raise WireFormatError(
            f"the keys bring a sampler tail of {_describe(header.tail) if header.tail else 'none'}, preset "
            f"{params.name!r} has {_describe(tail) if tail else 'none'}; upload public_context_bytes() "
            "output unchanged"
        )
    if tail is not None:
        seal = seal_context_for(tail)
        public.tail = PublicTail(tail, seal, load_relin_keys(seal, tail_blob))
    elif tail_blob:
        raise WireFormatError("tail relinearisation keys without a sampler tail; upload the keys unchanged")
    return public
