"""Import state dicts of the reference PoseNFS code (yangsenius/PoseNFS) into a ``PoseSupernet``.

Key families of the reference (POSENFS-SPEC §1–2) and where they go here:

    backbone.*                                         → backbone.* (same layouts)
    reduce.<p>.<level>.*                               → parts.<part p>.adapters.convs.<level>.*
    <part>_part.alphas / .betas                        → parts.<part>.alpha / .beta
    <part>_part.cell_<layer>_<scale>.X                 → parts.<part>.cells.s<scale>_d<layer>.Y:
    ….propress_list.<slot>.operation.<j>.* (finer)     → ….resample.<slot>.<j>.*
    ….propress_list.<slot>.conv_1x1.* / .bn.*          → ….resample.<slot>.conv.* / .bn.*
    ….cell_arch.<edge>.ops.<i>.operation.<j>.*         → ….edges.<edge>.ops.<op name i>.<j>.*
    ….cell_arch.<edge>.ops.<i>.<j>.*  (pooling + BN)   → ….edges.<edge>.ops.<op name i>.<j>.*
    ….channel_keep.*                                   → ….out.*
    <part>_part.final_layer.<j>.*                      → parts.<part>.head.conv.<j>.*

Keys the reference holds but never executes are dropped by name and listed once: every part's
``stem.*`` (inherited, never called), the second mixed op ``cell_arch.<e ≥ k>`` of pre-2021
checkpoints, profiler buffers ``total_ops``/``total_params``, and MobileNetV2's ``features.17``.
Any other missing or unexpected key, or a shape mismatch, is an ``InputError`` naming it.

The reference orders MPII joints differently (head_top, upper_neck, thorax, …; §2.1); we keep
MPII's own order, so ``--check`` permutes the reference output before comparing. The op order of
the fabric space must be the reference config's (the shipped spaces are).
What this is not: the reference code itself (never imported) or a downloader; files are local.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.files import read_checked
from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.specs import FabricSpace

# The reference's joint order per schema (names in our vocabulary), for mapping its output.
REFERENCE_JOINT_ORDER: dict[str, tuple[str, ...]] = {
    "mpii16": (
        "head_top",
        "upper_neck",
        "thorax",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
        "pelvis",
    ),
}

_CELL = re.compile(r"^(?P<part>[A-Za-z0-9_]+?)\.cell_(?P<layer>\d+)_(?P<scale>\d+)\.(?P<rest>.+)$")
_DEAD = (
    re.compile(r"^[A-Za-z0-9_]+?\.stem\."),
    re.compile(r"(^|\.)total_(ops|params)$"),
    re.compile(r"^backbone\.features\.1[7-9]\."),
)


@dataclass
class ImportReport:
    """What an import did: the converted state dict and the keys it dropped on purpose."""

    state_dict: dict[str, torch.Tensor]
    dropped: list[str]


def load_reference_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` of a reference file: a state dict, or a dict holding ``state_dict``."""
    p = Path(path)
    data = read_checked(
        p,
        lambda f: torch.load(f, map_location="cpu", weights_only=True),
        missing="no such checkpoint file",
        failure=lambda e: f"not a readable torch checkpoint ({type(e).__name__})",
    )
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a dict, got {type(data).__name__}")
    if "state_dict" not in data:
        data = {"state_dict": data}
    if not isinstance(data["state_dict"], dict):
        raise InputError(f"{p}: state_dict is not a mapping")
    return data


def reference_part_names(grouping: PartGrouping) -> list[str]:
    """The reference's module name of each of our parts, in grouping order."""
    return [p.name if p.name == "whole_body" else f"{p.name}_part" for p in grouping.parts]


def convert_state_dict(
    reference: dict[str, torch.Tensor],
    space: FabricSpace,
    grouping: PartGrouping,
    target: dict[str, torch.Tensor],
    source: str = "checkpoint",
) -> ImportReport:
    """Maps a reference state dict onto our key names, checked against ``target``'s keys/shapes.

    Floating tensors are cast to float32 (the shipped fixture stores float16).
    """
    part_of = dict(zip(reference_part_names(grouping), [p.name for p in grouping.parts]))
    part_index = {str(i): name for i, name in enumerate(part_of.values())}
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in reference.items():
        key = key.removeprefix("module.")
        if any(rx.search(key) for rx in _DEAD):
            dropped.append(key)
            continue
        ours = _map_key(key, space, part_of, part_index)
        if ours == "":
            dropped.append(key)
            continue
        if ours is None:
            unknown.append(key)
            continue
        converted[ours] = value.float() if value.is_floating_point() else value
    if unknown:
        raise InputError(
            f"{source}: unexpected keys the reference layout does not have: "
            f"{unknown[:5]}{' …' if len(unknown) > 5 else ''}"
        )
    extra = [k for k in converted if k not in target]
    if extra:
        raise InputError(
            f"{source}: keys with no place in this supernet (check --fabric/"
            f"--grouping/--backbone): {extra[:5]}"
        )
    missing = [k for k in target if k not in converted]
    if missing:
        raise InputError(f"{source}: the checkpoint lacks keys this supernet needs: {missing[:5]}")
    bad = [
        (k, tuple(converted[k].shape), tuple(target[k].shape))
        for k in target
        if converted[k].shape != target[k].shape
    ]
    if bad:
        k, got, want = bad[0]
        raise InputError(
            f"{source}: shape mismatch at {k}: checkpoint {got}, supernet {want}"
            f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}"
        )
    return ImportReport(converted, dropped)


