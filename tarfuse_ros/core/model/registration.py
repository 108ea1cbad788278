"""The registration network: two CSEBs and the MSRB flow predictor.

The flow is predicted at ``1 / 2**downsample`` of the input resolution (in pixels of that grid)
and returned at full resolution by :func:`~tarfuse_ros.core.model.warp.resize_flow`, which
scales the values. The flow heads start at zero, so an untrained network predicts the identity.
"""

from tarfuse_ros.core.model.encoders import conv_norm_act, ConvBNAct
from tarfuse_ros.core.model.warp import resize_flow
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['CSEB', 'MSRB', 'RegistrationNet']


class CSEB(nn.Module):
    """Channel and Spatial Enhancement Block (one per modality, weights not shared).

    A stem of ``downsample`` stride-2 layers brings the input to the registration resolution;
    three layers give the spatial weights ``W_s = sigmoid(.)`` (B, 1, h, w) and
    ``f_s = f * W_s``; three more layers (two of stride 2: their output is pooled anyway) and
    global average pooling give the channel weights ``W_c = sigmoid(.)`` (B, C, 1, 1);
    the output is ``f_e = f_s * W_c``.
    ``forward: (B, in_channels, H, W) -> (B, channels, H / 2**downsample, W / 2**downsample)``.
    ``norm``: ``'batch'`` (the paper's layers) or ``'group'`` (GroupNorm, for the matching
    registration).
    """

    def __init__(self, in_channels, channels=32, downsample=2, slope=0.1, norm='batch'):
        super().__init__()
        layer = conv_norm_act(norm)
        if downsample < 0 or channels < 2:
            raise ValueError(f'need downsample >= 0 and channels >= 2, got {downsample}, '
                             f'{channels}')
        stem = []
        width = in_channels
        for step in range(downsample):
            # Widen gradually: the first stride-2 layer still reads full-resolution pixels.
            out = channels if step == downsample - 1 else max(in_channels, channels // 2)
            stem.append(layer(width, out, stride=2, slope=slope))
            width = out
        if width != channels or not stem:
            stem.append(layer(width, channels, slope=slope))
        self.stem = nn.Sequential(*stem)
        half = max(channels // 2, 1)
        self.spatial = nn.Sequential(
            layer(channels, half, slope=slope),
            layer(half, half, slope=slope),
            nn.Conv2d(half, 1, 3, padding=1),
        )
        self.channel = nn.Sequential(
            layer(channels, channels, stride=2, slope=slope),
            layer(channels, channels, stride=2, slope=slope),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.out_channels = channels

    def forward(self, features):
        base = self.stem(features)
        spatial_weights = torch.sigmoid(self.spatial(base))
        enhanced = base * spatial_weights
        channel_weights = torch.sigmoid(self.channel(enhanced).mean(dim=(2, 3), keepdim=True))
        return enhanced * channel_weights


class MSRB(nn.Module):
    """Multi-Scale Registration Block: a U-Net that predicts a flow coarse to fine.

    Encoder levels of ``channels[i]`` at ``1 / 2**i`` of the input; the decoder upsamples,
    concatenates the skip features and refines. Every decoder level (and the bottleneck) has a
    zero-initialised ``3x3`` head adding a residual flow to the upsampled coarser flow.
    ``forward: (B, in_channels, h, w) -> (B, 2, h, w)`` flow in pixels of the ``(h, w)`` grid.
    """

    def __init__(self, in_channels, channels=(32, 48, 64, 96), slope=0.1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 2:
            raise ValueError(f'MSRB needs >= 2 levels of >= 2 channels, got {channels}')
        self.encoders = nn.ModuleList([ConvBNAct(in_channels, channels[0], slope=slope)])
        for level in range(1, len(channels)):
            self.encoders.append(nn.Sequential(
                ConvBNAct(channels[level - 1], channels[level], stride=2, slope=slope),
                ConvBNAct(channels[level], channels[level], slope=slope),
            ))
        self.decoders = nn.ModuleList(
            ConvBNAct(channels[level + 1] + channels[level], channels[level], slope=slope)
            for level in range(len(channels) - 1))
        self.flow_heads = nn.ModuleList(
            nn.Conv2d(width, 2, 3, padding=1) for width in channels)
        for head in self.flow_heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, features):
        skips = []
        x = features
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        flow = self.flow_heads[-1](x)
        for level in reversed(range(len(self.decoders))):
            skip = skips[level]
            x = F.interpolate(x, size=skip.shape[2:], mode='bilinear', align_corners=False)
            x = self.decoders[level](torch.cat((x, skip), dim=1))
            flow = resize_flow(flow, skip.shape[2:]) + self.flow_heads[level](x)
        return flow


class RegistrationNet(nn.Module):
    """CSEB(IR common) + CSEB(VI common) -> MSRB -> flow at full resolution, in pixels.

    ``forward(c_ir (B, C, H, W), c_vi (B, C, H, W)) -> (B, 2, H, W)``: the flow that maps the
    (deformed) IR onto the visible frame, ``registered = warp(ir, flow)``.
    """

    def __init__(self, in_channels, cseb_channels=32, msrb_channels=(32, 48, 64, 96),
                 downsample=2, slope=0.1):
        super().__init__()
        self.cseb_ir = CSEB(in_channels, cseb_channels, downsample, slope)
        self.cseb_vi = CSEB(in_channels, cseb_channels, downsample, slope)
        self.msrb = MSRB(2 * cseb_channels, msrb_channels, slope)

    def forward(self, c_ir, c_vi, return_levels=False, ir=None, vi=None, valid_size=None):
        # ``ir``, ``vi``, ``valid_size``: the matching registration's arguments, unused here.
        enhanced = torch.cat((self.cseb_ir(c_ir), self.cseb_vi(c_vi)), dim=1)
        flow = resize_flow(self.msrb(enhanced), c_ir.shape[2:])
        # The MSRB supervises its final flow only (``return_levels`` gives no extra levels).
        return (flow, []) if return_levels else flow
