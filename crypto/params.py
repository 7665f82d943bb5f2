"""CKKS parameter sets: ring degree, modulus chain, scale, depth and the 128-bit security check.

A parameter set is a frozen dataclass that round-trips through `asdict` / `CKKSParams(**d)`. The
modulus chain is written as SEAL writes it: data primes first (`q_0` at the bottom of the chain,
then one prime per rescale), the special key-switching prime last. The usable multiplicative depth
is the number of rescale primes, `len(coeff_mod_bit_sizes) - 2`.

Presets (DESIGN.md sections 2, 4 and 7):

| preset          | N      | chain                         | scale | depth | slots |
|-----------------|--------|-------------------------------|-------|-------|-------|
| `CKKS_TEST`     | 4,096  | 30, 24, 24, 30 (108 bits)     | 2^24  | 2     | 2,048 |
| `CKKS_40`       | 8,192  | 60, 40, 40, 60 (200 bits)     | 2^40  | 2     | 4,096 |
| `CKKS_DEFAULT`  | 8,192  | 60, 49, 49, 60 (218 bits)     | 2^49  | 2     | 4,096 |
| `CKKS_DEEP`     | 16,384 | 60, 6 x 50, 60 (420 bits)     | 2^50  | 6     | 8,192 |

A preset may have a *sampler tail* (`sampler_tail`): a second parameter set, same N, with a coarser scale and
more levels per fresh ciphertext, for the sampler's cubics once the step's error contracts (DESIGN.md
section 2). `default-tail` is 40, 4 x 34, 42 bits at 2^34: four levels (two cubics) per refresh instead of
two, at ~3e-7 error per cubic, which the cubics before it have already amplified the step past. The key
holder keeps a second secret key for it; the worker gets its relinearisation key only (no rotations run
in the tail).

`CKKS_TEST` is for fast wiring tests only: at scale 2^24 one rotation already costs up to ~4e-2 of
absolute error, so it cannot check precision. `CKKS_DEFAULT` spends the whole 218-bit budget of
N = 8192 on precision: the prefix sum over the 49,152-slot vocabulary adds up the noise of every slot;
at 2^40 (`CKKS_40`, TenSEAL's usual choice) the error of `c - r` is ~5e-7, above the 1e-7 budget of
DESIGN.md section 2, at 2^49 it is ~1e-9 (bench/bench_crypto.py measures both).

References: SEAL `CoeffModulus::MaxBitCount` (HomomorphicEncryption.org security standard).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import tenseal.sealapi as sealapi

from core.config import known_fields
from core.errors import ParamsError

_MIN_PRIME_BITS = 17  # SEAL cannot find NTT-friendly primes much below this for N >= 4096
_MAX_PRIME_BITS = 60  # SEAL's per-prime limit


def max_modulus_bits(poly_modulus_degree: int) -> int:
    """Largest total modulus size (bits) SEAL accepts at 128-bit classical security for this N."""
    return int(sealapi.CoeffModulus.MaxBitCount(poly_modulus_degree, sealapi.SEC_LEVEL_TYPE.TC128))


@dataclass(frozen=True)
class CKKSParams:
    """One CKKS parameter set. Validated on construction; refuses chains above the 128-bit limit."""

    poly_modulus_degree: int
    # why: ring degree N; slots = N/2. Larger N means more slots and a longer allowed chain, but every
    # operation costs ~2.2x more per doubling and ciphertexts grow ~3x.
    coeff_mod_bit_sizes: tuple[int, ...]
    # why: the modulus chain. q_0 (first) must hold scale + the integer bits of the largest value at the
    # last level; each middle prime is divided out by one rescale (one multiplicative level); the last is
    # the special key-switching prime and should be at least as large as every data prime.
    scale_bits: int
    # why: log2 of the top-level scale. Relative precision is ~noise / 2^scale_bits, so the prefix sum
    # over V slots needs a large scale; the middle primes should be close to 2^scale_bits so that the
    # scale stays near 2^scale_bits after each rescale.
    name: str = "custom"
    # why: reported in benchmarks and sent with the public context so both sides agree on the preset.

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n < 1024 or n & (n - 1):
            raise ParamsError(f"poly_modulus_degree must be a power of two >= 1024, got {n}")
        chain = self.coeff_mod_bit_sizes
        if not isinstance(chain, tuple):
            raise ParamsError("coeff_mod_bit_sizes must be a tuple (frozen), e.g. (60, 49, 49, 60)")
        if len(chain) < 3:
            raise ParamsError(
                f"coeff_mod_bit_sizes needs at least 3 primes (base, one rescale prime, special), got {chain}"
            )
        for bits in chain:
            if not _MIN_PRIME_BITS <= bits <= _MAX_PRIME_BITS:
                raise ParamsError(
                    f"every prime must have {_MIN_PRIME_BITS}..{_MAX_PRIME_BITS} bits, got {bits}"
                )
        limit = max_modulus_bits(n)
        if self.total_bits > limit:
            raise ParamsError(
                f"modulus chain {chain} has {self.total_bits} bits, above the 128-bit security limit of "
                f"{limit} bits for N={n}; drop a prime, shrink the primes, or double N"
            )
        if not 10 <= self.scale_bits < chain[0]:
            raise ParamsError(
                f"scale_bits={self.scale_bits} must be >= 10 and below the base prime's {chain[0]} bits, "
                "or decrypted values overflow at the last level"
            )
        if chain[-1] < max(chain[:-1]):
            raise ParamsError(
                f"the special prime ({chain[-1]} bits) must be at least as large as every data prime "
                f"({max(chain[:-1])} bits), or key switching adds large noise"
            )

    @property
    def slot_count(self) -> int:
        """Real values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Usable multiplicative depth: rescales from a fresh ciphertext to the last level."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        """Total modulus size in bits, special prime included (the figure the security limit bounds)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bits(self) -> int:
        """Classical security level the chain satisfies (always 128: larger chains are refused)."""
        return 128

    @property
    def scale(self) -> float:
        """Top-level scale 2^scale_bits."""
        return float(2**self.scale_bits)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready; tuples become lists)."""
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSParams:
        """Inverse of `to_dict` (validates); an unknown key is a `ParamsError` naming it."""
        d = known_fields(cls, d, ParamsError, "CKKS parameter(s)")
        try:
            return cls(
                poly_modulus_degree=int(d["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
                scale_bits=int(d["scale_bits"]),
                name=str(d.get("name", "custom")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ParamsError):
                raise
            raise ParamsError(f"invalid CKKS parameter dict {d!r}: {exc}") from exc


CKKS_TEST = CKKSParams(4096, (30, 24, 24, 30), 24, name="test")
CKKS_40 = CKKSParams(8192, (60, 40, 40, 60), 40, name="n8192-s40")
CKKS_DEFAULT = CKKSParams(8192, (60, 49, 49, 60), 49, name="default")
CKKS_DEEP = CKKSParams(16384, (60, 50, 50, 50, 50, 50, 50, 60), 50, name="deep")

PRESETS: dict[str, CKKSParams] = {p.name: p for p in (CKKS_TEST, CKKS_40, CKKS_DEFAULT, CKKS_DEEP)}
CKKS_DEFAULT_TAIL = CKKSParams(8192, (40, 34, 34, 34, 34, 42), 34, name="default-tail")
_TAILS: dict[str, CKKSParams] = {CKKS_DEFAULT.name: CKKS_DEFAULT_TAIL}


def sampler_tail(params: CKKSParams) -> CKKSParams | None:
    """The sampler tail of a preset (None: the sampler runs in `params` throughout)."""
    tail = _TAILS.get(params.name)
    return tail if tail is not None and PRESETS.get(params.name) == params else None


def preset(name: str) -> CKKSParams:
    """Look a preset up by name; raises ParamsError naming the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ParamsError(f"unknown CKKS preset {name!r}; choose one of {sorted(PRESETS)}") from None
