"""The oracle's allow-list (model/oracle.py): one list, a description for each entry, a typed refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.errors import ProtocolError, UnknownOracleFunction
from model.oracle import DESCRIPTIONS, NONLINEAR, ORACLE_FUNCTIONS, REFRESHES, check_function


def test_the_list_is_the_refreshes_the_nonlinear_steps_and_the_softmax() -> None:
    assert ORACLE_FUNCTIONS == (
        "refresh",
        "refresh_tail",
        "rmsnorm",
        "attention",
        "swiglu",
        "final_norm",
        "softmax",
    )
    assert set(REFRESHES) | set(NONLINEAR) | {"softmax"} == set(ORACLE_FUNCTIONS)
    assert set(DESCRIPTIONS) == set(ORACLE_FUNCTIONS)  # the page can describe every call it shows


def test_a_function_off_the_list_is_refused_by_name() -> None:
    assert [check_function(fn) for fn in ORACLE_FUNCTIONS] == list(ORACLE_FUNCTIONS)
    with pytest.raises(
        UnknownOracleFunction, match=r"'decrypt'.*\(refresh, refresh_tail, rmsnorm"
    ) as refused:
        check_function("decrypt")
    assert isinstance(refused.value, ProtocolError)
    assert len(str(pytest.raises(UnknownOracleFunction, check_function, "x" * 10_000).value)) < 300


def test_the_module_is_light() -> None:
    """The client and the page import it: no torch, no TenSEAL behind it."""
    code = "import sys, model.oracle; print(any(m in sys.modules for m in ('torch', 'tenseal')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
