"""The encrypted error of c - r that the noise sweep marks (app/research/noise.py), on real ciphertexts."""

from __future__ import annotations

import numpy as np

from app.research.noise import encrypted_prefix_error, first_step_distributions
from crypto.params import CKKS_40
from model.loading import LoadedModel


def test_the_default_preset_keeps_c_minus_r_inside_the_noise_budget_and_scale_40_does_not(
    tiny: LoadedModel,
) -> None:
    """DESIGN.md section 2: the sampler needs the error of c - r at or below ~1e-7 per entry; scale 2^49
    gives ~1e-10, scale 2^40 about 2^9 times more."""
    qs = first_step_distributions(tiny, ["Hi", "Name three colours."], np.arange(49152)[::-1].copy())
    assert all(q.shape == (49152,) and abs(q.sum() - 1) < 1e-2 for q in qs)
    default = encrypted_prefix_error(qs)
    weaker = encrypted_prefix_error(qs[:1], CKKS_40)
    assert default.entries == 2 * 49152 and default.preset == "default"
    assert 0 < default.std < 1e-8 and default.largest < 1e-7
    assert weaker.std > 50 * default.std
    assert "standard deviation" in default.describe()
