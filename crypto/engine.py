"""Level- and scale-managed CKKS arithmetic on single SEAL ciphertexts, with operation counters.

Every ciphertext at level `l` (the number of rescales it has left, SEAL's chain index) carries the
*canonical* scale of that level:

    scale[top] = 2^scale_bits,     scale[l-1] = scale[l]^2 / q_l

where `q_l` is the prime a rescale divides out at level `l`. A ciphertext x ciphertext product of two
level-`l` values, or a ciphertext x plaintext product with the plaintext encoded at `scale[l]`, lands
exactly on `scale[l-1]` after one rescale, so additions never meet mismatched scales. Dropping a value
to a lower level (`drop`) multiplies by the constant 1 encoded at the scale that lands on the canonical
one, instead of TenSEAL's trick of overwriting the scale (which costs ~1e-6 relative error at N=8192).

Rotations need a Galois key for the normalised step (see `crypto.keys_wire.RotationPlan`); a missing one
raises `MissingRotationKey` before SEAL is called.

References: SEAL examples 4_ckks_basics (rescale, scale alignment); DESIGN.md section 7 (costs).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sealapi

from core.errors import LayoutError, LevelsExhausted, MissingRotationKey, ParamsError
from crypto.keys import PublicContext, PublicTail, SecretContext, seal_context_for
from crypto.keys_wire import RotationPlan, galois_element, normalise_step
from crypto.params import CKKSParams

Ciphertext = Any  # tenseal.sealapi.Ciphertext (untyped extension type)
Plaintext = Any  # tenseal.sealapi.Plaintext


class Engine:
    """SEAL evaluator, encoder and keys for one parameter set, with canonical scales per level.

    Counters (`self.counts`): rotate, conjugate, encode, mul_plain, mul, rescale, drop.
    """

    def __init__(
        self,
        params: CKKSParams,
        seal_context: Any,
        relin_keys: Any = None,
        galois_keys: Any = None,
        plan: RotationPlan | None = None,
        public_key: Any = None,
        ring: int = 0,
    ) -> None:
        key_parms = seal_context.key_context_data().parms()
        real = (
            int(key_parms.poly_modulus_degree()),
            tuple(int(q.bit_count()) for q in key_parms.coeff_modulus()),
        )
        if real != (params.poly_modulus_degree, params.coeff_mod_bit_sizes):
            raise ParamsError(
                f"the engine was given N={params.poly_modulus_degree}, primes of "
                f"{params.coeff_mod_bit_sizes} bits, but its SEAL context has N={real[0]}, primes of "
                f"{real[1]} bits; take the parameters from the context (crypto.keys.params_of_context)"
            )
        self.params = params
        self.ring = ring  # which of the session's parameter sets (crypto.keys.SecretContext.ring)
        self._zero_encryptor = sealapi.Encryptor(seal_context, public_key) if public_key is not None else None
        self.seal_context = seal_context
        self.encoder = sealapi.CKKSEncoder(seal_context)
        self.evaluator = sealapi.Evaluator(seal_context)
        self.relin_keys = relin_keys
        self.galois_keys = galois_keys
        self.plan = plan if plan is not None else RotationPlan()
        self.slots = params.slot_count
        self.counts: Counter[str] = Counter()
        self._monomials: dict[int, Plaintext] = {}  # level -> X^(N/2) at scale 1
        # level -> parms_id and the prime dropped by a rescale at that level
        self._parms: list[list[int]] = []
        self._primes: list[int] = []
        data = seal_context.first_context_data()
        chain: list[tuple[list[int], int]] = []
        while data is not None:
            chain.append((data.parms_id(), int(data.parms().coeff_modulus()[-1].value())))
            data = data.next_context_data()
        chain.reverse()  # index = level (chain index): 0 is the last level
        self._parms = [pid for pid, _ in chain]
        self._primes = [q for _, q in chain]
        self.top_level = len(chain) - 1
        self._scales = [0.0] * len(chain)
        self._scales[self.top_level] = params.scale
        for lvl in range(self.top_level, 0, -1):
            s = self._scales[lvl]
            self._scales[lvl - 1] = (s * s) / float(self._primes[lvl])
        self._ids = [
            (tuple(int(w) for w in pid), scale) for pid, scale in zip(self._parms, self._scales, strict=True)
        ]

    @classmethod
    def for_worker(cls, public: PublicContext) -> Engine:
        """Engine over a loaded public context (relinearisation and planned Galois keys)."""
        return cls(
            public.params,
            public.seal_context,
            public.relin_keys,
            public.galois_keys,
            public.plan,
            public.tenseal_context.public_key().data,
        )

    @classmethod
    def for_tail(cls, tail: PublicTail) -> Engine:
        """Engine over the sampler tail: relinearisation only (no rotation runs in the tail)."""
        return cls(tail.params, tail.seal_context, tail.relin_keys, ring=tail.ring)

    @classmethod
    def for_params(cls, params: CKKSParams) -> Engine:
        """A keyless engine: encodes plaintexts for `params` (a worker warming its weight caches before
        any key arrives). SEAL derives the primes deterministically from the bit sizes, so its parms_id
        (`plaintext_id`) equals that of every session context `crypto.keys.load_public_context` accepts
        for the same parameters (it refuses other primes), and the cached plaintexts are shared."""
        return cls(params, seal_context_for(params))

    @classmethod
    def for_key_holder(cls, secret: SecretContext) -> Engine:
        """Engine for encoding / level bookkeeping on the key holder (no Galois keys)."""
        ctx = secret.tenseal_context
        return cls(
            secret.params,
            secret.seal_context,
            ctx.relin_keys().data,
            public_key=ctx.public_key().data,
            ring=secret.ring,
        )

    # --- levels and scales -------------------------------------------------------------------

    def parms_id(self, level: int) -> list[int]:
        """SEAL's parms_id of `level`: a hash of N and the exact primes left at that level."""
        return self._parms[level]

    def plaintext_id(self, level: int) -> tuple[tuple[int, ...], float]:
        """What a plaintext encoded at `level` depends on: the level's parms_id and canonical scale.

        Shared plaintext caches key on this, never on `self.params` (a label): a plaintext is valid
        only under the exact primes it was encoded for, and correct only at the scale it carries.
        """
        return self._ids[level]  # built once: every cached plaintext lookup asks for it

    def scale(self, level: int) -> float:
        """Canonical scale of `level`."""
        return self._scales[level]

    def prime(self, level: int) -> int:
        """The prime a rescale at `level` divides out."""
        return self._primes[level]

    def level(self, ct: Ciphertext) -> int:
        """Multiplicative levels `ct` has left (SEAL chain index)."""
        return int(self.seal_context.get_context_data(ct.parms_id()).chain_index())

    def require(self, operation: str, available: int, needed: int) -> None:
        """Raise `LevelsExhausted` before computing if `needed` levels are not available."""
        if available < needed:
            raise LevelsExhausted(operation, needed, available)

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, values: npt.ArrayLike, level: int, scale: float | None = None) -> Plaintext:
        """Encode up to `slots` real or complex values at `level` (canonical scale unless given)."""
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] > self.slots:
            raise LayoutError(f"cannot encode shape {arr.shape} into {self.slots} slots")
        pt = sealapi.Plaintext()
        s = self._scales[level] if scale is None else scale
        self.encoder.encode(arr.tolist(), self._parms[level], s, pt)
        self.counts["encode"] += 1
        return pt

    def const(self, value: float | complex, level: int, scale: float | None = None) -> Plaintext:
        """Encode one constant in every slot (cheap: no FFT)."""
        pt = sealapi.Plaintext()
        s = self._scales[level] if scale is None else scale
        self.encoder.encode(value, self._parms[level], s, pt)
        return pt

    # --- arithmetic --------------------------------------------------------------------------

    def zero(self, level: int, scale: float | None = None) -> Ciphertext:
        """A fresh public-key encryption of zero (SEAL refuses to produce all-zero "transparent" results)."""
        if self._zero_encryptor is None:
            raise LayoutError("this engine has no public key to encrypt a zero ciphertext")
        out = sealapi.Ciphertext()
        self._zero_encryptor.encrypt_zero(self._parms[level], out)
        out.scale = self._scales[level] if scale is None else scale
        return out

    def copy(self, ct: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.mod_switch_to(ct, ct.parms_id(), out)
        return out

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.add(a, b, out)
        return out

    def add_inplace(self, a: Ciphertext, b: Ciphertext) -> None:
        self.evaluator.add_inplace(a, b)

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.sub(a, b, out)
        return out

    def negate(self, a: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.negate(a, out)
        return out

    def add_plain(self, ct: Ciphertext, pt: Plaintext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.add_plain(ct, pt, out)
        return out

    def mul_plain(self, ct: Ciphertext, pt: Plaintext) -> Ciphertext:
        """ct x pt without rescaling (scale multiplies; rescale once after summing products)."""
        out = sealapi.Ciphertext()
        self.evaluator.multiply_plain(ct, pt, out)
        self.counts["mul_plain"] += 1
        return out

    def mul_plain_acc(self, acc: Ciphertext | None, ct: Ciphertext, pt: Plaintext) -> Ciphertext:
        """acc + ct x pt (acc created on first use)."""
        prod = self.mul_plain(ct, pt)
        if acc is None:
            return prod
        self.evaluator.add_inplace(acc, prod)
        return acc

    def modulus_bits(self, level: int) -> float:
        """log2 of the ciphertext modulus at `level` (the room for scale x value)."""
        return float(sum(np.log2(float(q)) for q in self._primes[: level + 1]))

    def rescale(self, ct: Ciphertext, scale: float | None = None) -> Ciphertext:
        """Divide out the level's prime: level l -> l-1, scale set to `scale` (default canonical scale[l-1]).

        `scale` must be the exact result (ct.scale / q_l up to rounding); it only removes last-bit noise.
        """
        lvl = self.level(ct)
        self.require("rescale", lvl, 1)
        out = sealapi.Ciphertext()
        self.evaluator.rescale_to_next(ct, out)
        out.scale = self._scales[lvl - 1] if scale is None else scale  # SEAL compares scales exactly
        self.counts["rescale"] += 1
        return out

    def mul(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """a x b, relinearised and rescaled: both at level l -> level l-1."""
        lvl = self.level(a)
        self.require("multiply", lvl, 1)
        out = sealapi.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self.counts["mul"] += 1
        return self.rescale(out)

    def square(self, a: Ciphertext) -> Ciphertext:
        lvl = self.level(a)
        self.require("square", lvl, 1)
        out = sealapi.Ciphertext()
        self.evaluator.square(a, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self.counts["mul"] += 1
        return self.rescale(out)

    def mod_switch(self, ct: Ciphertext, level: int) -> Ciphertext:
        """Drop primes without rescaling (the scale is unchanged; internal use)."""
        out = sealapi.Ciphertext()
        self.evaluator.mod_switch_to(ct, self._parms[level], out)
        return out

    def drop(self, ct: Ciphertext, level: int) -> Ciphertext:
        """Bring `ct` down to `level` with that level's canonical scale (multiply by 1, rescale)."""
        cur = self.level(ct)
        if level == cur:
            return ct
        if level > cur:
            raise LevelsExhausted("drop", level, cur)
        # x * 1@s' -> scale[cur] * s' / q_cur == scale[level]
        s_prime = self._scales[level] * float(self._primes[cur]) / self._scales[cur]
        prod = self.mul_plain(ct, self.const(1.0, cur, s_prime))
        out = self.rescale(prod)
        if level < cur - 1:
            out = self.mod_switch(out, level)
        out.scale = self._scales[level]
        self.counts["drop"] += 1
        return out

    # --- rotations ---------------------------------------------------------------------------

    def has_step(self, step: int) -> bool:
        return normalise_step(step, self.slots) in self.plan.steps

    def rotate(self, ct: Ciphertext, step: int) -> Ciphertext:
        """Left-rotate the slots by `step` (negative: right). Raises `MissingRotationKey`."""
        k = normalise_step(step, self.slots)
        if k == 0:
            return ct
        if k not in self.plan.steps or self.galois_keys is None:
            raise MissingRotationKey(step, len(self.plan.steps))
        out = sealapi.Ciphertext()
        self.evaluator.apply_galois(
            ct, galois_element(k, self.params.poly_modulus_degree), self.galois_keys, out
        )
        self.counts["rotate"] += 1
        return out

    def times_monomial(self, ct: Ciphertext) -> Ciphertext:
        """`ct` times the monomial X^(N/2): every slot times i or -i (`monomial_slots`). Exact (a signed
        shift of the coefficients): no level, no key, no noise, the scale unchanged."""
        level = self.level(ct)
        if level not in self._monomials:
            self._monomials[level] = self.encode(monomial_slots(self.slots), level, scale=1.0)
        return self.mul_plain(ct, self._monomials[level])

    def conjugate(self, ct: Ciphertext) -> Ciphertext:
        """Complex-conjugate every slot (needs the plan's conjugation key)."""
        if not self.plan.conjugate or self.galois_keys is None:
            raise MissingRotationKey(0, len(self.plan.steps))
        out = sealapi.Ciphertext()
        self.evaluator.complex_conjugate(ct, self.galois_keys, out)
        self.counts["conjugate"] += 1
        return out


def monomial_slots(slots: int) -> npt.NDArray[np.complex128]:
    """The slots of the polynomial X^(N/2): i at even slots, -i at odd ones (SEAL orders slot j by the
    root zeta^(3^j), and 3^j is 1 mod 4 for even j, 3 for odd j)."""
    return np.where(np.arange(slots) % 2 == 0, 1j, -1j)
