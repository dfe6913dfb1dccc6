"""Benchmark: where does the searched genotype lose? Supernet → one-hot supernet → retrained.

For each ``--search-seeds`` value, runs the quickstart campaign's base trial
(``experiments/quickstart.yaml``, ``trial({})`` with any ``--set``) in this process with
``LocalRuntime`` and measures, on the validation split, under the search's own execution:

(a) the supernet's val AP (its last epoch's weights and α/β);
(b) the same supernet with α/β replaced by the one-hot of a derived genotype (logits 0 for what
    the genotype keeps, −1e4 for the rest): the discretization gap, no retraining; (b') the same
    after re-estimating the BatchNorm statistics on ``--recal-steps`` training batches (the
    mixture's running statistics do not describe the one-hot network);

for three derivations of the input rule: ``slot`` (the genotype the search wrote, by its space's
rule: the per-slot argmax in the runs this was written for; ``tiny`` now keeps a threshold) and
``map`` (argmax over the distinct maps a cell reads, each weighed by the SUM of its slots'
weights, i.e. what the supernet's input node actually mixes; at the top row ``parallel`` and
``above`` read one map), and ``threshold`` (every map whose summed weight reaches 0.3: several
inputs per cell, with random controls matched to its size). Then (c) retrains from scratch,
under ``--retrain`` (``experiments/retrain_quickstart.yaml``) and each ``--retrain-seeds``
value, every arm: the derived genotype(s), the uniform part-based baseline
(``baselines.uniform_genotype``) and ``--random`` random genotypes of matched size
(``baselines.random_genotypes``). Runs live under ``--root`` keyed by settings and genotype
fingerprint, so a rerun resumes or reuses them.

Also printed per genotype: the parameter-free share of its ops (always 0: the derivation never
keeps ``zero``; ``skip_connect`` counts), softmax(zero) per part, and the stride of the coarsest
map on its output cell's kept path.

    python benchmarks/derivation_gap.py --root /tmp/gap --set grouping=groupings/coco-p3

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` records the figures.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nfs_orchestrator.baselines import random_genotypes, uniform_genotype  # noqa: E402
from nfs_orchestrator.campaign_spec import load_campaign  # noqa: E402
from nfs_orchestrator.data import build_dataset  # noqa: E402
from nfs_orchestrator.genotype import Genotype, derive_genotype, read_genotype  # noqa: E402
from nfs_orchestrator.geometry import SLOTS, fabric_sites  # noqa: E402
from nfs_orchestrator.hardware import choose_execution, detect, prepare_model  # noqa: E402
from nfs_orchestrator.loop_utils import epoch_batches, to_device, validate  # noqa: E402
from nfs_orchestrator.nn.backbones import build_backbone  # noqa: E402
from nfs_orchestrator.nn.counting import measure_genotype  # noqa: E402
from nfs_orchestrator.nn.supernet import PoseSupernet  # noqa: E402
from nfs_orchestrator.retrain.loop import run_retrain  # noqa: E402
from nfs_orchestrator.runtime import LocalRuntime  # noqa: E402
from nfs_orchestrator.search.loop import STATE_FILE, run_search  # noqa: E402
from nfs_orchestrator.specs import PARAMETER_FREE_OPS, TrialSpec, load_retrain  # noqa: E402
from nfs_orchestrator.specs import replace as replace_spec  # noqa: E402

MASKED = -1e4  # a logit whose softmax weight is exactly 0 in fp32


def last_row(run_dir: Path) -> dict:
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(rows[-1])


def map_rule_genotype(model: PoseSupernet, genotype: Genotype) -> Genotype:
    """The genotype with each cell's input chosen per distinct map (summed slot weights)."""
    space = model.space
    sites = [s for layer in fabric_sites(space) for s in layer]
    arch = {}
    for name, fabric in model.parts.items():
        beta = torch.softmax(fabric.beta.detach().float() / model.temperature, dim=-1)
        logits = torch.full_like(beta, MASKED)
        for i, site in enumerate(sites):
            sums: dict[int, float] = {}
            for slot, src in enumerate(site.sources):
                sums[src] = sums.get(src, 0.0) + float(beta[i, slot])
            best = max(sums, key=lambda s: (sums[s], -site.sources.index(s)))
            logits[i, site.sources.index(best)] = 0.0  # the first slot reading that map
        arch[name] = (fabric.alpha.detach(), logits)
    out = derive_genotype(space, model.grouping, arch, backbone=genotype.backbone)
    return measure_genotype(out, model.backbone, genotype.input_size)


