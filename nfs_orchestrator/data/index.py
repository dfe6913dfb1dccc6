"""The annotation index: one Parquet file per split, built once from the source annotations.

What this is: the table of top-down *instances* (one person box each) that every dataset worker
reads instead of re-parsing a large json, and the cache logic around it. An index is written
next to its source annotations when that folder is writable (and has a write bit: read-only
shared data stays untouched even for root), else under a cache folder, always atomically
(``files.write_atomic_with``), as ``<annotations>.<variant>.index.parquet``. It records the size,
mtime and sha256 of each source file in the Parquet metadata and is rebuilt when a source
changes (size or content; a changed mtime alone with the same sha256 keeps it).
What it is not: a parser of COCO or MPII files (``coco.py`` and ``mpii.py`` build the
``Instances`` this module stores).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.files import write_atomic_with

INDEX_VERSION = 1  # bump when the columns or their meaning change
_META_KEY = b"posenfs.index"


@dataclass(frozen=True)
class Instances:
    """Top-down instances as parallel arrays (N = number of instances, K = keypoints).

    Image coordinates are 0-based pixels with pixel centres at integers. ``box`` is the crop
    box before aspect-ratio fix and margin; ``joints`` holds (x, y, v) with v > 0 = labelled
    (all zero for detector boxes). ``ann_id`` is the annotation id (COCO), -1 for detections,
    or the row of the person in the annotation file (MPII, = its row in gt_valid.mat).
    """

    image_id: np.ndarray  # (N,) int64
    file_name: np.ndarray  # (N,) object (str), relative to the images folder
    width: np.ndarray  # (N,) int64
    height: np.ndarray  # (N,) int64
    box: np.ndarray  # (N, 4) float64 x, y, w, h
    score: np.ndarray  # (N,) float64, box score (1 for ground-truth boxes)
    area: np.ndarray  # (N,) float64, annotated area (box w·h for detections)
    ann_id: np.ndarray  # (N,) int64
    joints: np.ndarray  # (N, K, 3) float64

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def num_keypoints(self) -> int:
        return int(self.joints.shape[1])

    def take(self, indices: Sequence[int] | np.ndarray) -> Instances:
        """The instances at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Instances(
            image_id=self.image_id[idx],
            file_name=self.file_name[idx],
            width=self.width[idx],
            height=self.height[idx],
            box=self.box[idx],
            score=self.score[idx],
            area=self.area[idx],
            ann_id=self.ann_id[idx],
            joints=self.joints[idx],
        )

    @staticmethod
    def from_records(records: list[dict], num_keypoints: int) -> Instances:
        """From dicts with keys image_id, file_name, width, height, box, score, area, ann_id,
        joints ((K, 3) nested lists or arrays)."""
        n = len(records)

        def col(key: str, dtype: type) -> np.ndarray:
            return np.array([r[key] for r in records], dtype=dtype).reshape(n)

        joints = np.zeros((n, num_keypoints, 3), dtype=np.float64)
        for i, r in enumerate(records):
            joints[i] = np.asarray(r["joints"], dtype=np.float64).reshape(num_keypoints, 3)
        return Instances(
            image_id=col("image_id", np.int64),
            file_name=np.array([str(r["file_name"]) for r in records], dtype=object).reshape(n),
            width=col("width", np.int64),
            height=col("height", np.int64),
            box=np.array([r["box"] for r in records], dtype=np.float64).reshape(n, 4),
            score=col("score", np.float64),
            area=col("area", np.float64),
            ann_id=col("ann_id", np.int64),
            joints=joints,
        )


@dataclass(frozen=True)
class AnnotationIndex:
    """A loaded index: its instances, where its Parquet file is, and whether this call built
    it (False when an up-to-date file was reused)."""

    instances: Instances
    path: Path
    built: bool


# --------------------------------------------------------------------------------------------
# Parquet round trip
# --------------------------------------------------------------------------------------------


def instances_to_table(inst: Instances) -> pa.Table:
    k = inst.num_keypoints
    joints = pa.FixedSizeListArray.from_arrays(
        pa.array(inst.joints.reshape(-1), type=pa.float64()), k * 3
    )
    box = pa.FixedSizeListArray.from_arrays(pa.array(inst.box.reshape(-1), type=pa.float64()), 4)
    return pa.table(
        {
            "image_id": pa.array(inst.image_id, type=pa.int64()),
            "file_name": pa.array(list(inst.file_name), type=pa.string()),
            "width": pa.array(inst.width, type=pa.int64()),
            "height": pa.array(inst.height, type=pa.int64()),
            "box": box,
            "score": pa.array(inst.score, type=pa.float64()),
            "area": pa.array(inst.area, type=pa.float64()),
            "ann_id": pa.array(inst.ann_id, type=pa.int64()),
            "joints": joints,
        }
    )


