"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variant for mobile/CPU): the shared pretrained backbone,
and its larger Lite2 (same module, scaled by the compound multipliers below).

Lite differs from EfficientNet-B0 in what makes it cheap and quantization friendly: no squeeze-and-
excitation, ReLU6 instead of swish, and a stem (32) and head (1280) that do not scale. The structure:

    stem      3×3 conv stride 2 → 32, BN, ReLU6
    blocks    MBConv (1×1 expand ×t, BN, ReLU6 → k×k depthwise, BN, ReLU6 → 1×1 project, BN;
              identity skip when stride 1 and the width is kept), seven stages:
              t  k  stride  repeats  width
              1  3  1       1        16      → stride 2 overall
              6  3  2       2        24      → stride 4
              6  5  2       2        40      → stride 8
              6  3  2       3        80
              6  5  1       3        112     → stride 16
              6  5  2       4        192
              6  3  1       1        320     → stride 32
    head      1×1 conv → 1280, BN, ReLU6, global average pool, fully connected → 1000 ImageNet classes

TensorFlow's "same" padding (asymmetric at stride 2: the extra row and column go at the bottom and
right) and BatchNorm ε = 1e-3 are kept, because the ImageNet weights were trained with them. Input:
RGB in [0, 1], normalized as (x − 0.5) / 0.5 inside ``forward``.

Parameter names follow the published state dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``), so the
converted file loads without renaming. Weights: ``weights/efficientnet-lite0-imagenet.md``.

Larger variants scale Lite0 as EfficientNet's compound scaling does, except that Lite keeps the stem, the
head and the repeats of the first and last stages fixed: every stage width × ``width`` rounded to a
multiple of 8 (never more than 10 % below), every other stage's repeats × ``depth`` rounded up. Lite2
(width 1.1, depth 1.2, trained at 260²) has stage widths 16, 24, 48, 88, 120, 208, 352 and 1, 3, 3, 4, 4,
5, 1 blocks (21). Only Lite0 ships; Lite2 is a training-time option (``core/training/efficientnet_lite.py
--variant lite2`` writes it outside ``weights/``).
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.protocol import ErrorCode, SemanticError

BN_EPS = 1e-3  # TensorFlow's default, which the ImageNet statistics were computed with
WEIGHT_ID = "efficientnet-lite0-imagenet"


@dataclass(frozen=True)
class StageSpec:
    expand: int
    kernel: int
    stride: int
    repeats: int
    width: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(6, 3, 2, 2, 24),
    StageSpec(6, 5, 2, 2, 40),
    StageSpec(6, 3, 2, 3, 80),
    StageSpec(6, 5, 1, 3, 112),
    StageSpec(6, 5, 2, 4, 192),
    StageSpec(6, 3, 1, 1, 320),
)
STEM_WIDTH, HEAD_WIDTH, IMAGENET_CLASSES = 32, 1280, 1000
WIDTH_DIVISOR = 8  # TensorFlow's depth_divisor: scaled widths are multiples of it
# Feature taps by output stride, named by where they are taken (the last block of a stage).
FEATURE_STRIDES = {"stride2": 0, "stride4": 1, "stride8": 2, "stride16": 4, "stride32": 6}


@dataclass(frozen=True)
class LiteVariant:
    """One member of the EfficientNet-Lite family: its compound multipliers and its ImageNet resolution."""

    name: str
    width: float
    depth: float
    resolution: int  # the ImageNet training (and check) crop side

    def stages(self) -> tuple[StageSpec, ...]:
        return scaled_stages(LITE0_STAGES, self.width, self.depth)


LITE_VARIANTS = {v.name: v for v in (LiteVariant("lite0", 1.0, 1.0, 224), LiteVariant("lite2", 1.1, 1.2, 260))}


