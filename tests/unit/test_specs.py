"""Spec strictness: unknown keys, wrong types and impossible values fail at load with the path."""

from __future__ import annotations

import pytest

from nfs_orchestrator.campaign_spec import CampaignSpec, load_campaign
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import spaces_root
from nfs_orchestrator.specs import OP_NAMES, FabricSpace, SearchSpec, load_fabric
from nfs_orchestrator.strict import apply_overrides


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(SpecError, match=r"search\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        CampaignSpec.from_dict(
            {
                "name": "c",
                "data": {"dataset": "synthetic"},
                "backbone": {"random_init": True},
                "fabric": "tiny",
                "grouping": "coco-p3",
                "search": {"epoch": 3},
            }
        )


def test_wrong_type_names_path():
    with pytest.raises(SpecError, match=r"depth: expected an integer, got 'six'"):
        FabricSpace.from_dict({"name": "x", "depth": "six"})
    with pytest.raises(SpecError, match=r"search\.batch_size: expected an integer"):
        CampaignSpec.from_dict(
            {
                "name": "c",
                "data": {"dataset": "synthetic"},
                "backbone": {"random_init": True},
                "fabric": "tiny",
                "grouping": "coco-p3",
                "search": {"batch_size": 1.5},
            }
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ops": ["zero", "conv_7x7"]}, "unknown op 'conv_7x7'"),
        ({"scales": [4, 16]}, "consecutive strides"),
        ({"cut": 6}, "cut: 6 must be in"),
        ({"input_nodes": 2}, "only 1 is supported"),
        ({"ops": ["zero"]}, "leaves nothing"),
    ],
)
def test_impossible_fabric_values(change, message):
    with pytest.raises(SpecError, match=message):
        FabricSpace.from_dict({"name": "x", **change})


def test_every_shipped_fabric_loads():
    names = sorted(p.stem for p in (spaces_root() / "fabrics").glob("*.yaml"))
    assert {"tiny", "hrnet-w32_cnf5_mpii-256x256", "resnet50_cnf3_coco-256x192"} <= set(names)
    for name in names:
        space = load_fabric(name)
        assert space.layer_sizes()[-1] == 1


def test_geometry_matches_the_paper():
    # depth 6 cut 3 and depth 7 cut 4 both give the 3-2-1 triangle of six cells (§1.2)
    assert load_fabric("hrnet-w32_cnf5_mpii-256x256").layer_sizes() == [3, 2, 1]
    assert load_fabric("resnet50_cnf3_coco-256x192").layer_sizes() == [3, 2, 1]
    assert FabricSpace(name="x", depth=7, cut=3).layer_sizes() == [4, 3, 2, 1]
    assert FabricSpace(name="x", hidden_nodes=3).num_edges == 6  # N·I + N(N-1)/2


def test_overrides_are_dotted_and_typed():
    out = apply_overrides({"budget": {"num_trials": 2}}, ["budget.num_trials=4", "seed=3"])
    assert out == {"budget": {"num_trials": 4}, "seed": 3}
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        apply_overrides({}, ["budget.num_trials"])


def test_op_names_equal_the_op_table():
    from nfs_orchestrator.nn.ops import OPS

    assert tuple(OPS) == OP_NAMES


def test_search_spec_rejects_bad_batches():
    with pytest.raises(SpecError, match="micro_batch"):
        SearchSpec(batch_size=4, micro_batch=8)


def test_campaign_fingerprint_ignores_where_it_runs(tmp_path):
    text = (spaces_root().parent / "experiments" / "smoke.yaml").read_text()
    path = tmp_path / "smoke.yaml"
    path.write_text(text)
    a = load_campaign(path)
    b = load_campaign(path, ("resources.cpus_per_worker=0.25", "budget.max_concurrent=3"))
    c = load_campaign(path, ("seed=7",))
    assert a.campaign_id == b.campaign_id
    assert a.campaign_id != c.campaign_id
    assert a.campaign_id.startswith("smoke-")


def test_campaign_trial_applies_outer_choices(tmp_path):
    path = spaces_root().parent / "experiments" / "smoke.yaml"
    campaign = load_campaign(path)
    grouping_param = campaign.outer["grouping"]
    for choice in grouping_param.choices:
        trial = campaign.trial({"grouping": choice})
        assert trial.grouping.name == campaign.catalog[choice].name
    with pytest.raises(SpecError, match="not in the campaign's outer space"):
        campaign.trial({"fabric.depth": 5})


