"""Prefix sums (cumulative sums) across slots and ciphertexts, and the sampler's shift by one.

Cyclic rotations cannot compute a prefix sum without something slot-dependent (a rotation-invariant
circuit commutes with rotation; a prefix sum does not), and masking at every Hillis-Steele step would
cost 12 levels. This module uses two masks in total (depth 2) and the complex slots:

1. Pack (level l -> l-1): `z = x * M_lo + rot(x * (i M_hi), S/2)`: the first half of the ciphertext's
   values in the real parts and the second half in the imaginary parts of slots 0 .. S/2-1; the upper
   half of the slots is zero.
2. Hillis-Steele on `z` with right shifts 1, 2, ..., S/4 (log2(S/2) rotations, no masks): because the
   upper half is zero nothing wraps, and slot j < S/2 holds the complex prefix `C_j`; slot S/2 + j holds
   `Tz - C_j` (Tz = the complex total). One conjugation and two rotations by S/2 then give
   `2 Re C`, `2i Im C`, and both totals broadcast to every slot.
3. Unpack (level l-1 -> l-2): one masked sum puts `Re C` in the lower half, `T_lo + Im C` in the upper
   half, and adds the carry `sum_{m<k} T_m` of the earlier ciphertexts (computed from the broadcast
   totals with additions only). The result is clean (zero padding) and real.

15 rotations per ciphertext at N = 8192, 6 plaintext products, all noise far below the 1e-7 budget of
DESIGN.md section 2 at scale 2^49 (bench/bench_crypto.py measures it).

`shift_right` (out[0] = 0, out[j] = a[j-1], across ciphertext boundaries) is one rotation and two masked
products per ciphertext: depth 1.

References: Hillis & Steele, "Data parallel algorithms" (1986); DESIGN.md section 2, steps 4 and 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from core.errors import LayoutError
from crypto.engine import Ciphertext, Engine, Plaintext
from crypto.keys_wire import RotationPlan
from crypto.vector import EncVector

PREFIX_DEPTH = 2
SHIFT_DEPTH = 1
MAX_BOOST_BITS = 7  # scale boost of the packed vector during the rotations (see prefix_sum)
HEADROOM_BITS = 20  # bits kept free above the boosted scale for the values themselves


def prefix_rotation_plan(slot_count: int) -> RotationPlan:
    """Galois keys `prefix_sum` needs: right shifts by powers of two below S/2, S/2, conjugation."""
    half = slot_count // 2
    steps = [-(1 << j) for j in range(half.bit_length() - 1)] + [half]
    return RotationPlan.of(steps, slot_count, conjugate=True)


def shift_rotation_plan(slot_count: int, chunk: int) -> RotationPlan:
    """Galois keys `shift_right` needs for vectors with `chunk` values per ciphertext."""
    return RotationPlan.of([-1, chunk], slot_count)


@lru_cache(maxsize=64)
def _masks(slots: int, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    half = slots // 2
    lo = np.zeros(slots)
    lo[: min(n, half)] = 1.0
    hi = np.zeros(slots)
    if n > half:
        hi[half:n] = 1.0
    return lo, hi


class _MaskCache:
    """Plaintext masks per (count, level, kind), encoded once per call."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self._pts: dict[tuple[int, int, str], Plaintext] = {}

    def get(self, n: int, level: int, kind: str, scale: float | None = None) -> Plaintext:
        key = (n, level, kind)
        if key not in self._pts:
            lo, hi = _masks(self.eng.slots, n)
            values: npt.NDArray[np.complex128] = {
                "lo": lo.astype(complex),
                "hi_i": 1j * hi,
                "half_lo": 0.5 * lo.astype(complex),
                "half_hi": 0.5 * hi.astype(complex),
                "mi_half_hi": -0.5j * hi,
                "mi_half_lo": -0.5j * lo,
            }[kind]
            self._pts[key] = self.eng.encode(values, level, scale)
        return self._pts[key]