def threshold_genotype(model: PoseSupernet, genotype: Genotype, threshold: float) -> Genotype:
    """The searched α/β derived with ``inputs: threshold`` (every map whose summed softmax(β)
    reaches ``threshold``, at least the strongest): a multi-input derivation of the same search."""
    rule = dataclasses.replace(model.space.derivation, inputs="threshold", beta_threshold=threshold)
    space = dataclasses.replace(model.space, derivation=rule)
    arch = {name: (f.alpha.detach(), f.beta.detach()) for name, f in model.parts.items()}
    out = derive_genotype(
        space, model.grouping, arch, backbone=genotype.backbone, temperature=model.temperature
    )
    return measure_genotype(out, model.backbone, genotype.input_size)


def probe_genotype(model: PoseSupernet, genotype: Genotype, kept: tuple[str, ...]) -> Genotype:
    """The genotype's ops with every cell keeping the slots ``kept`` (a probe, not a search
    result): ("parallel",) = the stride-4 row, (…all three) = every cell and input."""
    arch = {}
    for name, fabric in model.parts.items():
        logits = torch.full_like(fabric.beta.detach(), MASKED)
        for slot in kept:
            logits[:, SLOTS.index(slot)] = 0.0
        arch[name] = (fabric.alpha.detach(), logits)
    rule = model.space.derivation
    space = model.space
    if len(kept) > 1:
        space = dataclasses.replace(
            space, derivation=dataclasses.replace(rule, inputs="threshold", beta_threshold=0.3)
        )
    out = derive_genotype(space, model.grouping, arch, backbone=genotype.backbone)
    return measure_genotype(out, model.backbone, genotype.input_size)


def one_hot_(model: PoseSupernet, genotype: Genotype, which: str = "alpha+beta") -> None:
    """α and/or β (``which``) of ``model`` ← logits whose softmax is the one-hot of
    ``genotype``'s choices; the other keeps its searched value."""
    sites = [s for layer in fabric_sites(model.space) for s in layer]
    ops = model.space.ops
    for part in genotype.parts:
        fabric = model.parts[part.name]
        kept = {(c.scale, c.depth): c for c in part.cells}
        alpha = torch.full_like(fabric.alpha, MASKED)
        beta = torch.full_like(fabric.beta, MASKED)
        any_cell = part.cells[0]
        for i, site in enumerate(sites):
            cell = kept.get((site.scale, site.depth))
            for slot in cell.inputs if cell else SLOTS:  # dropped cells: never read
                beta[i, SLOTS.index(slot)] = 0.0
            chosen = (cell or any_cell).ops
            rows = alpha if alpha.dim() == 2 else alpha[i]
            for e, op in enumerate(chosen):
                rows[e, ops.index(op)] = 0.0
        with torch.no_grad():
            if "alpha" in which:
                fabric.alpha.copy_(alpha)
            if "beta" in which:
                fabric.beta.copy_(beta)


def recalibrate_bn(model, train_set, runtime, steps: int, batch: int, execution) -> None:
    """Re-estimates every BatchNorm's running statistics (cumulative mean over ``steps``
    training batches, no gradient, weights unchanged)."""
    from nfs_orchestrator.hardware import run_model

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for group in epoch_batches(
            train_set, list(range(len(train_set))), batch, 1, runtime, 12345, steps
        ):
            b = to_device(group, runtime.device)[0]
            run_model(model, b["image"], execution)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def slot_rms(model: PoseSupernet, val_set, execution, images: int = 32) -> dict:
    """Per part and cell, the RMS of each slot's resampled input (what β weighs) on the first
    ``images`` validation images, eval mode: {part: {"(scale,depth)": [parallel, above, below]}}."""
    from nfs_orchestrator.hardware import run_model

    seen: dict[tuple[str, str, int], float] = {}
    handles = []
    for name, fabric in model.parts.items():
        for key, cell in fabric.cells.items():
            for slot, module in enumerate(cell.resample):

                def hook(mod, inp, out, k=(name, key, slot)):
                    seen[k] = float(out.detach().float().pow(2).mean().sqrt())

                handles.append(module.register_forward_hook(hook))
    batch = torch.stack([val_set[i]["image"] for i in range(min(images, len(val_set)))])
    model.eval()
    with torch.no_grad():
        run_model(model, batch, execution)
    for h in handles:
        h.remove()
    out: dict = {}
    for (name, key, slot), v in seen.items():
        out.setdefault(name, {}).setdefault(key, [0.0, 0.0, 0.0])[slot] = round(v, 4)
    return out


