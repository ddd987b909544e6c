"""VinVL's ResNeXt-152 32x8d C4 body and its res5 box head, with the original's module names
(so the published state dict loads as it is) and its arithmetic:

- frozen batch norm as maskrcnn_benchmark computes it: scale = weight * running_var^-1/2 with
  no epsilon, shift = bias - running_mean * scale (torchvision's adds 1e-5: not the same);
- bottlenecks with the stride on the grouped 3x3 convolution, a 1x1 + frozen-BN shortcut in
  the first block of each stage, no convolution biases;
- the stem: 7x7/2 convolution, frozen BN, ReLU, 3x3/2 max-pool with padding 1.
Widths come from `VinVLShape` so that a small-width model with the same structure (the golden
fixtures') and the full model share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

STAGE_BLOCKS = (3, 8, 36)       # layer1..layer3 (res2..res4)
HEAD_BLOCKS = 3                 # layer4 (res5), in the box head


@dataclass(frozen=True)
class VinVLShape:
    """The widths of a VinVL X152-C4 model; the defaults are the published model's."""

    num_groups: int = 32
    width_per_group: int = 8
    stem_out: int = 64
    res2_out: int = 256
    num_classes: int = 1595
    num_attributes: int = 525
    class_embedding: int = 256
    attribute_hidden: int = 512

    @property
    def res4_channels(self) -> int:
        return 4 * self.res2_out

    @property
    def feature_dim(self) -> int:
        """The C5 vector: what the extractor stores per region."""
        return 8 * self.res2_out


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics, no epsilon (the original's rule)."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        if x.dtype == torch.float32:
            return x * scale + shift
        # in bfloat16, x * scale + shift would cancel two large terms at 3 digits
        return (x.float() * scale + shift).to(x.dtype)


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, out_channels: int, groups: int,
                 stride: int) -> None:
        super().__init__()
        self.downsample: nn.Module | None = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(out_channels))
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups,
                               bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut)


def _stage(blocks: int, in_channels: int, width: int, out_channels: int, groups: int,
           stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, out_channels, groups, stride)]
    layers += [Bottleneck(out_channels, width, out_channels, groups, 1)
               for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Stem(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)


class ResNeXtBody(nn.Module):
    """stem + layer1..layer3: picture [B, 3, h, w] -> res4 [B, 4R, h/16, w/16] (ceil)."""

    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        groups, width = shape.num_groups, shape.num_groups * shape.width_per_group
        self.stem = Stem(shape.stem_out)
        self.layer1 = _stage(STAGE_BLOCKS[0], shape.stem_out, width, shape.res2_out, groups, 1)
        self.layer2 = _stage(STAGE_BLOCKS[1], shape.res2_out, 2 * width, 2 * shape.res2_out,
                             groups, 2)
        self.layer3 = _stage(STAGE_BLOCKS[2], 2 * shape.res2_out, 4 * width,
                             4 * shape.res2_out, groups, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class Backbone(nn.Module):
    """Named as the original (`backbone.body.*`)."""

    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.body = ResNeXtBody(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Res5Head(nn.Module):
    """RoI maps [R, 4R, 14, 14] -> res5 (first block stride 2) -> [R, 8R, 7, 7]."""

    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        width = 8 * shape.num_groups * shape.width_per_group
        self.layer4 = _stage(HEAD_BLOCKS, shape.res4_channels, width, shape.feature_dim,
                             shape.num_groups, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(x)
