"""Comparison of trials: per-group best/median, Pareto sets, the table text and the plot."""

from __future__ import annotations

import json

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.orchestration.compare import (
    compare_rows,
    comparison_json,
    dominates,
    group_summary,
    pareto_front,
    plot_comparison,
)

AP = Objective("val_ap", "max")
MACS = Objective("macs", "min")


def row(tid, grouping, best, macs, depth=4, scales=(4, 8, 16), final_ap=None):
    final = {"val_ap": best if final_ap is None else final_ap, "macs": float(macs)}
    return {
        "trial_id": tid,
        "grouping": grouping,
        "depth": depth,
        "scales": list(scales),
        "objective": "val_ap",
        "best": best,
        "final_json": json.dumps(final),
        "macs": macs,
        "params": macs // 10,
        "genotype_fp": f"fp-{tid}",
    }


ROWS = [
    row("t1", "coco-p1", 0.30, 5_000_000),
    row("t2", "coco-p3", 0.50, 9_000_000, depth=5),
    row("t3", "coco-p3", 0.40, 4_000_000, scales=(4, 8)),
    row("t4", "coco-p1", 0.20, 6_000_000),
    row("t5", "coco-p1", None, 1_000_000),  # never reported a value
]


def test_group_summary_best_and_median_per_grouping():
    table = group_summary(ROWS, "grouping", AP)
    assert [e["grouping"] for e in table] == ["coco-p3", "coco-p1"]  # best first
    p3, p1 = table
    assert (p3["best"], p3["median"], p3["trial_id"], p3["macs"]) == (0.5, 0.45, "t2", 9_000_000)
    assert (p1["trials"], p1["scored"], p1["best"], p1["median"]) == (3, 2, 0.30, 0.25)
    assert p1["genotype_fp"] == "fp-t1"


def test_group_summary_by_depth_and_scales_and_min_mode():
    depth = {e["depth"]: e for e in group_summary(ROWS, "depth", AP)}
    assert set(depth) == {"4", "5"} and depth["5"]["best"] == 0.5
    scales = {e["scales"]: e for e in group_summary(ROWS, "scales", AP)}
    assert set(scales) == {"4-8-16", "4-8"}
    cheapest = group_summary(ROWS, "grouping", MACS)[0]
    assert (cheapest["grouping"], cheapest["best"]) == ("coco-p1", 1_000_000)


def test_pareto_front_two_objectives():
    front = {r["trial_id"] for r in pareto_front(ROWS, [AP, MACS])}
    # t2 has the best AP, t3 trades AP for fewer MACs, t1/t4 are dominated by t3; t5 has no AP
    assert front == {"t2", "t3"}
    assert dominates([0.5, 1.0], [0.4, 2.0], ["max", "min"])
    assert not dominates([0.5, 1.0], [0.5, 1.0], ["max", "min"])  # equal: no domination
    assert not dominates([0.5, 3.0], [0.4, 2.0], ["max", "min"])


def test_pareto_uses_final_values_when_multi_objective():
    rows = [row("a", "coco-p1", 0.9, 5, final_ap=0.1), row("b", "coco-p1", 0.5, 5)]
    assert [r["trial_id"] for r in pareto_front(rows, [AP, MACS])] == ["b"]
    assert [r["trial_id"] for r in pareto_front(rows, [AP])] == ["a"]  # single: best over epochs


def test_comparison_text_json_and_plot(tmp_path):
    comparison = compare_rows("c-1", ROWS, [AP, MACS])
    text = comparison.text()
    assert "per grouping:" in text and "per depth:" in text and "per scales:" in text
    assert "Pareto set over ['val_ap', 'macs']" in text
    body = json.loads(comparison_json(comparison))
    assert body["pareto"] == ["t2", "t3"]
    assert body["tables"]["grouping"][0]["grouping"] == "coco-p3"
    path = plot_comparison(comparison, tmp_path / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = compare_rows("c-1", ROWS, [AP])
    assert "Pareto" not in single.text()
    plot_comparison(single, tmp_path / "single.png")
