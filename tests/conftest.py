"""Shared test fixtures: the slow-test switch, seeded RNGs, the one tolerance helper, the tiny model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: needs the real model or minutes; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def assert_close(actual: npt.ArrayLike, expected: npt.ArrayLike, atol: float) -> None:
    """The one tolerance check of the test suite: max absolute error, reported with its position."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return
    err = np.abs(a - e)
    worst = int(np.argmax(err))
    assert err.flat[worst] <= atol, (
        f"max abs error {err.flat[worst]:.3e} > atol {atol:.1e} at flat index {worst} "
        f"(actual {a.flat[worst]!r}, expected {e.flat[worst]!r})"
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny():  # type: ignore[no-untyped-def]
    """The tiny random Llama with SmolLM2's tokenizer (built in code, ~0.2 s)."""
    from model.loading import build_tiny_model

    return build_tiny_model()
