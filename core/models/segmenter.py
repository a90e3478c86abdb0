"""Semantic segmentation of a gray photo on the shared pretrained backbone (the default segmenter).

GridNet trained from scratch on 2 000 SIFT Flow photos (``core/models/gridnet.py``) has to learn what a
person, a car or a tree looks like from those photos alone; here the ImageNet EfficientNet-Lite0
(``core/models/efficientnet_lite.py``) already knows, and only a light decoder is trained:

* input: the gray photo as the colorization pipeline has it (CIELab L, scaled like GridNet's input to
  [-1, 1]), turned back into the sRGB gray it came from and replicated to three channels — the backbone
  was trained on display RGB, and a gray photo is the RGB photo whose a, b are zero;
* backbone (frozen, ImageNet BatchNorm statistics): feature maps at strides 8, 16 and 32;
* decoder (``FPNDecoder``, the trained part): FPN-style top-down fusion (Lin et al., CVPR 2017) — a 1×1
  projection of each tap to ``width`` channels, the stride-32 map plus an image-level context vector
  (global average pool, as DeepLab v3's image pooling: a scene's class mix depends on the whole photo),
  upsampled and added into stride 16 and then 8, a 3×3 refinement at 16 and at 8, and a 1×1 classifier
  at stride 8; class scores are upsampled bilinearly to the input size.

The frozen backbone ships once (``weights/efficientnet-lite0-imagenet``); a weights file of this model
holds the decoder only — and, with ``tuned_after`` = "stride8", the decoder's own fine-tuned copy of the
backbone blocks after the stride-8 tap (stages 4–7): the shared backbone then runs only to stride 8 (the
colorizer and other models keep its frozen late blocks), the decoder computes strides 16 and 32 itself.
ImageNet features of a *gray* photo are not what SIFT Flow's classes need at the late stages, which a
frozen backbone cannot change; the early stages (edges, textures) transfer as they are.

``SegmenterConfig.backbone`` can name a larger EfficientNet-Lite (``"lite2"``: same taps, 48/120/352
channels instead of 40/112/320); the decoder's projections take that variant's widths. Lite0 is the only
one shipped; Lite2 is a training-time option for now (``core/training/segmenter.py --backbone lite2``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.imaging.color import lab_to_rgb_torch
from core.models.efficientnet_lite import EfficientNetLite, run_blocks, tap_widths

TAPS = ("stride8", "stride16", "stride32")
UNPREDICTED_SCORE = -100.0  # an ensemble's score for class 0 ('unlabeled'): below any log probability ≥ 1e-12


@dataclass(frozen=True)
class SegmenterConfig:
    num_classes: int = 34  # SIFT Flow: 33 classes + unlabeled (id 0); set from classes.txt
    width: int = 96  # decoder channels
    dropout: float = 0.1  # before the classifier
    # inference only: class scores averaged over the photo and its mirror image, and over input scales
    test_flip: bool = False
    test_scales: tuple[float, ...] = (1.0,)
    # "" = frozen backbone; a tap name = the blocks after it are the decoder's own (fine-tuned) copy
    tuned_after: str = ""
    # the EfficientNet-Lite variant whose taps the decoder reads ("lite0": the shipped, shared backbone)
    backbone: str = "lite0"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["test_scales"] = list(self.test_scales)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SegmenterConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "test_scales" in known:
            known["test_scales"] = tuple(float(s) for s in known["test_scales"])
        return cls(**known)


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPNDecoder(nn.Module):
    """Backbone features at strides 8/16/32 → class scores at stride 8."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.tuned_after = config.tuned_after
        if config.tuned_after:
            structure = EfficientNetLite(config.backbone)  # its blocks are replaced by trained ones at load
            self.late = structure.blocks_after(config.tuned_after)
            self.late_taps = structure.taps_after(config.tuned_after, TAPS[TAPS.index(config.tuned_after) + 1:])
        w, widths = config.width, tap_widths(config.backbone, TAPS)
        self.lateral = nn.ModuleDict({tap: _conv_bn_relu(widths[tap], w, 1) for tap in TAPS})
        self.context = nn.Sequential(nn.Linear(widths["stride32"], w), nn.ReLU(inplace=True))
        self.refine16 = _conv_bn_relu(w, w, 3)
        self.refine8 = _conv_bn_relu(w, w, 3)
        self.dropout = nn.Dropout2d(config.dropout)
        self.classifier = nn.Conv2d(w, config.num_classes, 1)

    def train(self, mode: bool = True) -> FPNDecoder:
        super().train(mode)
        if self.tuned_after:
            self.late.eval()  # fine-tuned with ImageNet's BatchNorm statistics: batches of 32 views are too few
        return self

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Taps → class scores at stride 8; with own late blocks, only ``tuned_after``'s tap is read."""
        if self.tuned_after:
            features = {self.tuned_after: features[self.tuned_after],
                        **run_blocks(self.late, features[self.tuned_after], self.late_taps)}
        s8, s16, s32 = (features[tap] for tap in TAPS)
        top = self.lateral["stride32"](s32) + self.context(s32.mean(dim=(2, 3)))[..., None, None]
        mid = self.refine16(self.lateral["stride16"](s16) + _upsample(top, s16.shape[-2:]))
        fine = self.refine8(self.lateral["stride8"](s8) + _upsample(mid, s8.shape[-2:]))
        return self.classifier(self.dropout(fine))


