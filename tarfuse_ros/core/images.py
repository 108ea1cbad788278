"""Image conventions of the core: normalisation to [0, 1], colour handling, padding.

Every image the network sees is float32 in [0, 1]. This module turns whatever a camera or a file
gives (uint8, uint16, float; grey or BGR colour) into that, and back.

Normalisation rules (:func:`to_unit_gray`, :func:`to_unit_visible`):

- ``uint8``: divided by 255.
- ``uint16`` (thermal ``mono16``): a robust per-frame range. With ``norm='percentile'`` (default)
  the ``low`` and ``high`` percentiles of the frame (nearest rank, 0.5 and 99.5 by default) map to
  0 and 1, values outside are clipped, so a few hot or dead pixels do not squash the contrast.
  ``norm='minmax'`` uses the frame's minimum and maximum, ``norm='fixed'`` divides by 65535.
  A flat frame (range 0) maps to zeros.
- float (``float16``, ``float32``, ``float64``), visible image (:func:`to_unit_visible`): if
  it lies within [0, 1] widened by :data:`UNIT_OVERSHOOT` on both sides it is taken to be in
  [0, 1] already (clipped to it); else if its maximum is above that and it lies within
  [0, 255] widened alike (by 51) it is taken to be on the 8-bit scale and divided by 255
  (clipped); else (above 255, or further below 0: a frame normalised to [-1, 1], a
  zero-centred one) it is normalised per frame as a ``uint16`` frame would be.
- float IR (:func:`to_unit_gray`, e.g. ``32FC1``): a frame within [0, 1], widened by
  :data:`UNIT_OVERSHOOT` on both sides, is taken as it is (clipped to [0, 1]); any other
  (temperatures in degrees Celsius or kelvin, counts, an 8-bit scale) is normalised per frame
  as a ``uint16`` frame would be. Temperatures in Celsius lie within [0, 255] or below 0 and
  are not 8-bit grey levels: read with the visible image's rule, a scene of 15-40 degrees
  would keep a tenth of the grey range, and one below freezing would be black. The one
  ambiguous case: a Celsius frame whose whole scene lies within -0.2 to 1.2 degrees (iced water,
  at most 1.4 degrees of contrast) reads as a [0, 1] frame; a kelvin stream never does.
- The margin: a [0, 1] frame that a driver resampled with a cubic or Lanczos kernel leaves
  [0, 1] next to edges: by up to 12 % above 1 at a step and 17 % below 0 beside a one-pixel
  line (OpenCV's ``INTER_CUBIC`` and ``INTER_LANCZOS4``, measured). Without it, frames of one
  stream would switch from frame to frame between the unit reading and the per-frame stretch
  (or, for the visible image, the 8-bit scale: a black frame), whichever side of [0, 1] their
  extreme pixels fell on.
- NaN or infinite values raise ``ValueError``.
- Other dtypes (signed integers, bool, ...) raise ``ValueError``.

Colour: a visible ``HxWx3`` image is BGR (OpenCV order; ``HxWx4`` BGRA drops alpha). The network
fuses its luma: :func:`bgr_to_ycrcb` gives Y, Cr, Cb (OpenCV's BT.601 definition, chroma
centred on 0.5) and :func:`ycrcb_to_bgr` puts the visible Cr/Cb back around the fused Y.

Pairs (:func:`prepare_pair`, the one preparation of the dataset, the engine and the
evaluation): each image's shorter side must be at least :data:`MIN_SIDE` pixels and its longer
side at most :data:`MAX_ASPECT` times the shorter (a 1-pixel line or a 640x2 strip is a driver
or cropping fault, not a frame to fuse: the network would enlarge it by hundreds of times);
the visible image is split into its luma and chroma (:func:`split_visible`: a uint8
colour frame's luma is OpenCV's 8-bit BT.601 luma, rounded to whole grey levels); the IR image is
normalised (:func:`gray_plane`) and THEN resized to the visible frame (:func:`resize_image`:
``INTER_AREA`` when it shrinks in both directions, ``INTER_LINEAR`` otherwise), so a 16-bit frame's
robust range is taken on the frame as the camera gave it.

Padding: the network needs sizes that are multiples of 32. :func:`pad_to_multiple` pads at the
bottom and right only (so pixel coordinates of the original image are unchanged, no box offset
needed) with replicated border pixels by default: zeros would add a dark edge the fusion and
detection heads would react to. ``'reflect'`` mirrors instead (it needs the pad to be smaller
than the image), ``'constant'`` fills zeros. :func:`unpad` crops back.
"""

