"""The encrypted sampler's error on c - r, measured for the noise sweep (`app/research/collapse.py`).

The sweep adds Gaussian noise of standard deviation sigma to c - r (`SamplerConfig.prefix_noise_sigma`).
Where does the encrypted mode sit on that axis? This measures it on real ciphertexts: the key holder's
fp16 softmax of the model's first step after each study prompt, in TSP order, encrypted at the default
preset, through the worker's prefix sum, decrypted and compared with the float64 prefix sum. Subtracting
the plaintext r adds no error of its own, so the error of c is the error of c - r.

References: DESIGN.md section 2 (noise budget); crypto/prefix.py; bench/bench_crypto.py (the same figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crypto.engine import Engine
from crypto.keys import create_secret_context, load_public_context, public_context_bytes
from crypto.ops import sampler_rotation_plan
from crypto.params import CKKS_DEFAULT, CKKSParams
from crypto.prefix import prefix_sum
from crypto.vector import decrypt_vector, encrypt_vector
from model.generate import DecodeSession, build_prompt
from model.loading import LoadedModel
from model.sampler import probabilities
from model.vector_ops import FloatArray


@dataclass(frozen=True)
class PrefixError:
    """The encrypted prefix sum's error against float64, over every entry of the measured vectors."""

    std: float  # comparable with the sweep's sigma (Gaussian noise per entry)
    largest: float  # the largest absolute error
    entries: int
    preset: str

    def describe(self) -> str:
        return (
            f"standard deviation {self.std:.2g} (largest {self.largest:.2g}) over {self.entries:,} entries "
            f"at preset {self.preset}"
        )


def first_step_distributions(
    loaded: LoadedModel, prompts: Sequence[str], perm: np.ndarray | None
) -> list[FloatArray]:
    """q after each prompt as the study samples it: fp16 softmax at T = 1, in `perm` order."""
    ordered = []
    for prompt in prompts:
        logits = DecodeSession(loaded).prefill(build_prompt(loaded, [{"role": "user", "content": prompt}]))
        p = probabilities(logits.numpy().astype(np.float64), 1.0, "fp16", False)
        ordered.append(p if perm is None else p[perm])
    return ordered


def encrypted_prefix_error(qs: Sequence[FloatArray], params: CKKSParams = CKKS_DEFAULT) -> PrefixError:
    """Encrypt each q as the key holder does, prefix-sum it as the worker does, and compare.

    Raises:
        InputError: a vector longer than the preset's vocabulary layout allows (from `encrypt_vector`).
    """
    secret = create_secret_context(params)
    upload = public_context_bytes(secret, sampler_rotation_plan(params.slot_count))
    engine = Engine.for_worker(load_public_context(upload))
    errors = [
        decrypt_vector(secret, prefix_sum(engine, encrypt_vector(secret, q))) - np.cumsum(q) for q in qs
    ]
    every = np.concatenate(errors)
    return PrefixError(
        std=float(every.std()), largest=float(np.abs(every).max()), entries=every.size, preset=params.name
    )
