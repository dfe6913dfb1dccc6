"""posenfs model checkpoints: one file that says what network it holds and holds its weights.

A checkpoint is a ``torch.save``d dict:

    {"format": "posenfs-model", "version": 1,
     "kind": "supernet" | "derived",
     "space": FabricSpace dict, "grouping": PartGrouping dict, "backbone": name,
     "input_size": [W, H] | None,
     "genotype": Genotype JSON text | None,      # required for "derived"
     "model": state_dict}

``posenfs reference import`` writes supernet checkpoints; retraining writes derived ones; both
``posenfs evaluate checkpoint`` and ``posenfs retrain`` (initial weights) read them.
What this is not: the file mechanics (``files.py``: atomic write, checked read) or the MLflow
model registry (``orchestration/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.files import read_checked, write_atomic_with
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.specs import FabricSpace

FORMAT, VERSION = "posenfs-model", 1


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    kind: str,
    space: FabricSpace,
    grouping: PartGrouping,
    backbone: str,
    input_size: tuple[int, int] | None = None,
    genotype: Genotype | None = None,
) -> Path:
    """Writes the checkpoint atomically (``files.write_atomic_with``) and returns its path."""
    body = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "space": space.to_dict(),
        "grouping": grouping.to_dict(),
        "backbone": backbone,
        "input_size": list(input_size) if input_size else None,
        "genotype": genotype.to_json() if genotype is not None else None,
        "model": model.state_dict(),
    }
    return write_atomic_with(path, lambda tmp: torch.save(body, tmp))


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Loads and checks a checkpoint's header; the weights stay a state dict."""
    p = Path(path)
    body = read_checked(
        p,
        lambda f: torch.load(f, map_location="cpu", weights_only=True),
        missing="no such model file",
        failure=lambda e: f"not a readable torch file ({type(e).__name__})",
    )
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise InputError(f"{p}: not a posenfs model checkpoint (no format '{FORMAT}')")
    if body.get("version") != VERSION:
        raise InputError(f"{p}: checkpoint version {body.get('version')!r} is not supported")
    return body


def build_model(body: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """The network a checkpoint describes, with its weights loaded (strictly)."""
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.derived import DerivedPoseNet
    from nfs_orchestrator.nn.supernet import PoseSupernet

    try:
        space = FabricSpace.from_dict(body["space"])
        grouping = PartGrouping.from_dict(body["grouping"])
    except (KeyError, SpecError) as e:
        raise InputError(f"{source}: malformed model header ({e})") from None
    backbone = build_backbone(body["backbone"], random_init=True)
    if body["kind"] == "supernet":
        model: nn.Module = PoseSupernet(space, grouping, backbone)
    elif body["kind"] == "derived":
        if not body.get("genotype"):
            raise InputError(f"{source}: a derived checkpoint without its genotype")
        model = DerivedPoseNet(Genotype.from_json(body["genotype"], source), backbone)
    else:
        raise InputError(f"{source}: unknown model kind {body['kind']!r}")
    missing, unexpected = model.load_state_dict(body["model"], strict=False)
    if missing or unexpected:
        raise InputError(
            f"{source}: weights do not fit the network: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model


def load_model(path: str | Path) -> nn.Module:
    return build_model(read_model_file(path), str(path))