def scaled_width(width: int, multiplier: float) -> int:
    """A stage width × ``multiplier`` rounded to the nearest multiple of 8, never more than 10 % below."""
    if multiplier == 1.0:
        return width
    target = width * multiplier
    rounded = max(WIDTH_DIVISOR, int(target + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    return rounded + WIDTH_DIVISOR if rounded < 0.9 * target else rounded


def scaled_stages(base: tuple[StageSpec, ...], width: float, depth: float) -> tuple[StageSpec, ...]:
    """``base`` scaled as EfficientNet-Lite does: widths by ``width``; repeats by ``depth`` (rounded up)
    except in the first and the last stage, which Lite keeps (with the stem and head) for mobile cost."""
    last = len(base) - 1
    return tuple(StageSpec(s.expand, s.kernel, s.stride,
                           s.repeats if i in (0, last) else math.ceil(s.repeats * depth),
                           scaled_width(s.width, width)) for i, s in enumerate(base))


def weight_id_of(variant: str) -> str:
    """The weight id of a variant's converted ImageNet file (Lite0's is the shipped ``WEIGHT_ID``)."""
    return WEIGHT_ID if variant == "lite0" else f"efficientnet-{variant}-imagenet"


def tap_widths(variant: str, taps: tuple[str, ...]) -> dict[str, int]:
    """Channels of each feature tap (Lite0: stride8 40, stride16 112, stride32 320; Lite2: 48, 120, 352)."""
    widths = [stage.width for stage in lite_variant(variant).stages()]
    return {tap: widths[FEATURE_STRIDES[tap]] for tap in taps}


def lite_variant(name: str) -> LiteVariant:
    if name not in LITE_VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant '{name}': use one of {', '.join(LITE_VARIANTS)}.")
    return LITE_VARIANTS[name]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed for the input size at hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """Any EfficientNet-Lite variant (``LITE_VARIANTS``); the taps are at the same stages in all of them."""

    def __init__(self, variant: str = "lite0", classes: int = IMAGENET_CLASSES):
        super().__init__()
        self.variant = lite_variant(variant)
        stages = self.variant.stages()
        self._conv_stem = SameConv2d(3, STEM_WIDTH, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS)
        blocks, self.stage_ends, cin = [], [], STEM_WIDTH
        for spec in stages:
            for i in range(spec.repeats):
                blocks.append(MBConv(cin, spec.width, spec.expand, spec.kernel, spec.stride if i == 0 else 1))
                cin = spec.width
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD_WIDTH, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_WIDTH, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_WIDTH, classes)
        self.stage_widths = [spec.width for spec in stages]

    def tap_widths(self, taps: tuple[str, ...]) -> dict[str, int]:
        return tap_widths(self.variant.name, taps)

    @staticmethod
    def normalize(rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - 0.5) / 0.5

    def features(self, rgb: torch.Tensor, taps: tuple[str, ...] = ("stride8", "stride16", "stride32"),
                 ) -> dict[str, torch.Tensor]:
        """Feature maps at the requested output strides (RGB in [0, 1], N×3×H×W)."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalize(rgb))))
        return run_blocks(self._blocks, x, {self.tap_block(name): name for name in taps})

    def tap_block(self, tap: str) -> int:
        """Index of the block whose output is the feature tap ``tap`` (e.g. "stride8")."""
        return self.stage_ends[FEATURE_STRIDES[tap]]

    def blocks_after(self, tap: str) -> nn.ModuleList:
        """A trainable copy of the blocks after ``tap`` (for a model that fine-tunes them on its own while
        this network, shared by other models, stays frozen)."""
        copy = nn.ModuleList(deepcopy(list(self._blocks[self.tap_block(tap) + 1:])))
        return copy.requires_grad_(True)

    def taps_after(self, after: str, taps: tuple[str, ...]) -> dict[int, str]:
        """Where the ``taps`` come out of ``blocks_after(after)``: position in that list → tap name."""
        first = self.tap_block(after) + 1
        return {self.tap_block(name) - first: name for name in taps}

    def features_from(self, x: torch.Tensor, after: str, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The taps after ``after``, computed from that tap's feature map ``x`` (e.g. a cached one)."""
        return run_blocks(self._blocks[self.tap_block(after) + 1:], x, self.taps_after(after, taps))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalize(rgb))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLite0(EfficientNetLite):
    """The shared backbone's structure (what every shipped model loads ``efficientnet-lite0-imagenet`` into)."""

    def __init__(self, classes: int = IMAGENET_CLASSES):
        super().__init__("lite0", classes)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, taps_at: dict[int, str]) -> dict[str, torch.Tensor]:
    """Run ``blocks`` in order from ``x``, keeping the outputs at the positions ``taps_at`` names (running from
    a cached earlier tap is what lets training fine-tune only the late blocks)."""
    out, last = {}, max(taps_at)
    for position, block in enumerate(blocks):
        x = block(x)
        if position in taps_at:
            out[taps_at[position]] = x
        if position == last:
            break
    return out


def load_pretrained(manifest=None, device: torch.device | str = "cpu",
                    weight_id: str = WEIGHT_ID) -> EfficientNetLite:
    """The ImageNet backbone from the project's verified weight file, frozen, in eval mode. ``weight_id`` and
    ``manifest`` can name another variant's converted file (its manifest entry's config names the variant)."""
    from core.weights import Manifest, load_verified_state

    manifest = manifest or Manifest.load()
    variant = str(manifest.entry(weight_id).config.get("stages", "lite0"))
    if variant not in LITE_VARIANTS:
        raise SemanticError(ErrorCode.weights_corrupt,
                            f"The manifest entry '{weight_id}' in {manifest.directory} names the backbone "
                            f"variant '{variant}', which this version does not know ({', '.join(LITE_VARIANTS)}). "
                            "Convert the weights again with core.training.efficientnet_lite.")
    model = EfficientNetLite(variant)
    load_verified_state(model, manifest, weight_id, f"the EfficientNet-{variant.capitalize()} backbone")
    model.requires_grad_(False)
    return model.to(device).eval()