def test_an_outer_value_that_makes_an_invalid_trial_fails_at_load(tmp_path):
    """Every value an outer domain can produce is built into a trial when the campaign loads:
    here fabric.depth's lower bound is not above the fabric's cut."""
    import yaml

    shipped = spaces_root().parent / "experiments" / "smoke.yaml"
    load_campaign(shipped)  # as shipped: every value valid
    body = yaml.safe_load(shipped.read_text())
    for key, domain, message in [
        ("fabric.depth", {"type": "int", "low": 1, "high": 5}, r"= 1: .*cut"),
        ("search.epochs", {"type": "int", "low": 0, "high": 2}, r"= 0: .*epochs"),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**body, "outer": {key: domain}}))
        with pytest.raises(SpecError, match=rf"outer\.{key} {message}"):
            load_campaign(path)


def test_campaign_trial_is_built_from_typed_specs():
    """The base trial shares the campaign's specs; an outer choice replaces only its path."""
    campaign = load_campaign(spaces_root().parent / "experiments" / "quickstart.yaml")
    base = campaign.trial({})
    assert base.search is campaign.search and base.data is campaign.data
    trial = campaign.trial({"search.arch_optimizer.lr": 0.01, "fabric.depth": 4})
    assert trial.search.arch_optimizer.lr == 0.01 and trial.fabric.depth == 4
    assert trial.search.weight_optimizer is campaign.search.weight_optimizer
    assert trial.search.arch_optimizer.weight_decay == campaign.search.arch_optimizer.weight_decay


def test_an_objective_the_trials_never_report_fails_at_load():
    path = spaces_root().parent / "experiments" / "quickstart.yaml"
    with pytest.raises(
        SpecError, match=r"objectives\[0\]\.metric: 'val_AP' .*did you mean 'val_ap'"
    ):
        load_campaign(path, ("objectives=[{metric: val_AP, mode: max}]",))
    campaign = load_campaign(path, ("objectives=[{metric: val_ap.head, mode: max}]",))
    assert "val_ap.head" in campaign.reported_metrics()  # coco-p3 is one of its groupings


def test_validation_boxes_decode_and_nms_are_checked_at_load():
    from nfs_orchestrator.specs import DataSpec

    base = {"dataset": "coco", "train_annotations": "a.json"}
    with pytest.raises(SpecError, match=r"detections: val_boxes detections needs a person"):
        DataSpec.from_dict({**base, "val_boxes": "detections"})
    with pytest.raises(SpecError, match=r"val_boxes: detections_if_present is for COCO-format"):
        DataSpec.from_dict(
            {**base, "dataset": "mpii", "val_boxes": "detections_if_present", "detections": "d"}
        )
    with pytest.raises(SpecError, match=r"decode: .argmax. is not one of"):
        DataSpec.from_dict({**base, "decode": "argmax"})
    with pytest.raises(SpecError, match=r"oks_nms_threshold: 0.0 is not in \(0, 1\]"):
        DataSpec.from_dict({**base, "oks_nms_threshold": 0})


def test_later_data_fields_keep_old_ids_at_default_and_count_once_set(tmp_path):
    smoke = spaces_root().parent / "experiments" / "smoke.yaml"
    base = load_campaign(smoke)
    same = load_campaign(
        smoke, ("data.decode=quarter_offset", "data.val_boxes=gt", "data.oks_nms_threshold=0.9")
    )
    dark = load_campaign(smoke, ("data.decode=dark",))
    # the id before the fields (it changed with the tiny space's input rule, not with them)
    assert base.campaign_id == same.campaign_id == "smoke-301f301b"
    assert dark.campaign_id != base.campaign_id  # DARK changes what validation reports
    assert "decode" in dark.data.identity() and "decode" not in base.data.identity()
    assert dark.to_dict()["data"]["decode"] == "dark"  # specs crossing processes keep them