from dataclasses import dataclass
import sys

import cv2
import numpy as np

__all__ = [
    'IR_NORMS',
    'MAX_ASPECT',
    'MIN_SIDE',
    'PAD_MODES',
    'PreparedPair',
    'UNIT_OVERSHOOT',
    'bgr_to_ycrcb',
    'check_frame_size',
    'gray_plane',
    'pad_to_multiple',
    'merge_luma_chroma',
    'normalise',
    'prepare_pair',
    'resize_image',
    'split_visible',
    'to_uint8',
    'to_unit_gray',
    'to_unit_visible',
    'unit_plane',
    'unpad',
    'ycrcb_to_bgr',
]

IR_NORMS = ('percentile', 'minmax', 'fixed')
PAD_MODES = ('replicate', 'reflect', 'constant')
# Frame-size limits of a pair (module docstring): the smallest thermal arrays that make an image
# (32x24) pass; a strip or a single line is refused before the network enlarges it.
MIN_SIDE = 16
MAX_ASPECT = 8.0
# How far a float frame may lie outside [0, 1] and still be read as a [0, 1] frame (clipped):
# resampling overshoot (module docstring). A fraction of the unit range.
UNIT_OVERSHOOT = 0.2

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _check_array(img, name):
    if not isinstance(img, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(img).__name__}')
    if img.size == 0:
        raise ValueError(f'{name} is empty (shape {img.shape})')
    if img.ndim not in (2, 3):
        raise ValueError(f'{name} must be HxW or HxWxC, got shape {img.shape}')
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ValueError(
            f'{name} must have 1, 3 (BGR) or 4 (BGRA) channels, got shape {img.shape}')
    if img.dtype != np.uint8 and img.dtype != np.uint16 and img.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f'{name} has dtype {img.dtype}; expected uint8, uint16, float16, float32 or float64')
    if img.dtype in _FLOAT_DTYPES:
        finite = np.isfinite(img)
        if not finite.all():
            nan = int(np.isnan(img).sum())
            inf = int(img.size - finite.sum()) - nan
            raise ValueError(
                f'{name} (shape {img.shape}, dtype {img.dtype}) contains {nan} NaN and '
                f'{inf} infinite values; replace them before inference')


def check_frame_size(img, name='image'):
    """Raise ``ValueError`` naming ``name`` when ``img`` is outside the frame-size limits.

    Args:
        img: an ``HxW`` or ``HxWxC`` array.
        name: what to call the image in the message.

    Raises:
        ValueError: a side below :data:`MIN_SIDE` pixels, or the longer side more than
            :data:`MAX_ASPECT` times the shorter.

    """
    height, width = img.shape[:2]
    short, long = min(height, width), max(height, width)
    if short < MIN_SIDE:
        raise ValueError(f'{name} is {width}x{height}: both sides must be at least {MIN_SIDE} '
                         f'pixels')
    if long > MAX_ASPECT * short:
        raise ValueError(f'{name} is {width}x{height}: its longer side is {long / short:.1f} '
                         f'times the shorter, more than {MAX_ASPECT:g} (a strip, not a frame)')


def _check_percentiles(low, high):
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f'percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}')


def _robust_range(img, norm, low, high):
    """Return (lo, hi) of ``img`` (any shape) under ``norm``."""
    if norm == 'minmax':
        return float(img.min()), float(img.max())
    if img.dtype == np.uint16:
        # Nearest-rank percentiles from a histogram: O(N), much faster than np.percentile.
        counts = np.bincount(img.ravel(), minlength=65536)
        cdf = np.cumsum(counts)
        n = cdf[-1]
        lo = int(np.searchsorted(cdf, max(1, int(np.ceil(low / 100.0 * n)))))
        hi = int(np.searchsorted(cdf, max(1, int(np.ceil(high / 100.0 * n)))))
        return float(lo), float(hi)
    lo, hi = np.percentile(img, [low, high])
    return float(lo), float(hi)


