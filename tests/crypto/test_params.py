"""CKKS parameter presets: validation, the 128-bit limit, dict round trip."""

from __future__ import annotations

import json

import pytest

from core.errors import ParamsError
from crypto.params import CKKS_DEFAULT, CKKS_TEST, PRESETS, CKKSParams, max_modulus_bits, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name: str) -> None:
    p = preset(name)
    assert p.total_bits <= max_modulus_bits(p.poly_modulus_degree)
    assert p.depth == len(p.coeff_mod_bit_sizes) - 2
    assert p.slot_count == p.poly_modulus_degree // 2
    assert CKKSParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_default_and_test_presets() -> None:
    assert CKKS_DEFAULT.poly_modulus_degree == 8192 and CKKS_DEFAULT.depth == 2
    assert CKKS_DEFAULT.scale == 2.0**49
    assert CKKS_TEST.poly_modulus_degree < CKKS_DEFAULT.poly_modulus_degree


def test_refuses_chain_above_128_bit_limit() -> None:
    with pytest.raises(ParamsError, match="128-bit"):
        CKKSParams(8192, (60, 50, 50, 60), 50)  # 220 > 218 bits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 3000, "coeff_mod_bit_sizes": (60, 40, 60), "scale_bits": 40},
        {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 60), "scale_bits": 40},
        {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (40, 40, 60), "scale_bits": 40},
        {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 40, 30), "scale_bits": 40},
        {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 60], "scale_bits": 40},
    ],
)
def test_refuses_invalid_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ParamsError):
        CKKSParams(**kwargs)  # type: ignore[arg-type]


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ParamsError, match="default"):
        preset("nope")


def test_from_dict_refuses_unknown_keys_and_non_dicts() -> None:
    with pytest.raises(ParamsError, match=r"unknown CKKS parameter\(s\) \['scale'\].*scale_bits"):
        CKKSParams.from_dict({**CKKS_TEST.to_dict(), "scale": 2**24})
    with pytest.raises(ParamsError, match="must be a dict"):
        CKKSParams.from_dict([4096])  # type: ignore[arg-type]
    with pytest.raises(ParamsError, match="invalid CKKS parameter dict"):
        CKKSParams.from_dict({"poly_modulus_degree": 4096})  # missing keys: still its own message