def test_alpha_entropy_weight_keeps_old_ids_at_zero_and_rejects_bad_values():
    smoke = spaces_root().parent / "experiments" / "smoke.yaml"
    base = load_campaign(smoke)
    pulled = load_campaign(smoke, ("search.alpha_entropy_weight=0.01",))
    assert base.campaign_id == "smoke-301f301b" != pulled.campaign_id
    assert base.trial({}).fingerprint() != pulled.trial({}).fingerprint()
    assert "alpha_entropy_weight" not in base.search.identity()
    assert pulled.trial({}).search.alpha_entropy_weight == 0.01
    for value in ("-0.1", ".nan"):
        with pytest.raises(SpecError, match=r"alpha_entropy_weight: .* must be ≥ 0"):
            load_campaign(smoke, (f"search.alpha_entropy_weight={value}",))
    with pytest.raises(SpecError, match="alpha_entropy_weight: needs search_alpha"):
        load_campaign(smoke, ("search.alpha_entropy_weight=0.01", "search.search_alpha=false"))


def test_weight_mixture_keeps_old_ids_and_needs_first_order():
    smoke = spaces_root().parent / "experiments" / "smoke.yaml"
    base = load_campaign(smoke)
    uniform = load_campaign(smoke, ("search.weight_mixture=uniform",))
    assert base.campaign_id == "smoke-301f301b" != uniform.campaign_id
    assert "weight_mixture" not in base.search.identity()
    assert uniform.trial({}).search.weight_mixture == "uniform"
    for mode in ("sync", "second_order", "random", "none"):
        with pytest.raises(
            SpecError, match=f"weight_mixture: uniform needs mode first_order, not {mode}"
        ):
            load_campaign(smoke, ("search.weight_mixture=uniform", f"search.mode={mode}"))
    with pytest.raises(SpecError, match="weight_mixture"):
        load_campaign(smoke, ("search.weight_mixture=current",))


def test_val_detections_reads_the_file_system(tmp_path):
    from nfs_orchestrator.errors import InputError
    from nfs_orchestrator.specs import DataSpec, replace

    spec = DataSpec(
        dataset="coco",
        root=str(tmp_path),
        train_annotations="a.json",
        val_boxes="detections_if_present",
        detections="dets.json",
    )
    assert spec.val_detections() is None  # absent: ground-truth boxes
    assert "ground-truth boxes (" in spec.describe_validation()
    strict = replace(spec, val_boxes="detections")
    with pytest.raises(InputError, match=r"dets.json: no such detections file"):
        strict.val_detections()
    (tmp_path / "dets.json").write_text("[]")
    assert spec.val_detections() == strict.val_detections() == tmp_path / "dets.json"
    assert replace(spec, val_boxes="gt").val_detections() is None


@pytest.mark.parametrize(
    "field, value, unknown",
    [("beta_gradient", "layout", "mean"), ("input_sampling", "gumbel", "hard")],
)
def test_a_study_setting_keeps_old_ids_and_refuses_unknown_values(field, value, unknown):
    smoke = spaces_root().parent / "experiments" / "smoke.yaml"
    base = load_campaign(smoke)
    study = load_campaign(smoke, (f"search.{field}={value}",))
    assert base.campaign_id == "smoke-301f301b" != study.campaign_id
    assert field not in base.search.identity()
    assert getattr(study.trial({}).search, field) == value
    with pytest.raises(SpecError, match=field):
        load_campaign(smoke, (f"search.{field}={unknown}",))


def test_one_shot_selection_keeps_old_ids_and_needs_drawn_inputs_and_a_candidate():
    smoke = spaces_root().parent / "experiments" / "smoke.yaml"
    base = load_campaign(smoke)
    drawn = ("search.input_sampling=gumbel",)
    study = load_campaign(smoke, (*drawn, "search.selection=one_shot"))
    assert base.campaign_id == "smoke-301f301b"
    assert not {"selection", "one_shot_candidates"} & set(base.search.identity())
    assert study.campaign_id != load_campaign(smoke, drawn).campaign_id
    assert study.trial({}).search.selection == "one_shot"
    with pytest.raises(SpecError, match="selection: one_shot needs input_sampling: gumbel"):
        load_campaign(smoke, ("search.selection=one_shot",))
    with pytest.raises(SpecError, match="one_shot_candidates: 0 must be ≥ 1"):
        load_campaign(smoke, (*drawn, "search.selection=one_shot", "search.one_shot_candidates=0"))
    with pytest.raises(SpecError, match="selection"):
        load_campaign(smoke, ("search.selection=best",))