def _to_unit(img, norm, low, high, name, float_scales=True):
    """Return ``img`` (checked) as float32 in [0, 1], channels untouched.

    ``float_scales``: the visible image's float rules (module docstring); False: the IR's (a
    float frame outside [0, 1] is normalised per frame).
    """
    if norm not in IR_NORMS:
        raise ValueError(f'norm must be one of {IR_NORMS}, got {norm!r}')
    _check_percentiles(low, high)
    if img.dtype == np.uint8:
        return img.astype(np.float32) * np.float32(1.0 / 255.0)
    if img.dtype in _FLOAT_DTYPES:
        peak, floor = float(img.max()), float(img.min())
        # A visible frame far below 0 (one normalised to [-1, 1], or zero-centred 8-bit) lost
        # its negative half to the clip (black): it is stretched per frame as the IR is.
        unit_peak = peak <= 1.0 + UNIT_OVERSHOOT
        if unit_peak and floor >= -UNIT_OVERSHOOT:
            return np.clip(img.astype(np.float32), 0.0, 1.0)
        if float_scales and not unit_peak and peak <= 255.0 and floor >= -255.0 * UNIT_OVERSHOOT:
            return np.clip(img.astype(np.float32) * np.float32(1.0 / 255.0), 0.0, 1.0)
        if norm == 'fixed':
            beyond = 'above 255' if float_scales else 'outside [0, 1]'
            raise ValueError(
                f'{name}: norm="fixed" is undefined for float images {beyond} '
                f'(min {float(img.min()):g}, max {peak:g}); use "percentile" or "minmax"')
    elif norm == 'fixed':  # uint16
        return img.astype(np.float32) * np.float32(1.0 / 65535.0)
    lo, hi = _robust_range(img, norm, low, high)
    if hi <= lo:
        return np.zeros(img.shape, np.float32)
    out = (img.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def to_unit_gray(img, ir_norm='percentile', low=0.5, high=99.5, name='image'):
    """Normalise a grey image (typically thermal) to float32 in [0, 1].

    Args:
        img: ``HxW`` or ``HxWx1`` array, uint8, uint16 or float (see the module docstring for
            the rules). ``HxWx3``/``HxWx4`` (BGR/BGRA, alpha dropped first) is accepted and
            reduced to its luma.
        ir_norm: ``'percentile'``, ``'minmax'`` or ``'fixed'``: how uint16 (and float frames
            outside [0, 1]: temperatures) are scaled.
        low, high: percentiles (0-100) mapped to 0 and 1 with ``'percentile'``.
        name: what to call the image in error messages.

    Returns:
        float32 array ``HxW`` in [0, 1].

    Raises:
        ValueError: empty, wrong number of dimensions or channels, unsupported dtype, NaN/inf.

    """
    _check_array(img, name)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        # Alpha is dropped before the range is taken: an opaque 16-bit alpha (65535) would
        # otherwise set the top of a uint16 frame's range and squash its contrast.
        img = img[:, :, :3]
    unit = _to_unit(img, ir_norm, low, high, name, float_scales=False)
    if unit.ndim == 3:
        unit = bgr_to_ycrcb(unit)[:, :, 0]
    return np.ascontiguousarray(unit, dtype=np.float32)


def to_unit_visible(img, norm='percentile', low=0.5, high=99.5, name='visible image'):
    """Normalise a visible image and split it into the luma to fuse and the chroma to restore.

    Args:
        img: ``HxW``/``HxWx1`` grey or ``HxWx3`` BGR (``HxWx4`` BGRA: alpha dropped), uint8,
            uint16 or float (rules in the module docstring; a colour frame is scaled jointly
            over its channels).
        norm, low, high: as ``ir_norm``, ``low``, ``high`` of :func:`to_unit_gray`.
        name: what to call the image in error messages.

    Returns:
        ``(y, crcb)``: ``y`` float32 ``HxW`` in [0, 1]; ``crcb`` float32 ``HxWx2`` (Cr, Cb in
        [0, 1]) for a colour image, ``None`` for a grey one.

    """
    _check_array(img, name)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = img[:, :, :3]
    unit = _to_unit(img, norm, low, high, name)
    if unit.ndim == 2:
        return np.ascontiguousarray(unit), None
    ycrcb = bgr_to_ycrcb(unit)
    return np.ascontiguousarray(ycrcb[:, :, 0]), np.ascontiguousarray(ycrcb[:, :, 1:])


def split_visible(img, norm='percentile', low=0.5, high=99.5, name='visible image',
                  keep_uint8=False):
    """Split a visible image into the luma to fuse and the chroma to restore (8-bit).

    The engine's fast path: a uint8 BGR(A) frame is converted once by OpenCV in 8 bits (the
    luma is rounded to 8 bits, as the input already was); anything else goes through
    :func:`to_unit_visible` and its chroma is rounded to 8 bits.

    Args:
        img, norm, low, high, name: as :func:`to_unit_visible`.
        keep_uint8: return the luma of a uint8 input as uint8 (0-255) instead of float, so
            that it can be moved to a GPU in 8 bits and scaled there.

    Returns:
        ``(y, crcb)``: ``y`` float32 ``HxW`` in [0, 1] (uint8 with ``keep_uint8`` and a uint8
        input); ``crcb`` uint8 ``HxWx2`` (Cr, Cb) for a colour image, ``None`` for a grey one.

    """
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        _check_array(img, name)
        crcb = None
        if img.ndim == 3 and img.shape[2] == 1:
            y = img[:, :, 0]
        elif img.ndim == 3:
            ycrcb = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2YCrCb)
            y, crcb = ycrcb[:, :, 0], np.ascontiguousarray(ycrcb[:, :, 1:])
        else:
            y = img
        y = np.ascontiguousarray(y)
        return (y if keep_uint8 else y.astype(np.float32) * np.float32(1.0 / 255.0)), crcb
    y, crcb = to_unit_visible(img, norm, low, high, name)
    return y, (None if crcb is None else to_uint8(crcb))