def describe(genotype: Genotype, arch_weights: dict | None = None) -> dict:
    ops = [op for p in genotype.parts for c in p.cells for op in c.ops]
    strides = genotype.space.scales
    sites = {(s.scale, s.depth): s for layer in fabric_sites(genotype.space) for s in layer}
    coarsest = {}
    for p in genotype.parts:  # the coarsest row any kept cell reads (the pyramid included)
        rows = [
            sites[(c.scale, c.depth)].sources[SLOTS.index(slot)]
            for c in p.cells
            for slot in c.inputs
        ]
        coarsest[p.name] = max(strides[r] for r in rows)
    out = {
        "fingerprint": genotype.fingerprint()[:12],
        "params": genotype.params,
        "param_free_share": sum(op in PARAMETER_FREE_OPS for op in ops) / len(ops),
        "ops": sorted(set(ops)),
        "cells": {p.name: len(p.cells) for p in genotype.parts},
        "inputs": {
            p.name: [f"({c.scale},{c.depth}):{'+'.join(c.inputs)}" for c in p.cells]
            for p in genotype.parts
        },
        "coarsest_kept_stride": coarsest,
    }
    if arch_weights:
        zero = genotype.space.ops.index("zero") if "zero" in genotype.space.ops else None
        if zero is not None:
            out["softmax_zero"] = {
                k: round(statistics.fmean(r[zero] for r in w["alpha"]), 3)
                for k, w in arch_weights.items()
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaign", default=str(REPO / "experiments" / "quickstart.yaml"))
    parser.add_argument("--retrain", default=str(REPO / "experiments" / "retrain_quickstart.yaml"))
    parser.add_argument("--search-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain-set", dest="retrain_sets", action="append", default=[])
    parser.add_argument("--random", type=int, default=1, help="random matched-size controls")
    parser.add_argument("--recal-steps", type=int, default=20)
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--state", nargs="*", default=[], help="finished search checkpoint dirs")
    parser.add_argument("--arms", nargs="*", default=[], help="retrain only arms with a prefix")
    parser.add_argument("--root", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(f"campaign: {args.campaign}  overrides: {args.sets or 'none'}", flush=True)
    tag = hashlib.sha256(json.dumps(args.sets).encode()).hexdigest()[:8]
    rtag = hashlib.sha256(json.dumps(args.retrain_sets).encode()).hexdigest()[:8]
    data_root = f"data.root={root / 'data'}"
    retrain_spec = load_retrain(args.retrain, (data_root, *args.retrain_sets))
    results: dict = {"searches": [], "retrains": {}}
    arms: list[tuple[str, Genotype]] = []
    sources = []  # (label, trial, run dir or None, checkpoint dir, final metrics, wall)
    for state_dir in args.state:  # finished searches elsewhere (e.g. a campaign's trial)
        state = torch.load(Path(state_dir) / STATE_FILE, weights_only=True)
        body = state["trial"]
        body["data"]["root"] = str(root / "data")  # the same generated data, here
        trial = TrialSpec.from_dict(body)
        report = Path(state_dir) / "posenfs_report.json"
        final = json.loads(report.read_text()) if report.is_file() else {}
        sources.append((Path(state_dir).parent.name, trial, Path(state_dir), final, float("nan")))
    for seed in args.search_seeds:
        trial = load_campaign(args.campaign, (data_root, f"seed={seed}", *args.sets)).trial({})
        run_dir = root / f"search-seed{seed}-{tag}"
        started = time.monotonic()
        run_search(trial, LocalRuntime(run_dir, verbose=False))  # resumes / no-op when done
        wall = time.monotonic() - started
        ckpt = LocalRuntime(run_dir).latest_checkpoint()
        sources.append((f"s{seed}", trial, ckpt, last_row(run_dir), wall))
    for label, trial, ckpt, final, wall in sources:
        genotype = read_genotype(ckpt / "genotype.json")
        state = torch.load(ckpt / STATE_FILE, weights_only=True)
        backbone = build_backbone(trial.backbone.name, None, random_init=True)
        model = PoseSupernet(trial.fabric, trial.grouping, backbone)
        model.load_state_dict(state["model"])
        model.temperature = float(final.get("temperature", 1.0))
        execution = choose_execution(detect("cpu"), trial.search.precision, "auto")
        prepare_model(model, execution)
        model.eval()
        schema = trial.grouping.schema
        val_set = build_dataset(trial.data, schema, "val", train=False)
        train_set = build_dataset(trial.data, schema, "train", train=True)
        runtime = LocalRuntime(root / "scratch", verbose=False)  # only its device and rank

        def ap(m, val_set=val_set, data=trial.data, schema=schema, execution=execution) -> float:
            return float(validate(m, val_set, data, schema, "cpu", 0, execution)["val_ap"])

        row = {"search": label, "wall_s": round(wall, 1), "val_ap_reported": final.get("val_ap")}
        row["supernet"] = ap(model)
        row["slot_rms"] = slot_rms(model, val_set, execution)
        by_rule = {
            "slot": genotype,
            "map": map_rule_genotype(model, genotype),
            "probe-parallel": probe_genotype(model, genotype, ("parallel",)),
            "probe-all": probe_genotype(model, genotype, SLOTS),
            "threshold": threshold_genotype(model, genotype, 0.3),
        }
        for rule, g in by_rule.items():
            hot = copy.deepcopy(model)
            one_hot_(hot, g)
            row[f"onehot_{rule}"] = ap(hot)
            recalibrate_bn(
                hot, train_set, runtime, args.recal_steps, trial.search.batch_size, execution
            )
            row[f"onehot_{rule}_bnrecal"] = ap(hot)
            row[f"genotype_{rule}"] = describe(g, genotype.arch_weights)
            arms.append((f"derived-{rule}-{label}", g))
        for which in ("alpha", "beta"):  # which half of the discretization costs what
            hot = copy.deepcopy(model)
            one_hot_(hot, genotype, which)
            row[f"onehot_slot_{which}_only"] = ap(hot)
        row["same_genotype"] = by_rule["slot"].fingerprint() == by_rule["map"].fingerprint()
        results["searches"].append(row)
        print(json.dumps(row, sort_keys=True), flush=True)
        if label == sources[0][0]:
            arms.append(("uniform", uniform_genotype(genotype)))
        for i, g in enumerate(random_genotypes(genotype, args.random, seed=trial.seed)):
            arms.append((f"random{i}-{label}", g))
        for i, g in enumerate(random_genotypes(by_rule["threshold"], args.random, seed=trial.seed)):
            arms.append((f"random-threshold{i}-{label}", g))  # matched to the threshold genotype
    if args.no_retrain:
        print(json.dumps(results, sort_keys=True))
        return
    done: dict[tuple[str, int], float] = {}
    for rseed in args.retrain_seeds:
        spec = replace_spec(retrain_spec, seed=retrain_spec.seed + rseed)
        for arm, g in arms:
            if args.arms and not any(arm.startswith(a) for a in args.arms):
                continue
            key = (g.fingerprint(), rseed)
            if key not in done:
                run_dir = root / f"retrain-{g.fingerprint()[:12]}-seed{rseed}-{rtag}"
                t0 = time.monotonic()
                m = run_retrain(spec, g, LocalRuntime(run_dir, verbose=False))
                ap_val = m.get("val_ap", last_row(run_dir).get("val_ap"))
                done[key] = float(ap_val)
                print(f"retrain {arm} {g.fingerprint()[:12]} seed {rseed}: val_ap {done[key]:.4f} "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
            results["retrains"].setdefault(arm, {})[rseed] = done[key]
            results.setdefault("arm_genotypes", {})[arm] = describe(g)
    print("\narm                      val AP retrained (mean ± sd over seeds)   params")
    for arm, vals in results["retrains"].items():
        v = list(vals.values())
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{arm:<24} {statistics.fmean(v):.4f} ± {sd:.4f}  {[f'{x:.4f}' for x in v]}  "
              f"{results['arm_genotypes'][arm]['params']}")  # fmt: skip
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