def _map_key(
    key: str, space: FabricSpace, part_of: dict[str, str], part_index: dict[str, str]
) -> str | None:
    """Our key for a reference key; '' for a legacy key to drop; None when unknown."""
    if key.startswith("backbone."):
        return key
    if key.startswith("reduce."):
        _, p, level, leaf = key.split(".", 3)
        return f"parts.{part_index[p]}.adapters.convs.{level}.{leaf}" if p in part_index else None
    if (m := _CELL.match(key)) is not None:
        part = part_of.get(m["part"])
        if part is None:
            return None
        cell = f"parts.{part}.cells.s{m['scale']}_d{m['layer']}"
        rest = m["rest"]
        if rest.startswith("channel_keep."):
            return f"{cell}.out.{rest.removeprefix('channel_keep.')}"
        if (r := re.match(r"^propress_list\.(\d)\.(?:operation\.)?(.+)$", rest)) is not None:
            leaf = re.sub(r"^conv_1x1\.", "conv.", r[2])  # Up: conv_1x1/bn → conv/bn
            return f"{cell}.resample.{r[1]}.{leaf}"
        if r := re.match(r"^cell_arch\.(\d+)\.ops\.(\d+)\.(?:operation\.)?(.+)$", rest):
            edge, op = int(r[1]), int(r[2])
            if edge >= space.num_edges:
                return ""  # the pre-2021 second mixed op: built, never run
            if op >= len(space.ops):
                return None
            return f"{cell}.edges.{edge}.ops.{space.ops[op]}.{r[3]}"
        return None
    head, _, leaf = key.partition(".")
    part = part_of.get(head)
    if part is None:
        return None
    if leaf in ("alphas", "betas"):
        return f"parts.{part}.{leaf[:-1]}"
    if leaf.startswith("final_layer."):
        return f"parts.{part}.head.conv.{leaf.removeprefix('final_layer.')}"
    return None


def reference_output_permutation(grouping: PartGrouping) -> list[int]:
    """perm such that ``reference_output[:, perm]`` is in our schema's joint order."""
    order = REFERENCE_JOINT_ORDER.get(grouping.schema.name, grouping.schema.keypoints)
    return [order.index(name) for name in grouping.schema.keypoints]


def check_against_reference(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    reference_output: torch.Tensor,
    grouping: PartGrouping,
) -> dict[str, Any]:
    """Runs ``model`` in eval mode on ``inputs`` and compares with the reference's output."""
    model.eval()
    with torch.no_grad():
        ours = model(inputs.float())
    ref = reference_output.float()[:, reference_output_permutation(grouping)]
    err = float((ours - ref).abs().max())
    scale = float(ref.abs().max())
    return {"max_abs_err": err, "max_abs_ref": scale, "ok": err <= 1e-4 * max(1.0, scale)}


def import_reference(
    checkpoint: str | Path,
    space: FabricSpace,
    grouping: PartGrouping,
    backbone: str,
    input_size: tuple[int, int],
    output: str | Path,
    check: bool = False,
) -> dict[str, Any]:
    """Converts a reference checkpoint into a posenfs supernet checkpoint at ``output``, with
    its genotype beside it (``<output stem>.genotype.json``).

    Returns ``{"dropped": [...], "output", "genotype", "check": {...} | None}``; ``check`` runs
    the converted model on the file's ``input`` and compares with its ``output``.
    """
    from nfs_orchestrator.model_io import save_model
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.specs import check_compatible

    dataset = "mpii" if grouping.schema.name == "mpii16" else "coco"
    check_compatible(space, grouping, dataset, input_size)
    data = load_reference_file(checkpoint)
    model = PoseSupernet(space, grouping, build_backbone(backbone, random_init=True))
    report = convert_state_dict(
        data["state_dict"], space, grouping, model.state_dict(), source=str(checkpoint)
    )
    model.load_state_dict(report.state_dict)
    genotype = model.genotype(input_size, backbone)
    out = save_model(
        output,
        model,
        kind="supernet",
        space=space,
        grouping=grouping,
        backbone=backbone,
        input_size=input_size,
        genotype=genotype,
    )
    genotype_path = out.with_name(f"{out.stem}.genotype.json")
    genotype_path.write_text(genotype.to_json())
    result: dict[str, Any] = {
        "dropped": report.dropped,
        "output": str(out),
        "genotype": str(genotype_path),
        "check": None,
    }
    if check:
        if "input" not in data or "output" not in data:
            raise InputError(f"{checkpoint}: --check needs 'input' and 'output' tensors in it")
        result["check"] = check_against_reference(model, data["input"], data["output"], grouping)
    return result