def gray_plane(img, norm='percentile', low=0.5, high=99.5, name='image', keep_uint8=False):
    """Return :func:`to_unit_gray` of ``img``, or with ``keep_uint8`` a uint8 input as uint8.

    The uint8 form (``HxW``, 0-255; colour reduced to its 8-bit luma) lets the engine resize and
    upload 8-bit data and scale it by 1/255 on the device.
    """
    if keep_uint8 and isinstance(img, np.ndarray) and img.dtype == np.uint8:
        _check_array(img, name)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.ndim == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(img)
    return to_unit_gray(img, norm, low, high, name)


def merge_luma_chroma(y, crcb):
    """Combine an 8-bit luma ``HxW`` and 8-bit chroma ``HxWx2`` (Cr, Cb) into uint8 BGR."""
    if y.shape != crcb.shape[:2] or crcb.ndim != 3 or crcb.shape[2] != 2:
        raise ValueError(f'luma {y.shape} and chroma {crcb.shape} do not match (HxW, HxWx2)')
    ycrcb = np.empty(y.shape + (3,), np.uint8)
    ycrcb[:, :, 0] = y
    ycrcb[:, :, 1:] = crcb
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def _check_three_channels(img, name):
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, 'shape', None)
        raise ValueError(f'{name} must be an HxWx3 numpy array, got shape {shape}')
    # OpenCV takes an 8-bit image as 0-255 and returns 0-255 (chroma centred on 128), which
    # these float-[0, 1] conversions would hand back as if it were in [0, 1].
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f'{name} must be float in [0, 1], got dtype {img.dtype} (shape '
                         f'{img.shape}); divide by 255 or use to_unit_visible')


