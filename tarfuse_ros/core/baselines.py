"""Classical baselines for the evaluation report: naive fusion and ECC registration.

- :func:`average_fusion`, :func:`max_fusion`: pixel-wise mean / maximum of the (unregistered)
  IR and the visible luma.
- :func:`ecc_register`: OpenCV's ECC (Evangelidis & Psarakis 2008) between the *gradient
  magnitudes* of the IR and the visible image (raw intensities of the two modalities are often
  anti-correlated; edges are shared), coarse to fine over an image pyramid, with an affine
  (default) or homography motion model. The estimated transform is returned as a dense flow in
  the core's convention (``registered(p) = ir(p + flow(p))``, pixels), so its end-point error can
  be measured like the network's. When ECC fails (OpenCV error, a degenerate transform, or a
  result whose gradient correlation is worse than doing nothing) the identity is returned and
  ``success`` is False.

Images are 2-D arrays, uint8 or float in [0, 1]; results are float32 in [0, 1].
"""

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ['EccResult', 'average_fusion', 'ecc_register', 'flow_from_matrix',
           'gradient_magnitude', 'max_fusion', 'outside_mask', 'warp_with_matrix']

MOTIONS = {'affine': cv2.MOTION_AFFINE, 'homography': cv2.MOTION_HOMOGRAPHY,
           'euclidean': cv2.MOTION_EUCLIDEAN, 'translation': cv2.MOTION_TRANSLATION}


def _unit(img, name):
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f'{name} must be a non-empty 2-D grey image, got shape {arr.shape}')
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ValueError(f'{name} must be uint8 or finite float in [0, 1] (dtype {arr.dtype})')
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _pair(ir, vi):
    a, b = _unit(ir, 'ir'), _unit(vi, 'vi')
    if a.shape != b.shape:
        raise ValueError(f'ir and vi must have the same shape, got {a.shape} and {b.shape}')
    return a, b


def average_fusion(ir, vi):
    """Return (ir + vi) / 2 as float32 in [0, 1]."""
    a, b = _pair(ir, vi)
    return 0.5 * (a + b)


def max_fusion(ir, vi):
    """Return max(ir, vi) pixel-wise as float32 in [0, 1]."""
    a, b = _pair(ir, vi)
    return np.maximum(a, b)


