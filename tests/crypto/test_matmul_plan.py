"""The product's geometry (crypto/matmul_plan.py): a plan covers the matrix, asks for the keys its
rotations use, and is the cheapest of the candidates it tried."""

from __future__ import annotations

import pytest

from core.errors import LayoutError
from crypto.matmul_plan import plan_matmul

SLOTS = 4096  # N = 8192


@pytest.mark.parametrize(("m", "n"), [(1, 1), (5, 3), (100, 7), (576, 192), (5000, 40), (300, 5000)])
def test_a_plan_covers_the_matrix_and_plans_the_rotations_it_counts(m: int, n: int) -> None:
    plan = plan_matmul(m, n, SLOTS)
    assert plan.chunks * SLOTS >= m and plan.period * plan.chunks >= m  # every input value in a chunk
    assert plan.tiles * plan.tile >= n and plan.tile <= SLOTS  # every output value in a tile
    assert plan.blocks * plan.diags >= plan.period  # the blocks' diagonals reach every input row
    assert plan.baby * plan.giant >= plan.diags  # baby x giant steps reach every diagonal of a block
    steps = plan.rotation_plan().steps  # the baby step, the block stride, the replication
    assert 1 in steps and plan.baby % SLOTS in steps | {0}
    assert plan.blocks == 1 or plan.stride % SLOTS in steps
    assert plan.copies == 1 or -plan.period % SLOTS in steps
    assert plan.plaintexts == plan.chunks * plan.tiles * plan.diags and plan.rotations >= 0


def test_an_input_already_replicated_never_costs_more() -> None:
    for m, n in ((64, 64), (100, 7), (256, 1000)):
        assert plan_matmul(m, n, SLOTS, replicated=True).cost_ms(True) <= plan_matmul(m, n, SLOTS).cost_ms()


def test_a_chunked_input_uses_its_chunk_as_the_period() -> None:
    plan = plan_matmul(1000, 30, SLOTS, in_chunk=300)
    assert (plan.chunks, plan.period) == (4, 300)


@pytest.mark.parametrize(("m", "n"), [(0, 5), (5, 0), (-1, 3)])
def test_an_empty_shape_is_refused(m: int, n: int) -> None:
    with pytest.raises(LayoutError, match="matrix shape must be positive"):
        plan_matmul(m, n, SLOTS)
