"""Backbones: strides and channels, no dead modules, published key layouts, weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.nn.backbones import (
    BACKBONE_CHANNELS,
    BACKBONES,
    IGNORED_WEIGHT_PREFIXES,
    build_backbone,
)
from nfs_orchestrator.specs import BACKBONE_NAMES

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference-checkpoints"
HRNET_KEYS = REFERENCE_DIR / "ref_hrnet_w32_cnf5_mpii_256x256.keys.txt"
MOBILENET_KEYS = REFERENCE_DIR / "ref_mobilenetv2_cnf3_coco_384x288.keys.txt"
HRNET_CHECKPOINT = REFERENCE_DIR / "ref_hrnet_w32_cnf5_mpii_256x256.pt"

NAMES = sorted(BACKBONES)

# A key per backbone that a published file carries and the backbone must ignore.
IGNORABLE_EXTRAS: dict[str, dict[str, torch.Tensor]] = {
    "tiny": {},
    "tiny_local": {},
    "resnet50": {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
    "mobilenet_v2": {
        "classifier.1.weight": torch.zeros(1000, 1280),
        "features.17.conv.0.weight": torch.zeros(960, 160, 1, 1),
        "features.18.0.weight": torch.zeros(1280, 320, 1, 1),
    },
    "hrnet_w32": {
        "stage4.0.branches.3.0.conv1.weight": torch.zeros(256, 256, 3, 3),
        "incre_modules.0.0.conv1.weight": torch.zeros(32, 32, 1, 1),
        "downsamp_modules.0.0.weight": torch.zeros(256, 128, 3, 3),
        "final_layer.0.weight": torch.zeros(2048, 1024, 1, 1),
        "classifier.weight": torch.zeros(1000, 2048),
    },
}


def _built(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, random_init=True)


def _state_listing(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """key → (shape, dtype) written the way the reference ``*.keys.txt`` listings write them."""
    return {
        key: (str(tuple(value.shape)), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    }


def _reference_listing(path: Path) -> dict[str, tuple[str, str]]:
    """The ``backbone.*`` lines of a reference key listing, prefix stripped."""
    if not path.is_file():
        pytest.skip(
            f"reference key listing {path} is absent (needs ../shared/reference-checkpoints/)"
        )
    listing: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if not key.startswith("backbone."):
            continue
        listing[key.removeprefix("backbone.")] = (shape, dtype)
    return listing


def _perturb_running_stats(model: torch.nn.Module, seed: int) -> None:
    """Random BN statistics, so that eval-mode outputs depend on every buffer."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            shape = module.running_mean.shape
            module.running_mean.copy_(0.1 * torch.randn(shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(shape, generator=gen))


# --------------------------------------------------------------------------------------------
# shapes, gradients, structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_four_maps_at_strides_4_to_32_and_every_parameter_gets_a_gradient(name: str) -> None:
    model = _built(name)
    assert model.channels == BACKBONE_CHANNELS[name]
    assert len(model.channels) == 4

    x = torch.randn(2, 3, 64, 96)
    feats = model(x)

    assert isinstance(feats, list) and len(feats) == 4
    for feat, channels, stride in zip(feats, model.channels, (4, 8, 16, 32), strict=True):
        assert tuple(feat.shape) == (2, channels, 64 // stride, 96 // stride)

    sum(f.square().mean() for f in feats).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    zero_grad = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero_grad == []


def test_channels_are_known_without_building() -> None:
    assert BACKBONE_CHANNELS == {
        "tiny": (16, 32, 64, 128),
        "tiny_local": (32, 32, 32, 32),
        "resnet50": (256, 512, 1024, 2048),
        "mobilenet_v2": (24, 32, 96, 160),
        "hrnet_w32": (32, 64, 128, 256),
    }
    assert set(BACKBONE_CHANNELS) == set(BACKBONES) == set(IGNORED_WEIGHT_PREFIXES)


def test_spec_names_are_the_table_of_backbones() -> None:
    """specs (torch-free) lists the backbone names; they must be exactly the table's keys."""
    assert BACKBONE_NAMES == tuple(BACKBONES)
    for name, entry in BACKBONES.items():
        assert entry.channels == entry.build.channels, name  # the row agrees with its module


def test_tiny_is_small() -> None:
    assert sum(p.numel() for p in _built("tiny").parameters()) < 200_000


def test_tiny_local_coarser_maps_are_pools_of_its_finest_map() -> None:
    """tiny_local's coarser rows add field, not depth: each is the stride-4 map average-pooled
    (what makes it the depth-matched stand-in of the planted-structure pilots)."""
    feats = _built("tiny_local").eval()(torch.randn(2, 3, 64, 96))
    for k, coarse in zip((2, 4, 8), feats[1:], strict=True):
        torch.testing.assert_close(coarse, torch.nn.functional.avg_pool2d(feats[0], k))


# --------------------------------------------------------------------------------------------
# key layouts
# --------------------------------------------------------------------------------------------


def test_hrnet_w32_keys_equal_the_reference_listing() -> None:
    expected = _reference_listing(HRNET_KEYS)
    assert _state_listing(BACKBONES["hrnet_w32"]()) == expected


def test_mobilenet_v2_keys_equal_the_reference_listing_without_block_17() -> None:
    listing = _reference_listing(MOBILENET_KEYS)
    assert any(k.startswith("features.17.") for k in listing), (
        "listing should hold the unused block"
    )
    expected = {k: v for k, v in listing.items() if not k.startswith("features.17.")}
    assert _state_listing(BACKBONES["mobilenet_v2"]()) == expected


def _bn_entries(prefix: str, channels: int) -> dict[str, tuple[str, str]]:
    entries = {
        f"{prefix}.{field}": (str((channels,)), "float32")
        for field in ("weight", "bias", "running_mean", "running_var")
    }
    entries[f"{prefix}.num_batches_tracked"] = ("()", "int64")
    return entries


def _torchvision_resnet50_listing_without_fc() -> dict[str, tuple[str, str]]:
    """torchvision's ResNet-50 state dict minus ``fc``, written out from its construction rules."""
    listing = {"conv1.weight": (str((64, 3, 7, 7)), "float32"), **_bn_entries("bn1", 64)}
    in_ch = 64
    for layer, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        out_ch = 4 * width
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            listing[f"{p}.conv1.weight"] = (str((width, in_ch, 1, 1)), "float32")
            listing |= _bn_entries(f"{p}.bn1", width)
            listing[f"{p}.conv2.weight"] = (str((width, width, 3, 3)), "float32")
            listing |= _bn_entries(f"{p}.bn2", width)
            listing[f"{p}.conv3.weight"] = (str((out_ch, width, 1, 1)), "float32")
            listing |= _bn_entries(f"{p}.bn3", out_ch)
            if b == 0:
                listing[f"{p}.downsample.0.weight"] = (str((out_ch, in_ch, 1, 1)), "float32")
                listing |= _bn_entries(f"{p}.downsample.1", out_ch)
            in_ch = out_ch
    return listing


def test_resnet50_keys_are_torchvisions_without_fc() -> None:
    model = BACKBONES["resnet50"]()
    assert _state_listing(model) == _torchvision_resnet50_listing_without_fc()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 - (2048 * 1000 + 1000)


def test_resnet50_puts_the_stride_on_the_3x3_conv() -> None:
    block = BACKBONES["resnet50"]().layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


# --------------------------------------------------------------------------------------------
# building and weights
# --------------------------------------------------------------------------------------------


def test_unknown_name_is_a_spec_error_listing_the_known_ones() -> None:
    with pytest.raises(SpecError) as err:
        build_backbone("resnet5O", random_init=True)
    message = str(err.value)
    assert "resnet5O" in message
    for name in BACKBONES:
        assert name in message


def test_no_weights_and_no_random_init_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        build_backbone("tiny")
    assert str(err.value) == (
        "backbone tiny: no weights given; pass a local weights file or set random init explicitly"
    )


# Every backbone as a raw state dict; the small ones also wrapped as a DataParallel'd PoseNFS model
# under "state_dict" (ResNet-50 once only: its 94 MB file is the slowest part of this module).
ROUND_TRIPS = [(name, "") for name in NAMES] + [
    (name, "module.backbone.") for name in NAMES if name != "resnet50"
]


@pytest.mark.parametrize(("name", "wrapper"), ROUND_TRIPS)
@torch.no_grad()
def test_weights_round_trip_with_ignorable_extras(name: str, wrapper: str, tmp_path: Path) -> None:
    source = _built(name, seed=1)
    _perturb_running_stats(source, seed=2)
    state = {wrapper + k: v for k, v in source.state_dict().items()}
    state |= IGNORABLE_EXTRAS[name]
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": state} if wrapper else state, path)

    torch.manual_seed(3)  # different initial weights, overwritten by the file
    loaded = build_backbone(name, path)
    source.eval()
    loaded.eval()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(source(x), loaded(x), strict=True):
        assert torch.equal(a, b)


def _save_tiny(tmp_path: Path, edit: dict[str, torch.Tensor | None]) -> Path:
    state = _built("tiny").state_dict()
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path


def test_missing_file_is_an_input_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet50-0676ba61.pth"
    with pytest.raises(InputError, match="nowhere/resnet50-0676ba61.pth"):
        build_backbone("tiny", path)


def test_unexpected_key_is_an_input_error_naming_file_and_key(tmp_path: Path) -> None:
    path = _save_tiny(tmp_path, {"head.weight": torch.zeros(3)})
    with pytest.raises(InputError) as err:
        build_backbone("tiny", str(path))
    assert str(path) in str(err.value) and "head.weight" in str(err.value)


def test_ignored_prefixes_belong_to_their_backbone_only(tmp_path: Path) -> None:
    path = _save_tiny(tmp_path, {"fc.weight": torch.zeros(1000, 128)})
    with pytest.raises(InputError, match="fc.weight"):
        build_backbone("tiny", path)


def test_missing_key_is_an_input_error_naming_it(tmp_path: Path) -> None:
    path = _save_tiny(tmp_path, {"stages.1.0.weight": None})
    with pytest.raises(InputError, match=r"missing keys: stages\.1\.0\.weight"):
        build_backbone("tiny", path)


def test_shape_mismatch_is_an_input_error_naming_the_key(tmp_path: Path) -> None:
    path = _save_tiny(tmp_path, {"stem.0.0.weight": torch.zeros(16, 3, 5, 5)})
    with pytest.raises(InputError) as err:
        build_backbone("tiny", path)
    assert "stem.0.0.weight" in str(err.value) and "(16, 3, 5, 5)" in str(err.value)


def test_non_state_dict_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InputError, match="not a state dict"):
        build_backbone("tiny", path)


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path: Path) -> None:
    source = _built("tiny", seed=4)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pth"
    torch.save({"model": state}, path)
    loaded = build_backbone("tiny", path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.reference
def test_reference_checkpoint_backbone_loads_into_hrnet_w32(tmp_path: Path) -> None:
    if not HRNET_CHECKPOINT.is_file():
        pytest.skip(f"reference checkpoint {HRNET_CHECKPOINT} is absent")
    checkpoint = torch.load(HRNET_CHECKPOINT, map_location="cpu", weights_only=True)
    backbone_only = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    path = tmp_path / "ref_backbone.pth"
    torch.save({"state_dict": backbone_only}, path)

    model = build_backbone("hrnet_w32", path)
    for key, value in model.state_dict().items():
        assert value.dtype == (
            torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        )
        assert torch.equal(value, backbone_only["backbone." + key].to(value.dtype))
