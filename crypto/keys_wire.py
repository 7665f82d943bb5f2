"""Wire format of the public context upload: prefix, strict JSON header, rotation plan, Galois keys.

`crypto.keys.public_context_bytes` writes these bytes and `crypto.keys.load_public_context` reads
them; this module holds what both sides share about the format and the parts of reading it that need
no TenSEAL context: the prefix, the strict header parser, the `RotationPlan` the header carries (with
SEAL's Galois-element convention) and the check that a Galois-key blob holds exactly the plan's keys.

Wire format (version 3), all integers big-endian:

    b"HECKKS" | u16 version | u32 header length | JSON header | TenSEAL public context (public key
    only) | SEAL RelinKeys | SEAL GaloisKeys | SEAL RelinKeys of the sampler tail (may be empty)

The JSON header holds the parameter dict, the normalised rotation steps, the conjugation flag, the
sampler tail's parameter dict (`crypto.params.sampler_tail`; null when the preset has none) and the
byte lengths of the four blobs. The two key blobs are SEAL's *seeded* serialisation: each key's
uniformly random half is replaced by the seed that regenerates it on load, which halves the upload
(18 MB instead of 36 MB at the default preset) and costs the worker nothing after loading.

The worker trusts none of it: `WireHeader.parse` parses it strictly (exact keys, JSON booleans,
bounded integers); `crypto.keys.load_public_context` then compares its claims with the parameters
read from the TenSEAL context itself (`crypto.keys.params_of_context`), and `load_relin_keys` and
`load_galois_keys` check that the keys load under the context and that the Galois keys hold exactly
the planned rotations.

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

from core.errors import WireFormatError
from crypto.params import CKKSParams
from crypto.seal_io import seal_from_bytes

MAGIC = b"HECKKS"
WIRE_VERSION = 3
PREFIX = struct.Struct(">6sHI")  # magic, version, header length


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


_HEADER_FIELDS = (
    "conjugate",
    "context_bytes",
    "galois_bytes",
    "params",
    "relin_bytes",
    "steps",
    "tail",
    "tail_relin_bytes",
)
_PARAM_FIELDS = ("coeff_mod_bit_sizes", "name", "poly_modulus_degree", "scale_bits")
_MAX_INT_DIGITS = 19  # every honest header integer fits in a signed 64-bit int
_MAX_STEP = 1 << 20  # above every slot count (N <= 2^17 in SEAL); the real bound is checked later


def _bad_header(problem: str) -> WireFormatError:
    return WireFormatError(
        f"bad public context header: {problem}; upload public_context_bytes() output unchanged"
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_int(text: str) -> int:
    """`json.loads` hook: refuse integers longer than any honest header holds (Python's digit limit)."""
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _bad_header(f"an integer of {len(text)} digits")
    return int(text)


def _json_constant(name: str) -> None:
    raise _bad_header(f"{name} is not JSON")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads` hook: refuse repeated keys (the last would silently win)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _bad_header(f"a repeated key among {sorted(k for k, _ in pairs)[:8]}")
    return out


def _field_int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refused too
        raise _bad_header(f"{what} must be an integer in [{low}, {high}], got {_short(value)}")
    return value


def _fields(obj: object, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _bad_header(f"{what} must be a JSON object, got {type(obj).__name__}")
    if tuple(sorted(obj)) != names:
        raise _bad_header(f"{what} must have exactly the keys {list(names)}, got {sorted(obj)[:8]}")
    return obj


@dataclass(frozen=True)
class WireHeader:
    """The JSON header, type-checked (its claims are compared with the context afterwards)."""

    params: CKKSParams
    steps: tuple[int, ...]
    conjugate: bool
    context_bytes: int
    relin_bytes: int
    galois_bytes: int
    tail: CKKSParams | None = None
    tail_relin_bytes: int = 0

    @classmethod
    def parse(cls, raw: bytes, limit: int) -> WireHeader:
        """Strict parse: exact keys, JSON booleans and in-range integers only (no floats, no strings).

        Raises:
            WireFormatError: not UTF-8 JSON, nested too deeply, or a field of the wrong type or range.
            ParamsError: the announced parameters are invalid or above the security limit.
        """
        try:
            obj = json.loads(
                raw, parse_int=_json_int, parse_constant=_json_constant, object_pairs_hook=_json_object
            )
        except RecursionError:
            raise _bad_header("JSON nested too deeply") from None
        except WireFormatError:
            raise
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise _bad_header(f"not JSON ({exc})") from None
        h = _fields(obj, _HEADER_FIELDS, "the header")
        if type(h["conjugate"]) is not bool:
            raise _bad_header(f"conjugate must be true or false, got {_short(h['conjugate'])}")
        steps = h["steps"]
        if not isinstance(steps, list):
            raise _bad_header(f"steps must be a list of integers, got {_short(steps)}")
        parsed = tuple(_field_int(s, "every rotation step", 1, _MAX_STEP) for s in steps)
        if len(set(parsed)) != len(parsed):
            raise _bad_header("steps repeat a rotation step")
        return cls(
            _parse_params(h["params"], "params"),
            parsed,
            h["conjugate"],
            _field_int(h["context_bytes"], "context_bytes", 0, limit),
            _field_int(h["relin_bytes"], "relin_bytes", 0, limit),
            _field_int(h["galois_bytes"], "galois_bytes", 0, limit),
            None if h["tail"] is None else _parse_params(h["tail"], "tail"),
            _field_int(h["tail_relin_bytes"], "tail_relin_bytes", 0, limit),
        )

    def plan(self, slot_count: int) -> RotationPlan:
        """The rotation plan, once `slot_count` is known from the context itself.

        Raises:
            WireFormatError: a step outside [1, slot_count) (the sender writes normalised steps).
        """
        bad = [s for s in self.steps if s >= slot_count]
        if bad:
            raise _bad_header(f"rotation steps {bad[:5]} are not below the slot count {slot_count}")
        return RotationPlan(frozenset(self.steps), self.conjugate)


def _parse_params(obj: object, what: str) -> CKKSParams:
    p = _fields(obj, _PARAM_FIELDS, what)
    chain = p["coeff_mod_bit_sizes"]
    if not isinstance(chain, list) or not 1 <= len(chain) <= 64:
        raise _bad_header(f"coeff_mod_bit_sizes must be a list of 1..64 integers, got {_short(chain)}")
    if not isinstance(p["name"], str) or len(p["name"]) > 64:
        raise _bad_header(f"name must be a string of at most 64 characters, got {_short(p['name'])}")
    return CKKSParams(
        poly_modulus_degree=_field_int(p["poly_modulus_degree"], "poly_modulus_degree", 1, 1 << 20),
        coeff_mod_bit_sizes=tuple(_field_int(b, "every prime's bit size", 1, 64) for b in chain),
        scale_bits=_field_int(p["scale_bits"], "scale_bits", 1, 64),
        name=p["name"],
    )


def split_public_bytes(data: bytes) -> tuple[WireHeader, bytes, bytes, bytes, bytes]:
    """Check the prefix and the lengths, strictly parse the header, and cut out the three blobs.

    Args:
        data: the upload, unchanged.

    Returns:
        (the parsed header, the TenSEAL context blob, the SEAL RelinKeys blob, the SEAL GaloisKeys blob
        and the tail's SEAL RelinKeys blob; the last two empty if none).

    Raises:
        WireFormatError: wrong magic or version; truncated or inconsistent lengths; a header that is
            not strict JSON of the documented types.
        ParamsError: the header's parameters are invalid or above the security limit.
    """
    if len(data) < PREFIX.size:
        raise WireFormatError(f"public context too short ({len(data)} bytes)")
    magic, version, header_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("not a CKKS public context (bad magic); send public_context_bytes() output")
    if version != WIRE_VERSION:
        raise WireFormatError(f"public context wire version {version}, this worker reads {WIRE_VERSION}")
    body = PREFIX.size + header_len
    if body > len(data):
        raise WireFormatError(f"public context header announces {header_len} bytes, only {len(data)} sent")
    header = WireHeader.parse(data[PREFIX.size : body], len(data))
    relin_at = body + header.context_bytes
    galois_at = relin_at + header.relin_bytes
    tail_at = galois_at + header.galois_bytes
    if len(data) != tail_at + header.tail_relin_bytes:
        raise WireFormatError(
            f"public context is {len(data)} bytes, header announces {tail_at + header.tail_relin_bytes}"
        )
    return header, data[body:relin_at], data[relin_at:galois_at], data[galois_at:tail_at], data[tail_at:]


def load_relin_keys(seal: Any, blob: bytes) -> Any:
    """SEAL RelinKeys from `blob` (seeded or not), checked to be one key for the SEAL context's key level.

    Raises:
        WireFormatError: the keys do not load, belong to other parameters, or are not one key.
    """
    if not blob:
        raise WireFormatError(
            "no relinearisation keys were sent; upload public_context_bytes() output unchanged"
        )
    relin = sealapi.RelinKeys()
    seal_from_bytes(relin, seal, blob)
    if list(relin.parms_id()) != list(seal.key_parms_id()) or int(relin.size()) != 1:
        raise WireFormatError(
            f"the relinearisation keys ({int(relin.size())} key(s)) are not one key for the context's "
            "parameters; upload public_context_bytes() output unchanged"
        )
    return relin


def load_galois_keys(ctx: ts.Context, blob: bytes, plan: RotationPlan, params: CKKSParams) -> Any:
    """SEAL GaloisKeys from `blob`, checked to be for `ctx`'s key level and to hold exactly the plan's keys.

    SEAL's own load already refuses keys made for another parameter set ("ciphertext data is
    invalid"); the parms_id comparison states it.

    Raises:
        WireFormatError: the keys do not load, belong to other parameters, or miss or add a rotation.
    """
    galois = sealapi.GaloisKeys()
    elements = plan.galois_elements(params.poly_modulus_degree)
    if not blob:
        if elements:
            raise WireFormatError(
                f"the header plans {len(elements)} rotation key(s) but no Galois keys were sent; "
                "upload public_context_bytes() output unchanged"
            )
        return galois
    seal = ctx.seal_context().data
    seal_from_bytes(galois, seal, blob)
    if list(galois.parms_id()) != list(seal.key_parms_id()):
        raise WireFormatError(
            "the Galois keys belong to other parameters than the context; upload "
            "public_context_bytes() output unchanged"
        )
    missing = [e for e in elements if not galois.has_key(e)]
    if missing or int(galois.size()) != len(elements):
        raise WireFormatError(
            f"the Galois keys hold {int(galois.size())} key(s), the header plans {len(elements)}"
            f"{f' (no key for Galois element(s) {missing[:5]})' if missing else ''}; "
            "upload public_context_bytes() output unchanged"
        )
    return galois