def table_to_instances(table: pa.Table, num_keypoints: int) -> Instances:
    n = table.num_rows

    def flat(name: str, width: int) -> np.ndarray:
        arr = table.column(name).combine_chunks()
        return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
            n, width
        )

    def col(name: str, dtype: type) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(), dtype=dtype)

    return Instances(
        image_id=col("image_id", np.int64),
        file_name=np.array(table.column("file_name").to_pylist(), dtype=object).reshape(n),
        width=col("width", np.int64),
        height=col("height", np.int64),
        box=flat("box", 4),
        score=col("score", np.float64),
        area=col("area", np.float64),
        ann_id=col("ann_id", np.int64),
        joints=flat("joints", num_keypoints * 3).reshape(n, num_keypoints, 3),
    )


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path, with_sha: bool) -> dict:
    st = path.stat()
    out = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_sha:
        out["sha256"] = file_sha256(path)
    return out


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/posenfs/index`` (or ``~/.cache/posenfs/index``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "posenfs" / "index"


def index_paths(source: Path, variant: str, cache_dir: str | Path | None) -> list[Path]:
    """Where the index of ``source`` may live, in order of preference: beside it (when its
    folder is writable), then in ``cache_dir`` (default ``default_cache_dir()``) under a name
    unique to the source path."""
    source = Path(source)
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = folder / f"{source.stem}-{key}.{variant}.index.parquet"
    if is_writable_dir(source.parent):
        return [source.parent / f"{source.name}.{variant}.index.parquet", cached]
    return [cached]


def is_writable_dir(folder: Path) -> bool:
    """Writable for us *and* not marked read-only: root passes ``os.access`` everywhere, so a
    folder without any write bit (e.g. shared read-only data) counts as read-only."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(stat.S_IMODE(mode) & 0o222)


def _is_current(path: Path, sources: Sequence[Path], options: dict) -> bool:
    """True when the index at ``path`` was built by this version, with these options, from
    sources of the same size and (same mtime or same sha256)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        stored = json.loads(meta[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return False
    if stored.get("version") != INDEX_VERSION or stored.get("options") != options:
        return False
    if len(stored.get("sources", [])) != len(sources):
        return False
    for old, src in zip(stored["sources"], sources, strict=True):
        now = _stamp(src, with_sha=False)
        if old["path"] != now["path"] or old["size"] != now["size"]:
            return False
        if old["mtime_ns"] != now["mtime_ns"] and old.get("sha256") != file_sha256(src):
            return False
    return True


def cached_index(
    sources: Sequence[str | Path],
    variant: str,
    options: dict,
    build: Callable[[], Instances],
    *,
    cache_dir: str | Path | None = None,
) -> AnnotationIndex:
    """Returns the index of ``sources`` (the first one names it), building it with ``build``
    when absent or stale. ``options`` (json-able) are the build parameters that change its
    content (e.g. a detection score threshold); ``variant`` names the file."""
    srcs = [Path(s) for s in sources]
    for s in srcs:
        if not s.is_file():
            raise InputError(f"{s}: no such file")
    candidates = index_paths(srcs[0], variant, cache_dir)
    for path in candidates:
        if path.is_file() and _is_current(path, srcs, options):
            table = pq.read_table(path)
            k = int(json.loads(table.schema.metadata[_META_KEY])["num_keypoints"])
            return AnnotationIndex(table_to_instances(table, k), path, built=False)
    stamps = [_stamp(s, with_sha=True) for s in srcs]
    inst = build()
    meta = {
        "version": INDEX_VERSION,
        "variant": variant,
        "options": options,
        "num_keypoints": inst.num_keypoints,
        "sources": stamps,
    }
    table = instances_to_table(inst).replace_schema_metadata({_META_KEY: json.dumps(meta)})
    for path in candidates:
        try:
            write_atomic_with(path, lambda tmp: pq.write_table(table, tmp))
            return AnnotationIndex(inst, path, built=True)
        except OSError:
            continue  # looked writable but is not (or full): try the next place
    return AnnotationIndex(inst, candidates[-1], built=True)  # usable, just not saved
