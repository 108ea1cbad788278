"""Output heads: fused-image reconstruction and the P3/P4/P5 neck of the ``Detect`` head.

The ``Detect`` head itself is ultralytics' (:mod:`tarfuse_ros.core.model.yolo`).
"""

from tarfuse_ros.core.model.encoders import ConvBNAct
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['DetectionNeck', 'ReconstructionHead', 'ResidualBlock']


class ReconstructionHead(nn.Module):
    """Three layers from the fused features to the fused image; the last ends with Tanh.

    ``forward: (B, in_channels, H, W) -> (B, 1, H, W)`` in ``[0, 1]`` (``(tanh + 1) / 2``).
    """

    def __init__(self, in_channels, channels=(16, 8), slope=0.1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2:
            raise ValueError(f'reconstruction needs two hidden widths, got {channels}')
        self.layers = nn.Sequential(
            ConvBNAct(in_channels, channels[0], slope=slope),
            ConvBNAct(channels[0], channels[1], slope=slope),
            nn.Conv2d(channels[1], 1, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, fused_features):
        return (self.layers(fused_features) + 1.0) * 0.5


class ResidualBlock(nn.Module):
    """``x + BN(conv3x3(LeakyReLU(BN(conv3x3(x)))))``: a basic residual block (He et al. 2016).

    ``(B, C, H, W) -> (B, C, H, W)``. No activation after the sum, and the last BatchNorm's
    scale starts at zero (Goyal et al. 2017): a new block is exactly the identity, so blocks can
    be added to a trained network without changing its output, and training grows them.
    """

    def __init__(self, channels, slope=0.1):
        super().__init__()
        self.branch = nn.Sequential(
            ConvBNAct(channels, channels, slope=slope),
            ConvBNAct(channels, channels, slope=slope, activation=False),
        )
        nn.init.zeros_(self.branch[1][1].weight)

    def forward(self, x):
        return x + self.branch(x)


class DetectionNeck(nn.Module):
    """Downsampling neck from the fused features to P3, P4, P5 (strides 8, 16, 32).

    Two stride-2 stem layers (``stem_channels``, strides 2 and 4), then per level one stride-2
    layer, one refinement layer of ``level_channels[i]`` and ``blocks`` :class:`ResidualBlock`
    (identity when new, so blocks can be added to a trained neck without changing its output).
    ``forward: (B, in_channels, H, W) -> [P3 (B, c3, H/8, W/8), P4 (.., H/16), P5 (.., H/32)]``
    (H, W multiples of 32).

    With ``top_down``, a top-down path (the FPN of Lin et al., CVPR 2017, in the residual
    form): ``P4 += BN(conv1x1([P4, up2(P5)]))``, then ``P3 += BN(conv1x1([P3, up2(P4)]))``
    with the updated P4 (``up2``: nearest-neighbour upsampling by 2), so the finer levels, which
    find the small objects, see the context of the coarser ones. The BatchNorm scales start at
    zero: the path is the identity when added to a trained neck, and training grows it.
    """

    def __init__(self, in_channels, stem_channels=(16, 32), level_channels=(64, 96, 128),
                 slope=0.1, blocks=0, top_down=False):
        super().__init__()
        stem_channels = tuple(int(c) for c in stem_channels)
        level_channels = tuple(int(c) for c in level_channels)
        if len(stem_channels) != 2 or len(level_channels) != 3:
            raise ValueError('the neck needs 2 stem widths and 3 level widths, got '
                             f'{stem_channels} and {level_channels}')
        if int(blocks) < 0:
            raise ValueError(f'the neck needs blocks >= 0, got {blocks}')
        self.stem = nn.Sequential(
            ConvBNAct(in_channels, stem_channels[0], stride=2, slope=slope),
            ConvBNAct(stem_channels[0], stem_channels[1], stride=2, slope=slope),
        )
        self.levels = nn.ModuleList()
        width = stem_channels[1]
        for out in level_channels:
            self.levels.append(nn.Sequential(
                ConvBNAct(width, out, stride=2, slope=slope),
                ConvBNAct(out, out, slope=slope),
                *(ResidualBlock(out, slope) for _ in range(int(blocks))),
            ))
            width = out
        self.out_channels = level_channels
        self.top_down = None
        if top_down:
            # Index i fuses level i + 1 into level i (P4 <- P5, P3 <- P4).
            self.top_down = nn.ModuleList(
                ConvBNAct(level_channels[i] + level_channels[i + 1], level_channels[i],
                          kernel_size=1, slope=slope, activation=False) for i in range(2))
            for layer in self.top_down:
                nn.init.zeros_(layer[1].weight)

    def forward(self, fused_features):
        x = self.stem(fused_features)
        outputs = []
        for level in self.levels:
            x = level(x)
            outputs.append(x)
        if self.top_down is not None:
            for i in (1, 0):
                coarser = F.interpolate(outputs[i + 1], scale_factor=2.0, mode='nearest')
                outputs[i] = outputs[i] + self.top_down[i](torch.cat((outputs[i], coarser), 1))
        return outputs
