"""The genotype: the discrete architecture derived from a supernet's α and β.

Derivation rule (recorded in every genotype as ``rule``; PoseNFS has none, see POSENFS-SPEC §4, §9):
1. Ops: on every edge, keep the candidate with the largest α, never ``zero`` (DARTS). With α
   shared per part every cell of that part gets the same ops.
2. Inputs: per cell keep the input *map* with the largest weight (``argmax``), every map whose
   weight ≥ ``beta_threshold`` (``threshold``; at least the strongest one), the two maps with
   the largest weights (``top2``; a cell reading two maps keeps both), or the strongest map and
   the parallel one (``argmax_parallel``: one map when parallel is the strongest). A map's
   weight is the SUM of softmax(β) over the slots (parallel / above / below) that read it,
   which is what the supernet's input node mixes: at the top row ``above`` reads the parallel
   map again (at a bottom row ``below`` does), so the supernet weighs that map by
   β_parallel + β_above (POSENFS-SPEC §1.3). A kept map is kept through the first slot that
   reads it, never twice.
   (Before, slots were compared one by one, so a top-row cell could keep ``below`` at weight 0.4
   while the supernet mixed the parallel map at 0.6: benchmarks/RESULTS.md, "Why the champion
   loses".)
3. Cells: keep the fabric's output cell, then walk back layer by layer keeping every cell that a
   kept cell reads through a kept slot. Everything else is dropped from the derived network.

``Genotype`` is a frozen value with ``schema_version``, canonical JSON (sorted keys) and a sha256
``fingerprint`` over its identity fields only (space, grouping, backbone, rule, parts): the
softmax weights at derivation time, the measured size and (version 2) the ``confidence`` record
(confidence.py) are kept beside them but never change the fingerprint; version 1 files still load
and keep their fingerprint. An unknown schema version or a malformed file is a ``SpecError``.

What this is not: a network. ``derive_genotype`` reads α/β tensors and the fabric geometry
(``geometry.py``) and imports nothing under ``nn/``; the size of the derived network
(``params``, ``macs``) is filled in by whoever builds that network (``PoseSupernet.genotype``
through ``nn.counting.measure_genotype``), with ``Genotype.with_size``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.files import read_checked
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.specs import DerivationRule, FabricSpace
from nfs_orchestrator.strict import canonical_json, fingerprint, from_mapping, to_plain

SCHEMA_VERSION = 2  # 2 adds the optional ``confidence`` record (confidence.py)
READABLE_VERSIONS = (1, 2)  # version 1 files (no confidence) still load
IDENTITY_FIELDS = ("schema_version", "space", "grouping", "backbone", "rule", "parts")
IDENTITY_VERSION = 1  # the identity fields have not changed since version 1: same fingerprint


@dataclass(frozen=True)
class CellGene:
    """A kept cell at (scale, depth): its kept input slots and the op of each edge."""

    scale: int
    depth: int
    inputs: tuple[str, ...]  # subset of ("parallel", "above", "below")
    ops: tuple[str, ...]  # one per edge, in edge order


@dataclass(frozen=True)
class PartGene:
    name: str
    keypoints: tuple[str, ...]
    cells: tuple[CellGene, ...]  # kept cells, layer by layer, rows in order


@dataclass(frozen=True)
class Genotype:
    schema_version: int
    space: FabricSpace
    grouping: PartGrouping
    backbone: str
    rule: DerivationRule
    parts: tuple[PartGene, ...]
    input_size: tuple[int, int] | None = None  # (W, H) at which params/macs were measured
    params: int | None = None  # of the derived network (backbone included)
    macs: int | None = None
    arch_weights: dict[str, Any] = field(default_factory=dict)  # softmax α/β per part, rounded
    confidence: dict[str, Any] | None = None  # margins and summary (confidence.py); v2 only

    def __post_init__(self) -> None:
        if self.schema_version not in READABLE_VERSIONS:
            raise SpecError(
                f"genotype schema_version {self.schema_version} is not supported "
                f"(this posenfs reads {list(READABLE_VERSIONS)})"
            )
        names = [p.name for p in self.parts]
        if names != [p.name for p in self.grouping.parts]:
            raise SpecError(f"genotype parts {names} do not match grouping {self.grouping.name}")
        sites = {(s.scale, s.depth) for layer in fabric_sites(self.space) for s in layer}
        for part in self.parts:
            if not part.cells:
                raise SpecError(f"genotype part {part.name}: no cells")
            for cell in part.cells:
                if (cell.scale, cell.depth) not in sites:
                    raise SpecError(
                        f"genotype part {part.name}: no cell at (scale {cell.scale}, depth "
                        f"{cell.depth}) in space {self.space.name}"
                    )
                if not cell.inputs or any(s not in SLOTS for s in cell.inputs):
                    raise SpecError(f"genotype part {part.name}: bad inputs {cell.inputs}")
                bad = [o for o in cell.ops if o not in self.space.ops or o == "zero"]
                if bad or len(cell.ops) != self.space.num_edges:
                    raise SpecError(
                        f"genotype part {part.name}: ops {list(cell.ops)} do not fit space "
                        f"{self.space.name} (ops {list(self.space.ops)}, "
                        f"{self.space.num_edges} edge(s), never zero)"
                    )

    def identity(self) -> dict[str, Any]:
        body = to_plain(self)
        return {**{k: body[k] for k in IDENTITY_FIELDS}, "schema_version": IDENTITY_VERSION}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the identity fields."""
        return fingerprint(self.identity())

    def to_json(self) -> str:
        """Canonical JSON of the whole genotype (identity and measurements), sorted keys."""
        body = to_plain(self)
        body["fingerprint"] = self.fingerprint()
        return json.dumps(json.loads(canonical_json(body)), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise SpecError(
                f"{source}: genotype schema_version {version!r} is not supported "
                f"(this posenfs reads {list(READABLE_VERSIONS)})"
            )
        stored = data.pop("fingerprint", None)
        try:
            genotype = from_mapping(cls, data)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None
        if stored is not None and stored != genotype.fingerprint():
            raise SpecError(
                f"{source}: stored fingerprint {stored[:12]}… does not match its content "
                f"({genotype.fingerprint()[:12]}…): the file was edited or corrupted"
            )
        return genotype

    def with_size(self, input_size: tuple[int, int], params: int, macs: int) -> Genotype:
        return replace(self, input_size=tuple(input_size), params=int(params), macs=int(macs))


def read_genotype(source: str | Path) -> Genotype:
    """Reads a genotype JSON file."""
    path = Path(source)
    text = read_checked(path, Path.read_text, error=SpecError, missing="no such genotype file")
    return Genotype.from_json(text, source=str(path))


def derive_genotype(
    space: FabricSpace,
    grouping: PartGrouping,
    arch: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    backbone: str = "",
    temperature: float = 1.0,
) -> Genotype:
    """The genotype that α/β derive by the space's derivation rule (module doc). Weights are
    softmax(α/T), softmax(β/T) at the ``temperature`` T the supernet mixes with (the
    ``threshold`` input rule depends on it).

    Args:
        arch: per part name of ``grouping``, its (α, β): α (k, |O|) shared by the part's cells
            or (cells, k, |O|) per cell; β (cells, 3), cells in ``fabric_sites`` order.
    Returns the genotype without its size (``input_size``/``params``/``macs`` stay ``None``):
    whoever builds the derived network measures it (``Genotype.with_size``).
    """
    rule = space.derivation
    t = float(temperature)
    layers = fabric_sites(space)
    sites = [s for layer in layers for s in layer]
    parts, weights = [], {}
    for part in grouping.parts:
        raw_alpha, raw_beta = arch[part.name]
        with torch.no_grad():
            alpha = torch.softmax(raw_alpha.detach().float().cpu() / t, dim=-1)
            beta = torch.softmax(raw_beta.detach().float().cpu() / t, dim=-1)
        chosen: dict[tuple[int, int], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for index, site in enumerate(sites):
            a = alpha if alpha.dim() == 2 else alpha[index]  # (k, |O|)
            ops = tuple(_best_nonzero_op(row, space.ops) for row in a)
            slots = kept_slots(beta[index].tolist(), site.sources, rule)
            chosen[(site.scale, site.depth)] = (slots, ops)
        kept = _reachable(layers, chosen)
        cells = tuple(
            CellGene(s.scale, s.depth, *chosen[(s.scale, s.depth)])
            for s in sites
            if (s.scale, s.depth) in kept
        )
        parts.append(PartGene(part.name, part.keypoints, cells))
        weights[part.name] = {
            "alpha": _rounded(alpha),
            "beta": _rounded(beta),
        }
    return Genotype(
        schema_version=SCHEMA_VERSION,
        space=space,
        grouping=grouping,
        backbone=backbone,
        rule=rule,
        parts=tuple(parts),
        arch_weights=weights,
    )


def _best_nonzero_op(weights: torch.Tensor, ops: tuple[str, ...]) -> str:
    order = sorted(range(len(ops)), key=lambda i: (-float(weights[i]), i))  # ties: first listed
    return next(ops[i] for i in order if ops[i] != "zero")


def kept_slots(
    weights: Sequence[float], sources: tuple[int, int, int], rule: DerivationRule
) -> tuple[str, ...]:
    """The slots a cell keeps from its softmax(β) row ``weights`` (one per slot): per distinct
    source map (first reading slot, in slot order) the sum of its slots' weights; the strongest
    map (ties: the earlier slot), with the ``threshold`` rule every map at or above
    ``beta_threshold`` too, with ``top2`` the runner-up too, with ``argmax_parallel`` the
    parallel slot's map too. The one home of the input rule: confidence.py reads it too."""
    maps: dict[int, list[int]] = {}  # source row → the slots reading it, in slot order
    for slot, src in enumerate(sources):
        maps.setdefault(src, []).append(slot)
    total = {src: sum(float(weights[s]) for s in slots) for src, slots in maps.items()}
    ranked = sorted(maps, key=lambda src: (-total[src], maps[src][0]))  # ties: the earlier slot
    best = ranked[0]
    kept = [
        maps[src][0]
        for src in maps
        if src == best
        or (rule.inputs == "threshold" and total[src] >= rule.beta_threshold)
        or (rule.inputs == "top2" and src in ranked[:2])
        or (rule.inputs == "argmax_parallel" and src == sources[0])
    ]
    return tuple(SLOTS[s] for s in sorted(kept))


def _reachable(layers, chosen) -> set[tuple[int, int]]:
    """Cells on a kept path to the output cell (the single cell of the last layer)."""
    out = layers[-1][0]
    kept = {(out.scale, out.depth)}
    for t in range(len(layers) - 1, 0, -1):
        for site in layers[t]:
            if (site.scale, site.depth) not in kept:
                continue
            for slot in chosen[(site.scale, site.depth)][0]:
                src = site.sources[SLOTS.index(slot)]
                kept.add((src, layers[t - 1][0].depth))
    return kept


def _rounded(t: torch.Tensor) -> list:
    return [[round(float(v), 6) for v in row] for row in t.reshape(-1, t.shape[-1])]


def format_genotype(genotype: Genotype) -> str:
    """A readable table: per part, each kept cell with its stride, inputs and ops."""
    strides = genotype.space.scales
    lines = [
        f"genotype {genotype.fingerprint()[:12]}  space {genotype.space.name}  "
        f"grouping {genotype.grouping.name}  backbone {genotype.backbone or '-'}",
        f"rule: ops {genotype.rule.ops}, inputs {genotype.rule.inputs}",
    ]
    if genotype.params is not None:
        w, h = genotype.input_size or (0, 0)
        lines.append(
            f"derived network at {w}x{h}: {genotype.params:,} params, "
            f"{genotype.macs:,} MACs ({(genotype.macs or 0) / 1e9:.2f} G)"
        )
    total = genotype.space.num_cells
    for part in genotype.parts:
        lines.append("")
        lines.append(
            f"part {part.name} ({', '.join(part.keypoints)}): {len(part.cells)}/{total} cells kept"
        )
        lines.append(f"  {'cell (scale, depth)':<22}{'stride':>7}  {'inputs':<24}ops")
        for c in part.cells:
            lines.append(
                f"  {f'({c.scale}, {c.depth})':<22}{strides[c.scale]:>7}  "
                f"{', '.join(c.inputs):<24}{', '.join(c.ops)}"
            )
    return "\n".join(lines)
