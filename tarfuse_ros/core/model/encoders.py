"""Feature extractors: stacks of ``conv3x3 - BatchNorm - LeakyReLU`` layers."""

import math

from torch import nn

__all__ = ['ConvBNAct', 'ConvGNAct', 'FeatureExtractor', 'conv_norm_act']


class ConvBNAct(nn.Sequential):
    """``Conv2d(k x k, no bias) - BatchNorm2d - LeakyReLU``.

    ``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``;
    ``activation=False`` leaves out the LeakyReLU (the layer then ends with the BatchNorm).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, slope=0.1,
                 activation=True):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.LeakyReLU(slope, inplace=True))
        super().__init__(*layers)


class ConvGNAct(nn.Sequential):
    """``Conv2d(k x k, no bias) - GroupNorm - LeakyReLU``: statistics per sample, not per batch.

    Same shapes as :class:`ConvBNAct`; ``groups`` is the largest divisor of ``out_channels``
    up to 8. Used in the flow path, where BatchNorm statistics learnt on training crops differ
    on whole frames.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, slope=0.1,
                 activation=True):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=False),
            nn.GroupNorm(math.gcd(int(out_channels), 8), out_channels),
        ]
        if activation:
            layers.append(nn.LeakyReLU(slope, inplace=True))
        super().__init__(*layers)


def conv_norm_act(norm):
    """Return the layer class for ``norm``: ``'batch'`` (ConvBNAct) or ``'group'`` (ConvGNAct)."""
    layers = {'batch': ConvBNAct, 'group': ConvGNAct}
    if norm not in layers:
        raise ValueError(f'norm must be one of {sorted(layers)}, got {norm!r}')
    return layers[norm]


class FeatureExtractor(nn.Module):
    """A modality-common or modality-specific extractor (paper: CFE / SFE).

    ``num_layers`` ``ConvBNAct`` layers at full resolution, each ``channels`` wide (kept narrow:
    these are the only layers besides the reconstruction head that run at full resolution).
    ``forward: (B, in_channels, H, W) -> (B, channels, H, W)``.
    """

    def __init__(self, in_channels=1, channels=8, num_layers=2, slope=0.1):
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ValueError(f'need num_layers >= 1 and channels >= 1, got {num_layers}, '
                             f'{channels}')
        layers = []
        for index in range(num_layers):
            layers.append(ConvBNAct(in_channels if index == 0 else channels, channels,
                                    slope=slope))
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, image):
        return self.layers(image)
