"""Backbones in plain torch: a tiny test net, ResNet-50, MobileNetV2 and HRNet-W32 up to stage 3.

Every backbone maps an image batch (B, 3, H, W) to a list of four feature maps at strides 4, 8, 16
and 32 (H/4 … H/32) and carries ``channels``, their channel counts. Module and parameter names are
those of the published layouts (torchvision ResNet, tonylins' MobileNetV2 as used by the PoseNFS
reference, the official HRNet code), so ImageNet weights and PoseNFS reference checkpoints load
without renaming. H and W should be multiples of 32 (HRNet's fuse upsamples by exact powers of
two and fails otherwise). Only what ``forward`` uses is built: no ResNet ``fc``, no MobileNetV2
``features.17`` or later, no HRNet stage 4 or classification head.

``build_backbone`` builds one by name and, unless random init is asked for explicitly, loads
weights from a local file. ``BACKBONES`` is the one table of them (constructor, channels, ignored
weight prefixes per name). Loading is strict: the backbone's ignored key prefixes are dropped
(classifier heads, unused tails), everything else must match name for name and shape for shape,
or an ``InputError`` says which keys do not.

This module is not the fabric, the heads or a downloader: it never reaches the network, and it
neither freezes layers nor chooses train/eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.files import first_line, read_checked
from nfs_orchestrator.strict import suggest

BN_MOMENTUM = 0.1  # PyTorch's default; written out because the reference code spells it out too

# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _init_random(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), BatchNorm as identity: the usual from-scratch start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (carries the stride, torchvision v1.5), 1x1 expand ×4.

    The shortcut is ``downsample`` (1x1 conv + BN) when shape changes, else the input itself.
    """

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = _bn(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = _bn(width)
        self.conv3 = _conv1x1(width, out_ch)
        self.bn3 = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, in_ch, H, W) → (B, 4·width, H/stride, W/stride)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _bottleneck_layer(in_ch: int, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` bottlenecks; the first one changes stride/channels through a projection."""
    out_ch = width * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(_conv1x1(in_ch, out_ch, stride), _bn(out_ch))
    layers = [Bottleneck(in_ch, width, stride, downsample)]
    layers += [Bottleneck(out_ch, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# tiny
# ---------------------------------------------------------------------------------------------


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv3x3(in_ch, out_ch, stride), _bn(out_ch), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Five stride-2 conv-BN-ReLU layers: a fast stand-in for tests on small inputs."""

    channels: tuple[int, int, int, int] = (16, 32, 64, 128)

    def __init__(self) -> None:
        super().__init__()
        c4, c8, c16, c32 = self.channels
        self.stem = nn.Sequential(_conv_bn_relu(3, c4, 2), _conv_bn_relu(c4, c4, 2))
        self.stages = nn.ModuleList(
            [_conv_bn_relu(c4, c8, 2), _conv_bn_relu(c8, c16, 2), _conv_bn_relu(c16, c32, 2)]
        )
        _init_random(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        # x: (B, 3, H, W) → [(B, 16, H/4, ·), (B, 32, H/8, ·), (B, 64, H/16, ·), (B, 128, H/32, ·)]
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class TinyLocalBackbone(nn.Module):
    """A depth-matched stand-in for planted-structure tests: every level has the same features.

    In ``TinyBackbone`` each coarser map is one conv deeper, so a fabric cell that reads a
    coarser row gets deeper features as well as a wider field, and every part prefers it for
    the depth alone. Here the stride-4 map is the stem (two 3×3 stride-2 convs, a 7 px field)
    followed by three 1×1 conv-BN-ReLU layers (depth without field), and the stride-8/16/32
    maps are its 2×/4×/8× average pools: the same features over wider windows, so the one
    thing a coarser row adds is context.
    """

    channels: tuple[int, int, int, int] = (32, 32, 32, 32)

    def __init__(self) -> None:
        super().__init__()
        c = self.channels[0]
        self.stem = nn.Sequential(_conv_bn_relu(3, c, 2), _conv_bn_relu(c, c, 2))
        self.local = nn.Sequential(
            *(nn.Sequential(_conv1x1(c, c), _bn(c), nn.ReLU(inplace=True)) for _ in range(3))
        )
        _init_random(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        # x: (B, 3, H, W) → [(B, 32, H/4, ·), (B, 32, H/8, ·), (B, 32, H/16, ·), (B, 32, H/32, ·)]
        f = self.local(self.stem(x))
        return [f, *(F.avg_pool2d(f, k) for k in (2, 4, 8))]


# ---------------------------------------------------------------------------------------------
# resnet50
# ---------------------------------------------------------------------------------------------


class ResNet50Backbone(nn.Module):
    """ResNet-50 (torchvision names) from ``conv1`` to ``layer4``; ``fc`` is not built."""

    channels: tuple[int, int, int, int] = (256, 512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _bottleneck_layer(64, 64, 3)
        self.layer2 = _bottleneck_layer(256, 128, 4, stride=2)
        self.layer3 = _bottleneck_layer(512, 256, 6, stride=2)
        self.layer4 = _bottleneck_layer(1024, 512, 3, stride=2)
        _init_random(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        # x: (B, 3, H, W) → (B, 64, H/4, W/4) after the stem and max-pool
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f4 = self.layer1(x)  # (B, 256, H/4, W/4)
        f8 = self.layer2(f4)  # (B, 512, H/8, W/8)
        f16 = self.layer3(f8)  # (B, 1024, H/16, W/16)
        f32 = self.layer4(f16)  # (B, 2048, H/32, W/32)
        return [f4, f8, f16, f32]


# ---------------------------------------------------------------------------------------------
# mobilenet_v2
# ---------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, ReLU6], 3x3 depthwise, BN, ReLU6, 1x1 project, BN.

    The expand step is absent when the expansion ratio is 1; the input is added back when the
    block keeps both stride and channels. Indices inside ``conv`` match the published layout.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [_conv1x1(in_ch, hidden), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            _conv1x1(hidden, out_ch),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, in_ch, H, W) → (B, out_ch, H/stride, W/stride)
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s) per group, width multiplier 1.0.
# The published net has a last group (6, 320, 1, 1) = features[17]; PoseNFS never uses it.
_MOBILENET_V2_GROUPS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
)
# Indices of ``features`` whose outputs are the stride-4/8/16/32 maps.
_MOBILENET_V2_TAPS: tuple[int, ...] = (3, 6, 13, 16)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 ``features[0..16]`` (tonylins names); taps after blocks 3, 6, 13 and 16."""

    channels: tuple[int, int, int, int] = (24, 32, 96, 160)

    def __init__(self) -> None:
        super().__init__()
        stem_ch = 32
        blocks: list[nn.Module] = [
            nn.Sequential(_conv3x3(3, stem_ch, 2), nn.BatchNorm2d(stem_ch), nn.ReLU6(inplace=True))
        ]
        in_ch = stem_ch
        for t, c, n, s in _MOBILENET_V2_GROUPS:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        self.features = nn.ModuleList(blocks)
        _init_random(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        # x: (B, 3, H, W) → [(B, 24, H/4, ·), (B, 32, H/8, ·), (B, 96, H/16, ·), (B, 160, H/32, ·)]
        feats: list[Tensor] = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in _MOBILENET_V2_TAPS:
                feats.append(x)
        return feats


# ---------------------------------------------------------------------------------------------
# hrnet_w32
# ---------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with an identity shortcut and ReLU after the sum (HRNet branch unit)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = _bn(channels)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, H, W) → same shape
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def _fuse_path(channels: Sequence[int], src: int, dst: int) -> nn.Module:
    """How branch ``src`` reaches branch ``dst``'s resolution and width inside an exchange unit.

    Same branch: unchanged. Coarser source: 1x1 conv + BN, then nearest upsampling ×2^(src−dst).
    Finer source: (dst−src) stride-2 3x3 conv + BN steps; all but the last keep the source width
    and end in ReLU, the last switches to the destination width and has no ReLU.
    """
    if src == dst:
        return nn.Identity()
    if src > dst:
        return nn.Sequential(
            _conv1x1(channels[src], channels[dst]),
            nn.BatchNorm2d(channels[dst]),
            nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
        )
    steps: list[nn.Module] = []
    for k in range(dst - src):
        last = k == dst - src - 1
        out_ch = channels[dst] if last else channels[src]
        step: list[nn.Module] = [_conv3x3(channels[src], out_ch, 2), nn.BatchNorm2d(out_ch)]
        if not last:
            step.append(nn.ReLU(inplace=True))
        steps.append(nn.Sequential(*step))
    return nn.Sequential(*steps)


class HRModule(nn.Module):
    """One HRNet exchange unit: parallel BasicBlock branches, then a fuse where every branch
    receives the sum of all branches brought to its resolution, followed by ReLU."""

    def __init__(self, channels: Sequence[int], blocks_per_branch: int = 4) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c) for _ in range(blocks_per_branch))) for c in channels
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_path(channels, src, dst) for src in range(n)) for dst in range(n)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        # xs[i]: (B, channels[i], H/2^i, W/2^i) → the same shapes
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        fused: list[Tensor] = []
        for paths in self.fuse_layers:
            total = paths[0](xs[0])  # summed in branch order, like the reference
            for src in range(1, len(xs)):
                total = total + paths[src](xs[src])
            fused.append(torch.relu(total))
        return fused


def _transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Maps a stage's branches to the next stage's: kept branches pass through (or get a 3x3
    conv-BN-ReLU when their width changes); each new, coarser branch is made from the last
    previous branch by stride-2 3x3 conv-BN-ReLU steps."""
    layers: list[nn.Module] = []
    for i, out_ch in enumerate(cur):
        if i < len(prev):
            if prev[i] == out_ch:
                layers.append(nn.Identity())
            else:
                layers.append(
                    nn.Sequential(
                        _conv3x3(prev[i], out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
                    )
                )
            continue
        n_steps = i - len(prev) + 1
        steps: list[nn.Module] = []
        for k in range(n_steps):
            step_out = out_ch if k == n_steps - 1 else prev[-1]
            steps.append(
                nn.Sequential(
                    _conv3x3(prev[-1], step_out, 2), nn.BatchNorm2d(step_out), nn.ReLU(inplace=True)
                )
            )
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
    """Branch i of the next stage from branch i of this one, or from the last when i is new."""
    return [layer(xs[i] if i < len(xs) else xs[-1]) for i, layer in enumerate(transition)]


class HRNetW32Backbone(nn.Module):
    """HRNet-W32 (official names): stem, ``layer1``, stages 2 and 3 with their transitions, and
    only the new stride-32 branch of ``transition3``. Stage 4 is not built.

    Outputs are the three stage-3 branches and ``transition3``'s new branch applied to the last
    stage-3 branch, exactly what the PoseNFS reference feeds to its fabrics.
    """

    channels: tuple[int, int, int, int] = (32, 64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        c4, c8, c16, c32 = self.channels
        self.conv1 = _conv3x3(3, 64, 2)
        self.bn1 = _bn(64)
        self.conv2 = _conv3x3(64, 64, 2)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _bottleneck_layer(64, 64, 4)
        self.transition1 = _transition([256], [c4, c8])
        self.stage2 = nn.Sequential(HRModule([c4, c8]))
        self.transition2 = _transition([c4, c8], [c4, c8, c16])
        self.stage3 = nn.Sequential(*(HRModule([c4, c8, c16]) for _ in range(4)))
        self.transition3 = _transition([c4, c8, c16], [c4, c8, c16, c32])
        _init_random(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        # x: (B, 3, H, W) → (B, 64, H/4, W/4) after two stride-2 convs
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)  # (B, 256, H/4, W/4)
        ys = self.stage2(_apply_transition(self.transition1, [x]))  # 32@H/4, 64@H/8
        ys = self.stage3(_apply_transition(self.transition2, ys))  # + 128@H/16
        return _apply_transition(self.transition3, ys)  # + 256@H/32


# ---------------------------------------------------------------------------------------------
# Names, channels, building and weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """One row of ``BACKBONES``: how to build a backbone and what is known without building it.

    Calling the row builds the module (random weights), as the plain dict of constructors did.
    """

    build: Callable[[], nn.Module]
    channels: tuple[int, int, int, int]  # of the four maps at strides 4, 8, 16, 32
    # Key prefixes of published weight files that the backbone deliberately does not build.
    ignored_weight_prefixes: tuple[str, ...] = ()

    def __call__(self) -> nn.Module:
        return self.build()


# The one table of backbones: adding one is one row here plus its name in
# ``specs.BACKBONE_NAMES`` (specs stays torch-free; a unit test ties the two).
# Ignored prefixes: torchvision resnet50-*.pth: the classifier. tonylins mobilenet_v2.pth.tar:
# the 320-channel block, the 1x1 conv to 1280 and the classifier. Official hrnet_w32-36af842e.pth
# (ImageNet): stage 4 and the classification head; its transition3 holds only the new branch
# (3.0.*), the same module as ours, so nothing of transition3 is dropped.
BACKBONES: dict[str, Backbone] = {
    "tiny": Backbone(TinyBackbone, TinyBackbone.channels),
    "tiny_local": Backbone(TinyLocalBackbone, TinyLocalBackbone.channels),
    "resnet50": Backbone(ResNet50Backbone, ResNet50Backbone.channels, ("fc.",)),
    "mobilenet_v2": Backbone(
        MobileNetV2Backbone,
        MobileNetV2Backbone.channels,
        ("features.17.", "features.18.", "classifier."),
    ),
    "hrnet_w32": Backbone(
        HRNetW32Backbone,
        HRNetW32Backbone.channels,
        ("stage4.", "incre_modules.", "downsamp_modules.", "final_layer.", "classifier."),
    ),
}

# Read-only views of the table by column (derived: never edit these).
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    name: b.channels for name, b in BACKBONES.items()
}
IGNORED_WEIGHT_PREFIXES: dict[str, tuple[str, ...]] = {
    name: b.ignored_weight_prefixes for name, b in BACKBONES.items()
}

# Wrappers around a key: DataParallel/DDP (``module.``) and the PoseNFS model (``backbone.``).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "backbone.")

# Buffers that checkpoints saved before PyTorch 0.4.1 lack (torchvision's resnet50-19c8e357.pth,
# tonylins' MobileNetV2); they count batches and do not affect the forward pass.
_OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"

_SHOWN_KEYS = 5


def _known() -> str:
    return ", ".join(sorted(BACKBONES))


def build_backbone(
    name: str, weights: str | os.PathLike[str] | None = None, *, random_init: bool = False
) -> nn.Module:
    """Builds backbone ``name`` and loads ``weights`` (a local file) into it.

    Args:
        name: a key of ``BACKBONES``.
        weights: path of a local state dict in one of the accepted layouts (see
            ``load_backbone_weights``). When given, it is loaded whatever ``random_init`` says.
        random_init: with no ``weights``, must be True to accept random initial weights.

    Raises:
        SpecError: unknown ``name``.
        InputError: no weights and no explicit random init, or a weights file that is missing,
            unreadable or does not fit.
    """
    entry = BACKBONES.get(name)
    if entry is None:
        raise SpecError(f"unknown backbone {name!r}{suggest(name, BACKBONES)}; known: {_known()}")
    if weights is None and not random_init:
        raise InputError(
            f"backbone {name}: no weights given; pass a local weights file or set random init "
            "explicitly"
        )
    model = entry.build()
    if weights is not None:
        load_backbone_weights(model, name, weights)
    return model


def load_backbone_weights(model: nn.Module, name: str, path: str | os.PathLike[str]) -> None:
    """Loads a local weights file into ``model`` (backbone ``name``), strictly.

    Accepted: a raw state dict, or a dict holding one under ``state_dict`` or ``model``; keys may
    carry ``module.`` and/or ``backbone.`` in front. Keys under the backbone's
    ``ignored_weight_prefixes`` are dropped and missing ``num_batches_tracked`` buffers keep the
    model's values; any other unexpected or missing key, or a shape mismatch, is an
    ``InputError`` naming the file and the first few such keys. Floating tensors are cast to
    the model's dtype (e.g. float16 files).
    """
    file = Path(path)
    loaded = read_checked(
        file,
        lambda f: torch.load(f, map_location="cpu", weights_only=True),
        missing=f"no such weights file (backbone {name})",
        failure=lambda e: f"cannot read the weights of backbone {name}: {first_line(e)}",
    )

    source = _unwrap_state_dict(loaded, file, name)
    ignored = BACKBONES[name].ignored_weight_prefixes if name in BACKBONES else ()
    expected = model.state_dict()

    state: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for raw_key, value in source.items():
        key = _strip_wrappers(raw_key)
        if ignored and key.startswith(ignored):
            continue
        if key in state:
            raise InputError(f"backbone {name}: {file} holds key {key!r} twice (as {raw_key!r})")
        if key not in expected:
            unexpected.append(raw_key)
            continue
        if tuple(value.shape) != tuple(expected[key].shape):
            mismatched.append(
                f"{raw_key} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
            )
            continue
        state[key] = value
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIX)]

    problems = [
        f"{label}: {_first(keys)}"
        for label, keys in (
            ("unexpected keys", unexpected),
            ("missing keys", missing),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise InputError(
            f"backbone {name}: weights file {file} does not fit; " + "; ".join(problems)
        )
    for key, value in expected.items():
        state.setdefault(key, value)  # only num_batches_tracked can be absent here
    model.load_state_dict(state, strict=True)


def _unwrap_state_dict(loaded: object, file: Path, name: str) -> Mapping[str, Tensor]:
    """The state dict inside ``loaded``: itself, or its ``state_dict`` / ``model`` entry."""
    if not isinstance(loaded, Mapping):
        raise InputError(
            f"backbone {name}: {file} holds a {type(loaded).__name__}, not a state dict"
        )
    for wrapper in ("state_dict", "model"):
        inner = loaded.get(wrapper)
        if isinstance(inner, Mapping):
            loaded = inner
            break
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise InputError(f"backbone {name}: {file} has non-tensor entries: {_first(bad)}")
    return loaded


def _strip_wrappers(key: str) -> str:
    """``module.backbone.conv1.weight`` → ``conv1.weight`` (any order, any repetition)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return f"{shown} (+{more} more)" if more > 0 else shown