@dataclass
class PrefixScan:
    """The first half of a prefix sum (pack and Hillis-Steele, the rotations): per ciphertext what the
    unpack needs, and the vector's own total for vectors that continue it (`total`)."""

    x: EncVector
    z_scale: float  # scale of the packed vector (boosted above canonical)
    unpack_scale: float  # scale of the unpack masks (lands the product on canonical scale[l-2])
    steps: list[tuple[Ciphertext, Ciphertext, Ciphertext, Ciphertext]]  # re2, im2i_swapped, tot_re, tot_im
    total: tuple[Ciphertext, Ciphertext]  # (sum of 2 Re Tz, sum of 2i Im Tz), broadcast to every slot


def prefix_scan(eng: Engine, x: EncVector) -> PrefixScan:
    """Steps 1 and 2 of `prefix_sum` (level l -> l-1): every rotation of the prefix sum.

    Raises:
        LevelsExhausted: fewer than 2 levels left (checked before computing).
        MissingRotationKey: the public context lacks `prefix_rotation_plan` keys.
    """
    eng.require("prefix_sum", x.level, PREFIX_DEPTH)
    half = eng.slots // 2
    lvl = x.level
    masks = _MaskCache(eng)
    # Rotation (key-switching) noise is absolute, and the Hillis-Steele sums add it up over thousands of
    # slots; so the packed vector runs at a boosted scale (2^7 above canonical) and the unpack masks at a
    # correspondingly lower one: product scale scale[l-2] * q_{l-1}, exactly canonical after the rescale.
    boost = max(
        0, min(MAX_BOOST_BITS, int(eng.modulus_bits(lvl - 1) - np.log2(eng.scale(lvl - 1)) - HEADROOM_BITS))
    )
    z_scale = eng.scale(lvl - 1) * 2.0**boost
    pack_scale = z_scale * float(eng.prime(lvl)) / eng.scale(lvl)
    steps = []
    total_re: Ciphertext | None = None
    total_im: Ciphertext | None = None
    for k, ct in enumerate(x.cts):
        n = x.count(k)
        # 1. pack: lower-half values -> real parts, upper-half values -> imaginary parts   level l -> l-1
        z = eng.mul_plain(ct, masks.get(n, lvl, "lo", pack_scale))
        if n > half:
            eng.add_inplace(z, eng.rotate(eng.mul_plain(ct, masks.get(n, lvl, "hi_i", pack_scale)), half))
        z = eng.rescale(z, z_scale)
        # 2. Hillis-Steele, right shifts 1 .. S/4: slot j < S/2 -> C_j, slot S/2+j -> Tz - C_j
        shift = 1
        while shift < half:
            eng.add_inplace(z, eng.rotate(z, -shift))
            shift *= 2
        conj = eng.conjugate(z)
        re2 = eng.add(z, conj)  # 2 Re C (lower), 2 Re(Tz - C) (upper)
        im2i = eng.sub(z, conj)  # 2i Im C (lower), 2i Im(Tz - C) (upper)
        im2i_swapped = eng.rotate(im2i, half)  # upper half now holds 2i Im C
        tot_re = eng.add(re2, eng.rotate(re2, half))  # 2 Re Tz everywhere
        tot_im = eng.add(im2i, im2i_swapped)  # 2i Im Tz everywhere
        steps.append((re2, im2i_swapped, tot_re, tot_im))
        total_re = tot_re if total_re is None else eng.add(total_re, tot_re)
        total_im = tot_im if total_im is None else eng.add(total_im, tot_im)
    assert total_re is not None and total_im is not None  # an EncVector has at least one ciphertext
    unpack_scale = eng.scale(lvl - 2) * float(eng.prime(lvl - 1)) / z_scale
    return PrefixScan(x, z_scale, unpack_scale, steps, (total_re, total_im))