def bgr_to_ycrcb(bgr):
    """Convert a float BGR image in [0, 1] to Y, Cr, Cb (BT.601 as in OpenCV, chroma at 0.5).

    Args:
        bgr: ``HxWx3`` float array in [0, 1], channels B, G, R.

    Returns:
        float32 ``HxWx3``: Y, Cr, Cb, each in [0, 1].

    Raises:
        ValueError: not ``HxWx3``, or not a float dtype (a uint8 image is not in [0, 1]).

    """
    _check_three_channels(bgr, 'bgr')
    return cv2.cvtColor(np.ascontiguousarray(bgr, dtype=np.float32), cv2.COLOR_BGR2YCrCb)


def ycrcb_to_bgr(ycrcb):
    """Convert a float Y, Cr, Cb image back to BGR, clipped to [0, 1].

    Args:
        ycrcb: ``HxWx3`` float array, channels Y, Cr, Cb in [0, 1] (as :func:`bgr_to_ycrcb`).

    Returns:
        float32 ``HxWx3`` BGR in [0, 1].

    Raises:
        ValueError: as :func:`bgr_to_ycrcb`.

    """
    _check_three_channels(ycrcb, 'ycrcb')
    bgr = cv2.cvtColor(np.ascontiguousarray(ycrcb, dtype=np.float32), cv2.COLOR_YCrCb2BGR)
    return np.clip(bgr, 0.0, 1.0, out=bgr)


def to_uint8(unit):
    """Map a float image (numpy or tensor) in [0, 1] to uint8 (rounded, clipped), same type."""
    torch = sys.modules.get('torch')  # loaded if unit is a tensor (this module never loads it)
    if torch is not None and isinstance(unit, torch.Tensor):
        return (unit * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    out = np.clip(np.rint(np.asarray(unit, dtype=np.float32) * 255.0), 0, 255)
    return out.astype(np.uint8)


def resize_image(img, height, width):
    """Resize an ``HxW[xC]`` array to ``height x width``.

    Uses ``INTER_AREA`` when the image shrinks in both directions (no aliasing) and
    ``INTER_LINEAR`` otherwise. A same-size image is returned unchanged.
    """
    if img.shape[0] == height and img.shape[1] == width:
        return img
    if height < 1 or width < 1:
        raise ValueError(f'cannot resize to {height}x{width}')
    shrink = height <= img.shape[0] and width <= img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (int(width), int(height)), interpolation=interp)


