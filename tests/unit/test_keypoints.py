"""Keypoint schemas and part groupings: the paper's groupings load, bad ones fail clearly."""

from __future__ import annotations

import pytest

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import PartGrouping, load_grouping, load_schema


@pytest.mark.parametrize(
    "name, parts, overlap",
    [
        ("coco-p1", 1, 0),
        ("coco-p3", 3, 0),
        ("coco-p5", 5, 0),
        ("coco-p8", 8, 6),
        ("mpii-p1", 1, 0),
        ("mpii-p3", 3, 0),
        ("mpii-p5", 5, 0),
        ("mpii-p8", 8, 6),
    ],
)
def test_reference_groupings(name, parts, overlap):
    g = load_grouping(name)
    assert g.num_parts == parts
    assert min(g.coverage()) == 1  # every keypoint covered
    assert sum(c - 1 for c in g.coverage()) == overlap  # shared joints (P = 8)


def test_p5_exact_lists_of_the_reference():
    coco = load_grouping("coco-p5")
    assert [coco.indices(p) for p in coco.parts] == [
        (7, 9),
        (8, 10),
        (13, 14, 15, 16),
        (0, 1, 2, 3, 4, 5, 6),
        (11, 12),
    ]
    mpii = load_grouping("mpii-p5")  # MPII original order: 6 pelvis, 2 r_hip, 3 l_hip ...
    assert mpii.indices("hips") == (6, 3, 2)
    assert mpii.indices("head_shoulder") == (9, 8, 7, 13, 12)


def test_flip_permutation_swaps_left_and_right():
    coco = load_schema("coco17")
    perm = coco.flip_permutation()
    assert perm[0] == 0 and perm[1] == 2 and perm[15] == 16
    assert sorted(perm) == list(range(17))
    mpii = load_schema("mpii16")
    assert mpii.keypoints[mpii.flip_permutation()[0]] == "left_ankle"


def _grouping(parts, merge="sum"):
    return {
        "name": "g",
        "schema": load_schema("coco17").to_dict(),
        "merge": merge,
        "parts": [{"name": n, "keypoints": k} for n, k in parts.items()],
    }


def test_missing_keypoint_is_named():
    body = _grouping({"a": ["nose", "left_eye"]})
    with pytest.raises(SpecError, match=r"not covered by any part: \['right_eye'"):
        PartGrouping.from_dict(body)


def test_unknown_keypoint_suggests():
    body = _grouping({"a": list(load_schema("coco17").keypoints) + ["left_elbw"]})
    with pytest.raises(
        SpecError, match=r"unknown keypoint 'left_elbw' \(did you mean 'left_elbow'"
    ):
        PartGrouping.from_dict(body)


def test_merge_rule_is_explicit():
    with pytest.raises(SpecError, match="'max' is not one of"):
        PartGrouping.from_dict(
            {**_grouping({"all": list(load_schema("coco17").keypoints)}), "merge": "max"}
        )


def test_user_grouping_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nschema: coco17\nparts:\n  face: [nose]\n")
    with pytest.raises(SpecError, match=r"mine\.yaml: .*not covered"):
        load_grouping(str(f))
    with pytest.raises(SpecError, match="no such grouping"):
        load_grouping("coco-p7")