def gradient_magnitude(img, blur_sigma=1.0):
    """Return the Sobel gradient magnitude of a lightly blurred image, scaled to max 1."""
    unit = _unit(img, 'image')
    if blur_sigma > 0:
        unit = cv2.GaussianBlur(unit, (0, 0), blur_sigma)
    gx = cv2.Sobel(unit, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(unit, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    peak = float(mag.max())
    return mag / peak if peak > 0 else mag


@dataclass
class EccResult:
    """Outcome of :func:`ecc_register`.

    ``registered``: float32 HxW, the IR warped onto the visible frame.
    ``flow_px``: float32 HxWx2 (dx, dy) with ``registered(p) = ir(p + flow(p))``.
    ``matrix``: 2x3 (affine family) or 3x3 (homography) map from visible to IR pixels.
    ``success``: False when the identity was kept. ``correlation``: ECC's final score (or the
    identity's gradient correlation when it failed).
    """

    registered: np.ndarray
    flow_px: np.ndarray
    matrix: np.ndarray
    success: bool
    correlation: float


def _identity(motion):
    return np.eye(3, dtype=np.float32) if motion == 'homography' \
        else np.eye(2, 3, dtype=np.float32)


def flow_from_matrix(matrix, height, width):
    """Return the dense flow (HxWx2, px) of a visible->IR pixel map (2x3 or 3x3)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    m = np.asarray(matrix, np.float64)
    if m.shape == (3, 3):
        den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
        den = np.where(np.abs(den) < 1e-12, 1e-12, den)
        tx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
        ty = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    else:
        tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([tx - xs, ty - ys], axis=2).astype(np.float32)


def warp_with_matrix(img, matrix):
    """Warp ``img`` (HxW float) with a visible->IR pixel map: ``out(p) = img(M p)``, zeros out."""
    height, width = img.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    m = np.asarray(matrix, np.float32)
    if m.shape == (3, 3):
        return cv2.warpPerspective(img, m, (width, height), flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(img, m, (width, height), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _scale_matrix(matrix, factor):
    """Re-express a pixel map for an image ``factor`` times larger."""
    m = np.asarray(matrix, np.float32).copy()
    if m.shape == (3, 3):
        s = np.diag([factor, factor, 1.0]).astype(np.float32)
        return s @ m @ np.linalg.inv(s)
    m[:, 2] *= factor
    return m


def _correlation(a, b):
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _plausible(matrix, height, width):
    m = np.asarray(matrix, np.float64)
    if not np.isfinite(m).all():
        return False
    det = np.linalg.det(m[:2, :2])
    if not 0.5 < det < 2.0:
        return False
    flow = flow_from_matrix(m, height, width)
    return float(np.abs(flow).max()) < 0.5 * max(height, width)


def outside_mask(img, margin=3):
    """Return a uint8 mask (255 = valid) excluding black regions connected to the border.

    Synthetically deformed images are black (exactly 0) where they sampled outside the source;
    the edge of that region is not scene content and would attract ECC. Those pixels, grown by
    ``margin`` pixels, are marked invalid.
    """
    unit = _unit(img, 'image')
    black = (unit <= 0.5 / 255.0).astype(np.uint8)
    count, labels = cv2.connectedComponents(black, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    invalid = np.isin(labels, border).astype(np.uint8) if count > 1 and len(border) \
        else np.zeros_like(black)
    if margin > 0 and invalid.any():
        invalid = cv2.dilate(invalid, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return np.where(invalid > 0, 0, 255).astype(np.uint8)


def ecc_register(ir, vi, motion='affine', levels=3, iterations=100, eps=1e-6, blur_sigma=1.0,
                 ir_mask='auto'):
    """Register ``ir`` onto ``vi`` with ECC on gradient magnitudes (coarse to fine).

    Args:
        ir: moving image, 2-D (uint8 or float in [0, 1]).
        vi: fixed image (visible luma), same shape.
        ir_mask: valid pixels of ``ir`` (uint8/bool HxW), ``'auto'`` (:func:`outside_mask`:
            ignore black regions touching the border) or None (every pixel).
        motion: ``'affine'`` (default), ``'homography'``, ``'euclidean'`` or ``'translation'``.
        levels: pyramid levels (each halves the size; coarse levels are skipped below 32 px).
        iterations, eps: ECC stopping criteria per level.
        blur_sigma: Gaussian blur before the gradients, pixels.

    Returns:
        :class:`EccResult`.

    """
    if motion not in MOTIONS:
        raise ValueError(f'motion must be one of {sorted(MOTIONS)}, got {motion!r}')
    if int(levels) < 1:
        raise ValueError(f'levels must be >= 1, got {levels}')
    moving, fixed = _pair(ir, vi)
    height, width = fixed.shape
    if isinstance(ir_mask, str) and ir_mask == 'auto':
        mask = outside_mask(moving)
    elif ir_mask is None:
        mask = np.full(moving.shape, 255, np.uint8)
    else:
        mask = np.where(np.asarray(ir_mask) > 0, 255, 0).astype(np.uint8)
        if mask.shape != moving.shape:
            raise ValueError(f'ir_mask shape {mask.shape} must be {moving.shape}')
    g_moving = gradient_magnitude(moving, blur_sigma)
    g_fixed = gradient_magnitude(fixed, blur_sigma)
    pyramid = [(g_moving, g_fixed, mask)]
    for _ in range(int(levels) - 1):
        m_prev, f_prev, k_prev = pyramid[-1]
        if min(f_prev.shape) < 64:
            break
        m_small, f_small = cv2.pyrDown(m_prev), cv2.pyrDown(f_prev)
        # A coarse pixel is valid only if its whole footprint was (erode, then subsample).
        k_small = cv2.resize(cv2.erode(k_prev, np.ones((5, 5), np.uint8)),
                             (f_small.shape[1], f_small.shape[0]),
                             interpolation=cv2.INTER_NEAREST)
        pyramid.append((m_small, f_small, k_small))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), float(eps))
    matrix = _identity(motion)
    score = float('nan')
    ok = True
    for level in range(len(pyramid) - 1, -1, -1):
        m_img, f_img, k_img = pyramid[level]
        try:
            score, matrix = cv2.findTransformECC(f_img, m_img, matrix, MOTIONS[motion],
                                                 criteria, k_img, 1)
        except cv2.error:
            ok = False
            break
        if level > 0:
            matrix = _scale_matrix(matrix, 2.0)
    valid = mask > 0
    identity_score = _correlation(g_fixed[valid], g_moving[valid])
    success = ok and _plausible(matrix, height, width)
    if success:
        warped_grad = warp_with_matrix(g_moving, matrix)
        warped_valid = warp_with_matrix(valid.astype(np.float32), matrix) > 0.999
        success = (warped_valid.any() and _correlation(
            g_fixed[warped_valid], warped_grad[warped_valid]) > identity_score)
    if not success:
        matrix = _identity(motion)
        score = identity_score
    registered = warp_with_matrix(moving, matrix) if success else moving.copy()
    return EccResult(registered=np.clip(registered, 0.0, 1.0).astype(np.float32),
                     flow_px=flow_from_matrix(matrix, height, width), matrix=matrix,
                     success=bool(success), correlation=float(score))
