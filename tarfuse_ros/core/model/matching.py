"""Explicit matching registration: a global affine stage, then coarse-to-fine cost volumes.

The paper's MSRB (:mod:`~tarfuse_ros.core.model.registration`) regresses the flow from
concatenated features, which cannot solve displacements much larger than its receptive field
learnt from the training draws. This module matches explicitly, as optical-flow networks do
(PWC-Net, Sun et al., CVPR 2018; RAFT, Teed and Deng, ECCV 2020), with the paper's CSEBs in front:

1. the CSEBs enhance the IR and visible common features at ``1/4``; a pyramid encoder with
   shared weights (the two modalities are compared in one feature space) continues to
   ``1/8 .. 1/32``;
2. at the coarsest level a **global stage** reads the local cost volume of the unwarped features
   and predicts a flow plus a confidence per cell; one affine transform is fitted to them by
   weighted least squares (closed form, differentiable; the normal equations of Hartley and
   Zisserman, *Multiple View Geometry*, sec. 4.1, for an affine map), so rotation, scale,
   shear, field of view and translation are solved before anything local;
3. at every finer level the IR features are warped by the upsampled flow so far, correlated with
   the visible features within ``radius`` cells (a ``(2r + 1)^2``-channel cost volume) and a small
   estimator predicts the **residual** flow.

Displacements are predicted in pixels of each level (never as a fraction of the image size), so a
model trained on crops runs on whole frames; the flow path uses GroupNorm or no normalisation
(BatchNorm statistics of crops differ on whole frames). Every flow head starts at zero, so the
untrained network predicts the identity. Plain PyTorch operations only (exportable to ONNX).
"""

import math

import cv2
import numpy as np
from tarfuse_ros.core.model.registration import CSEB
from tarfuse_ros.core.model.warp import identity_grid, resize_flow, warp
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['FlowEstimator', 'MatchingRegistration', 'OrientationMatcher', 'PyramidEncoder',
           'affine_flow', 'block_cost_volume', 'cell_histograms', 'corner_shift_px',
           'crop_to_valid', 'fit_affine',
           'local_correlation', 'match_cells', 'orientation_descriptors', 'peak_offsets',
           'robust_affine_px', 'smoothed_sobel', 'zoom']

#: Block norm below which :func:`block_cost_volume` gives a zero cosine (textured blocks: 1-3).
BLOCK_NORM_FLOOR = 1e-3


def local_correlation(reference, moving, radius):
    """Return the local cost volume of two feature maps.

    ``out[:, k, y, x] = sum_c reference[:, c, y, x] * moving[:, c, y + dy_k, x + dx_k]`` for the
    ``(2 radius + 1)^2`` offsets ``dy, dx in [-radius, radius]`` (row-major: ``k = (dy + r) *
    (2r + 1) + (dx + r)``), with zeros outside ``moving``. L2-normalise the features first for a
    cosine similarity in ``[-1, 1]`` (a sum, not PWC-Net's mean over channels: with unit
    vectors the mean would shrink the matching signal by the channel count).

    Args:
        reference: ``(B, C, H, W)`` features of the fixed (visible) image.
        moving: ``(B, C, H, W)`` features of the moving (IR) image, already warped.
        radius: search radius in cells (``>= 0``).

    Returns:
        ``(B, (2 radius + 1)^2, H, W)`` correlations.

    Raises:
        ValueError: on shapes that differ or a negative radius.

    """
    radius = _checked_radius(reference, moving, radius)
    height, width = reference.shape[2:]
    padded = F.pad(moving, (radius, radius, radius, radius))
    if torch.jit.is_tracing():
        shifted = _column_shifts(padded, radius)
        return torch.cat([(reference.unsqueeze(2) * shifted[:, :, :, dy:dy + height]).sum(dim=1)
                          for dy in range(2 * radius + 1)], dim=1)
    costs = []
    for dy in range(2 * radius + 1):
        rows = padded[:, :, dy:dy + height]
        for dx in range(2 * radius + 1):
            costs.append((reference * rows[:, :, :, dx:dx + width]).sum(dim=1))
    return torch.stack(costs, dim=1)


def _checked_radius(reference, moving, radius):
    """Return ``int(radius)`` after :func:`local_correlation`'s checks of its arguments."""
    if reference.shape != moving.shape or reference.dim() != 4:
        raise ValueError(f'reference and moving must be equal (B, C, H, W) tensors, got '
                         f'{tuple(reference.shape)} and {tuple(moving.shape)}')
    radius = int(radius)
    if radius < 0:
        raise ValueError(f'radius must be >= 0, got {radius}')
    return radius


def _plain_cpu(*tensors):
    """Return True for CPU tensors, outside an ONNX trace, of which no gradient is needed.

    There the global stage's arithmetic may run in place, into buffers or through OpenCV.
    """
    return (not torch.jit.is_tracing() and all(t.device.type == 'cpu' for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _correlation_by_rows(reference, moving, radius, border=(0, 0)):
    """Return :func:`local_correlation` computed one row of offsets at a time (no gradient).

    For the 8-channel histograms of :func:`block_cost_volume` on a CPU. The columns of the
    padded ``moving`` at every horizontal offset are copied once; for each vertical offset the
    channel products of all ``2 radius + 1`` horizontal offsets are then summed in place,
    channel after channel: about 15 operations per offset row instead of two per offset (578
    at radius 8, each too small to share among threads). The order of ``sum`` over 8 channels
    at most grid sizes (the same values bit for bit there, e.g. 64x80 and 128x160 cells; on
    some grids, e.g. 36x60, ``sum`` adds in another order: equal up to float rounding).
    ``border``: ``(before, after)`` rows and columns of zeros around the maps (the padding of
    :func:`_box_sum`, written here rather than copied there).
    """
    radius = _checked_radius(reference, moving, radius)
    batch, channels, height, width = reference.shape
    size = 2 * radius + 1
    padded = F.pad(moving, (radius, radius, radius, radius))
    # (B, C, 2r + 1, H + 2r, W): element [:, c, dx, y, x] is padded[:, c, y, x + dx].
    shifted = padded.unfold(3, width, 1).permute(0, 1, 3, 2, 4).contiguous()
    before, after = border
    costs = reference.new_empty(batch, size, size, before + height + after,
                                before + width + after)
    for edge in (costs[..., :before, :], costs[..., before + height:, :],
                 costs[..., :before], costs[..., before + width:]):
        edge.zero_()
    inner = costs[..., before:before + height, before:before + width]
    product = None
    for dy in range(size):
        rows = shifted[:, :, :, dy:dy + height]
        total = torch.mul(reference[:, :1], rows[:, 0], out=inner[:, dy])
        for channel in range(1, channels):
            product = torch.mul(reference[:, channel:channel + 1], rows[:, channel],
                                out=product)
            total += product
    return costs.flatten(1, 2)


def _column_shifts(padded, radius):
    """Return ``(B, C, 2 radius + 1, H + 2 radius, W)``: the columns of ``padded`` at each shift.

    ``padded`` is a ``(B, C, H + 2 radius, W + 2 radius)`` map; element ``[:, c, dx, y, x]`` is
    ``padded[:, c, y, x + dx]``. One depthwise convolution with one-hot ``1 x (2 radius + 1)``
    kernels (each output is one input times 1 plus zeros: exact). For ONNX traces, with a row
    slice per ``dy`` after it: slicing every offset wrote two slices, a product and a sum per
    offset (289 at radius 8, thousands of small nodes in a tarfuse-export graph and a third of
    onnxruntime's time), and an index ``Gather`` of the columns was slower still in
    onnxruntime. The sizes stay symbolic in a trace.
    """
    size = 2 * radius + 1
    batch, channels = padded.shape[0], int(padded.shape[1])
    kernel = torch.eye(size, dtype=padded.dtype, device=padded.device).view(size, 1, 1, size)
    shifted = F.conv2d(padded, kernel.repeat(channels, 1, 1, 1), groups=channels)
    return shifted.reshape(batch, channels, size, padded.shape[2], -1)


def _normalised_grid(height, width, device, dtype):
    """Return ``(1, 2, H, W)`` pixel-centre coordinates in ``[-1, 1]`` (x, y)."""
    grid = identity_grid(height, width, device=device, dtype=dtype)
    return torch.cat((grid[:, :1] * (2.0 / max(width - 1, 1)) - 1.0,
                      grid[:, 1:] * (2.0 / max(height - 1, 1)) - 1.0), dim=1)


def _to_normalised(flow_px):
    height, width = flow_px.shape[2:]
    return torch.cat((flow_px[:, :1] * (2.0 / max(width - 1, 1)),
                      flow_px[:, 1:] * (2.0 / max(height - 1, 1))), dim=1)


def _inverse_3x3(matrix):
    """Batched inverse of ``(B, 3, 3)`` matrices by the adjugate (ONNX-friendly, no linalg op)."""
    a, b, c = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    d, e, f = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    g, h, i = matrix[:, 2, 0], matrix[:, 2, 1], matrix[:, 2, 2]
    co = torch.stack((e * i - f * h, c * h - b * i, b * f - c * e,
                      f * g - d * i, a * i - c * g, c * d - a * f,
                      d * h - e * g, b * g - a * h, a * e - b * d), dim=1).view(-1, 3, 3)
    det = a * co[:, 0, 0] + b * co[:, 1, 0] + c * co[:, 2, 0]
    return co / det.view(-1, 1, 1)


def fit_affine(flow_px, weights=None, ridge=1e-3):
    """Fit one affine map per sample to a flow by weighted least squares.

    In normalised coordinates ``u`` (pixel centres at -1 and 1), finds ``theta`` (2 x 3)
    minimising ``sum_p w(p) |theta [u(p); 1] - (u(p) + f(p))|^2 + ridge * sum(w) |theta - I|^2``
    (the ridge term pulls a degenerate fit, e.g. all weight on one cell, to the identity).
    A zero flow gives the identity exactly, whatever the weights.

    Args:
        flow_px: ``(B, 2, h, w)`` flow in pixels of its grid (``warp`` convention).
        weights: ``(B, 1, h, w)`` non-negative confidences, or None for uniform weights.
        ridge: relative strength of the identity prior (``> 0``).

    Returns:
        ``(B, 2, 3)`` affine maps in normalised coordinates (size-independent: evaluate them on
        any grid with :func:`affine_flow`).

    """
    batch, _, height, width = flow_px.shape
    grid = _normalised_grid(height, width, flow_px.device, flow_px.dtype)
    ones = torch.ones_like(grid[:, :1])
    basis = torch.cat((grid, ones), dim=1).expand(batch, -1, -1, -1).reshape(batch, 3, -1)
    target = (grid + _to_normalised(flow_px)).reshape(batch, 2, -1)
    if weights is None:
        weights = torch.ones_like(flow_px[:, :1])
    w = weights.reshape(batch, 1, -1)
    weighted = basis * w
    normal = weighted @ basis.transpose(1, 2)                    # (B, 3, 3)
    rhs = weighted @ target.transpose(1, 2)                      # (B, 3, 2)
    eye = torch.eye(3, device=flow_px.device, dtype=flow_px.dtype).unsqueeze(0)
    strength = ridge * w.sum(dim=2, keepdim=True).clamp_min(1e-6)  # (B, 1, 1)
    prior = eye[:, :, :2]                                        # identity theta, transposed
    theta_t = _inverse_3x3(normal + strength * eye) @ (rhs + strength * prior)
    return theta_t.transpose(1, 2)


def affine_flow(theta, height, width):
    """Return the flow ``(B, 2, H, W)`` in pixels of an ``(H, W)`` grid of affine maps.

    ``theta``: ``(B, 2, 3)`` in normalised coordinates (:func:`fit_affine`); the flow at pixel
    ``p`` is ``theta [u(p); 1] - u(p)`` converted to pixels.
    """
    grid = _normalised_grid(height, width, theta.device, theta.dtype)
    flat = grid.reshape(1, 2, -1)
    mapped = theta[:, :, :2] @ flat + theta[:, :, 2:]
    flow = (mapped - flat).reshape(theta.shape[0], 2, height, width)
    return torch.cat((flow[:, :1] * ((width - 1) / 2.0), flow[:, 1:] * ((height - 1) / 2.0)),
                     dim=1)


def orientation_descriptors(image, cell=8, bins=8, block=4):
    """Return dense unsigned-orientation descriptors of an image, one per ``cell x cell`` cell.

    A histogram-of-oriented-gradients (Dalal and Triggs, CVPR 2005) with the gradient direction
    taken modulo 180 degrees (a doubled angle), so an edge that is dark-to-bright in one
    modality and bright-to-dark in the other gives the same descriptor; gradient magnitudes
    are divided by the mean energy of the cell's ``5 x 5``-cell neighbourhood (contrast
    normalisation), each bin receives ``max(0, cos(2 theta - phi_b))^3`` of a pixel's
    magnitude (a smooth angular kernel, no ``atan2``: ONNX-friendly), and the histograms of a
    ``block x block`` neighbourhood of cells are concatenated and L2-normalised. No learnt
    parameter: the same descriptor for infrared and visible images, whatever the training.

    Args:
        image: ``(B, 1, H, W)`` plane in ``[0, 1]`` (H, W multiples of ``cell``).
        cell: cell side in pixels.
        bins: orientation bins over 180 degrees.
        block: cells per block side.

    Returns:
        ``(B, bins * block^2, H / cell, W / cell)`` unit vectors (zero where there is no
        gradient at all); cell ``(i, j)`` is centred on pixel ``(cell (j + 1/2) - 1/2,
        cell (i + 1/2) - 1/2)``.

    """
    hist = cell_histograms(image, cell, bins)
    before, after = block // 2, (block - 1) // 2
    padded = F.pad(hist, (before, after, before, after))
    height, width = hist.shape[2:]
    blocks = [padded[:, :, dy:dy + height, dx:dx + width]
              for dy in range(block) for dx in range(block)]
    return F.normalize(torch.cat(blocks, dim=1), dim=1, eps=1e-6)


# smoothed_sobel's kernels: the 5-tap Gaussian of sigma 1 px (normalised, as OpenCV's
# getGaussianKernel) and the 3x3 Sobel kernel of the horizontal derivative (correlation).
_GAUSSIAN_5 = cv2.getGaussianKernel(5, 1.0)[:, 0]
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)


def _reflect_101(planes, dim, pad=2):
    """Pad dimension ``dim`` by ``pad`` on either side, reflected without repeating the edge.

    As OpenCV's BORDER_REFLECT_101 for any side: F.pad's reflection needs a side longer than
    ``pad`` (an image 1 or 2 px wide raised RuntimeError), so a side that short is gathered
    by OpenCV's own border indices (constant in a trace, as that side is).
    """
    side = planes.shape[dim]
    if side > pad:
        widths = [0, 0, 0, 0]
        widths[2 * (3 - dim):2 * (3 - dim) + 2] = [pad, pad]
        return F.pad(planes, tuple(widths), mode='reflect')
    index = [cv2.borderInterpolate(i, side, cv2.BORDER_REFLECT_101)
             for i in range(-pad, side + pad)]
    return planes.index_select(dim, torch.tensor(index, device=planes.device))


def smoothed_sobel(image):
    """Return ``(gx, gy)``, each ``(B, C, H, W)``: the Sobel derivatives of the blurred image.

    Each plane of ``image`` (B, C, H, W; an integer image is taken as float32, values
    unchanged) is blurred by a 5x5 Gaussian of sigma 1 px (borders
    reflected without repeating the edge pixel), then differentiated by the unnormalised 3x3
    Sobel kernels (borders replicated; ``gx`` = right minus left, ``gy`` = below minus above, 8
    times the slope of a ramp). OpenCV (``GaussianBlur``, ``Sobel``) on a CPU float32 image that
    needs no gradient, about a tenth of the time at 640x512; the same separable kernels as
    fixed-weight convolutions otherwise (a GPU, autograd, an ONNX trace: constant kernel shapes,
    which kornia 0.8's filters did not trace to). The two agree up to float rounding (1e-6 of a
    unit ramp). Raises ValueError for an image of another shape.
    """
    if image.dim() != 4:
        raise ValueError(f'image must be (B, C, H, W), got {tuple(image.shape)}')
    if not image.is_floating_point():  # an 8-bit frame, say: filtered as float32
        image = image.float()
    if image.dtype == torch.float32 and _plain_cpu(image):
        planes = image.detach().numpy()
        gx, gy = (np.empty(planes.shape, np.float32) for _ in range(2))
        for index in np.ndindex(planes.shape[:2]):
            smooth = cv2.GaussianBlur(np.ascontiguousarray(planes[index]), (5, 5), 1.0,
                                      borderType=cv2.BORDER_REFLECT_101)
            cv2.Sobel(smooth, cv2.CV_32F, 1, 0, dst=gx[index], ksize=3,
                      borderType=cv2.BORDER_REPLICATE)
            cv2.Sobel(smooth, cv2.CV_32F, 0, 1, dst=gy[index], ksize=3,
                      borderType=cv2.BORDER_REPLICATE)
        return torch.from_numpy(gx), torch.from_numpy(gy)
    batch, channels, height, width = image.shape
    planes = image.reshape(batch * channels, 1, height, width)
    gauss = torch.as_tensor(_GAUSSIAN_5, dtype=image.dtype, device=image.device)
    smooth = F.conv2d(_reflect_101(planes, 3), gauss.view(1, 1, 1, 5))
    smooth = F.conv2d(_reflect_101(smooth, 2), gauss.view(1, 1, 5, 1))
    sobel = torch.as_tensor(_SOBEL_X, dtype=image.dtype, device=image.device)
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)  # (2, 1, 3, 3): gx, gy
    gradient = F.conv2d(F.pad(smooth, (1, 1, 1, 1), mode='replicate'), kernels)
    return (gradient[:, 0].reshape(batch, channels, height, width),
            gradient[:, 1].reshape(batch, channels, height, width))