def _upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    # to an exact size: TensorFlow "same" padding makes odd inputs round up at every stride
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def gray_to_rgb(gray: torch.Tensor) -> torch.Tensor:
    """N×1×H×W CIELab L as L / 50 − 1 (GridNet's input) → N×3×H×W sRGB gray in [0, 1]."""
    lightness = (gray + 1) * 50
    lab = torch.cat([lightness, torch.zeros_like(lightness), torch.zeros_like(lightness)], dim=1)
    return lab_to_rgb_torch(lab).clamp(0, 1)


class PretrainedSegmenter(nn.Module):
    def __init__(self, config: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        self.config = config
        self.backbone = EfficientNetLite(config.backbone)
        self.backbone.requires_grad_(False)
        self.decoder = FPNDecoder(config)

    def train(self, mode: bool = True) -> PretrainedSegmenter:
        super().train(mode)
        self.backbone.eval()  # frozen: ImageNet's BatchNorm statistics stay
        return self

    @torch.no_grad()
    def start_tuning_from_backbone(self) -> None:
        """The decoder's own late blocks (``tuned_after``) start as copies of the backbone's pretrained ones."""
        first = self.backbone.tap_block(self.config.tuned_after) + 1
        for position, block in enumerate(self.decoder.late):
            block.load_state_dict(self.backbone._blocks[first + position].state_dict())

    def features(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the decoder reads (and what training caches once, the backbone being frozen)."""
        return backbone_features(self.backbone, self.config, gray)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        """gray: N×1×H×W in [-1, 1] (any size) → class logits N×K×H×W, like GridNet's.

        With ``test_flip`` / ``test_scales`` the logits are the mean over the mirrored photo and the
        rescaled ones (the backbone's padding and strides are not mirror-symmetric, nor scale-free, so
        each view errs differently)."""
        return multiview_logits(self.backbone, self.decoder, self.config, gray)

    @staticmethod
    def pad_multiple() -> int:
        return 32  # the coarsest tap


@torch.no_grad()
def backbone_features(backbone: EfficientNetLite, config: SegmenterConfig,
                      gray: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen backbone's taps a decoder of ``config`` reads: up to ``tuned_after`` when it has its own
    late blocks, all three otherwise."""
    taps = TAPS[:TAPS.index(config.tuned_after) + 1] if config.tuned_after else TAPS
    return backbone.features(gray_to_rgb(gray), taps)


def multiview_logits(backbone: EfficientNetLite, decoder: FPNDecoder, config: SegmenterConfig,
                     gray: torch.Tensor) -> torch.Tensor:
    """One decoder's class logits at the input size, averaged over ``config``'s test views (scales, mirror)."""
    size = gray.shape[-2:]
    total, count = None, 0
    for scale in config.test_scales:
        scaled = gray if scale == 1 else F.interpolate(gray, scale_factor=scale, mode="bilinear",
                                                       align_corners=False)
        for mirrored in ((False, True) if config.test_flip else (False,)):
            view = scaled.flip(-1) if mirrored else scaled
            logits = decoder(backbone_features(backbone, config, view))
            logits = _upsample(logits.flip(-1) if mirrored else logits, size)
            total = logits if total is None else total + logits
            count += 1
    return total / count


class SegmenterEnsemble(nn.Module):
    """Several decoders on the one frozen backbone, their class probabilities averaged.

    Decoders trained apart (another view size, another seed, fine-tuned late blocks or not) make
    different mistakes on SIFT Flow's rare classes; the mean of their probabilities is right more often
    than either (the card gives the select-split numbers). Each member reads the photo at the size it
    was trained at (``input_sizes``, about side² pixels), resized from the full-resolution photo (the
    pipeline's job): a 384² decoder fed the 256² photo upsampled inside the network scored 0.315 select
    mIoU instead of 0.337. Returns log mean probabilities at the first member's input size: class scores
    whose argmax is the ensemble's choice, like logits."""

    def __init__(self, configs: tuple[SegmenterConfig, ...] | list[SegmenterConfig],
                 input_sizes: tuple[int, ...] | list[int]):
        super().__init__()
        if not configs or len({c.backbone for c in configs}) != 1 or len(input_sizes) != len(configs):
            raise ValueError("an ensemble needs one input size per decoder and one backbone variant")
        self.configs, self.input_sizes = tuple(configs), tuple(int(s) for s in input_sizes)
        self.backbone = EfficientNetLite(self.configs[0].backbone)
        self.backbone.requires_grad_(False)
        self.decoders = nn.ModuleList(FPNDecoder(config) for config in self.configs)

    def forward(self, grays: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """grays: the photo at each member's input size (N×1×h×w, L / 50 − 1) → N×K×H×W at grays[0]'s.

        Class 0 ('unlabeled', never a prediction: the pipeline's argmax leaves it out) is left out of each
        member's softmax too — its score would take a different share of each member's probability — and
        comes back as the lowest score."""
        if len(grays) != len(self.decoders):
            raise ValueError(f"{len(self.decoders)} decoders need {len(self.decoders)} photos, got {len(grays)}")
        size = grays[0].shape[-2:]
        probabilities = sum(_upsample(multiview_logits(self.backbone, decoder, config, gray), size)[:, 1:].softmax(1)
                            for decoder, config, gray in zip(self.decoders, self.configs, grays, strict=True))
        scores = (probabilities / len(self.decoders)).clamp_min(1e-12).log()
        return torch.cat([torch.full_like(scores[:, :1], UNPREDICTED_SCORE), scores], dim=1)

    @staticmethod
    def pad_multiple() -> int:
        return 32  # the coarsest tap
