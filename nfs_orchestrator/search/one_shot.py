"""One-shot selection of each part's inputs: random search with weight sharing (issue 14).

β descends the heatmap loss, and on the planted data it did not follow what the data rewards
(benchmarks/RESULTS.md, "Planted structure"): the weights adapt to whatever mixture β holds,
so β weighs what an input adds on top, not which input a part can do with. A one-shot search
asks the second question directly. With ``search.input_sampling: gumbel`` every training step
runs one drawn input per cell (with ``search.mode: none``, β frozen at 0, each drawn uniformly:
a single-path one-shot model, Guo et al. 2019), so the shared weights are trained to work under
any single-input path. With ``search.selection: one_shot`` the search then ranks paths by
evaluating them on those weights (Li & Talwalkar 2019, random search with weight sharing):

- it draws ``search.one_shot_candidates`` input assignments, one input per cell of every part,
  each uniform over the cell's three slots (seeded by the trial's seed: deterministic);
- runs each on the validation split with eval-mode weights (the search loop validates it);
- keeps, per part, the candidate whose part scores best by the dataset's metric on that part's
  keypoints (COCO OKS AP / MPII PCKh, ``part_metrics``); ties go to the earlier candidate.

The parts' fabrics are independent, so one validation pass scores candidate k of every part at
once: K passes search K paths per part. (Not quite independently: a part's AP also reads the
other parts' heatmaps through each instance's score, the mean of its keypoint confidences
(``data.inference.rescore``), so the kept network's per-part AP differs a little from the score
it was kept by.) The kept assignment is written into β as its one-hot
(``ONE_HOT`` apart), so the genotype, its confidence and everything downstream derive it as any
β; those margins then say "decided", and the evidence is the score gap to the runner-up
(``one_shot_gap.<part>``). Only inputs are selected; the ops keep α and the space's rule (with
``search.mode: none`` α stays 0 and the rule's tie-break picks them: meant for a space with one
op per edge, as the planted test's, or a mode that learns α). No ray/optuna/mlflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

ONE_HOT = 30.0  # β of a kept slot minus β of the others: softmax weight e^-30 elsewhere


def one_hot_beta(slots: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """β (cells, 3) of ``like``'s dtype whose argmax, per cell, is ``slots`` (cells,)."""
    beta = torch.full_like(like, -ONE_HOT)
    beta[torch.arange(len(slots)), slots] = 0.0
    return beta


def select_inputs(
    model,
    score: Callable[[object], dict[str, float]],
    candidates: int,
    seed: int,
    say: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Random search with weight sharing over single-input paths (module docstring).

    ``score(model)`` evaluates the supernet as its β stand and returns each part's score
    (higher is better; the search loop's: that part's val AP or PCKh). Returns each part's
    chosen β (cells, 3) and the metrics ``one_shot_score.<part>`` (the kept candidate's score)
    and ``one_shot_gap.<part>`` (its lead over the runner-up; 0 with one candidate). ``model``
    must read one input per cell in eval (``sample_inputs``); its β are left as they were.
    ``say`` takes progress lines (with an ETA)."""
    if not model.sample_inputs:
        raise ValueError("select_inputs: the supernet reads mixtures (input_sampling: mixed)")
    saved = {name: f.beta.detach().clone() for name, f in model.parts.items()}
    g = torch.Generator().manual_seed(seed)
    scores: dict[str, list[float]] = {name: [] for name in model.parts}
    drawn: dict[str, list[torch.Tensor]] = {name: [] for name in model.parts}
    started = time.monotonic()
    try:
        for k in range(candidates):
            with torch.no_grad():
                for name, fabric in model.parts.items():
                    slots = torch.randint(3, (fabric.beta.shape[0],), generator=g)  # (cells,)
                    drawn[name].append(slots)
                    fabric.beta.copy_(one_hot_beta(slots, fabric.beta))
            scored = score(model)
            for name in model.parts:
                value = float(scored[name])
                scores[name].append(value if math.isfinite(value) else -math.inf)
            if say is not None and (k + 1) % max(1, candidates // 4) == 0 and k + 1 < candidates:
                left = (time.monotonic() - started) / (k + 1) * (candidates - k - 1)
                say(f"one-shot selection: {k + 1}/{candidates} candidates · ETA {left:.0f} s")
    finally:
        with torch.no_grad():
            for name, fabric in model.parts.items():
                fabric.beta.copy_(saved[name])
    chosen, metrics = {}, {}
    for name, fabric in model.parts.items():
        ranked = sorted(range(candidates), key=lambda i: (-scores[name][i], i))  # ties: earlier
        best, runner_up = ranked[0], ranked[min(1, candidates - 1)]
        chosen[name] = one_hot_beta(drawn[name][best], fabric.beta.detach())
        metrics[f"one_shot_score.{name}"] = scores[name][best]
        metrics[f"one_shot_gap.{name}"] = scores[name][best] - scores[name][runner_up]
    return chosen, metrics
