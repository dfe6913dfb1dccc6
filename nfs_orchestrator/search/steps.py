"""How many optimizer steps an epoch of the search takes, and their batches.

``search.steps_per_epoch`` is the number of weight steps an epoch runs, exactly, in every mode
(and with it the number of α/β steps in ``first_order``/``second_order``, which take one arch
step per weight step). When the weight split holds fewer batches than that, the epoch goes on
into another pass over it, reshuffled by a seed that is a function of (epoch seed, pass), so a
resumed run takes the same batches. ``None`` keeps one pass over the weight split.

Before this module, ``steps_per_epoch`` was only a cap: on the quickstart (``first_order``, 2:1
split) ``steps_per_epoch: 40`` ran 21 steps, silently.

What this is not: a loader. ``training.epoch_batches`` makes each pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Dataset

from nfs_orchestrator.runtime import Runtime
from nfs_orchestrator.training import epoch_batches

PASS_SEED_STRIDE = 7919  # pass k > 0 of an epoch seeded ``seed * 7919 + k`` (as cycle_batches)


def epoch_steps(
    dataset: Dataset,
    indices: Sequence[int],
    micro: int,
    accumulation: int,
    runtime: Runtime,
    seed: int,
    steps: int | None,
    workers: int = 0,
) -> Iterator[list[dict[str, Any]]]:
    """This rank's micro-batches for ``steps`` optimizer steps (None: one pass over
    ``indices``). The first pass is ``epoch_batches(..., seed)`` itself, so a run whose
    ``steps`` fit into one pass takes exactly the batches it took before."""
    if steps is None:
        yield from epoch_batches(
            dataset, indices, micro, accumulation, runtime, seed, None, workers
        )
        return
    done, k = 0, 0
    while done < steps:
        pass_seed = seed if k == 0 else seed * PASS_SEED_STRIDE + k
        taken = 0
        for batches in epoch_batches(
            dataset, indices, micro, accumulation, runtime, pass_seed, steps - done, workers
        ):
            yield batches
            taken += 1
        if taken == 0:  # fewer images than one step: nothing more will come
            return
        done, k = done + taken, k + 1


def steps_in_epoch(num_indices: int, per_step: int, steps: int | None) -> int:
    """How many steps ``epoch_steps`` yields for ``num_indices`` images and ``per_step`` images
    per step (= micro × workers × accumulation)."""
    one_pass = num_indices // per_step
    if steps is None or one_pass == 0:
        return one_pass
    return steps
