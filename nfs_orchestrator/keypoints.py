"""Keypoint schemas (COCO-17, MPII-16) and part groupings, loaded from ``search_spaces/``.

A ``KeypointSchema`` is a dataset fact: ordered keypoint names, left/right flip pairs and, for COCO,
the OKS sigmas. MPII keeps its *original* joint order (0 right_ankle … 15 left_wrist, the order of
the annotation files and of ``gt_valid.mat``); the reference code's reordering is only a
permutation applied when importing its checkpoints (see ``nfs_orchestrator.reference``).

A ``PartGrouping`` assigns keypoints to body parts (PoseNFS §2.2: P = 1, 3, 5, 8). Each part gets
its own fabric and head; a part's head emits its keypoints in the order listed here. Parts may
overlap (P = 8); ``merge`` says how overlapping predictions combine: ``sum`` (the reference code)
or ``mean``.

This module does not build networks; ``nn.supernet.merge_parts`` uses ``PartGrouping.indices``
to merge parts (for the supernet and the derived network alike).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.strict import Spec, load_spec, read_yaml, suggest


def spaces_root() -> Path:
    """The ``search_spaces/`` folder: ``$POSENFS_SPACES`` or the one beside the package."""
    env = os.environ.get("POSENFS_SPACES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "search_spaces"


def resolve_ref(ref: str, kind: str) -> Path:
    """``kind/name`` or ``name`` → ``search_spaces/kind/name.yaml``; an existing path is kept."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    name = ref.removeprefix(f"{kind}/").removesuffix(".yaml")
    candidate = spaces_root() / kind / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in (spaces_root() / kind).glob("*.yaml"))
    raise SpecError(
        f"{ref}: no such {kind[:-1]} file or name{suggest(name, known)}; known: {known}"
    )


@dataclass(frozen=True)
class KeypointSchema(Spec):
    """Ordered keypoints of a dataset, their left/right flip pairs and OKS sigmas."""

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[str, str], ...]
    sigmas: tuple[float, ...] | None = None  # COCO OKS per-keypoint sigmas; None for MPII

    def __post_init__(self) -> None:
        if len(set(self.keypoints)) != len(self.keypoints):
            raise SpecError(f"schema {self.name}: duplicate keypoint names")
        for a, b in self.flip_pairs:
            for n in (a, b):
                if n not in self.keypoints:
                    raise SpecError(
                        f"schema {self.name}: flip pair names unknown keypoint {n!r}"
                        f"{suggest(n, self.keypoints)}"
                    )
        if self.sigmas is not None and len(self.sigmas) != len(self.keypoints):
            raise SpecError(
                f"schema {self.name}: {len(self.sigmas)} sigmas for {len(self.keypoints)} keypoints"
            )

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def index(self, name: str) -> int:
        try:
            return self.keypoints.index(name)
        except ValueError:
            raise SpecError(
                f"schema {self.name}: unknown keypoint {name!r}{suggest(name, self.keypoints)}"
            ) from None

    def flip_permutation(self) -> list[int]:
        """perm[k] = index of keypoint k's mirror image (itself when it has no pair)."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            ia, ib = self.index(a), self.index(b)
            perm[ia], perm[ib] = ib, ia
        return perm


@dataclass(frozen=True)
class Part:
    """One body part: a name and the keypoints its head predicts, in output-channel order."""

    name: str
    keypoints: tuple[str, ...]


@dataclass(frozen=True)
class PartGrouping(Spec):
    """Body parts over one keypoint schema; each part gets its own fabric (PoseNFS §2.2)."""

    name: str
    schema: KeypointSchema
    parts: tuple[Part, ...]
    merge: Literal["sum", "mean"] = "sum"  # how overlapping parts combine; the reference sums

    def __post_init__(self) -> None:
        where = f"grouping {self.name}"
        if not self.parts:
            raise SpecError(f"{where}: has no parts")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise SpecError(f"{where}: duplicate part names")
        covered = set()
        for part in self.parts:
            if not part.keypoints:
                raise SpecError(f"{where}: part {part.name!r} has no keypoints")
            if len(set(part.keypoints)) != len(part.keypoints):
                raise SpecError(f"{where}: part {part.name!r} lists a keypoint twice")
            for kp in part.keypoints:
                if kp not in self.schema.keypoints:
                    raise SpecError(
                        f"{where}: part {part.name!r} names unknown keypoint {kp!r}"
                        f"{suggest(kp, self.schema.keypoints)} (schema {self.schema.name})"
                    )
                covered.add(kp)
        missing = [k for k in self.schema.keypoints if k not in covered]
        if missing:
            raise SpecError(f"{where}: keypoints not covered by any part: {missing}")

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def num_keypoints(self) -> int:
        return self.schema.num_keypoints

    def indices(self, part: Part | str) -> tuple[int, ...]:
        """Schema indices of a part's keypoints, in the part head's channel order."""
        p = part if isinstance(part, Part) else self.part(part)
        return tuple(self.schema.index(k) for k in p.keypoints)

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise SpecError(f"grouping {self.name}: no part {name!r}")

    def coverage(self) -> list[int]:
        """How many parts predict each keypoint (1 everywhere unless parts overlap)."""
        counts = [0] * self.num_keypoints
        for p in self.parts:
            for i in self.indices(p):
                counts[i] += 1
        return counts


def load_schema(ref: str) -> KeypointSchema:
    """Loads ``search_spaces/keypoints/<ref>.yaml`` (or a path)."""
    return load_spec(KeypointSchema, resolve_ref(ref, "keypoints"), named=False)


def load_grouping(ref: str) -> PartGrouping:
    """Loads a grouping file: ``name``, ``schema`` (a schema ref), ``merge``, ``parts`` (a mapping
    from part name to the list of its keypoint names, in head channel order)."""
    path = resolve_ref(ref, "groupings")
    data = read_yaml(path)
    try:
        unknown = [k for k in data if k not in ("name", "schema", "merge", "parts")]
        if unknown:
            k = unknown[0]
            raise SpecError(f"{k}: unknown key{suggest(k, ['name', 'schema', 'merge', 'parts'])}")
        if not isinstance(data.get("schema"), str):
            raise SpecError("schema: required, the name of a file in search_spaces/keypoints")
        if not isinstance(data.get("parts"), dict):
            raise SpecError("parts: required, a mapping from part name to a list of keypoints")
        parts = [{"name": str(n), "keypoints": kps} for n, kps in data["parts"].items()]
        body = {
            "name": data.get("name", path.stem),
            "schema": load_schema(data["schema"]).to_dict(),
            "parts": parts,
        }
        if "merge" in data:
            body["merge"] = data["merge"]
        return PartGrouping.from_dict(body)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
