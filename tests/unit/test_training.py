"""Batches: the effective batch of a step does not change with the number of workers."""

from __future__ import annotations

import pytest

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.training import batch_plan


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_effective_batch_is_constant_when_workers_change(workers):
    micro, accumulation = batch_plan(24, None, workers)  # micro adapts
    assert workers * micro * accumulation == 24
    if 24 % (workers * 3) == 0:
        micro, accumulation = batch_plan(24, 3, workers)  # micro fixed: accumulation adapts
        assert (micro, workers * micro * accumulation) == (3, 24)


def test_impossible_split_is_a_clear_error():
    with pytest.raises(SpecError, match="not a multiple of workers × micro_batch = 5 × 4"):
        batch_plan(24, 4, 5)
