"""The image-disjoint train split for bilevel search: weights on one part, alpha/beta on the other.

What this is: ``split_image_disjoint`` partitions a dataset's instances so that no image
contributes to both parts (people of one image are correlated), in a ratio of instances close
to the requested one, deterministically from a seed.
What it is not: a sampler or loader; wrap the index lists in ``torch.utils.data.Subset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nfs_orchestrator.errors import InputError


class HasImageIds(Protocol):
    @property
    def image_ids(self) -> np.ndarray: ...


def split_image_disjoint(
    dataset: HasImageIds | Sequence[int] | np.ndarray,
    ratio: tuple[int, int] = (2, 1),
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """(weight_indices, arch_indices): sorted instance indices, image-disjoint.

    ``dataset`` is a ``TopDownDataset`` (or anything with ``image_ids``) or the per-instance
    image ids themselves. Images are shuffled with ``seed`` and each goes, whole, to the part
    that is furthest below its share of instances ``ratio[i] / sum(ratio)``.
    """
    ids = np.asarray(getattr(dataset, "image_ids", dataset), dtype=np.int64)
    if len(ratio) != 2 or min(ratio) <= 0:
        raise InputError(f"split ratio {ratio}: needs two positive parts")
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if len(unique) < 2:
        raise InputError(
            f"image-disjoint split: needs at least 2 images, the dataset has {len(unique)}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    share = np.asarray(ratio, dtype=np.float64) / float(sum(ratio))
    taken = np.zeros(2)
    part_of_image = np.zeros(len(unique), dtype=np.int64)
    for rank, img in enumerate(order):
        if rank < 2:
            part = rank  # each part gets at least one image
        else:
            part = int(np.argmin(taken / share))  # the part furthest below its share
        part_of_image[img] = part
        taken[part] += counts[img]
    parts = part_of_image[inverse]
    return np.flatnonzero(parts == 0).tolist(), np.flatnonzero(parts == 1).tolist()