def cell_histograms(image, cell=8, bins=8):
    """Return the contrast-normalised orientation histograms of :func:`orientation_descriptors`.

    ``(B, 1, H, W)`` in ``[0, 1]`` -> ``(B, bins, H / cell, W / cell)`` (before blocks).
    Raises ValueError for an image of another shape, or an odd ``bins`` (the bins are computed
    in pairs half a turn apart).
    """
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f'image must be (B, 1, H, W), got {tuple(image.shape)}')
    if bins % 2:
        raise ValueError(f'bins must be even (pairs half a turn apart), got {bins}')
    gx, gy = smoothed_sobel(image)
    # Doubled angle: (cos 2t, sin 2t) = ((gx^2 - gy^2), 2 gx gy) / |g|^2. 1e-12 is 0 in float16
    # (a float16 image given directly; the exported graph is traced in float32), where a flat
    # pixel gave 0 * (1 / 0) = NaN: there the smallest normal number instead (the angle of no
    # gradient is then 0, as in float32). By the gradients' dtype: an 8-bit image gives
    # float32 ones.
    tiny = 1e-12 if gx.dtype in (torch.float32, torch.float64) else torch.finfo(gx.dtype).tiny
    # Bin b receives max(0, c_b)^3 |g| with c_b = cos(2 theta - phi_b). The bins come in pairs
    # half a turn apart (c_{b + bins/2} = -c_b): with q_b = c_b^3 |g| (|g| >= 0), bin b is the
    # cell mean of relu(q_b) and its partner that of relu(-q_b) = relu(q_b) - q_b. Half the
    # full-resolution products of evaluating every bin.
    phi = torch.arange(bins // 2, device=image.device, dtype=image.dtype) * (2.0 * math.pi / bins)
    if _plain_cpu(image):
        return _cell_histograms_in_place(gx, gy, cell, phi, tiny)
    gx2, gy2 = gx * gx, gy * gy
    energy = gx2 + gy2
    magnitude = torch.sqrt(energy + 1e-12)
    inverse = 1.0 / (energy + tiny)
    cos2 = (gx2 - gy2) * inverse
    sin2 = 2.0 * gx * gy * inverse
    cosine = torch.addcmul(cos2 * torch.cos(phi).view(1, -1, 1, 1), sin2,
                           torch.sin(phi).view(1, -1, 1, 1))
    if torch.is_grad_enabled() and image.requires_grad:
        cubed = cosine ** 3 * magnitude
    else:
        cubed = cosine.pow_(3).mul_(magnitude)  # in place: faster
    return _contrast_normalised(F.avg_pool2d(torch.relu(cubed), cell), F.avg_pool2d(cubed, cell),
                                F.avg_pool2d(magnitude, cell))


def _cell_histograms_in_place(gx, gy, cell, phi, tiny):
    """Return :func:`cell_histograms` from the gradients, on a CPU with no gradient to keep.

    The same arithmetic in the same order (the same values bit for bit), with the pixels of
    each cell laid out one plane per position in the cell (:func:`_cell_major`): a cell's mean
    is then a sum of whole planes in ``avg_pool2d``'s order (:func:`_cell_means`), where
    ``avg_pool2d`` sums each window in a scalar loop. The products run in place, and the bins'
    positive lobes, their signed values and the magnitude are averaged in one pass. About 0.7x
    the time of the general path at 640x512 with 4 px cells, 0.85x with 8 px.
    """
    gx, gy = _cell_major(gx, cell), _cell_major(gy, cell)
    half = phi.shape[0]
    gx2, gy2 = gx * gx, gy * gy
    energy = gx2 + gy2
    # Channels: the positive lobes, the signed values, the magnitude (what the cells average).
    values = gx.new_empty(gx.shape[0], 2 * half + 1, *gx.shape[2:])
    magnitude = torch.sqrt(energy + 1e-12, out=values[:, 2 * half:])
    inverse = energy.add_(tiny).reciprocal_()
    cos2 = gx2.sub_(gy2).mul_(inverse)
    sin2 = gx.mul_(2.0).mul_(gy).mul_(inverse)
    cubed = torch.mul(cos2, torch.cos(phi).view(1, -1, 1, 1, 1), out=values[:, half:2 * half])
    cubed.addcmul_(sin2, torch.sin(phi).view(1, -1, 1, 1, 1)).pow_(3).mul_(magnitude)
    torch.clamp_min(cubed, 0.0, out=values[:, :half])  # relu
    means = _cell_means(values)
    return _contrast_normalised(means[:, :half], means[:, half:2 * half], means[:, 2 * half:])


def _cell_major(plane, cell):
    """Return ``(B, C, cell^2, H // cell, W // cell)``: each position in the cells as a plane.

    ``plane`` (B, C, H, W); element ``[:, :, i cell + j, y, x]`` is pixel ``(cell y + i,
    cell x + j)``. Rows and columns beyond the last whole cell are dropped (``avg_pool2d``'s
    floor).
    """
    batch, channels, height, width = plane.shape
    rows, cols = height // cell, width // cell
    cells = plane[:, :, :rows * cell, :cols * cell]
    cells = cells.reshape(batch, channels, rows, cell, cols, cell).permute(0, 1, 3, 5, 2, 4)
    return cells.reshape(batch, channels, cell * cell, rows, cols)


def _cell_means(values):
    """Return the means over dim 2 of ``values`` (B, C, n, h, w): ``(B, C, h, w)``.

    Summed in order, then divided by ``n``: ``avg_pool2d``'s arithmetic over a window laid out
    by :func:`_cell_major`.
    """
    total = values[:, :, 0].clone()
    for index in range(1, values.shape[2]):
        total += values[:, :, index]
    return total.div_(values.shape[2])


def _contrast_normalised(positive, signed, magnitude):
    """Return :func:`cell_histograms` from the cell means of its terms (B, bins / 2 or 1, h, w).

    ``positive``: the bins' positive lobes ``relu(q_b)``; ``signed``: ``q_b``; ``magnitude``:
    ``|g|``. Each cell is divided by the mean magnitude of its ``5 x 5``-cell neighbourhood.
    """
    # Clamped: rounding must not leave the difference a hair below zero (a histogram).
    hist = torch.cat((positive, (positive - signed).clamp_min(0.0)), dim=1)
    local = F.avg_pool2d(magnitude, 5, stride=1, padding=2, count_include_pad=False)
    return hist / (local + 1e-3)


def _window_sum(maps, length, dim):
    """Sum ``maps`` over windows of ``length`` along ``dim``.

    Output ``i`` is ``sum x[i:i + length]``, so the output is ``length - 1`` shorter along
    ``dim``. Windows of 1, 2, 4, ... are built by doubling (``S_2k(i) = S_k(i) + S_k(i + k)``)
    and those of the set bits of ``length`` added at their offsets: about ``2 log2(length)``
    additions whatever the window, each term a plain sum of the inputs (so a window of zeros
    sums to exactly zero, unlike the difference of two running sums).
    """
    size = maps.shape[dim]
    total, offset = None, 0
    window, span = maps, 1
    while True:
        if length & span:
            out = length - 1
            part = window.narrow(dim, offset, size - out)
            total = part if total is None else total + part
            offset += span
        if span * 2 > length:
            return total
        window = window.narrow(dim, 0, window.shape[dim] - span) \
            + window.narrow(dim, span, window.shape[dim] - span)
        span *= 2


def _box_sum(maps, block):
    """Sum ``maps`` (B, C, h, w) over each cell's ``block x block`` block (zeros outside).

    Separable window sums (:func:`_window_sum`) on the zero-padded maps: about 4x faster than
    a summed-area table in float64 for blocks of 8 cells (measured at 640x512 on one CPU
    thread), exact zeros over empty blocks, and sums (in the maps' dtype) of at most ``block``
    terms per axis.
    """
    before, after = block // 2, (block - 1) // 2
    padded = F.pad(maps, (before, after, before, after))
    return _window_sum(_window_sum(padded, block, 2), block, 3)


def _inside_cells(support, cell):
    """Return ``(B, 1, H / cell, W / cell)`` in {0, 1}: cells wholly inside a warp's support.

    ``support``: ``(B, 1, H, W)``, a plane of ones warped like the image (the bilinear weight of
    the inside at each pixel). 1 where every pixel of the ``cell x cell`` cell samples inside
    the image (weight above 0.99), 0 where any pixel reaches outside.
    """
    if _plain_cpu(support):
        lowest = _cell_major(support, cell).amin(dim=2)  # the same minima in half the time
    else:
        lowest = -F.max_pool2d(-support, cell)
    return (lowest > 0.99).to(support.dtype)


def block_cost_volume(reference_hist, moving_hist, radius, block=4):
    """Return the cosine cost volume of block descriptors from the cell histograms alone.

    Equal to ``local_correlation(D(reference), D(moving), radius)`` with ``D`` the L2-normalised
    ``block x block`` concatenation of :func:`orientation_descriptors`, but ``block^2`` times
    cheaper: the dot product of two blocks is the sum over the block of the cells' dot
    products (a box filter of the cell-level cost volume), divided by the two block norms.

    Args:
        reference_hist: ``(B, bins, h, w)`` fixed-image histograms (:func:`cell_histograms`).
        moving_hist: ``(B, bins, h, w)`` histograms of the moving image.
        radius: search radius in cells.
        block: cells per block side.

    Returns:
        ``(B, (2 radius + 1)^2, h, w)`` cosine similarities (offset order of
        :func:`local_correlation`).

    """
    # A block's content at cell p is the cells p + b for b in [-before, after] (orientation_
    # descriptors); summing the cell products over the same window gives the block product.
    plain = _plain_cpu(reference_hist, moving_hist)
    if plain:
        # The cell products go straight into the zero-padded maps the window sums read.
        border = (block // 2, (block - 1) // 2)
        cells = _correlation_by_rows(reference_hist, moving_hist, radius, border)
        numerator = _window_sum(_window_sum(cells, block, 2), block, 3)
    else:
        numerator = _box_sum(local_correlation(reference_hist, moving_hist, radius), block)
    norm_ref = _box_sum((reference_hist * reference_hist).sum(1, keepdim=True), block)
    norm_mov = _box_sum((moving_hist * moving_hist).sum(1, keepdim=True), block)
    # Block norms are about 1-3 where there is texture (contrast-normalised cells) and below
    # 1e-10 on a constant image (rounding noise). Blocks under the floor get a zero cosine:
    # they do not vote with their noise, and the reciprocals stay below 1e3, finite in float16
    # (dividing by norms clamped at 1e-6 overflowed there: NaN from ``tarfuse-export --half``).
    inv_ref = _reciprocal_norm(norm_ref)
    inv_mov = _reciprocal_norm(norm_mov)
    height, width = norm_mov.shape[2:]
    # Reciprocal norms, the moving one per offset; zero for a moving block centred outside the
    # grid (all zeros in local_correlation), whose cells inside the grid would otherwise count.
    if plain:
        # In place, the moving norms read through a view at every offset (copying them was
        # slower than the two products).
        size = 2 * int(radius) + 1
        cosine = numerator.reshape(numerator.shape[0], size, size, height, width)
        cosine.mul_(_offset_windows(inv_mov, radius)).mul_(inv_ref.unsqueeze(1))
        return cosine.flatten(1, 2)
    return numerator * _shifted_copies(inv_mov, radius) * inv_ref


def _shifted_copies(maps, radius):
    """Return ``(B, (2 radius + 1)^2, h, w)``: ``maps`` (B, 1, h, w) at every offset.

    Channel ``k`` holds ``maps[:, 0, y + dy_k, x + dx_k]`` in :func:`local_correlation`'s
    offset order, with zeros outside the grid. One strided copy (``unfold``), or in an ONNX
    trace one convolution and a row slice per offset row (:func:`_column_shifts`: the exporter
    has no ``Unfold`` of a traced size).
    """
    height, width = maps.shape[2:]
    size = 2 * radius + 1
    if torch.jit.is_tracing():
        shifted = _column_shifts(F.pad(maps, (radius, radius, radius, radius)), radius)[:, 0]
        return torch.cat([shifted[:, :, dy:dy + height] for dy in range(size)], dim=1)
    return _offset_windows(maps, radius).reshape(maps.shape[0], size * size, height, width)


def _offset_windows(maps, radius):
    """Return ``(B, 2 radius + 1, 2 radius + 1, h, w)``: a view of ``maps`` at every offset.

    ``maps`` (B, 1, h, w) zero-padded by ``radius``; element ``[:, dy, dx, y, x]`` is
    ``maps[:, 0, y + dy - radius, x + dx - radius]`` (zero outside the grid), the channel
    ``dy (2 radius + 1) + dx`` of :func:`_shifted_copies`.
    """
    height, width = maps.shape[2:]
    padded = F.pad(maps, (radius, radius, radius, radius))
    return padded[:, 0].unfold(1, height, 1).unfold(2, width, 1)


def _reciprocal_norm(squared):
    """Return ``1 / sqrt(squared)``, 0 where the norm is below :data:`BLOCK_NORM_FLOOR`."""
    norm = squared.sqrt()
    textured = norm >= BLOCK_NORM_FLOOR
    return torch.where(textured, 1.0 / norm.clamp_min(BLOCK_NORM_FLOOR), torch.zeros_like(norm))


def match_cells(reference, moving, radius):
    """Match every cell of ``reference`` to the best cell of ``moving`` within ``radius``.

    Args:
        reference: ``(B, C, h, w)`` unit descriptors of the fixed (visible) image.
        moving: ``(B, C, h, w)`` unit descriptors of the moving (IR) image.
        radius: search radius in cells (``>= 1``).

    Returns:
        ``(offset, confidence)``: ``(B, 2, h, w)`` displacement in cells (x, y) of the best
        cosine similarity, refined to sub-cell precision by a parabola through the peak and
        its two neighbours along each axis; ``(B, 1, h, w)`` its margin over the second best
        offset (0: ambiguous), zero where the best similarity is not positive.

    """
    return peak_offsets(local_correlation(reference, moving, radius), radius)


def peak_offsets(cost, radius):
    """Return :func:`match_cells`' ``(offset, confidence)`` from a cost volume of ``radius``."""
    size = 2 * int(radius) + 1
    best, index, second = _top_two(cost)
    iy = torch.div(index, size, rounding_mode='floor')
    ix = index - iy * size

    def at(dy, dx):
        y = (iy + dy).clamp(0, size - 1)
        x = (ix + dx).clamp(0, size - 1)
        return torch.gather(cost, 1, y * size + x)

    def vertex(minus, centre, plus):
        curvature = minus - 2.0 * centre + plus
        peaked = torch.where(curvature < -1e-6, curvature, torch.full_like(curvature, -1e-6))
        step = 0.5 * (minus - plus) / peaked
        return step.clamp(-0.5, 0.5)

    sub_x = vertex(at(0, -1), best, at(0, 1))
    sub_y = vertex(at(-1, 0), best, at(1, 0))
    offset = torch.cat((ix.to(cost.dtype) - radius + sub_x, iy.to(cost.dtype) - radius + sub_y),
                       dim=1)
    confidence = (best - second).clamp_min(0.0) * (best > 0).to(cost.dtype)
    return offset, confidence


def _top_two(cost):
    """Return ``(best, index, second)`` over dim 1 of ``cost`` (B, K, h, w), each (B, 1, h, w).

    ``torch.topk(cost, 2, dim=1)`` without its sort: ``index`` (int64) is the first offset
    that reaches the best value (``torch.max`` returns the first), ``second`` the largest
    value at any other offset (the best again where two offsets tie). About 4x faster than
    ``topk`` on 81 offsets on a CPU. Raises ValueError when ``K < 2``.
    """
    count = cost.shape[1]
    if count < 2:
        raise ValueError(f'the top two need at least two offsets, got {count}')
    best, index = cost.max(dim=1, keepdim=True)
    second = cost.scatter(1, index, float('-inf')).amax(dim=1, keepdim=True)
    return best, index, second


def _power_of_two_scale(value):
    """Return ``2^-ceil(log2(value))``, which scales ``value`` into (0.5, 1], within 2^+-14.

    An exact scaling (a power of two); limited to float16's range (0 gives 2^14).
    """
    return torch.pow(2.0, -torch.ceil(torch.log2(value)).clamp(-14.0, 14.0))


def robust_affine_px(points, targets, weights, scales):
    """Fit one affine map per sample by iteratively reweighted least squares (Cauchy weights).

    Minimises ``sum_i w_i rho(|A [p_i; 1] - q_i| / c)`` with ``rho`` the Cauchy loss,
    one weighted least-squares solve per scale ``c`` of ``scales`` (decreasing scales: a wide
    basin first, then precision). Outliers (wrong matches) get weights ``w_i / (1 + (r_i /
    c)^2)`` and fade out.

    Args:
        points: ``(N, 2)`` source points (pixels).
        targets: ``(B, N, 2)`` matched points (pixels).
        weights: ``(B, N)`` non-negative prior weights (match confidences).
        scales: Cauchy scales in pixels, one solve each.

    Returns:
        ``(B, 2, 3)`` affine maps ``q = A [p; 1]`` in pixels (the identity where all weights
        are zero).

    """
    # Solve in centred coordinates of unit spread (Hartley's normalisation, Multiple View
    # Geometry sec. 4.4): squared pixel coordinates summed over thousands of points would leave
    # the float32 normal equations badly conditioned (results that differ between runtimes).
    centre = points.mean(dim=0)
    offsets = points - centre
    spread = offsets.abs().amax().clamp_min(1.0)
    unit_points = offsets / spread
    unit_targets = (targets - centre) / spread
    basis = torch.cat((unit_points, torch.ones_like(unit_points[:, :1])), dim=1)  # (N, 3)
    eye = torch.eye(3, device=points.device, dtype=points.dtype).unsqueeze(0)
    prior = eye[:, :, :2]
    # The fit does not depend on the weights' scale: scaled to at most 1, then to a sum of at
    # most 32. The 3x3 inverse multiplies three normal-equation entries, each up to that sum,
    # and the sum over every cell of a 960x704 frame (thousands) overflowed float16 (65504):
    # NaN maps from tarfuse-export --half. Powers of two: float32 fits stay the same bit for bit.
    weights = weights * _power_of_two_scale(weights.amax(dim=1, keepdim=True))
    weights = weights * _power_of_two_scale(weights.sum(dim=1, keepdim=True) / 32.0)
    current = weights
    basis_t = basis.t().unsqueeze(0)                                         # (1, 3, N)
    for scale in scales:
        weighted = basis_t * current.unsqueeze(1)                            # (B, 3, N)
        normal = weighted @ basis.unsqueeze(0)                               # (B, 3, 3)
        ridge = 1e-6 * current.sum(dim=1).clamp_min(1e-6).view(-1, 1, 1)
        rhs = weighted @ unit_targets                                        # (B, 3, 2)
        # Ridge towards the identity: a fit with no weight at all stays the identity.
        theta_t = _inverse_3x3(normal + ridge * eye) @ (rhs + ridge * prior)
        residual = torch.linalg.vector_norm(basis.unsqueeze(0) @ theta_t - unit_targets,
                                            dim=2) * spread
        current = weights / (1.0 + (residual / float(scale)) ** 2)
    # Back to pixels: q = M' (p - c) / s * s + c + s t' = M' p + (c + s t' - M' c).
    linear = theta_t[:, :2, :].transpose(1, 2)                               # (B, 2, 2) M'
    shift = centre + spread * theta_t[:, 2, :] - (linear @ centre.view(2, 1)).squeeze(2)
    return torch.cat((linear, shift.unsqueeze(2)), dim=2)


def zoom(image, factor):
    """Return ``image`` sampled at ``factor * u`` about its centre (``u`` normalised coordinates).

    ``image`` (B, C, H, W), ``factor`` a number or a (B,) tensor -> (B, C, H, W); a factor
    below 1 magnifies the centre (no empty border), above 1 shrinks the content inside an
    empty (zero) border.
    """
    batch, _, height, width = image.shape
    factor = torch.as_tensor(factor, dtype=image.dtype, device=image.device).expand(batch)
    zero = torch.zeros_like(factor)
    theta = torch.stack((torch.stack((factor, zero, zero), dim=1),
                         torch.stack((zero, factor, zero), dim=1)), dim=1)
    if torch.jit.is_tracing():
        return warp(image, affine_flow(theta, height, width))
    return affine_warp(image, theta)


def affine_warp(image, theta):
    """Return ``warp(image, affine_flow(theta, H, W))``: bilinear, zeros outside, one grid.

    ``image`` (B, C, H, W), ``theta`` (B, 2, 3) normalised maps (:func:`affine_flow`) ->
    (B, C, H, W). The sampling grid is ``F.affine_grid``'s (pixel centres at -1 and 1), not a
    flow in pixels converted back to the same coordinates: about half the time of :func:`warp`
    at 640x480 on a CPU, with values equal up to float rounding (1e-4 of the range). For the
    global stage's own views of the IR; the network warps by flows.
    """
    grid = _affine_grid(theta.to(image.dtype), *image.shape[2:])
    return F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros', align_corners=True)


def _affine_grid(theta, height, width):
    """Return ``F.affine_grid(theta, (B, C, height, width), align_corners=True)``: (B, H, W, 2).

    Each coordinate as one broadcast product-sum of the normalised column and row coordinates
    instead of a (H W, 3) x (3, 2) matrix product: the same grid up to float rounding (1e-7),
    less than half the time at 640x512 on a CPU. Without a gradient to keep, each sum is written
    into the grid directly (stacking the two planes copied them again, at about three times the
    cost of the sums on a CPU thread: an innermost dimension of 2).
    """
    def axis(size):  # normalised pixel centres, as affine_grid (a single pixel at 0)
        if size == 1:
            return theta.new_zeros(1)
        return torch.linspace(-1.0, 1.0, size, dtype=theta.dtype, device=theta.device)

    columns, rows = axis(width).view(1, 1, -1), axis(height).view(1, -1, 1)
    coefficients = theta.view(-1, 2, 3, 1, 1)
    terms = [(coefficients[:, i, 0] * columns,
              coefficients[:, i, 1] * rows + coefficients[:, i, 2]) for i in range(2)]
    if torch.is_grad_enabled() and theta.requires_grad:
        return torch.stack([along_x + along_y for along_x, along_y in terms], dim=-1)
    grid = theta.new_empty(theta.shape[0], height, width, 2)
    for i, (along_x, along_y) in enumerate(terms):
        torch.add(along_x, along_y, out=grid[..., i])
    return grid


def crop_to_valid(image, valid_size):
    """Return ``image[:, :, :h, :w]`` for ``valid_size = (h, w)``.

    ``valid_size``: Python ints (a plain slice), or an int64 tensor of shape (2,) (selected
    with ``index_select`` over ``arange``, which an ONNX trace keeps symbolic).

    Raises:
        ValueError: a size below 1 or above the image's (Python ints only).
    """
    if isinstance(valid_size, torch.Tensor):
        rows = torch.arange(valid_size[0], device=image.device)
        cols = torch.arange(valid_size[1], device=image.device)
        return image.index_select(2, rows).index_select(3, cols)
    height, width = (int(side) for side in valid_size)
    if not (0 < height <= image.shape[2] and 0 < width <= image.shape[3]):
        raise ValueError(f'valid_size {tuple(valid_size)} must be positive and within the '
                         f'image size {tuple(image.shape[2:])}')
    return image[:, :, :height, :width]


def _normalised_affine_to_pixel(theta, height, width):
    """Invert :func:`_pixel_affine_to_normalised`: ``(B, 2, 3)`` normalised -> pixel maps.

    With ``theta = [A, b]`` and ``D`` as there: ``M = D^-1 A D``, ``t = D^-1 (b - A 1 + 1)``.
    """
    sx, sy = 2.0 / (width - 1.0), 2.0 / (height - 1.0)
    a, b, t0 = theta[:, 0, 0], theta[:, 0, 1] * (sy / sx), theta[:, 0, 2]
    c, d, t1 = theta[:, 1, 0] * (sx / sy), theta[:, 1, 1], theta[:, 1, 2]
    rows = (torch.stack((a, b, (t0 - theta[:, 0, 0] - theta[:, 0, 1] + 1.0) / sx), dim=1),
            torch.stack((c, d, (t1 - theta[:, 1, 0] - theta[:, 1, 1] + 1.0) / sy), dim=1))
    return torch.stack(rows, dim=1)


def _reframed(theta, size, new_size):
    """Return ``(B, 2, 3)`` normalised maps of a ``size`` frame as maps of ``new_size``.

    The same pixel map (:func:`_normalised_affine_to_pixel`) in the normalised coordinates of
    a frame of another ``(height, width)`` sharing its top-left corner: a crop to the valid
    region, or back to the padded input.
    """
    return _pixel_affine_to_normalised(_normalised_affine_to_pixel(theta, *size), *new_size)


def corner_shift_px(before, after, height, width):
    """Return how far a pixel affine map moves the frame's corners, at most, in pixels.

    Args:
        before, after: ``(B, 2, 3)`` pixel affine maps ``x' = M x + t`` (x, y in pixels of
            the ``height x width`` frame, :func:`robust_affine_px`'s form).
        height, width: the frame size in pixels.

    Returns:
        ``(B,)`` tensor: ``max_c |(after - before) [c; 1]|`` over the four corner pixels
        ``c``. An affine map's difference is affine, so its largest displacement over the
        frame is at a corner.
    """
    # Plain arithmetic on the sizes (no tensor built from them), so that an ONNX trace keeps
    # them dynamic rather than baking in the traced frame's.
    diff = after - before
    along_x, along_y, shift = (diff[:, :, 0] * (width - 1.0), diff[:, :, 1] * (height - 1.0),
                               diff[:, :, 2])
    corners = torch.stack((shift, shift + along_x, shift + along_y, shift + along_x + along_y),
                          dim=2)
    return corners.norm(dim=1).amax(dim=1)


def _cell_centres(rows, cols, cell, like):
    """Return ``(rows * cols, 2)`` pixel centres (x, y) of a grid of ``cell``-pixel cells."""
    ys = (torch.arange(rows, device=like.device, dtype=like.dtype) + 0.5) * cell - 0.5
    xs = (torch.arange(cols, device=like.device, dtype=like.dtype) + 0.5) * cell - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1)


def _pixel_affine_to_normalised(theta_px, height, width):
    """Convert ``(B, 2, 3)`` pixel affine maps to :func:`fit_affine`'s normalised coordinates.

    With ``D = diag(2 / (W - 1), 2 / (H - 1))``: ``theta = [D M D^-1, D M D^-1 1 + D t - 1]``
    for ``x' = M x + t`` in pixels. Plain arithmetic on the sizes, so that an ONNX trace keeps
    them symbolic.
    """
    sx, sy = 2.0 / (width - 1.0), 2.0 / (height - 1.0)
    a, b, t0 = theta_px[:, 0, 0], theta_px[:, 0, 1] * (sx / sy), theta_px[:, 0, 2]
    c, d, t1 = theta_px[:, 1, 0] * (sy / sx), theta_px[:, 1, 1], theta_px[:, 1, 2]
    rows = (torch.stack((a, b, a + b + sx * t0 - 1.0), dim=1),
            torch.stack((c, d, c + d + sy * t1 - 1.0), dim=1))
    return torch.stack(rows, dim=1)


class OrientationMatcher(nn.Module):
    """Global affine stage from fixed orientation descriptors (no learnt parameter).

    :func:`orientation_descriptors` of both images, :func:`match_cells` (best offset within
    ``radius`` cells, sub-cell peak, margin as confidence), :func:`robust_affine_px` on the
    matched cell centres; then a second pass on the IR warped by that map, matched within
    ``refine_radius`` cells (the matches mapped back through the first map before the fit).
    Modality-independent from the first step of training, so the learnt levels only refine.
    Measured alone on the ground-truth test fields (frames cut to multiples of 32): RoadScene
    EPE 3.95 px (from 16.0), msrs_det 3.88 px (from 17.95); without the second pass 4.0 / 4.6.

    Fixed-size blocks do not match across a large scale change (a thermal camera with another
    field of view), so with ``scale_candidates`` other than ``(1.0,)`` the fit runs once per
    candidate scale ``s`` of the IR relative to the visible image, on a pre-zoomed pair (the
    visible centre magnified by ``s`` when ``s > 1``, the IR centre by ``1 / s`` when ``s < 1``:
    always zoomed in, so neither image gets an empty border), and the map whose warped IR agrees
    best with the visible image wins, per sample (:meth:`alignment_score`, on the blocks all
    candidates cover; another scale must beat the unzoomed fit by ``prefer_unit`` times).

    With ``fine_cell`` > 0, a last pass refines the winning map on finer cells: the IR warped by
    it, histograms of ``fine_cell``-pixel cells in blocks of ``fine_block`` cells, matched within
    ``refine_radius`` cells and fitted like the second pass. The 8 px cells quantise the matches
    coarsely (a parabola through three cosine scores is all the sub-cell precision they have);
    once the map is within a few pixels, smaller cells locate the edges more precisely. Measured
    (``fine_cell`` 4, ``fine_block`` 8, shipped default weights, ``tarfuse-eval`` frames):
    RoadScene test EPE 3.66 -> 3.19 px; the choice of cell and block was made on
    ``msrs_train`` val and RoadScene train with synthetic fields (docs/METHOD.md).

    The first pass searches ``radius`` cells (64 px with 8 px cells), sized for frames of about
    640 px; the displacements of a rotation or a scale grow with the frame. With
    ``coarse_side`` > 0, a frame whose longer side exceeds it runs the two passes on the frame
    halved (2x2 means: the search then reaches twice as far), and one more pass at full size
    (as the second pass) starts from that map. Measured on the four 1024x768 M3FD pairs with
    seeded synthetic fields (``coarse_side`` 640, shipped default weights): global stage EPE
    19.70 -> 5.81 px (two pairs whose fit had failed: 29.3 -> 7.5 and 40.8 -> 6.3 px). Frames
    of at most ``coarse_side`` px do not change. An ONNX trace computes both starts and keeps
    one by the traced frame size (one halving at most either way).

    ``forward(ir (B, 1, H, W), vi (B, 1, H, W), valid_size=None) -> (B, 2, 3)`` affine maps in
    normalised coordinates of the ``(H, W)`` frame (:func:`affine_flow`). ``valid_size``: the
    ``(h, w)`` of the images before padding at the bottom/right (Python ints, or an int64 tensor
    of shape (2,) in an ONNX trace): the maps are then fitted on that region alone and expressed
    in the padded frame (the same pixel map: padding keeps pixel coordinates). Padded rows and
    columns are the same in both images and would pull the fit towards no motion: measured on
    the RoadScene test fields (frames padded by the engine's replicate mode, EPE over the frames
    cut to multiples of 32), the global stage gave 3.08 px on the padded frames, 3.00 with
    ``valid_size`` and 2.61 on the cut frames (most of that last gap is one small pair whose fit
    depends on its last rows and columns, docs/METHOD.md).

    With ``support_mask``, the passes on 8 px cells that match the IR warped by a map (the
    second pass, and the full-size pass after a halved start) drop every block whose search
    window (the block, ``refine_radius`` cells around it and one cell more) reaches outside the
    warped IR's support. Where a map pulls the IR in, the warped IR is black there (a narrower
    thermal view, the corners of a rotation), and its step edge and empty cells pull the
    matches of nearby blocks inwards. Measured on ``msrs_train`` val with seeded synthetic fields
    (shipped default weights, whole network, frames cut to /32): 5.74 -> 5.11 px (docs/METHOD.md).
    The fine passes keep every block (dropping them there was worse on validation), and so does a
    pass that would keep less than a tenth of its blocks.

    With ``fine_check``, the map the fine passes started from is kept, per sample, where it
    agrees with the visible image clearly better than the map they end on: by more than
    ``fine_check_margin`` in :meth:`fine_agreement` (the mean cosine of the fine block
    descriptors at zero offset, over the blocks both maps keep wholly inside the warped IR's
    support). Across modalities, repeated fine passes can drift: on a thermal camera with a
    narrower view they shrink the map's scale pass after pass. Measured on ``msrs_train`` val
    (global stage alone, shipped settings, docs/METHOD.md): the 80 % view 3.78 px before the
    fine passes, 6.67 after four, 3.97 with the check (14 of 30 pairs keep the start); with
    seeded synthetic fields (frames cut to /32), ``msrs_train`` val 5.13 and RoadScene train
    2.14 px with or without it (no pair keeps the start: the margin, 0.005, was chosen there;
    without one, 5.15 and 2.12 px).

    With ``fine_tolerance`` > 0 (pixels), a sample's fine passes stop once one of them moves its
    map by less than that at every corner of the frame (:func:`corner_shift_px`; that pass's map
    is kept): the passes converge geometrically (first pass 0.4-9 px on ``msrs_train`` val, the
    fourth 0.1-0.7 px), so the last ones mostly cost time. Batches stop when every sample has;
    an ONNX trace runs every pass and keeps each sample's map from the pass it stopped at, so
    the two agree. Measured on validation (shipped settings, ``tarfuse-eval --deform synthetic
    --seed 0``, whole network): with 0.25 px, ``msrs_train`` val (30) EPE 3.8447 -> 3.8436 px,
    RoadScene train (40) 2.1422 -> 2.1432 px, 2.45 / 2.49 of the 4 passes on average; with
    0.5 px 3.841 / 2.156 px and 2.2 / 2.0 passes (docs/METHOD.md).

    With ``scale_accept`` > 0, the unzoomed candidate (scale 1.0) is fitted first, and a
    sample whose map explains the pair, with at least that fraction of inlier blocks among
    those wholly inside the warped IR's support (:meth:`alignment_score`), keeps it without
    the other candidates; a batch fits them only when a sample needs them. A map fitted at the
    wrong scale has inliers only near the centre of the zoom (the 80 % view of ``msrs_train``
    val: unzoomed fractions 0.04-0.10, where the zoomed candidate wins), so skipping the search
    where the unzoomed map already explains the pair changes no winner: with 0.25, on seven
    validation sets (240 pairs: seeded synthetic fields, aligned pairs, narrower and wider
    views; largest unzoomed fraction where another candidate won 0.136) every map stays the
    same and the two zoomed fits are skipped on 50 of 60 aligned ``msrs_train`` pairs, 38 of 40
    deformed RoadScene train pairs and 11 of 30 deformed ``msrs_train`` val pairs (about 100 ms
    of the global stage at 640x512 on 2 threads; docs/METHOD.md). An ONNX trace fits every
    candidate and keeps the unzoomed map where it is accepted, so the two agree.

    With ``extra_passes`` > 0, the winning map is refined that many more times on 8 px cells
    before the fine passes, each pass as the second pass (the IR warped by the map so far, the
    support mask as set) but searching within ``extra_radius`` cells; per sample, only where
    the unzoomed scale candidate won (or there is no search). On ``msrs_train`` val with
    seeded synthetic fields a few maps leave the first passes 15-45 px off; the fine passes
    reach ``fine_radius`` 4 px cells per pass and walk them in slowly, some never, while 8 px
    cells within 4 cells reach 32 px. Where a zoomed candidate won (a thermal camera with a
    narrower view), the same passes pull its scale off (the 80 % view of ``msrs_train`` val,
    global stage alone: 4.02 -> 5.36 px): they are skipped there. Measured on validation
    (global stage alone, shipped settings, frames cut to /32, docs/METHOD.md): ``msrs_train``
    val (30) mean EPE 4.93 -> 3.85 px with 2 passes within 4 cells (within 2 cells 4.30; four
    more fine passes instead, 4.39 for three times the cost), RoadScene train (40) 2.11 ->
    2.07 px.

    With ``wide_below`` > 0, a sample whose map (after the scale search) explains less than
    that fraction of the pair (inlier blocks among those inside the warped IR's support,
    :meth:`alignment_score`) is also fitted from wide candidates: a start on the frame reduced
    twice as much as the search's own (4x4 means for frames above ``coarse_side``, else 2x2:
    twice the reach, 128 px at 640 px) refined once at full size, and the scales of
    ``wide_scales`` (e.g. 0.64 and 1.5625, one step beyond 0.8 and 1.25). A candidate whose
    own inlier fraction beats the map's by ``prefer_unit`` times (and the other candidates')
    replaces it; the wider start counts as unzoomed (its extra passes run). The first pass
    reaches 64 px: a real pair shifted by 96 px (15 % of a 640 px frame) keeps maps 25-80 px
    off, with fractions of 0.04-0.08 in every standard candidate, while the right map scores
    0.1-0.7 (``msrs_train`` val and RoadScene train pairs at 640x512, global stage alone:
    mean EPE 41.1 -> 7.2 px at 96 px, 70.6 -> 8.7 px at 128 px, 20.7 -> 4.8 px for a 0.7
    view, 92.0 -> 34.2 px for a 0.6 view, 7.2 -> 4.7 px for a 15 degree rotation). Where the
    map explains the pair nothing is fitted: ``msrs_train`` val with seeded synthetic fields
    4.31 -> 3.79 px (4 of 30 pairs changed: one failure, 20.8 -> 4.4 px, fixed; three others
    0.2-0.4 px worse), its 80 % view and aligned pairs and RoadScene train (40) unchanged
    (docs/METHOD.md). An ONNX trace fits every wide candidate and keeps a map where the
    eager run would, so the two agree.

    With ``min_side`` > 0, a frame whose shorter side is below it (a 160x120 thermal core, a
    downscaled stream) is enlarged by the integer factor ``ceil(min_side / side)`` (bilinear,
    corners aligned, so the normalised map is the same for both sizes) before the fit: small
    frames hold too few 8 px cells for the block matches. Measured on validation (RoadScene
    train, 30 pairs, seeded synthetic fields downscaled to a longer side of 128 / 192 / 256 px,
    global stage alone): 5.21 -> 0.98 / 3.04 -> 1.25 / 1.95 -> 1.30 px (unregistered 5.46 /
    8.12 / 10.86); ``msrs_train`` val at 160x120: 8.30 -> 1.92 px (unregistered 7.89). Native
    RoadScene frames enlarged 2x were worse (68 train pairs: 2.38 -> 2.65 px), so the shipped
    160 px leaves every frame of the test sets alone (the smallest, RoadScene, have 161 px). An
    ONNX trace skips the enlargement (the graph does not enlarge).
    """

    def __init__(self, cell=8, bins=8, block=4, radius=8,
                 scales=(4.0, 3.0, 2.0, 1.5, 1.0, 1.0, 0.75, 0.5, 0.5, 0.5), refine_radius=2,
                 refine_scales=(1.0, 0.75, 0.5, 0.5, 0.5), scale_candidates=(1.0,),
                 min_coverage=0.3, prefer_unit=2.0, fine_cell=0, fine_block=8, coarse_side=0,
                 fine_passes=1, fine_radius=2, support_mask=False, fine_check=False,
                 fine_check_margin=0.005, min_side=0, extra_passes=0, extra_radius=2,
                 fine_tolerance=0.0, scale_accept=0.0, wide_below=0.0, wide_scales=()):
        super().__init__()
        if isinstance(wide_below, bool) or not isinstance(wide_below, (int, float)) \
                or not 0.0 <= wide_below <= 1.0:
            raise ValueError(f'wide_below must be an inlier fraction in [0, 1] (0: no wide '
                             f'search), got {wide_below!r}')
        self.wide_below = float(wide_below)
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < s < math.inf
               for s in wide_scales):
            raise ValueError(f'wide_scales must be positive scales, got {wide_scales!r}')
        self.wide_scales = tuple(float(s) for s in wide_scales)
        if isinstance(scale_accept, bool) or not isinstance(scale_accept, (int, float)) \
                or not 0.0 <= scale_accept <= 1.0:
            raise ValueError(f'scale_accept must be an inlier fraction in [0, 1] (0: every '
                             f'scale candidate is fitted), got {scale_accept!r}')
        self.scale_accept = float(scale_accept)
        if isinstance(fine_tolerance, bool) or not isinstance(fine_tolerance, (int, float)) \
                or not 0.0 <= fine_tolerance < math.inf:
            raise ValueError(f'fine_tolerance must be a number of pixels >= 0 (0: every fine '
                             f'pass runs), got {fine_tolerance!r}')
        self.fine_tolerance = float(fine_tolerance)
        for name, value, least in (('extra_passes', extra_passes, 0),
                                   ('extra_radius', extra_radius, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')
        self.extra_passes, self.extra_radius = extra_passes, extra_radius
        if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 0:
            raise ValueError(f'min_side must be an integer >= 0 (0: never enlarge), got '
                             f'{min_side!r}')
        self.min_side = min_side
        for name, value in (('support_mask', support_mask), ('fine_check', fine_check)):
            if not isinstance(value, bool):
                raise ValueError(f'{name} must be true or false, got {value!r}')
        self.support_mask, self.fine_check = support_mask, fine_check
        margin = fine_check_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
                or not 0.0 <= margin < 1.0:
            raise ValueError(f'fine_check_margin must be a number in [0, 1) (the scores are '
                             f'cosines in [0, 1]), got {margin!r}')
        self.fine_check_margin = float(margin)
        if fine_check and int(fine_cell) <= 0:
            raise ValueError('fine_check needs a fine pass to check (fine_cell > 0), got '
                             f'fine_cell {fine_cell}')
        for name, value in (('fine_passes', fine_passes), ('fine_radius', fine_radius)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
        self.fine_passes, self.fine_radius = fine_passes, fine_radius
        if int(coarse_side) < 0:
            raise ValueError(f'coarse_side must be >= 0 (0: no halved start), got {coarse_side}')
        self.coarse_side = int(coarse_side)
        needs_block = int(fine_cell) > 0 and (int(fine_block) < 1 or int(refine_radius) < 1)
        if int(fine_cell) < 0 or needs_block:
            raise ValueError(f'need fine_cell >= 0 (0: no fine pass), and with a fine pass '
                             f'fine_block >= 1 and refine_radius >= 1, got {fine_cell}, '
                             f'{fine_block}, {refine_radius}')
        self.fine_cell, self.fine_block = int(fine_cell), int(fine_block)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2 or bins % 2:
            raise ValueError(f'bins must be an even number of orientation bins (pairs half a '
                             f'turn apart, cell_histograms), got {bins!r}')
        self.cell, self.bins, self.block, self.radius = int(cell), int(bins), int(block), \
            int(radius)
        self.scales = tuple(float(s) * self.cell for s in scales)
        self.refine_radius = int(refine_radius)
        self.refine_scales = tuple(float(s) * self.cell for s in refine_scales)
        self.scale_candidates = tuple(float(s) for s in scale_candidates)
        if not self.scale_candidates or min(self.scale_candidates) <= 0:
            raise ValueError('scale_candidates must be positive scales, got '
                             f'{scale_candidates!r}')
        self.min_coverage = float(min_coverage)
        self.prefer_unit = float(prefer_unit)

    def _fit(self, reference, moving, radius, points, scales, theta_px=None, cell=None,
             block=None, keep=None):
        """Match cells and fit ``q = A [p; 1]`` in pixels.

        Matches in a moving image warped by ``theta_px`` are mapped back through it first.
        ``cell`` / ``block``: the histograms' cell side (px) and the block side (cells); None:
        the matcher's own. ``keep``: ``(B, 1, h, w)`` weights in {0, 1} of the blocks' matches
        (None: all kept).
        """
        cell = self.cell if cell is None else cell
        block = self.block if block is None else block
        offset, confidence = peak_offsets(
            block_cost_volume(reference, moving, radius, block), radius)
        if keep is not None:
            confidence = confidence * keep
        targets = points.unsqueeze(0) + offset.flatten(2).transpose(1, 2) * cell
        if theta_px is not None:
            targets = targets @ theta_px[:, :, :2].transpose(1, 2) + theta_px[:, :, 2].unsqueeze(1)
        return robust_affine_px(points, targets, confidence.flatten(1), scales)

    @torch.no_grad()
    def forward(self, ir, vi, valid_size=None):
        # No learnt parameter and images for inputs: nothing to differentiate (and no graph to
        # keep). In float32 whatever the network runs in (the map is returned in float32): the
        # normal equations sum squared pixel coordinates over thousands of cells, beyond float16,
        # and 1 / |g|^2 of a flat pixel is 1 / 0 there. So autocast is off here as well (the
        # engine's half=True on CUDA): it ran the convolutions and matrix products in float16.
        with torch.autocast(ir.device.type, enabled=False):
            return self._forward_float(ir.float(), vi.float(), valid_size)

    def _forward_float(self, ir, vi, valid_size):
        """Return :meth:`forward`'s maps for float32 images, autocast off."""
        if valid_size is None:
            return self._estimate(ir, vi)
        size = ir.shape[2:]
        ir, vi = crop_to_valid(ir, valid_size), crop_to_valid(vi, valid_size)
        return _reframed(self._estimate(ir, vi), ir.shape[2:], size)

    def track(self, ir, vi, start, valid_size=None, candidate=None):
        """Refine the map of an earlier pair of the same rig on this pair: the fine passes alone.

        For a stream of pairs from one rig (``FusionEngine(global_track=N)``): the fine passes
        (with the fine check, :meth:`_fine`) start from ``start`` instead of from the scale
        search and the 8 px passes, which are skipped. Where ``candidate`` is given (a full fit
        of this pair, :meth:`forward`), the refined map and the candidate are scored by
        :meth:`fine_agreement` over the blocks both keep inside the warped IR, and the
        candidate is kept where it agrees better (a tracked map that drifted, or a rig that
        moved beyond the passes' reach, is taken back by the next full fit).

        Args:
            ir, vi: ``(B, 1, H, W)`` float planes in [0, 1] (as :meth:`forward`).
            start: ``(B, 2, 3)`` normalised maps (:func:`affine_flow`) of the padded ``H x W``
                input, as :meth:`forward` returns them (the same ``B`` as the images).
            valid_size: ``(h, w)`` before padding at the bottom/right, or None.
            candidate: None, or ``(B, 2, 3)`` normalised maps of the same frame to compare
                with.

        Returns:
            ``(theta, from_candidate)``: ``(B, 2, 3)`` float32 normalised maps of the ``H x W``
            frame and a ``(B,)`` bool tensor, True where the candidate was kept.

        Raises:
            ValueError: the matcher has no fine pass (``fine_cell`` 0 or ``fine_passes`` 0).
        """
        if self.fine_cell <= 0 or self.fine_passes <= 0:
            raise ValueError('tracking needs the fine passes of the global stage; this one '
                             f'has fine_cell {self.fine_cell} and fine_passes {self.fine_passes}')
        with torch.no_grad(), torch.autocast(ir.device.type, enabled=False):
            ir, vi = ir.float(), vi.float()
            height, width = ir.shape[2:]
            maps = [start.float()] + ([] if candidate is None else [candidate.float()])
            if valid_size is not None:
                ir, vi = crop_to_valid(ir, valid_size), crop_to_valid(vi, valid_size)
                maps = [_reframed(theta, (height, width), ir.shape[2:]) for theta in maps]
            valid = ir.shape[2:]  # the enlargement below keeps normalised maps as they are
            ir, vi = self._enlarged(ir, vi)
            views = self._views(ir)
            theta = self._fine(ir, vi, maps[0], views)
            kept = torch.zeros(theta.shape[0], dtype=torch.bool, device=theta.device)
            if candidate is not None:
                reference = cell_histograms(vi, self.fine_cell, self.bins)
                tracked, fitted = self.fine_agreement(ir, reference, (theta, maps[1]), views)
                kept = fitted > tracked
                theta = torch.where(kept.view(-1, 1, 1), maps[1], theta)
            if valid_size is not None:
                theta = _reframed(theta, valid, (height, width))
            return theta, kept

    def _enlarged(self, ir, vi):
        """Return the pair enlarged where its shorter side is below ``min_side`` (class doc).

        Normalised maps do not depend on the frame size (corners aligned): a fit on the
        enlarged pair is the map of the pair.
        """
        side = min(vi.shape[2:])
        if self.min_side > 0 and side < self.min_side and not torch.jit.is_tracing():
            factor = math.ceil(self.min_side / max(int(side), 1))
            size = (int(vi.shape[2]) * factor, int(vi.shape[3]) * factor)
            ir, vi = (F.interpolate(image, size=size, mode='bilinear', align_corners=True)
                      for image in (ir, vi))
        return ir, vi

    def _estimate(self, ir, vi):
        """Return the maps of :meth:`forward` for unpadded float32 images."""
        ir, vi = self._enlarged(ir, vi)
        search = self.scale_candidates != (1.0,)
        # The warped IR's histograms and support cells by map and cell size, for passes that
        # warp ``ir`` by a map an earlier one already warped it by (:class:`_WarpedViews`).
        views = _WarpedViews(self, ir, memo=not torch.jit.is_tracing())
        # The visible image's histograms, shared by the scale search (or the one fit) and the
        # extra passes; None where only the one fit would read them (it computes them).
        reference = (cell_histograms(vi, self.cell, self.bins)
                     if search or self.extra_passes > 0 or self.wide_below > 0.0 else None)
        if search:
            theta, unit = self._search_scales(ir, vi, reference, views)
        else:
            theta = self._match(ir, vi, vi_hist=reference)
            unit = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
        if self.wide_below > 0.0:
            theta, unit = self._widen(ir, vi, reference, views, theta, unit)
        if self.extra_passes > 0 and (torch.jit.is_tracing() or bool(unit.any())):
            theta = torch.where(unit.view(-1, 1, 1),
                                self._extra(ir, vi, theta, reference, views), theta)
        return self._fine(ir, vi, theta, views) if self.fine_cell > 0 else theta

    def _extra(self, ir, vi, theta, reference, views=None):
        """Refine normalised maps ``theta`` on 8 px cells ``extra_passes`` times (class doc).

        ``reference``: the visible image's :func:`cell_histograms` on ``cell``-pixel cells;
        ``views``: None or the :class:`_WarpedViews` of ``ir``.
        """
        height, width = vi.shape[2:]
        points = _cell_centres(reference.shape[2], reference.shape[3], self.cell, vi)
        for _ in range(self.extra_passes):
            fitted = self._refine(ir, reference, points, theta, self.cell, self.block,
                                  self.refine_scales, radius=self.extra_radius,
                                  mask_support=self.support_mask, views=views)
            theta = _pixel_affine_to_normalised(fitted, height, width)
        return theta

    def _fine(self, ir, vi, theta, views=None):
        """Refine normalised maps ``theta`` on ``fine_cell``-pixel cells (class docstring).

        ``views``: None or the :class:`_WarpedViews` of ``ir``.
        """
        height, width = vi.shape[2:]
        cell = self.fine_cell
        reference = cell_histograms(vi, cell, self.bins)
        points = _cell_centres(reference.shape[2], reference.shape[3], cell, vi)
        scales = tuple(s * cell / self.cell for s in self.refine_scales)
        start = theta
        # Samples whose map still moves by ``fine_tolerance`` px or more (class docstring).
        active = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
        for _ in range(self.fine_passes):
            fitted = self._refine(ir, reference, points, theta, cell, self.fine_block, scales,
                                  radius=self.fine_radius, views=views)
            if self.fine_tolerance <= 0.0:
                theta = _pixel_affine_to_normalised(fitted, height, width)
                continue
            moved = corner_shift_px(_normalised_affine_to_pixel(theta, height, width), fitted,
                                    height, width)
            theta = torch.where(active.view(-1, 1, 1),
                                _pixel_affine_to_normalised(fitted, height, width), theta)
            active = active & (moved >= self.fine_tolerance)
            # An ONNX trace runs every pass (the frozen maps make it the same result).
            if not torch.jit.is_tracing() and not bool(active.any()):
                break
        if not self.fine_check:
            return theta
        before, after = self.fine_agreement(ir, reference, (start, theta), views)
        drifted = before > after + self.fine_check_margin
        return torch.where(drifted.view(-1, 1, 1), start, theta)

    def fine_agreement(self, ir, reference, thetas, views=None):
        """Return how well ``ir`` warped by each map agrees with the visible image.

        Args:
            ir: ``(B, 1, H, W)`` IR plane in ``[0, 1]``.
            reference: ``(B, bins, H / fine_cell, W / fine_cell)`` :func:`cell_histograms` of
                the visible plane on ``fine_cell``-pixel cells.
            thetas: sequence of ``(B, 2, 3)`` normalised affine maps (:func:`affine_flow`).
            views: None, or the :class:`_WarpedViews` of ``ir`` (reuses what earlier passes
                computed for the same map).

        Returns:
            One ``(B,)`` tensor per map: the mean cosine similarity, in ``[0, 1]``, of the
            ``fine_block``-cell block descriptors of the visible image and of the warped IR at
            zero offset (:func:`block_cost_volume`'s centre), over the blocks that every map
            keeps wholly inside the warped IR's support; 0 where no block is.

        """
        views = self._views(ir, views)
        cell, block = self.fine_cell, self.fine_block
        cosines, common = [], torch.ones_like(reference[:, :1])
        for theta in thetas:
            cosines.append(block_cost_volume(reference, views.histograms(theta, cell), 0, block))
            inside = _box_sum(views.cells_inside(theta, cell), block)
            common = common * (inside > block * block - 0.5).to(ir.dtype)
        count = common.flatten(1).sum(dim=1).clamp_min(1.0)
        return [(cosine * common).flatten(1).sum(dim=1) / count for cosine in cosines]

    def _refine(self, ir, reference, points, theta, cell, block, scales, theta_px=None,
                radius=None, mask_support=False, views=None):
        """Return the pixel maps of one pass within ``refine_radius`` on the IR warped by theta.

        ``reference``: the visible image's histograms of ``cell``-pixel cells, centred on
        ``points``; matches in the warped IR are mapped back through the current map
        (``theta_px``, its pixel form; None: converted from ``theta``); ``radius``: the search
        radius in cells (None: ``refine_radius``); ``mask_support``: drop the blocks whose
        search window leaves the warped IR's support (``support_mask`` in the class docstring);
        ``views``: None or the :class:`_WarpedViews` of ``ir``.
        """
        height, width = ir.shape[2:]
        if theta_px is None:
            theta_px = _normalised_affine_to_pixel(theta, height, width)
        views = self._views(ir, views)
        moving = views.histograms(theta, cell)
        radius = self.refine_radius if radius is None else radius
        keep = None
        if mask_support:
            # A cell is outside when any of its pixels is (partly) outside the support; a
            # block is kept when no cell of its search window, one cell wider, is outside.
            outside = 1.0 - views.cells_inside(theta, cell)
            keep = (_box_sum(outside, block + 2 * radius + 2) < 0.5).to(ir.dtype)
            # With fewer than a tenth of the blocks left (a small frame, a map that keeps a
            # sliver of the IR) the fit would have nothing to stand on: keep every block.
            enough = keep.flatten(1).mean(dim=1) >= 0.1
            keep = torch.where(enough.view(-1, 1, 1, 1), keep, torch.ones_like(keep))
        return self._fit(reference, moving, radius, points, scales, theta_px, cell, block, keep)

    def _views(self, ir, views=None):
        """Return ``views``, or (None) new :class:`_WarpedViews` of ``ir``, memoised unless traced.

        A pass given no views still reads the histograms and the support of one warped IR
        from one ``grid_sample`` (:meth:`_WarpedViews._both`).
        """
        return views if views is not None else _WarpedViews(self, ir,
                                                            memo=not torch.jit.is_tracing())

    def _search_scales(self, ir, vi, reference, views=None):
        """Fit once per scale candidate and keep the best-agreeing map (class docstring).

        ``reference``: the visible image's :func:`cell_histograms` on ``cell``-pixel cells;
        ``views``: None or the :class:`_WarpedViews` of ``ir``.

        Returns ``(theta, unit)``: the ``(B, 2, 3)`` maps and a ``(B,)`` bool, true where the
        unzoomed candidate (scale 1.0) won.
        """
        # One full fit per candidate; each map is scored by the fraction of blocks whose best
        # match within the refinement radius sits at zero offset (inliers), over the blocks
        # every usable candidate covers: a zoomed candidate keeps only the frame's centre,
        # often its most textured part. Scores of candidates other than 1 are divided by
        # ``prefer_unit`` so that near ties keep the unzoomed fit.
        # The histograms of an image a candidate does not zoom are the same for every such
        # candidate: computed once (the IR's on first use). Not in an ONNX trace, which zooms
        # every candidate as the graph must (the factors are tensors there).
        cache = None if torch.jit.is_tracing() else {'vi': reference}
        fits = {}

        def fit(scale):
            if scale not in fits:
                theta = self._match_zoomed(ir, vi, ir.new_full((ir.shape[0],), scale), cache)
                fits[scale] = (theta,) + self._inlier_cells(ir, reference, theta, views)
            return fits[scale]

        accepted = None
        if self.scale_accept > 0.0 and 1.0 in self.scale_candidates:
            # The unzoomed map first: samples it explains keep it (``scale_accept``).
            theta, inlier, inside = fit(1.0)
            fraction, coverage = _inlier_fraction(inlier, inside)
            accepted = (fraction >= self.scale_accept) & (coverage >= self.min_coverage)
            if not torch.jit.is_tracing() and bool(accepted.all()):
                return theta, accepted
        if cache is not None:
            # The candidates left, fitted side by side in one batch (:meth:`_match_scales`).
            remaining = [scale for scale in self.scale_candidates if scale not in fits]
            for scale, theta in zip(remaining, self._match_scales(ir, vi, remaining, cache)):
                fits[scale] = (theta,) + self._inlier_cells(ir, reference, theta, views)
        thetas, inliers, insides = zip(*(fit(scale) for scale in self.scale_candidates))
        usable = [(inside.flatten(1).mean(dim=1) >= self.min_coverage).to(ir.dtype)
                  for inside in insides]
        common = torch.ones_like(insides[0])
        for inside, ok in zip(insides, usable):
            # A candidate that keeps too little of the IR does not shrink the common region.
            common = common * torch.maximum(inside, 1.0 - ok.view(-1, 1, 1, 1))
        count = common.flatten(1).sum(dim=1).clamp_min(1.0)
        scores = []
        for scale, inlier, ok in zip(self.scale_candidates, inliers, usable):
            fraction = (inlier * common).flatten(1).sum(dim=1) / count
            fraction = fraction if scale == 1.0 else fraction / self.prefer_unit
            scores.append(torch.where(ok > 0, fraction, torch.full_like(fraction, -1.0)))
        scores = torch.stack(scores, dim=1)
        best = scores.argmax(dim=1)
        if 1.0 in self.scale_candidates:
            # Ties (e.g. no block matches in any fit: a featureless pair) keep the unzoomed fit.
            unit = self.scale_candidates.index(1.0)
            best = torch.where(scores[:, unit] >= scores.amax(dim=1), unit, best)
        index = best.view(-1, 1, 1, 1).expand(-1, 1, 2, 3)
        theta = torch.gather(torch.stack(thetas, dim=1), 1, index).squeeze(1)
        factors = torch.tensor(self.scale_candidates, device=theta.device)
        unit = factors[best] == 1.0
        if accepted is not None:
            theta = torch.where(accepted.view(-1, 1, 1), fits[1.0][0], theta)
            unit = unit | accepted
        return theta, unit

    def _widen(self, ir, vi, reference, views, theta, unit):
        """Fit the wide candidates where ``theta`` explains too little of the pair (class doc).

        ``reference``: the visible image's :func:`cell_histograms`; ``views``: the
        :class:`_WarpedViews` of ``ir``; ``theta`` / ``unit``: the ``(B, 2, 3)`` maps and the
        ``(B,)`` unzoomed-winner flags of the scale search. Returns them updated where a wide
        candidate won.
        """
        fraction, _ = _inlier_fraction(*self._inlier_cells(ir, reference, theta, views))
        weak = fraction < self.wide_below
        if not torch.jit.is_tracing() and not bool(weak.any()):
            return theta, unit
        # The start on the frame reduced twice as much as the search's own (reach 128 px at
        # 640 px), then the wide scales; a candidate replaces the map where its inlier
        # fraction beats the best so far, the search's by ``prefer_unit`` times.
        if torch.jit.is_tracing() and self.coarse_side > 0:
            large = torch._shape_as_tensor(vi)[2:].max() > self.coarse_side
            start = torch.where(large, self._match_from_half(ir, vi, 4),
                                self._match_from_half(ir, vi, 2))
        else:
            large = self.coarse_side > 0 and max(vi.shape[2:]) > self.coarse_side
            start = self._match_from_half(ir, vi, 4 if large else 2)
        if torch.jit.is_tracing():
            wide = [self._match_zoomed(ir, vi, ir.new_full((ir.shape[0],), scale))
                    for scale in self.wide_scales]
        else:
            wide = self._match_scales(ir, vi, self.wide_scales, {'vi': reference})
        candidates = [(start, True)] + [(theta, scale == 1.0)
                                        for theta, scale in zip(wide, self.wide_scales)]
        best = fraction * self.prefer_unit
        for candidate, candidate_unit in candidates:
            score, coverage = _inlier_fraction(*self._inlier_cells(ir, reference, candidate,
                                                                   views))
            better = weak & (coverage >= self.min_coverage) & (score > best)
            theta = torch.where(better.view(-1, 1, 1), candidate, theta)
            unit = (unit | better) if candidate_unit else (unit & ~better)
            best = torch.where(better, score, best)
        return theta, unit

    def _match_zoomed(self, ir, vi, factors, cache=None):
        """Fit with the IR assumed ``factors`` (B,) times larger than the visible image.

        The pair is zoomed in (the visible centre by ``s`` when ``s > 1``, the IR centre by
        ``1 / s`` when ``s < 1``) and fitted; with ``ir'(v) = ir(a v)``, ``vi'(u) = vi(b u)``
        and the fit ``ir'(M u + t) = vi'(u)``, the map of the original pair is
        ``[a M / b, a t]``. ``cache``: None, or a dict whose ``'ir'`` / ``'vi'`` entries hold
        (or receive) the :func:`cell_histograms` of the unzoomed images, used where no sample
        of the batch zooms that image (which is then not resampled either).
        """
        planes, histograms, ir_factor, vi_factor = self._zoomed_pair(ir, vi, factors, cache)
        return _unzoom(self._match(*planes, *histograms), ir_factor, vi_factor)

    def _zoomed_pair(self, ir, vi, factors, cache=None):
        """Return ``([ir2, vi2], [their histograms], a, b)``: the pair :meth:`_match_zoomed` fits.

        ``a`` / ``b`` (B,): the factors the IR / visible image are zoomed by. An image no sample
        zooms is passed as it is with its histograms from ``cache`` (computed into it on first
        use); a zoomed one gets None for its histograms (computed by the fit, if it reads them).
        """
        ir_factor = factors.clamp(max=1.0)
        vi_factor = (1.0 / factors).clamp(max=1.0)
        planes, histograms = [], []
        for key, image, factor in (('ir', ir, ir_factor), ('vi', vi, vi_factor)):
            unzoomed = cache is not None and bool((factor == 1.0).all())
            if unzoomed and cache.get(key) is None:
                cache[key] = cell_histograms(image, self.cell, self.bins)
            planes.append(image if unzoomed else zoom(image, factor))
            histograms.append(cache[key] if unzoomed else None)
        return planes, histograms, ir_factor, vi_factor

    def _match_scales(self, ir, vi, scales, cache):
        """Return one ``(B, 2, 3)`` map per scale of ``scales``: :meth:`_match_zoomed` of each.

        The candidates are fitted side by side, one batch of ``len(scales) * B`` pairs, so each
        step of the fit runs once for all of them (the Python and dispatch overhead of the many
        small tensor operations, most of the global stage's time on a CPU, is paid once). Each
        candidate's images and histograms are made as :meth:`_match_zoomed` makes them (the
        unzoomed ones from ``cache``, a dict as there); the maps equal its maps up to float
        rounding (batched kernels). Not for an ONNX trace.
        """
        if len(scales) < 2:
            return [self._match_zoomed(ir, vi, ir.new_full((ir.shape[0],), scale), cache)
                    for scale in scales]
        planes, histograms, factors = ([], []), ([], []), ([], [])
        for scale in scales:
            pair = self._zoomed_pair(ir, vi, ir.new_full((ir.shape[0],), scale), cache)
            for side in range(2):
                plane, hist = pair[0][side], pair[1][side]
                planes[side].append(plane)
                # One batch needs every candidate's histograms: a zoomed image's made here.
                histograms[side].append(cell_histograms(plane, self.cell, self.bins)
                                        if hist is None else hist)
                factors[side].append(pair[2 + side])
        found = self._match(*(torch.cat(group) for group in planes + histograms))
        found = _unzoom(found, torch.cat(factors[0]), torch.cat(factors[1]))
        return list(found.split(ir.shape[0]))

    def alignment_score(self, ir, vi, theta):
        """Return how well ``ir`` warped by ``theta`` agrees with ``vi``: ``(B,)`` in [0, 1].

        The fraction of blocks, among those wholly inside the warped IR's support, whose best
        block-descriptor match within ``refine_radius`` cells (:func:`peak_offsets`) lies
        within 0.75 cell of zero offset; -1 when those blocks cover less than
        ``min_coverage`` of the frame (a map that keeps only a sliver of the IR).
        """
        inlier, inside = self._inlier_cells(ir, cell_histograms(vi, self.cell, self.bins), theta)
        fraction, coverage = _inlier_fraction(inlier, inside)
        return torch.where(coverage >= self.min_coverage, fraction,
                           torch.full_like(fraction, -1.0))

    def _inlier_cells(self, ir, reference, theta, views=None):
        """Return ``(inlier, inside)``, both ``(B, 1, H / cell, W / cell)`` in {0, 1}.

        ``reference``: the visible image's :func:`cell_histograms`. ``inlier``: blocks whose
        best match after warping ``ir`` by ``theta`` is at zero offset; ``inside``: blocks
        wholly inside the warped IR's support. ``views``: None or the :class:`_WarpedViews`
        of ``ir``.
        """
        views = self._views(ir, views)

        def compute():
            cells_inside = views.cells_inside(theta, self.cell)
            inside = (_box_sum(cells_inside, self.block) > self.block ** 2 - 0.5).to(ir.dtype)
            radius = max(self.refine_radius, 1)
            offset, confidence = peak_offsets(
                block_cost_volume(reference, views.histograms(theta, self.cell), radius,
                                  self.block), radius)
            inlier = ((torch.linalg.vector_norm(offset, dim=1, keepdim=True) < 0.75)
                      & (confidence > 0)).to(ir.dtype)
            return inlier, inside

        # Kept with the views: the wide search scores again the map the scale search scored.
        return views._get('inliers', theta, self.cell, compute)

    def _match(self, ir, vi, ir_hist=None, vi_hist=None):
        """Run the two-pass fit (halved first for large frames) on one pair of images.

        ``ir_hist`` / ``vi_hist``: the images' :func:`cell_histograms` where already computed
        (None: computed here; unused by the halved start, which works on other images).
        """
        if self.coarse_side <= 0:
            return self._match_once(ir, vi, ir_hist, vi_hist)
        if torch.jit.is_tracing():
            # An ONNX graph cannot branch on the frame size: it computes both starts and keeps
            # one per the size, read from the traced shape.
            large = torch._shape_as_tensor(vi)[2:].max() > self.coarse_side
            return torch.where(large, self._match_from_half(ir, vi), self._match_once(ir, vi))
        if max(vi.shape[2:]) > self.coarse_side:
            return self._match_from_half(ir, vi)
        return self._match_once(ir, vi, ir_hist, vi_hist)

    def _match_from_half(self, ir, vi, factor=2):
        """Fit on the frame reduced ``factor`` times (means), then refine once at full size."""
        height, width = vi.shape[2:]
        theta = self._match_once(F.avg_pool2d(ir, factor), F.avg_pool2d(vi, factor))
        reference = cell_histograms(vi, self.cell, self.bins)
        points = _cell_centres(reference.shape[2], reference.shape[3], self.cell, vi)
        theta_px = self._refine(ir, reference, points, theta, self.cell, self.block,
                                self.refine_scales, mask_support=self.support_mask)
        return _pixel_affine_to_normalised(theta_px, height, width)

    def _match_once(self, ir, vi, ir_hist=None, vi_hist=None):
        """Run the two-pass fit of the class docstring on one pair of (zoomed) images.

        ``ir_hist`` / ``vi_hist``: their :func:`cell_histograms` (None: computed here).
        """
        height, width = vi.shape[2:]
        reference = cell_histograms(vi, self.cell, self.bins) if vi_hist is None else vi_hist
        moving = cell_histograms(ir, self.cell, self.bins) if ir_hist is None else ir_hist
        points = _cell_centres(reference.shape[2], reference.shape[3], self.cell, vi)
        theta_px = self._fit(reference, moving, self.radius, points, self.scales)
        if self.refine_radius > 0:
            # Second pass: warp the IR by the first map, match again within a small radius
            # (now the whole neighbourhood lines up, so more cells find their true match).
            theta_px = self._refine(ir, reference, points,
                                    _pixel_affine_to_normalised(theta_px, height, width),
                                    self.cell, self.block, self.refine_scales, theta_px,
                                    mask_support=self.support_mask)
        return _pixel_affine_to_normalised(theta_px, height, width)


def _unzoom(found, ir_factor, vi_factor):
    """Return the maps of the original pairs from ``found``, fitted on zoomed ones.

    ``found`` (B, 2, 3) normalised maps of the pairs zoomed by ``ir_factor`` / ``vi_factor``
    (B,) (:meth:`OrientationMatcher._match_zoomed`): ``[a M / b, a t]``.
    """
    ratio = (ir_factor / vi_factor).view(-1, 1, 1)
    return torch.cat((found[:, :, :2] * ratio, found[:, :, 2:] * ir_factor.view(-1, 1, 1)),
                     dim=2)


def _inlier_fraction(inlier, inside):
    """Return ``(fraction, coverage)``, each ``(B,)``, of ``OrientationMatcher._inlier_cells``.

    ``fraction``: inlier blocks among those inside (0 where none is); ``coverage``: the
    fraction of the grid's blocks that are inside.
    """
    count = inside.flatten(1).sum(dim=1)
    fraction = (inlier * inside).flatten(1).sum(dim=1) / count.clamp_min(1.0)
    # A mean, not a division by the block count: an ONNX trace would freeze that number.
    return fraction, inside.flatten(1).mean(dim=1)


class _WarpedViews:
    """What the passes of one :class:`OrientationMatcher` fit read from the IR warped by a map.

    The :func:`cell_histograms` of ``warp(ir, affine_flow(theta))`` on ``cell``-pixel cells
    and its :func:`_inside_cells`. With ``memo`` they are kept by the map's values and
    the cell size and computed once: the scale search scores the winning map on the IR warped
    by it, and the first extra pass warps the IR by that same map again; the fine-pass check
    warps it by the map the first fine pass started from. It also keeps the inlier and inside
    blocks of :meth:`OrientationMatcher._inlier_cells` (against the one visible image of the
    fit): the wide search reads the score the scale search gave its winning map. One instance
    serves one IR tensor for one fit (the images a scale candidate zooms are other images, with
    views of their own); never memoised in an ONNX trace, where a map's values are not known.
    """

    def __init__(self, matcher, ir, memo=False):
        self.matcher, self.ir = matcher, ir
        self._memo = {} if memo else None
        self._with_support = None  # the IR and a plane of ones, stacked on first use

    def _get(self, kind, theta, cell, compute):
        if self._memo is None:
            return compute()
        key = (kind, cell, tuple(theta.shape), tuple(theta.flatten().tolist()))
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def flow(self, theta):
        """Return the affine flow of ``theta`` at the IR's size: ``(B, 2, H, W)`` pixels."""
        return self._get('flow', theta, 0, lambda: affine_flow(theta, *self.ir.shape[2:]))

    def histograms(self, theta, cell):
        """Return the ``(B, bins, H / cell, W / cell)`` histograms of the warped IR."""
        if self._memo is None:
            return cell_histograms(self._warped(self.ir, theta), cell, self.matcher.bins)
        return self._both(theta, cell)[0]

    def cells_inside(self, theta, cell):
        """Return ``(B, 1, H / cell, W / cell)`` in {0, 1}: :func:`_inside_cells` of the IR."""
        if self._memo is None:
            return _inside_cells(self._warped(torch.ones_like(self.ir), theta), cell)
        return self._both(theta, cell)[1]

    def _warped(self, image, theta):
        """Return ``image`` warped by ``theta``: :func:`affine_warp`, in a trace by a flow.

        An ONNX trace samples by the flow of :meth:`flow`, as the exported graph always did.
        """
        if torch.jit.is_tracing():
            return warp(image, self.flow(theta))
        return affine_warp(image, theta)

    def _both(self, theta, cell):
        """Return ``(histograms, cells_inside)`` of one map, the IR and its support warped once.

        Every pass that reads one of them reads the other for the same map and cell (or a
        memoised one), so both come from one ``grid_sample`` of the IR and a plane of ones
        (channels are sampled independently: the same values as two calls). The two planes are
        stacked once for every map.
        """
        def compute():
            if self._with_support is None:
                self._with_support = torch.cat((self.ir, torch.ones_like(self.ir)), dim=1)
            both = self._warped(self._with_support, theta)
            return (cell_histograms(both[:, :1], cell, self.matcher.bins),
                    _inside_cells(both[:, 1:], cell))
        return self._get('views', theta, cell, compute)


def _groups(channels, wanted=8):
    return math.gcd(int(channels), wanted)


def _conv_gn(in_channels, out_channels, stride, slope):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(_groups(out_channels), out_channels),
        nn.LeakyReLU(slope, inplace=True))


class PyramidEncoder(nn.Module):
    """Stride-2 levels (conv-GroupNorm-LeakyReLU x 2) from the CSEB output down the pyramid.

    ``forward: (B, in_channels, h, w) -> [input, (B, c1, h/2, w/2), (B, c2, h/4, w/4), ...]``.
    """

    def __init__(self, in_channels, channels=(48, 64, 96), slope=0.1):
        super().__init__()
        self.levels = nn.ModuleList()
        width = in_channels
        for out in channels:
            self.levels.append(nn.Sequential(_conv_gn(width, out, 2, slope),
                                             _conv_gn(out, out, 1, slope)))
            width = out

    def forward(self, features, depth=None):
        """Return the levels down to output ``depth`` (None: every level; 0: the input alone)."""
        outputs = [features]
        for level in self.levels[:depth]:
            outputs.append(level(outputs[-1]))
        return outputs

    def sizes(self, size):
        """Return every output's ``(h, w)`` for an input of ``size`` (3x3, stride 2, pad 1)."""
        sizes = [tuple(int(side) for side in size)]
        for _ in self.levels:
            sizes.append(tuple((side - 1) // 2 + 1 for side in sizes[-1]))
        return sizes


class FlowEstimator(nn.Module):
    """A 1x1 squeeze, 3x3 conv-LeakyReLU layers (no normalisation), a zero-initialised head.

    ``channels[0]`` is the squeeze width (a 1x1 layer over the wide cost-volume input keeps the
    estimator cheap), the others 3x3 layers; the head is a 3x3 layer to ``outputs`` channels.
    ``pointwise=True`` makes every layer 1x1: each cell's output then depends on its own input
    only, never on where the cell is (zero padding tells a 3x3 stack where the borders are, a
    cue that differs between a small training crop and a whole frame).
    ``forward: (B, in_channels, h, w) -> (B, outputs, h, w)``; starts at exactly zero.
    """

    def __init__(self, in_channels, channels=(64, 48, 32), outputs=2, slope=0.1,
                 pointwise=False):
        super().__init__()
        layers = []
        width = in_channels
        for index, out in enumerate(channels):
            kernel = 1 if index == 0 or pointwise else 3
            layers += [nn.Conv2d(width, out, kernel, padding=kernel // 2),
                       nn.LeakyReLU(slope, inplace=True)]
            width = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, outputs, 1 if pointwise else 3,
                              padding=0 if pointwise else 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.body(x))


class MatchingRegistration(nn.Module):
    """CSEBs + shared pyramid + global affine stage + residual cost-volume levels.

    The global stage reads the cost volume of the coarsest level (native scale, so the same
    features and the same pixel displacements on a training crop and on a whole frame) and
    predicts, cell by cell from that cell's matching costs alone (1x1 layers: no position cue),
    a flow and a confidence; one affine map is fitted to them by weighted least squares
    (:func:`fit_affine`: the fit itself is size-independent). Every finer level then warps the
    IR features by the flow so far, correlates them with the visible ones and adds a residual
    flow read from that cost volume and the visible features (without the global stage, the
    coarsest level starts from a zero flow). Unlike PWC-Net, the flow so far is not an input
    of the estimators: a rotation or a scale gives flows that grow with the image, so a whole
    frame would show them values never seen on training crops.

    ``forward(c_ir (B, C, H, W), c_vi (B, C, H, W), return_levels=False, ir=None, vi=None,
    valid_size=None)`` returns the flow ``(B, 2, H, W)`` in pixels that maps the IR onto the
    visible frame (``warp(ir, flow)``); ``valid_size``: the images' ``(h, w)`` before padding,
    passed to the orientation global stage (:class:`OrientationMatcher`);
    with ``return_levels`` also the list of intermediate flows resized to ``(H, W)`` pixels,
    coarsest first (the global stage's affine flow, then each level), for deep supervision.
    ``theta``: ``(B, 2, 3)`` normalised affine maps (:func:`affine_flow`) to start from instead
    of running the global stage (a map fitted on an earlier frame of the same rig; orientation
    global stage only).

    Args:
        in_channels: width of the common features.
        cseb_channels: CSEB width (the ``1/2**downsample`` level).
        pyramid_channels: widths of the coarser levels (each halves the resolution).
        estimator_channels: hidden widths of each level's flow estimator.
        radius: cost-volume search radius in cells of the global stage and the coarser levels.
        downsample: stride-2 steps of the CSEBs.
        global_stage: start from one affine map (else from a zero flow).
        slope: LeakyReLU negative slope.
        finest_radius: the radius at the finest (CSEB) level, which only refines what the
            coarser levels found; its cost volume runs on the most cells, so it is kept small.
        global_features: ``'learned'`` (the global stage above) or ``'orientation'``
            (:class:`OrientationMatcher` on the input images: fixed descriptors, no learnt
            parameter; ``forward`` then needs ``ir`` and ``vi``).
        scale_candidates: the orientation matcher's candidate IR / visible scales
            (:class:`OrientationMatcher`; ``(1.0,)``: one fit, no search).
        fine_cell, fine_block, fine_passes, fine_radius: the orientation matcher's last, finer
            pass (cell side in px, 0: none; block side in cells; how many times it runs; its
            search radius in cells).
        coarse_side: the orientation matcher's halved start for frames whose longer side
            exceeds it (px; 0: never).
        support_mask: the orientation matcher's 8 px passes on the warped IR drop blocks whose
            search window leaves its support.
        fine_check: the orientation matcher keeps the map from before its fine passes where
            that agrees better with the visible image.
        min_side: the orientation matcher enlarges frames whose shorter side is below it
            (px; 0: never).
        fine_tolerance: the orientation matcher stops a sample's fine passes once one moves
            its map by less than this many pixels at every frame corner (0: all passes run).
        scale_accept: the orientation matcher keeps the unzoomed candidate's map without the
            other scale candidates where at least this fraction of its blocks are inliers
            (0: every candidate is fitted).
        wide_below, wide_scales: the orientation matcher's wide search where its map explains
            less than that fraction of the pair (0: none), and its extra scale candidates.

    """

    def __init__(self, in_channels, cseb_channels=32, pyramid_channels=(48, 64, 96),
                 estimator_channels=(64, 48, 32), radius=4, downsample=2, global_stage=True,
                 slope=0.1, finest_radius=2, global_features='learned',
                 scale_candidates=(1.0,), fine_cell=0, fine_block=8, coarse_side=0,
                 fine_passes=1, fine_radius=2, support_mask=False, fine_check=False,
                 min_side=0, extra_passes=0, extra_radius=2, skip_levels=(),
                 fine_tolerance=0.0, scale_accept=0.0, wide_below=0.0, wide_scales=()):
        super().__init__()
        if radius < 1 or finest_radius < 1 or not pyramid_channels:
            raise ValueError(f'need radii >= 1 and >= 1 pyramid level, got {radius}, '
                             f'{finest_radius}, {pyramid_channels}')
        self.cseb_ir = CSEB(in_channels, cseb_channels, downsample, slope, norm='group')
        self.cseb_vi = CSEB(in_channels, cseb_channels, downsample, slope, norm='group')
        self.pyramid = PyramidEncoder(cseb_channels, pyramid_channels, slope)
        widths = (cseb_channels,) + tuple(pyramid_channels)
        # Search radius per level, finest first.
        self.radii = (int(finest_radius),) + (int(radius),) * len(pyramid_channels)
        # One residual estimator per level; with the global stage, none at the coarsest.
        self.estimators = nn.ModuleList()
        for index, width in enumerate(widths[:-1] if global_stage else widths):
            cost = (2 * self.radii[index] + 1) ** 2
            # The finest level runs on the most cells: half as wide.
            hidden = (tuple(max(c // 2, 8) for c in estimator_channels) if index == 0
                      else tuple(estimator_channels))
            self.estimators.append(FlowEstimator(cost + width, hidden, 2, slope))
        self.skip_levels = frozenset(int(level) for level in skip_levels)
        if not self.skip_levels <= set(range(len(self.estimators))):
            raise ValueError(f'registration_skip_levels {sorted(self.skip_levels)} must name '
                             f'learnt levels 0..{len(self.estimators) - 1} (0 = the finest)')
        self.global_estimator = None
        self.global_matcher = None
        if global_stage and global_features == 'orientation':
            self.global_matcher = OrientationMatcher(scale_candidates=scale_candidates,
                                                     fine_cell=fine_cell, fine_block=fine_block,
                                                     coarse_side=coarse_side,
                                                     fine_passes=fine_passes,
                                                     fine_radius=fine_radius,
                                                     support_mask=support_mask,
                                                     fine_check=fine_check,
                                                     min_side=min_side,
                                                     extra_passes=extra_passes,
                                                     extra_radius=extra_radius,
                                                     fine_tolerance=fine_tolerance,
                                                     scale_accept=scale_accept,
                                                     wide_below=wide_below,
                                                     wide_scales=wide_scales)
        elif global_stage:
            cost = (2 * int(radius) + 1) ** 2
            self.global_estimator = FlowEstimator(cost, estimator_channels, 3, slope,
                                                  pointwise=True)

    def global_affine(self, ir_feat, vi_feat):
        """Return ``(B, 2, 3)`` affine maps (normalised coordinates) from coarsest features."""
        cost = local_correlation(F.normalize(vi_feat, dim=1, eps=1e-6),
                                 F.normalize(ir_feat, dim=1, eps=1e-6), self.radii[-1])
        out = self.global_estimator(cost)
        return fit_affine(out[:, :2], torch.sigmoid(out[:, 2:3]))

    def _depth(self):
        """Return the deepest pyramid output :meth:`forward` reads (0: the CSEB output)."""
        if self.global_estimator is not None:
            return len(self.pyramid.levels)
        used = set(range(len(self.estimators))) - self.skip_levels
        return max(used, default=0)

    def forward(self, c_ir, c_vi, return_levels=False, ir=None, vi=None, valid_size=None,
                theta=None):
        if theta is not None and self.global_matcher is None:
            raise ValueError('a given global map (theta) needs the orientation global stage '
                             "(global_features 'orientation'); this registration has none")
        # Only the levels an estimator (or the learnt global stage) reads are computed: the
        # others' sizes alone carry the flow down the pyramid (``registration_skip_levels``).
        # An ONNX trace computes every level and reads the sizes from them (dynamic axes).
        depth = None if torch.jit.is_tracing() else self._depth()
        ir_levels = self.pyramid(self.cseb_ir(c_ir), depth)
        vi_levels = self.pyramid(self.cseb_vi(c_vi), depth)
        sizes = ([level.shape[2:] for level in vi_levels] if depth is None
                 else self.pyramid.sizes(vi_levels[0].shape[2:]))
        size = c_ir.shape[2:]
        coarsest = sizes[-1]
        levels = []
        if theta is not None:
            if tuple(theta.shape) != (c_ir.shape[0], 2, 3):
                raise ValueError(f'theta must be ({c_ir.shape[0]}, 2, 3) normalised affine '
                                 f'maps, got {tuple(theta.shape)}')
            theta = theta.float()
        elif self.global_matcher is not None:
            if ir is None or vi is None:
                raise ValueError('the orientation global stage needs the input images: '
                                 'forward(c_ir, c_vi, ir=..., vi=...)')
            theta = self.global_matcher(ir, vi, valid_size)
        elif self.global_estimator is not None:
            theta = self.global_affine(ir_levels[-1], vi_levels[-1])
        if theta is not None:
            dtype = vi_levels[0].dtype
            flow = affine_flow(theta, coarsest[0], coarsest[1]).to(dtype)
            if return_levels:
                levels.append(affine_flow(theta, size[0], size[1]).to(dtype))
        else:
            flow = vi_levels[0].new_zeros(vi_levels[0].shape[0], 2, *coarsest)
        for index in reversed(range(len(self.estimators))):
            flow = resize_flow(flow, sizes[index])
            if index not in self.skip_levels:
                ir_feat, vi_feat = ir_levels[index], vi_levels[index]
                reference = F.normalize(vi_feat, dim=1, eps=1e-6)
                moving = F.normalize(warp(ir_feat, flow), dim=1, eps=1e-6)
                cost = local_correlation(reference, moving, self.radii[index])
                flow = flow + self.estimators[index](torch.cat((cost, vi_feat), dim=1))
            if return_levels:
                levels.append(resize_flow(flow, size))
        full = resize_flow(flow, size)
        if return_levels:
            return full, levels
        return full
