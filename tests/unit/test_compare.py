"""Comparison of trials: per-group best/median, Pareto sets, the table text and the plot."""

from __future__ import annotations

import json
import warnings

import pytest

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.orchestration.compare import (
    compare_rows,
    comparison_json,
    dominates,
    group_summary,
    pareto_front,
    part_summary,
    plot_comparison,
    plot_parts,
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
    agree = {"params": "{}", "seeds": 3, "ops": 1.0, "inputs": 0.5, "ops_chance": 1 / 3}
    agree |= {"inputs_chance": 0.238, "decided_both": 8, "decided_equal": 6}
    agree |= {"all": 0.571, "all_chance": 0.252}
    consensus = {"fingerprint": "ab" * 32, "decided_share": 0.625, "undecided": False}
    consensus |= {"configuration": "0123456789ab"}
    undecided = {**consensus, "decided_share": 0.25, "undecided": True}
    single.seed_agreement = [
        {**agree, "consensus": consensus},
        {**agree, "decided_both": 0, "decided_equal": 0, "consensus": undecided},
    ]
    lines = single.text().splitlines()
    assert "3 seeds: all decisions 0.57 (chance 0.25), ops 1.00 (chance 0.33)," in lines[-4]
    assert lines[-4].endswith(
        "inputs 0.50 (chance 0.24); decided in both seeds: 6 of 8 equal (0.75)"
    )
    assert (
        "consensus of the 3 seeds (mean α/β weights): genotype abababababab, decided "
        in (lines[-3])
    )
    assert "(62% of decisions decided), consensus/0123456789ab.json; promote" in lines[-3]
    assert lines[-2].endswith("decided in both seeds: none")
    assert "UNDECIDED (25% of decisions decided)" in lines[-1]


def test_plot_of_a_campaign_with_no_finished_trial_has_no_empty_legends(tmp_path):
    # a trial that failed while still a PENDING row known only by its outer choices (no grouping)
    failed = {**row("t9", None, None, 5_000_000), "final_json": None, "macs": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a legend with nothing in it
        path = plot_comparison(compare_rows("c-1", [failed], [AP]), tmp_path / "none.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def part_row(tid, grouping, num_parts, **parts):
    """A row whose trial reported per-part metrics ``parts`` (``{"val_ap.head": 0.5, ...}``)."""
    return {
        **row(tid, grouping, 0.5, 1_000_000),
        "num_parts": num_parts,
        "parts_json": json.dumps(parts, sort_keys=True),
    }


def _p3(tid, head, upper, lower):
    return part_row(
        tid,
        "coco-p3",
        3,
        **{
            "val_ap.head": head,
            "val_ap.upper_limb": upper,
            "val_ap.lower_limb": lower,
            "macs.head": 1e6,
            "macs.upper_limb": 2e6,
            "macs.lower_limb": 3e6,
        },
    )


PART_ROWS = [
    part_row("a", "coco-p1", 1, **{"val_ap.whole_body": 0.40, "macs.whole_body": 4e6}),
    part_row("b", "coco-p1", 1, **{"val_ap.whole_body": 0.50, "macs.whole_body": 4e6}),
    _p3("c", 0.70, 0.50, 0.30),
    _p3("d", 0.60, 0.40, 0.20),
    part_row(
        "e",
        "coco-p5",
        5,
        **{
            "val_ap.head_shoulder": 0.65,
            "val_ap.left_arm": 0.35,
            "val_ap.right_arm": 0.33,
            "val_ap.legs": 0.25,
            "val_ap.hips": 0.45,
        },
    ),
    row("f", "coco-p1", 0.2, 5),  # no per-part metrics (a ledger before parts_json)
]


def test_part_summary_means_over_trials_per_grouping():
    summary = part_summary(PART_ROWS)
    assert summary["metric"] == "val_ap"
    assert summary["groupings"] == ["coco-p1", "coco-p3", "coco-p5"]  # by number of parts
    # parts in grouping order, then each grouping's own order
    assert summary["parts"][:4] == ["whole_body", "upper_limb", "head", "lower_limb"]
    assert summary["parts"][4:] == ["left_arm", "right_arm", "legs", "head_shoulder", "hips"]
    cells = summary["cells"]
    assert cells["whole_body"]["coco-p1"] == {"value": 0.45, "macs": 4e6, "trials": 2}
    assert cells["head"]["coco-p3"]["value"] == pytest.approx(0.65)
    assert cells["lower_limb"]["coco-p3"] == {
        "value": pytest.approx(0.25),
        "macs": 3e6,
        "trials": 2,
    }
    assert cells["legs"]["coco-p5"] == {"value": 0.25, "macs": None, "trials": 1}
    assert "coco-p3" not in cells["legs"]
    assert part_summary(ROWS) == {}  # no trial reported a part
    mpii = [part_row("m", "mpii-p3", 3, **{"val_pckh.head": 80.0})]
    assert part_summary(mpii)["metric"] == "val_pckh"


def test_part_table_text_json_and_heatmap(tmp_path):
    comparison = compare_rows("c-parts", PART_ROWS, [AP])
    text = comparison.text()
    assert "per part: mean over trials of the latest val_ap.<part>" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("head "))
    assert "0.650 (2)" in line
    assert json.loads(comparison_json(comparison))["parts"]["groupings"][0] == "coco-p1"
    path = plot_parts(comparison, tmp_path / "compare_parts.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_parts(compare_rows("c", ROWS, [AP]), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_compare_campaign_writes_and_logs_the_part_heatmap(tmp_path):
    """Against a real MLflow SQLite store (no Ray): compare_parts.png beside compare.png, both
    logged to the campaign's parent run under ``compare/``."""
    from nfs_orchestrator.orchestration.compare import compare_campaign
    from nfs_orchestrator.orchestration.ledger import read_ledger, write_ledger
    from tests.unit.test_finish_campaign import campaign_with_trials

    record, target, c = campaign_with_trials(tmp_path, {"t1": "FINISHED", "t2": "FINISHED"})
    rows = read_ledger(record.ledger_path)
    for r, head in zip(rows, (0.6, 0.8), strict=True):
        r["parts_json"] = json.dumps({"val_ap.head": head, "macs.head": 1e6})
    write_ledger(rows, record.ledger_path)
    comparison = compare_campaign(record.root, record.campaign_id)
    assert comparison.parts_plot_path == record.folder / "compare_parts.png"
    assert comparison.parts_plot_path.is_file()
    (grouping,) = comparison.parts["groupings"]
    assert comparison.parts["cells"]["head"][grouping]["value"] == pytest.approx(0.7)
    logged = {f.path for f in c.list_artifacts(target.parent_run_id, "compare")}
    assert {"compare/compare.png", "compare/compare_parts.png", "compare/compare.json"} <= logged
