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


def private_context_bytes(params):  # type: ignore[no-untyped-def]
    """A public-context upload that smuggles the secret key: the worker must refuse it."""
    import json
    import struct

    from crypto.keys import create_secret_context
    from crypto.keys_wire import MAGIC, WIRE_VERSION

    private = create_secret_context(params).tenseal_context.serialize(save_secret_key=True)
    header = {
        "params": params.to_dict(),
        "steps": [],
        "conjugate": False,
        "tail": None,
        "tail_relin_bytes": 0,
    }
    head = json.dumps({**header, "context_bytes": len(private), "relin_bytes": 0, "galois_bytes": 0}).encode()
    return struct.pack(">6sHI", MAGIC, WIRE_VERSION, len(head)) + head + private


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny():  # type: ignore[no-untyped-def]
    """The tiny random Llama with SmolLM2's tokenizer (built in code, ~0.2 s)."""
    from model.loading import build_tiny_model

    return build_tiny_model()


# --- CKKS fixtures ---


class CkksKeys:
    """One secret context per preset, and worker engines built from public bytes, cached per rotation plan."""

    def __init__(self, params):  # type: ignore[no-untyped-def]
        from crypto.keys import create_secret_context

        self.params = params
        self.secret = create_secret_context(params)
        self._engines: dict[object, object] = {}

    def engine(self, plan=None):  # type: ignore[no-untyped-def]
        """A worker engine loaded from `public_context_bytes(secret, plan)` (the real wire path)."""
        from crypto.engine import Engine
        from crypto.keys import load_public_context, public_context_bytes
        from crypto.keys_wire import RotationPlan

        plan = RotationPlan() if plan is None else plan
        if plan not in self._engines:
            public = load_public_context(public_context_bytes(self.secret, plan))
            self._engines[plan] = Engine.for_worker(public)
            if public.tail is not None:
                self._engines["tail"] = Engine.for_tail(public.tail)
        return self._engines[plan]

    def tail_engine(self):  # type: ignore[no-untyped-def]
        """The worker's engine over the preset's sampler tail (loaded from the same public bytes)."""
        self.engine()
        return self._engines["tail"]


@pytest.fixture(scope="session")
def ckks():  # type: ignore[no-untyped-def]
    """Keys for CKKS_DEFAULT (N=8192, scale 2^49): precise enough for 1e-6 comparisons."""
    from crypto.params import CKKS_DEFAULT

    return CkksKeys(CKKS_DEFAULT)


@pytest.fixture(scope="session")
def ckks_small():  # type: ignore[no-untyped-def]
    """Keys for CKKS_TEST (N=4096, 2,048 slots, scale 2^24): fast, ~1e-3 precision."""
    from crypto.params import CKKS_TEST

    return CkksKeys(CKKS_TEST)
