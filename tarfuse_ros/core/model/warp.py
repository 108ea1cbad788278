"""Warping images and features with dense flow fields given in pixels.

The one flow convention of the package:

* a flow is a tensor ``(B, 2, H, W)`` in **pixels**; channel 0 is ``dx``, channel 1 is ``dy``;
* ``warp(x, flow)(p) = x(p + flow(p))``: every output pixel ``p`` samples the input at
  ``p + flow(p)``, bilinearly, with zeros outside the image;
* pixel centres sit at integer coordinates ``0 .. W-1`` and ``0 .. H-1``
  (``grid_sample(..., align_corners=True)``);
* resizing a flow from ``(H, W)`` to ``(H', W')`` multiplies ``dx`` by ``(W'-1)/(W-1)`` and
  ``dy`` by ``(H'-1)/(H-1)`` (the same pixel-centre convention; about the resize factor).
"""

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['Warp', 'identity_grid', 'resize_flow', 'warp']

_MODES = ('bilinear', 'nearest')
_PADDING = ('zeros', 'border', 'reflection')


def _check_flow(flow_px, name='flow_px'):
    if not isinstance(flow_px, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(flow_px).__name__}')
    if flow_px.dim() != 4 or flow_px.shape[1] != 2:
        raise ValueError(f'{name} must have shape (B, 2, H, W), got {tuple(flow_px.shape)}')
    if not flow_px.is_floating_point():
        raise ValueError(f'{name} must be a floating point tensor, got {flow_px.dtype}')
    if flow_px.shape[2] < 2 or flow_px.shape[3] < 2:
        raise ValueError(f'{name} needs H >= 2 and W >= 2, got {tuple(flow_px.shape)}')


def identity_grid(height, width, device=None, dtype=torch.float32):
    """Return the pixel coordinates ``(1, 2, H, W)`` (channel 0 = x, channel 1 = y).

    Built with ``torch.arange`` (not ``linspace``) so that ONNX export keeps it dynamic.
    """
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack((grid_x, grid_y), dim=0).unsqueeze(0)


def warp(image, flow_px, mode='bilinear', padding_mode='zeros'):
    """Warp ``image`` with a flow in pixels: ``out(p) = image(p + flow_px(p))``.

    Args:
        image: ``(B, C, H, W)`` floating point tensor (any value range).
        flow_px: ``(B, 2, H, W)`` (or ``(1, 2, H, W)``, broadcast over the batch) displacement in
            pixels, channel 0 = dx, channel 1 = dy, same dtype and device as ``image``.
        mode: ``'bilinear'`` (default) or ``'nearest'``.
        padding_mode: ``'zeros'`` (default: zeros outside the image), ``'border'`` or
            ``'reflection'``.

    Returns:
        ``(B, C, H, W)`` warped tensor.

    Example:
        >>> x = torch.rand(1, 1, 4, 5)
        >>> torch.allclose(warp(x, torch.zeros(1, 2, 4, 5)), x)
        True

    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f'image must have shape (B, C, H, W), got {shape}')
    _check_flow(flow_px)
    if flow_px.shape[2:] != image.shape[2:]:
        raise ValueError(
            f'flow_px size {tuple(flow_px.shape[2:])} differs from image size '
            f'{tuple(image.shape[2:])}; resize the flow with resize_flow first')
    if flow_px.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f'flow_px batch does not match image batch: flow_px {tuple(flow_px.shape)}, '
            f'image {tuple(image.shape)}')
    if mode not in _MODES:
        raise ValueError(f'mode must be one of {_MODES}, got {mode!r}')
    if padding_mode not in _PADDING:
        raise ValueError(f'padding_mode must be one of {_PADDING}, got {padding_mode!r}')
    height, width = image.shape[2:]
    flow_px = flow_px.to(image.dtype)
    coords = identity_grid(height, width, device=image.device, dtype=image.dtype) + flow_px
    # Pixel coordinates -> [-1, 1] with pixel centres at the extremes (align_corners=True).
    grid_x = coords[:, 0] * (2.0 / (width - 1)) - 1.0
    grid_y = coords[:, 1] * (2.0 / (height - 1)) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def resize_flow(flow_px, size, mode='bilinear'):
    """Resize a flow to ``size = (H', W')`` and rescale its values to the new pixel grid.

    Args:
        flow_px: ``(B, 2, H, W)`` flow in pixels of the ``(H, W)`` grid.
        size: target ``(H', W')``.
        mode: interpolation, ``'bilinear'`` (default) or ``'nearest'``.

    Returns:
        ``(B, 2, H', W')`` flow in pixels of the ``(H', W')`` grid: ``dx`` scaled by
        ``(W'-1)/(W-1)``, ``dy`` by ``(H'-1)/(H-1)`` (pixel centres at integer coordinates).

    """
    _check_flow(flow_px)
    if torch.jit.is_tracing():
        # ONNX export traces sizes as tensors: int() would freeze them to the traced size.
        new_h, new_w = size[0], size[1]
    else:
        if len(size) != 2 or int(size[0]) < 2 or int(size[1]) < 2:
            raise ValueError(f'size must be (H, W) with H, W >= 2, got {tuple(size)}')
        new_h, new_w = int(size[0]), int(size[1])
    old_h, old_w = flow_px.shape[2:]
    if (new_h, new_w) == (old_h, old_w):
        return flow_px
    if mode == 'bilinear':
        resized = F.interpolate(flow_px, size=(new_h, new_w), mode='bilinear', align_corners=True)
    elif mode == 'nearest':
        resized = F.interpolate(flow_px, size=(new_h, new_w), mode='nearest')
    else:
        raise ValueError(f'mode must be bilinear or nearest, got {mode!r}')
    # Python-float scales, not a tensor built on the CPU: keeps CUDA-graph capture possible.
    return torch.cat((resized[:, :1] * ((new_w - 1) / (old_w - 1)),
                      resized[:, 1:] * ((new_h - 1) / (old_h - 1))), dim=1)


class Warp(nn.Module):
    """Module form of :func:`warp` (no state: the grid is built for each input size).

    ``forward(image (B, C, H, W), flow_px (B, 2, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, mode='bilinear', padding_mode='zeros'):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f'mode must be one of {_MODES}, got {mode!r}')
        if padding_mode not in _PADDING:
            raise ValueError(f'padding_mode must be one of {_PADDING}, got {padding_mode!r}')
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image, flow_px):
        return warp(image, flow_px, mode=self.mode, padding_mode=self.padding_mode)

    def extra_repr(self):
        return f'mode={self.mode!r}, padding_mode={self.padding_mode!r}'