def prefix_finish(
    eng: Engine, scan: PrefixScan, carry: tuple[Ciphertext, Ciphertext] | None = None
) -> EncVector:
    """Step 3 of `prefix_sum` (level l-1 -> l-2): unpack, adding the carry of everything before.

    Args:
        scan: from `prefix_scan`.
        carry: the `total` of the vectors that come before this one (summed), when one long vector is
            split over several workers; None for the start of the vector.
    """
    x = scan.x
    half = eng.slots // 2
    lvl = x.level
    masks = _MaskCache(eng)
    unpack_scale = scan.unpack_scale
    outs: list[Ciphertext] = []
    carry_re, carry_im = carry if carry is not None else (None, None)  # 2 Re / 2i Im of what came before
    for k, (re2, im2i_swapped, tot_re, tot_im) in enumerate(scan.steps):
        n = x.count(k)
        lo_re = re2 if carry_re is None else eng.add(re2, carry_re)
        out = eng.mul_plain(lo_re, masks.get(n, lvl - 1, "half_lo", unpack_scale))
        if carry_im is not None:
            eng.add_inplace(out, eng.mul_plain(carry_im, masks.get(n, lvl - 1, "mi_half_lo", unpack_scale)))
        if n > half:
            hi_re = tot_re if carry_re is None else eng.add(tot_re, carry_re)
            eng.add_inplace(out, eng.mul_plain(hi_re, masks.get(n, lvl - 1, "half_hi", unpack_scale)))
            hi_im = im2i_swapped if carry_im is None else eng.add(im2i_swapped, carry_im)
            eng.add_inplace(out, eng.mul_plain(hi_im, masks.get(n, lvl - 1, "mi_half_hi", unpack_scale)))
        outs.append(eng.rescale(out))
        if k + 1 < len(scan.steps):
            carry_re = tot_re if carry_re is None else eng.add(carry_re, tot_re)
            carry_im = tot_im if carry_im is None else eng.add(carry_im, tot_im)
    return x.with_cts(outs, lvl - PREFIX_DEPTH, clean=True)


def prefix_sum(eng: Engine, x: EncVector, carry: tuple[Ciphertext, Ciphertext] | None = None) -> EncVector:
    """Inclusive cumulative sum over all `x.length` values, no wrap-around. Depth 2; output clean.

    Args:
        carry: see `prefix_finish` (the totals of the part of the vector held elsewhere).

    Raises:
        LevelsExhausted: fewer than 2 levels left (checked before computing).
        MissingRotationKey: the public context lacks `prefix_rotation_plan` keys.
    """
    return prefix_finish(eng, prefix_scan(eng, x), carry)


def shift_right(eng: Engine, x: EncVector, before: Ciphertext | None = None) -> EncVector:
    """out[0] = 0, out[j] = x[j-1] across ciphertext boundaries (`s_{-1} = 0`). Depth 1; output clean.

    Args:
        before: when `x` continues a vector held elsewhere, `shift_carry` of the part before it (its
            last value goes to out[0]); None for the start of the vector.

    Raises:
        LevelsExhausted: no level left (checked before computing).
        MissingRotationKey: the public context lacks `shift_rotation_plan` keys.
    """
    eng.require("shift_right", x.level, SHIFT_DEPTH)
    lvl = x.level
    first = np.zeros(eng.slots)
    first[0] = 1.0
    first_pt = eng.encode(first, lvl)
    body_pts: dict[int, Plaintext] = {}
    outs: list[Ciphertext] = []
    prev: Ciphertext | None = before
    for k, ct in enumerate(x.cts):
        n = x.count(k)
        if n not in body_pts:
            body = np.zeros(eng.slots)
            body[1:n] = 1.0
            body_pts[n] = eng.encode(body, lvl)
        moved = eng.rotate(ct, -1)  # slot j <- x[j-1]; slot `chunk` <- last value of this ciphertext
        out = eng.mul_plain(moved, body_pts[n])
        if prev is not None:  # the previous ciphertext's last value into slot 0
            eng.add_inplace(out, eng.mul_plain(eng.rotate(prev, x.chunk), first_pt))
        outs.append(eng.rescale(out))
        prev = moved
    return x.with_cts(outs, lvl - SHIFT_DEPTH, clean=True)


def shift_carry(eng: Engine, x: EncVector) -> Ciphertext:
    """What `shift_right` of the vector part after `x` needs as `before`: the last ciphertext moved by one.

    Raises:
        LayoutError: the last ciphertext of `x` is not full, so nothing can follow it.
    """
    if x.count(len(x.cts) - 1) != x.chunk:
        raise LayoutError("a vector part whose last ciphertext is not full cannot be continued")
    return eng.rotate(x.cts[-1], -1)