def pad_to_multiple(t, multiple=32, mode='replicate', min_size=0):
    """Pad a tensor at the bottom and right so that H and W are multiples of ``multiple``.

    Args:
        t: ``(B, C, H, W)`` tensor.
        multiple: the size multiple (32 for the network).
        mode: ``'replicate'`` (default), ``'reflect'`` or ``'constant'`` (zeros).
        min_size: pad H and W to at least this (rounded up to ``multiple``), for networks with
            a minimum input size.

    Returns:
        ``(padded, (pad_h, pad_w))`` with ``padded`` of shape ``(B, C, H + pad_h, W + pad_w)``.
        Pixel ``(y, x)`` of ``t`` is pixel ``(y, x)`` of ``padded``.

    Raises:
        ValueError: ``t`` not 4-D or empty, bad ``mode``, or ``'reflect'`` with a pad not
            smaller than the image.

    """
    import torch  # here: the node imports this module before its checks, torch after them
    import torch.nn.functional as F

    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        raise ValueError(f'expected a (B, C, H, W) tensor, got shape {getattr(t, "shape", None)}')
    if mode not in PAD_MODES:
        raise ValueError(f'mode must be one of {PAD_MODES}, got {mode!r}')
    if multiple < 1:
        raise ValueError(f'multiple must be >= 1, got {multiple}')
    height, width = t.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f'cannot pad an empty image of shape {tuple(t.shape)}')
    min_size = -(-int(min_size) // multiple) * multiple
    pad_h = max((-height) % multiple, min_size - height)
    pad_w = max((-width) % multiple, min_size - width)
    if pad_h == 0 and pad_w == 0:
        return t, (0, 0)
    if mode == 'reflect' and (pad_h >= height or pad_w >= width):
        raise ValueError(
            f'reflect padding of {height}x{width} by ({pad_h}, {pad_w}) needs pads smaller than '
            f'the image; use mode="replicate"')
    if mode == 'constant':
        return F.pad(t, (0, pad_w, 0, pad_h), mode='constant', value=0.0), (pad_h, pad_w)
    return F.pad(t, (0, pad_w, 0, pad_h), mode=mode), (pad_h, pad_w)


def unpad(t, height, width):
    """Crop a padded ``(..., H', W')`` tensor back to its top-left ``height x width``."""
    if t.shape[-2] < height or t.shape[-1] < width:
        raise ValueError(f'cannot crop shape {tuple(t.shape)} to {height}x{width}')
    return t[..., :height, :width]


def normalise(img, norm='percentile', low=0.5, high=99.5, name='image'):
    """Return any accepted image as float32 in [0, 1], channels untouched (module rules).

    A colour frame is scaled jointly over its channels (its colours are kept), with the
    rules of :func:`to_unit_gray` (``norm``, ``low``, ``high``).
    """
    _check_array(img, name)
    return _to_unit(img, norm, low, high, name)


def unit_plane(plane):
    """Return a plane of :func:`prepare_pair` as float32 in [0, 1] (uint8 is divided by 255)."""
    if plane.dtype == np.uint8:
        return plane.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.asarray(plane, np.float32)


@dataclass(frozen=True)
class PreparedPair:
    """An IR/visible pair ready for the network, in the visible frame.

    ``ir``: ``HxW`` IR plane resized to the visible frame; ``vi_y``: ``HxW`` visible luma (or
    grey image). Both are uint8 (0-255) for 8-bit inputs prepared with ``keep_uint8``, float32
    in [0, 1] otherwise (:func:`unit_plane` gives the float form). ``crcb``: uint8 ``HxWx2``
    (Cr, Cb) of a colour visible image, ``None`` for a grey one. ``pre_warp``: ``(3, 3)``
    matrix by which ``ir`` was warped with a calibration prior
    (:func:`tarfuse_ros.core.prior.apply_prior`), ``None`` without one; ``ir_resized``: the IR
    plane before that warp (``None`` without a prior).
    """

    ir: np.ndarray
    vi_y: np.ndarray
    crcb: np.ndarray = None
    pre_warp: np.ndarray = None
    ir_resized: np.ndarray = None


def prepare_pair(ir, vi, ir_norm='percentile', ir_low=0.5, ir_high=99.5, keep_uint8=False,
                 names=('IR image', 'visible image')):
    """Prepare one IR/visible pair for the network (the rules of the module docstring).

    The dataset, the engine and the evaluation all prepare pairs with this function, so the
    network sees the same numbers in training, inference and evaluation.

    Args:
        ir: IR image ``HxW`` or ``HxWx1`` (uint8, uint16 or float; any size within the
            frame-size limits below, resized to the visible frame; ``HxWx3`` / ``HxWx4`` colour
            is reduced to its luma).
        vi: visible image ``HxW`` grey or ``HxWx3`` BGR (``HxWx4``: alpha dropped), uint8,
            uint16 or float.
        ir_norm, ir_low, ir_high: how 16-bit (and float outside [0, 1]) IR frames are scaled
            (:func:`to_unit_gray`); the visible image always uses the default rule.
        keep_uint8: keep 8-bit planes as uint8 (the engine uploads 8 bits and scales on the
            device); float32 in [0, 1] otherwise.
        names: what to call the two images in error messages.

    Returns:
        :class:`PreparedPair`.

    Raises:
        ValueError: an image that the normalisation rules refuse (empty, NaN, bad dtype, ...)
            or whose size is outside the frame-size limits (:data:`MIN_SIDE`,
            :data:`MAX_ASPECT`).

    """
    vi_y, crcb = split_visible(vi, name=names[1], keep_uint8=True)
    ir_plane = gray_plane(ir, ir_norm, ir_low, ir_high, name=names[0], keep_uint8=True)
    check_frame_size(ir_plane, names[0])
    check_frame_size(vi_y, names[1])
    ir_plane = resize_image(ir_plane, vi_y.shape[0], vi_y.shape[1])
    if not keep_uint8:
        ir_plane, vi_y = unit_plane(ir_plane), unit_plane(vi_y)
    return PreparedPair(ir_plane, vi_y, crcb)
