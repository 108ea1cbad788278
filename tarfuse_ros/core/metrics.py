"""Image-fusion, registration and detection metrics (NumPy + OpenCV).

Fusion metrics compare a fused image ``F`` with its sources ``A`` (IR) and ``B`` (visible).
Inputs are 2-D grey arrays: uint8 (0-255), or float in [0, 1] (scaled by 255); every fusion metric
is computed on the 0-255 scale in float64, as the common MATLAB toolboxes do. Choices where the
toolboxes differ (we follow ``docs/METHOD.md``):

- ``cc``: mean of Pearson(F, A) and Pearson(F, B). A flat image has correlation 0.
- ``qabf`` (Xydeas-Petrovic Q^AB/F): Sobel gradients with zero padding ('same' convolution as
  MATLAB's ``filter2``), Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22, Da=0.8, L=1. Orientation
  ``atan(Sy/Sx)`` (pi/2 where Sx = 0); the orientation difference is taken modulo pi (edges of
  one line at +pi/2 and -pi/2 agree), i.e. ``A = 1 - d/(pi/2)``, ``d = min(|da|, pi - |da|)``,
  which equals the VIFB toolbox's ``| |da| - pi/2 | / (pi/2)``. G = min(g)/max(g) (1 where both
  are 0). Identical F = A = B give ``Qg(1) * Qa(1)`` = 0.9748, not 1.
- ``qcv`` (Chen-Varshney, lower is better): sources and F min-max normalised to 0-255; Sobel
  (zero padding) saliency ``sum G^5`` over 16x16 blocks; differences filtered in the frequency
  domain by the Mannos-Sakrison CSF ``2.6 (0.0192 + 0.144 r) exp(-(0.144 r)^1.1)`` with
  ``r`` = the integer frequency index / 4 (the toolbox's ``u = W/8 * freqspace``); real part;
  block means of the squared result. Partial blocks at the right/bottom edges count with the
  pixels they have.
- ``ssim``: mean of SSIM(F, A) and SSIM(F, B) (Wang et al.: Gaussian 11x11, sigma 1.5, K1 0.01,
  K2 0.03, L 255, 'valid' window positions). Some papers report the sum; we report the mean.
- ``entropy`` (EN): Shannon entropy of the 256-bin histogram of F, in bits.
- ``mutual_information`` (MI): MI(F, A) + MI(F, B) in bits, 256x256 joint histograms (the sum,
  as most fusion papers report it).
- ``sd``: population standard deviation of F. ``sf``: sqrt(RF^2 + CF^2) with RF, CF the RMS of
  horizontal and vertical first differences. ``ag``: mean of sqrt((dx^2 + dy^2) / 2) over the
  (H-1)x(W-1) forward differences.
- ``vif``: pixel-domain VIF (VIFp, Sheikh-Bovik 4-scale, sigma_n^2 = 2) of F against each source,
  summed: VIFp(A, F) + VIFp(B, F), as the fusion literature reports it (F = A = B gives 2).
- ``scd``: sum of correlations of differences, Pearson(F - B, A) + Pearson(F - A, B).

Registration metrics take images in [0, 1] (uint8 is divided by 255) and flows in pixels.
``edge_alignment`` (no ground truth needed) also takes uint16 (divided by 65535);
``landmark_error`` takes point lists in pixels.
Detection metrics are COCO-style: greedy matching by score, 101-point interpolated precision,
AP at IoU 0.5 and averaged over IoU 0.50:0.05:0.95, per class and averaged over the classes that
have ground truth. They are the COCO reference the tests check; ``tarfuse-eval`` and the
benchmarks report ultralytics' AP instead
(:func:`tarfuse_ros.evaluation.detection.detection_summary`, ``yolo val``'s figures: 0.995, not
1, for a perfect detector), so compare figures of one of the two only.
"""

import math

import cv2
import numpy as np

__all__ = [
    'COCO_IOU_THRESHOLDS',
    'EDGE_ALIGNMENT_SIGMA_PX',
    'FUSION_METRICS',
    'QABF_CONSTANTS',
    'ag',
    'average_precision',
    'box_iou',
    'cc',
    'cc_upper_bound',
    'detection_metrics',
    'edge_alignment',
    'entropy',
    'epe',
    'fusion_metrics',
    'landmark_error',
    'map_at',
    'mse',
    'mutual_information',
    'ncc',
    'qabf',
    'qcv',
    'registration_metrics',
    'scd',
    'sd',
    'sf',
    'ssim',
    'target_contrast',
    'target_contrast_ratio',
    'ssim_pair',
    'vif',
    'vifp',
]

EDGE_ALIGNMENT_SIGMA_PX = 1.5
QABF_CONSTANTS = {'Tg': 0.9994, 'kg': -15.0, 'Dg': 0.5, 'Ta': 0.9879, 'ka': -22.0, 'Da': 0.8}
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
# Names as reported in metrics.json, with the direction that is better.
FUSION_METRICS = {'CC': 'higher', 'Qabf': 'higher', 'Qcv': 'lower', 'SSIM': 'higher',
                  'EN': 'higher', 'MI': 'higher', 'SD': 'higher', 'SF': 'higher',
                  'AG': 'higher', 'VIF': 'higher', 'SCD': 'higher'}

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
_SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float64)


def _gray255(img, name='image'):
    """Return a 2-D float64 array on the 0-255 scale (uint8 as is, float [0, 1] times 255)."""
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f'{name} must be a non-empty 2-D grey image, got shape {arr.shape}')
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f'{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}')
    if not np.isfinite(arr).all():
        raise ValueError(f'{name} holds NaN or infinite values')
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise ValueError(
            f'{name}: float images must be in [0, 1] (got min {lo:g}, max {hi:g}); '
            f'pass uint8 for the 0-255 scale')
    return np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0


def _unit(img, name='image'):
    """Return a 2-D float64 array in [0, 1] (uint8 divided by 255)."""
    return _gray255(img, name) / 255.0


def _same_shape(*named):
    shapes = {name: arr.shape for name, arr in named}
    if len(set(shapes.values())) != 1:
        raise ValueError(f'images must have the same shape, got {shapes}')


def _triple(fused, ir, vi):
    f, a, b = _gray255(fused, 'fused'), _gray255(ir, 'ir'), _gray255(vi, 'vi')
    _same_shape(('fused', f), ('ir', a), ('vi', b))
    return f, a, b


def _pearson(x, y):
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _filter_same_zero(img, kernel):
    """Correlate in 2-D, same size, zeros outside (MATLAB ``filter2(k, x, 'same')``)."""
    return cv2.filter2D(img, cv2.CV_64F, kernel, borderType=cv2.BORDER_CONSTANT)


def _sobel(img):
    return _filter_same_zero(img, _SOBEL_X), _filter_same_zero(img, _SOBEL_Y)


# --- fusion metrics -----------------------------------------------------------------------

def cc(fused, ir, vi):
    """Mean correlation coefficient: (Pearson(F, A) + Pearson(F, B)) / 2; higher is better."""
    f, a, b = _triple(fused, ir, vi)
    return 0.5 * (_pearson(f, a) + _pearson(f, b))


def cc_upper_bound(ir, vi):
    """Return the highest :func:`cc` any fused image can reach with these two sources.

    With ``rho`` = Pearson(A, B), the mean of Pearson(F, A) and Pearson(F, B) over all images
    F is at most ``sqrt((1 + rho) / 2)``, reached by F = a + b (the sources standardised to
    zero mean and unit variance): the mean of two correlations is the correlation of F with
    (a + b) / 2 scaled by the norm of (a + b) / 2, which is ``sqrt((1 + rho) / 2)``
    (Cauchy-Schwarz). Anti-correlated sources keep every fusion's CC well below 1 (the
    RoadScene test pairs: mean rho -0.23, a bound of 0.598 on average).

    Args:
        ir, vi: 2-D grey images of one shape (uint8 or float in [0, 1]).

    Returns:
        The bound, in [0, 1]. A constant source correlates with nothing (:func:`cc` counts 0
        for it), so with one constant source the bound is 0.5 (F = the other), with two 0.

    """
    a, b = _unit(ir, 'ir'), _unit(vi, 'vi')
    _same_shape(('ir', a), ('vi', b))
    a, b = a - a.mean(), b - b.mean()
    varying = [float((x * x).sum()) > 0 for x in (a, b)]
    if not all(varying):
        return 0.5 * sum(varying)
    return math.sqrt(max(0.0, (1.0 + _pearson(a, b)) / 2.0))


def _edge(img):
    sx, sy = _sobel(img)
    strength = np.hypot(sx, sy)
    with np.errstate(divide='ignore', invalid='ignore'):
        orientation = np.where(sx == 0, math.pi / 2, np.arctan(sy / np.where(sx == 0, 1, sx)))
    return strength, orientation


def _edge_preservation(g_src, a_src, g_f, a_f, constants):
    big = np.maximum(g_src, g_f)
    small = np.minimum(g_src, g_f)
    strength = np.where(big > 0, small / np.where(big > 0, big, 1.0), 1.0)
    diff = np.abs(a_src - a_f)
    diff = np.minimum(diff, math.pi - diff)
    orient = 1.0 - diff / (math.pi / 2)
    q_g = constants['Tg'] / (1.0 + np.exp(constants['kg'] * (strength - constants['Dg'])))
    q_a = constants['Ta'] / (1.0 + np.exp(constants['ka'] * (orient - constants['Da'])))
    return q_g * q_a


def qabf(fused, ir, vi, constants=None):
    """Xydeas-Petrovic edge-transfer metric Q^AB/F in [0, ~0.975]; higher is better.

    Args:
        fused, ir, vi: 2-D grey images of one shape (uint8 or float in [0, 1]).
        constants: dict with Tg, kg, Dg, Ta, ka, Da (default :data:`QABF_CONSTANTS`).

    Returns:
        float; 0.0 when neither source has any gradient.

    """
    constants = dict(QABF_CONSTANTS, **(constants or {}))
    f, a, b = _triple(fused, ir, vi)
    g_a, a_a = _edge(a)
    g_b, a_b = _edge(b)
    g_f, a_f = _edge(f)
    q_af = _edge_preservation(g_a, a_a, g_f, a_f, constants)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f, constants)
    denom = float((g_a + g_b).sum())
    if denom <= 0:
        return 0.0
    return float((q_af * g_a + q_bf * g_b).sum() / denom)


def _minmax255(img):
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img)
    return (img - lo) * (255.0 / (hi - lo))


def _block_reduce(img, block, reducer):
    """Apply ``reducer`` ('sum' or 'mean') over ``block`` x ``block`` tiles (partial tiles too)."""
    height, width = img.shape
    rows = math.ceil(height / block)
    cols = math.ceil(width / block)
    padded = np.zeros((rows * block, cols * block), np.float64)
    padded[:height, :width] = img
    sums = padded.reshape(rows, block, cols, block).sum(axis=(1, 3))
    if reducer == 'sum':
        return sums
    counts = np.zeros_like(padded)
    counts[:height, :width] = 1.0
    return sums / counts.reshape(rows, block, cols, block).sum(axis=(1, 3))


def csf_mannos_sakrison(height, width):
    """Return the Mannos-Sakrison CSF on the FFT grid of an image (unshifted, HxW)."""
    fy = np.fft.fftfreq(height) * height / 4.0
    fx = np.fft.fftfreq(width) * width / 4.0
    r = np.hypot(fx[None, :], fy[:, None])
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-(0.144 * r) ** 1.1)


def qcv(fused, ir, vi, block=16, alpha=5.0):
    """Chen-Varshney metric Q_CV (perceptual distortion; lower is better, 0 for F = A = B).

    Args:
        fused, ir, vi: 2-D grey images of one shape.
        block: saliency/distortion block size (16).
        alpha: saliency exponent (5).

    """
    f, a, b = _triple(fused, ir, vi)
    f, a, b = _minmax255(f), _minmax255(a), _minmax255(b)
    csf = csf_mannos_sakrison(*f.shape)
    num = 0.0
    den = 0.0
    for src in (a, b):
        sx, sy = _sobel(src)
        saliency = _block_reduce(np.hypot(sx, sy) ** alpha, block, 'sum')
        filtered = np.real(np.fft.ifft2(np.fft.fft2(src - f) * csf))
        distortion = _block_reduce(filtered ** 2, block, 'mean')
        num += float((saliency * distortion).sum())
        den += float(saliency.sum())
    return num / den if den > 0 else 0.0


def _gaussian_window(size, sigma):
    kernel = cv2.getGaussianKernel(size, sigma, cv2.CV_64F)
    return kernel


def _filter_valid(img, kernel_1d):
    """Separable correlation keeping only positions where the window fits ('valid')."""
    half = kernel_1d.shape[0] // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel_1d, kernel_1d,
                          borderType=cv2.BORDER_REFLECT)
    return out[half:img.shape[0] - half, half:img.shape[1] - half]


def ssim_pair(x, y, window=11, sigma=1.5, k1=0.01, k2=0.03, data_range=255.0):
    """SSIM of two grey images (Wang et al. 2004, Gaussian window, 'valid' positions).

    Args:
        x, y: 2-D images of one shape, uint8 or float in [0, 1] (scaled to 0-255), at least
            ``window`` pixels in each direction.

    Returns:
        float in [-1, 1]; 1 for identical images.

    """
    x, y = _gray255(x, 'x'), _gray255(y, 'y')
    _same_shape(('x', x), ('y', y))
    if min(x.shape) < window:
        raise ValueError(f'SSIM needs images of at least {window}x{window}, got {x.shape}')
    kernel = _gaussian_window(window, sigma)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _filter_valid(x, kernel)
    mu_y = _filter_valid(y, kernel)
    var_x = _filter_valid(x * x, kernel) - mu_x ** 2
    var_y = _filter_valid(y * y, kernel) - mu_y ** 2
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def ssim(fused, ir, vi):
    """Mean SSIM of the fused image with both sources: (SSIM(F, A) + SSIM(F, B)) / 2."""
    f, a, b = _triple(fused, ir, vi)
    return 0.5 * (ssim_pair(f / 255.0, a / 255.0) + ssim_pair(f / 255.0, b / 255.0))


def _histogram(img):
    levels = np.clip(np.rint(img), 0, 255).astype(np.int64)
    return np.bincount(levels.ravel(), minlength=256).astype(np.float64), levels


def _entropy_of(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropy(fused):
    """Return the Shannon entropy of the fused image's 256-level histogram, in bits."""
    counts, _ = _histogram(_gray255(fused, 'fused'))
    return _entropy_of(counts)


def _mi(x, y):
    cx, lx = _histogram(x)
    cy, ly = _histogram(y)
    joint = np.bincount((lx * 256 + ly).ravel(), minlength=256 * 256).astype(np.float64)
    return _entropy_of(cx) + _entropy_of(cy) - _entropy_of(joint)


def mutual_information(fused, ir, vi):
    """MI(F, A) + MI(F, B) in bits (256-bin histograms)."""
    f, a, b = _triple(fused, ir, vi)
    return _mi(f, a) + _mi(f, b)


def sd(fused):
    """Return the standard deviation of the fused image (0-255 scale, population formula)."""
    return float(_gray255(fused, 'fused').std())


def sf(fused):
    """Spatial frequency sqrt(RF^2 + CF^2) from horizontal/vertical first differences."""
    f = _gray255(fused, 'fused')
    rf2 = float(np.mean(np.diff(f, axis=1) ** 2)) if f.shape[1] > 1 else 0.0
    cf2 = float(np.mean(np.diff(f, axis=0) ** 2)) if f.shape[0] > 1 else 0.0
    return math.sqrt(rf2 + cf2)


def ag(fused):
    """Average gradient: mean of sqrt((dx^2 + dy^2) / 2) over forward differences."""
    f = _gray255(fused, 'fused')
    if min(f.shape) < 2:
        raise ValueError(f'AG needs at least 2x2 pixels, got {f.shape}')
    dx = f[:-1, 1:] - f[:-1, :-1]
    dy = f[1:, :-1] - f[:-1, :-1]
    return float(np.mean(np.sqrt((dx * dx + dy * dy) / 2.0)))


def vifp(reference, distorted, sigma_nsq=2.0):
    """Pixel-domain visual information fidelity VIFp(reference -> distorted), 4 scales.

    Coarser scales whose image is too small for their window are skipped; the finest needs
    17x17 pixels. Returns 1 for identical images; 0.0 when the reference carries no
    information (flat).

    Raises:
        ValueError: images of another shape, or smaller than 17x17 (no scale would count:
            the result would be 0 whatever the images).

    """
    ref = _gray255(reference, 'reference')
    dist = _gray255(distorted, 'distorted')
    _same_shape(('reference', ref), ('distorted', dist))
    if min(ref.shape) < 17:
        raise ValueError(f'VIF needs images of at least 17x17 (its finest window), got '
                         f'{ref.shape}')
    num = 0.0
    den = 0.0
    eps = 1e-10
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        kernel = _gaussian_window(size, size / 5.0)
        if scale > 1:
            if min(ref.shape) < size:
                break
            ref = _filter_valid(ref, kernel)[::2, ::2]
            dist = _filter_valid(dist, kernel)[::2, ::2]
        if min(ref.shape) < size:
            break
        mu1 = _filter_valid(ref, kernel)
        mu2 = _filter_valid(dist, kernel)
        s1 = np.maximum(_filter_valid(ref * ref, kernel) - mu1 ** 2, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, kernel) - mu2 ** 2, 0.0)
        s12 = _filter_valid(ref * dist, kernel) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1 = s1 < eps
        g[flat1] = 0.0
        sv[flat1] = s2[flat1]
        s1 = np.where(flat1, 0.0, s1)
        flat2 = s2 < eps
        g[flat2] = 0.0
        sv[flat2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv = np.maximum(sv, eps)
        num += float(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq)).sum())
        den += float(np.log10(1.0 + s1 / sigma_nsq).sum())
    return num / den if den > 0 else 0.0


def vif(fused, ir, vi):
    """VIFp(A, F) + VIFp(B, F) (pixel-domain VIF summed over the two sources)."""
    f, a, b = _triple(fused, ir, vi)
    return vifp(a / 255.0, f / 255.0) + vifp(b / 255.0, f / 255.0)


def scd(fused, ir, vi):
    """Sum of the correlations of differences: Pearson(F - B, A) + Pearson(F - A, B)."""
    f, a, b = _triple(fused, ir, vi)
    return _pearson(f - b, a) + _pearson(f - a, b)


def fusion_metrics(fused, ir, vi):
    """Every fusion metric of :data:`FUSION_METRICS` as a dict of floats.

    Args:
        fused, ir, vi: 2-D grey images of one shape, uint8 or float in [0, 1]; ``ir`` should
            be the IR in the visible frame (the aligned IR where it is known).

    """
    f, a, b = _triple(fused, ir, vi)
    f, a, b = f / 255.0, a / 255.0, b / 255.0
    return {
        'CC': cc(f, a, b),
        'Qabf': qabf(f, a, b),
        'Qcv': qcv(f, a, b),
        'SSIM': ssim(f, a, b),
        'EN': entropy(f),
        'MI': mutual_information(f, a, b),
        'SD': sd(f),
        'SF': sf(f),
        'AG': ag(f),
        'VIF': vif(f, a, b),
        'SCD': scd(f, a, b),
    }


# --- registration metrics -----------------------------------------------------------------

def mse(registered, reference):
    """Mean squared error of two images in [0, 1] (uint8 divided by 255)."""
    x, y = _unit(registered, 'registered'), _unit(reference, 'reference')
    _same_shape(('registered', x), ('reference', y))
    return float(np.mean((x - y) ** 2))


def ncc(registered, reference):
    """Normalised cross-correlation (zero-mean, i.e. Pearson) of two images, in [-1, 1]."""
    x, y = _unit(registered, 'registered'), _unit(reference, 'reference')
    _same_shape(('registered', x), ('reference', y))
    return _pearson(x, y)


def epe(flow_px, flow_gt_px, channel_axis=-1, mask=None):
    """Mean end-point error (pixels) between two flows.

    Args:
        flow_px, flow_gt_px: arrays of one shape with a size-2 ``channel_axis`` (dx, dy),
            e.g. (H, W, 2) (default) or (2, H, W) with ``channel_axis=0``.
        channel_axis: the axis holding (dx, dy).
        mask: optional boolean array of the remaining shape; only True pixels count.

    """
    flow = np.asarray(flow_px, np.float64)
    gt = np.asarray(flow_gt_px, np.float64)
    if flow.shape != gt.shape:
        raise ValueError(f'flows must have the same shape, got {flow.shape} and {gt.shape}')
    if not -flow.ndim <= channel_axis < flow.ndim or flow.shape[channel_axis] != 2:
        raise ValueError(
            f'flow axis {channel_axis} must hold (dx, dy), got shape {flow.shape}')
    if not (np.isfinite(flow).all() and np.isfinite(gt).all()):
        raise ValueError('flows hold NaN or infinite values')
    err = np.sqrt(((flow - gt) ** 2).sum(axis=channel_axis))
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != err.shape:
            raise ValueError(f'mask shape {mask.shape} must be {err.shape}')
        if not mask.any():
            raise ValueError('mask selects no pixels')
        err = err[mask]
    return float(err.mean())


def _unit_any(img, name):
    """Return a 2-D float64 array in [0, 1]: uint16 divided by 65535, else as :func:`_unit`."""
    arr = np.asarray(img)
    if arr.dtype == np.uint16:
        return _unit(arr.astype(np.float64) / 65535.0, name)
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f'{name} must be uint8, uint16 or float in [0, 1], got dtype {arr.dtype}')
    return _unit(arr, name)


def edge_alignment(registered, reference, valid=None, sigma_px=EDGE_ALIGNMENT_SIGMA_PX):
    """Score how well two images of different modalities line up, without ground truth.

    The score is the normalised cross-correlation (Pearson) of the two images' smoothed
    gradient magnitudes over the overlap::

        G(x) = GaussianBlur(|Sobel(x)|, sigma_px)
        score = Pearson(G(registered)[overlap], G(reference)[overlap])

    Magnitudes, not signed gradients, are correlated because an edge of the scene usually
    appears in IR and visible images with a different sign and contrast (Irani and Anandan,
    "Robust multi-sensor image alignment", ICCV 1998, correlate such sign-free derivative
    energies; Penney et al., IEEE TMI 17(4), 1998, define the signed "gradient correlation").
    The Gaussian blur of the magnitudes (``sigma_px`` = 1.5 px by default) turns one-pixel
    edge lines into ridges a few pixels wide, so the score falls smoothly with the offset
    instead of dropping to its floor after one pixel, and damps pixel noise.

    Sobel uses reflected borders (the frame border is no edge). Pixels whose 3x3 Sobel window
    reaches outside ``valid`` are the overlap's rim: the border between valid and invalid
    (e.g. black, sampled outside the IR) pixels is an edge of the warp, not of the scene, so
    both images' magnitudes are zeroed outside the overlap before blurring, and only the
    overlap counts.

    Args:
        registered: 2-D image (H, W), e.g. the IR warped onto the visible frame; uint8,
            uint16, or float in [0, 1] (a trailing channel axis of size 1 is accepted).
        reference: 2-D image of the same shape, e.g. the visible luma; same types.
        valid: optional bool array (H, W), True where ``registered`` holds image content
            (e.g. pixels warped from inside the IR image). None: every pixel is valid.
        sigma_px: standard deviation of the Gaussian blur of the magnitudes, in pixels
            (0 disables it).

    Returns:
        float in [-1, 1]; 1 when the gradient magnitudes are proportional over the overlap
        (identical images). 0.0 when either image has no gradient variance over the overlap
        (e.g. a flat image), or the overlap holds no pixel.

    Raises:
        ValueError: an image is not 2-D, has another dtype, holds values outside [0, 1] or
            NaN; the shapes of ``registered``, ``reference`` and ``valid`` differ;
            ``sigma_px`` is negative.

    """
    x = _unit_any(registered, 'registered')
    y = _unit_any(reference, 'reference')
    _same_shape(('registered', x), ('reference', y))
    if not sigma_px >= 0:
        raise ValueError(f'sigma_px must be >= 0, got {sigma_px}')
    if valid is None:
        overlap = np.ones(x.shape, bool)
    else:
        valid = np.asarray(valid)
        if valid.shape != x.shape:
            raise ValueError(f'valid has shape {valid.shape}, the images {x.shape}')
        # Outside the frame counts as valid: reflected borders make no edge there.
        overlap = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8),
                            borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)
    if not overlap.any():
        return 0.0
    magnitudes = []
    for img in (x, y):
        gx = cv2.filter2D(img, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_REFLECT_101)
        gy = cv2.filter2D(img, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_REFLECT_101)
        mag = np.where(overlap, np.hypot(gx, gy), 0.0)
        if sigma_px > 0:
            mag = cv2.GaussianBlur(mag, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT_101)
        magnitudes.append(mag[overlap])
    return float(np.clip(_pearson(*magnitudes), -1.0, 1.0))


def _bilinear(field, points):
    """Sample an (H, W, C) field at (N, 2) float (x, y) pixel positions, clamped to the frame."""
    height, width = field.shape[:2]
    x = np.clip(points[:, 0], 0.0, width - 1.0)
    y = np.clip(points[:, 1], 0.0, height - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(width - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(height - 2, 0))
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    top = field[y0, x0] * (1 - fx) + field[y0, x1] * fx
    bottom = field[y1, x0] * (1 - fx) + field[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def landmark_error(flow_px, ir_points, vi_points):
    """Mean distance (pixels) between IR landmarks and visible landmarks mapped by a flow.

    With the core's flow convention ``registered(p) = ir(p + flow(p))`` the flow at a visible
    pixel ``v`` points to the IR position that lands on ``v``; a visible landmark ``v`` thus
    maps to ``v + flow(v)`` (flow sampled bilinearly, positions clamped to the frame), which
    should be its IR landmark ``r``. The error is ``mean_i |v_i + flow(v_i) - r_i|`` (a target
    registration error, TRE, measured in the IR image). A zero flow gives the error of the
    unregistered pair, ``mean_i |v_i - r_i|``.

    Args:
        flow_px: (H, W, 2) flow (dx, dy) in pixels of the visible frame.
        ir_points: (N, 2) landmark positions (x = column, y = row) in the IR image, already
            expressed in the visible frame's pixel grid (an IR of another size is resized to
            the visible frame first).
        vi_points: (N, 2) the corresponding visible landmarks (x, y), pixels.

    Returns:
        float, pixels.

    Raises:
        ValueError: a flow not (H, W, 2), point arrays not (N, 2) of one N >= 1, or
            non-finite values.

    """
    flow = np.asarray(flow_px, np.float64)
    ir = np.asarray(ir_points, np.float64)
    vi = np.asarray(vi_points, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] < 1 or flow.shape[1] < 1:
        raise ValueError(f'flow_px must be (H, W, 2), got shape {flow.shape}')
    if ir.ndim != 2 or ir.shape[1] != 2 or ir.shape != vi.shape or len(ir) == 0:
        raise ValueError(
            f'ir_points and vi_points must both be (N, 2) with N >= 1, got {ir.shape} and '
            f'{vi.shape}')
    if not (np.isfinite(flow).all() and np.isfinite(ir).all() and np.isfinite(vi).all()):
        raise ValueError('flow or landmarks hold NaN or infinite values')
    mapped = vi + _bilinear(flow, vi)
    return float(np.linalg.norm(mapped - ir, axis=1).mean())


def registration_metrics(registered, reference, flow_px=None, flow_gt_px=None):
    """Return ``MSE``, ``NCC`` (images in [0, 1]) and ``EPE`` (px; only when both flows given)."""
    out = {'MSE': mse(registered, reference), 'NCC': ncc(registered, reference)}
    if flow_px is not None and flow_gt_px is not None:
        out['EPE'] = epe(flow_px, flow_gt_px)
    return out


# --- target contrast ------------------------------------------------------------------------
def target_contrast(image, boxes_xyxy, ring_px=None):
    """Return each box's contrast to its surroundings: mean inside minus mean of a ring around it.

    The ring is the box grown by ``ring_px`` on every side (default: half the box's shorter
    side, at least 4 px), minus the box, clipped to the image. A target that stands out
    (brighter than its surroundings) has a positive contrast; one lost in the background ~0.

    Args:
        image: 2-D grey image, uint8 or float in [0, 1] (0-255 scale internally).
        boxes_xyxy: ``(N, 4)`` boxes ``x1, y1, x2, y2`` in pixels (edges, as detections).
        ring_px: ring width in pixels, or None for the per-box default.

    Returns:
        ``(N,)`` float64 contrasts in grey levels (0-255); NaN for a box with no pixel inside
        the image or no ring pixel.

    Raises:
        ValueError: for an image that is not 2-D grey, or boxes that are not ``(N, 4)`` or
            hold NaN or infinite coordinates.

    """
    img = _gray255(image)
    boxes = np.asarray(boxes_xyxy, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f'boxes_xyxy must be (N, 4), got shape {boxes.shape}')
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise ValueError(f'boxes_xyxy holds non-finite coordinates: box {index} is '
                         f'{boxes[index].tolist()}')
    height, width = img.shape
    out = np.full(len(boxes), np.nan)
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        ix1, iy1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        ix2, iy2 = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        ring = ring_px if ring_px is not None else max(4, int(0.5 * min(ix2 - ix1, iy2 - iy1)))
        ox1, oy1 = max(ix1 - ring, 0), max(iy1 - ring, 0)
        ox2, oy2 = min(ix2 + ring, width), min(iy2 + ring, height)
        outer = img[oy1:oy2, ox1:ox2]
        inner = img[iy1:iy2, ix1:ix2]
        ring_count = outer.size - inner.size
        if ring_count <= 0:
            continue
        ring_mean = (outer.sum() - inner.sum()) / ring_count
        out[index] = inner.mean() - ring_mean
    return out


def target_contrast_ratio(fused, ir, boxes_xyxy, ring_px=None):
    """Return how much of the IR targets' contrast the fused image keeps, and the contrasts.

    ``ratio = mean(fused contrast) / mean(IR contrast)`` over the boxes whose IR contrast is
    positive (targets that stand out in the IR); 1 keeps it all, 0 loses it, < 0 inverts it.
    Contrasts from :func:`target_contrast` (grey levels, 0-255).

    Returns:
        dict ``ratio`` (NaN when no box has a positive IR contrast), ``boxes`` (how many
        counted), ``ir_contrast`` and ``fused_contrast`` (means over those boxes).

    """
    ir_c = target_contrast(ir, boxes_xyxy, ring_px)
    fused_c = target_contrast(fused, boxes_xyxy, ring_px)
    keep = np.isfinite(ir_c) & np.isfinite(fused_c) & (ir_c > 0)
    if not keep.any():
        return {'ratio': float('nan'), 'boxes': 0, 'ir_contrast': float('nan'),
                'fused_contrast': float('nan')}
    ir_mean, fused_mean = float(ir_c[keep].mean()), float(fused_c[keep].mean())
    return {'ratio': fused_mean / ir_mean, 'boxes': int(keep.sum()), 'ir_contrast': ir_mean,
            'fused_contrast': fused_mean}


# --- detection metrics --------------------------------------------------------------------

def _rows(values, columns, name):
    """Return ``values`` as a float64 ``(N, columns)`` array (empty or one ``(columns,)`` row ok).

    Raises ``ValueError`` naming ``name`` for another shape: reshaping would silently cut
    wider rows into wrong boxes.
    """
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        return np.zeros((0, columns))
    if arr.ndim == 1 and arr.shape[0] == columns:
        return arr.reshape(1, columns)
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise ValueError(f'{name} must have shape (N, {columns}), got {arr.shape}')
    return arr


def box_iou(boxes_a, boxes_b):
    """Return the IoU matrix (N, M) of boxes ``[x1, y1, x2, y2]`` (N, 4) and (M, 4).

    A single box may be given as a ``(4,)`` array. Raises ``ValueError`` for boxes with another
    number of columns (e.g. detection rows with a score and a class: pass ``rows[:, :4]``).
    """
    a = _rows(boxes_a, 4, 'boxes_a')
    b = _rows(boxes_b, 4, 'boxes_b')
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2])
                 - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3])
                 - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _check_detections(predictions, targets):
    if len(predictions) != len(targets):
        raise ValueError(
            f'need one prediction array per target array, got {len(predictions)} and '
            f'{len(targets)}')
    preds, gts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        p = _rows(p, 6, f'image {i}: predictions ([x1, y1, x2, y2, score, class_id])')
        t = _rows(t, 5, f'image {i}: targets ([x1, y1, x2, y2, class_id])')
        if not (np.isfinite(p).all() and np.isfinite(t).all()):
            raise ValueError(f'image {i}: detections or targets hold non-finite values')
        preds.append(p)
        gts.append(t)
    return preds, gts


def _interpolated_ap(is_tp, scores, num_gt):
    """COCO 101-point interpolated AP from per-detection TP flags and scores."""
    if num_gt == 0:
        return float('nan')
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind='mergesort')
    tp = np.asarray(is_tp, np.float64)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / num_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    # Precision envelope: the best precision at any recall at least as high.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side='left')
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def _match_class(preds, gts, class_id, iou_threshold, max_detections):
    """Return (tp flags, scores, number of ground-truth boxes) for one class."""
    flags, scores, num_gt = [], [], 0
    for p, t in zip(preds, gts):
        p = p[p[:, 5] == class_id]
        t = t[t[:, 4] == class_id]
        num_gt += len(t)
        if len(p) == 0:
            continue
        p = p[np.argsort(-p[:, 4], kind='mergesort')][:max_detections]
        taken = np.zeros(len(t), bool)
        ious = box_iou(p[:, :4], t[:, :4]) if len(t) else np.zeros((len(p), 0))
        for k in range(len(p)):
            match = -1
            best = iou_threshold
            for j in range(len(t)):
                if not taken[j] and ious[k, j] >= best:
                    best = ious[k, j]
                    match = j
            if match >= 0:
                taken[match] = True
            flags.append(match >= 0)
            scores.append(p[k, 4])
    return flags, scores, num_gt


def average_precision(predictions, targets, class_id, iou_threshold=0.5, max_detections=100):
    """COCO-style AP of one class at one IoU threshold over a set of images.

    Args:
        predictions: one array per image, (N, 6) ``[x1, y1, x2, y2, score, class_id]``.
        targets: one array per image, (M, 5) ``[x1, y1, x2, y2, class_id]`` (same pixels).
        class_id: the class to score.
        iou_threshold: a detection matches an unmatched ground-truth box of its class with
            IoU >= this (the best such box; detections are taken in falling score order).
        max_detections: per image, only the highest-scoring detections count (COCO: 100).

    Returns:
        AP in [0, 1] (101-point interpolated precision); NaN when the class has no
        ground-truth box in these images.

    Raises:
        ValueError: not one prediction array per target array, an array of another number of
            columns, or non-finite values.

    """
    preds, gts = _check_detections(predictions, targets)
    flags, scores, num_gt = _match_class(preds, gts, class_id, iou_threshold, max_detections)
    return _interpolated_ap(flags, scores, num_gt)


def _classes_with_gt(gts):
    if not gts:
        return []
    ids = np.concatenate([t[:, 4] for t in gts]) if gts else np.zeros(0)
    return sorted({int(c) for c in ids})


def map_at(predictions, targets, iou_threshold=0.5, max_detections=100):
    """Mean AP over the classes that have ground truth, at one IoU threshold (NaN if none)."""
    preds, gts = _check_detections(predictions, targets)
    aps = [average_precision(preds, gts, c, iou_threshold, max_detections)
           for c in _classes_with_gt(gts)]
    return float(np.mean(aps)) if aps else float('nan')


def detection_metrics(predictions, targets, class_names=None, max_detections=100,
                      iou_thresholds=COCO_IOU_THRESHOLDS):
    """COCO-style detection summary.

    Args:
        predictions, targets: as :func:`average_precision`.
        class_names: optional sequence naming class ids (keys of ``per_class``).
        max_detections: per-image cap on the detections that count.
        iou_thresholds: thresholds averaged for ``map50_95`` (must include 0.5).

    Returns:
        dict ``map50``, ``map50_95`` (means over the classes with ground truth; NaN when there
        is none), ``per_class`` {name: {``ap50``, ``ap50_95``, ``num_gt``}}, ``num_images``,
        ``num_gt``, ``num_detections``.

    """
    preds, gts = _check_detections(predictions, targets)
    thresholds = [float(t) for t in iou_thresholds]
    if not any(abs(t - 0.5) < 1e-9 for t in thresholds):
        raise ValueError(f'iou_thresholds must include 0.5, got {thresholds}')
    per_class = {}
    ap50s, ap_all = [], []
    for class_id in _classes_with_gt(gts):
        aps = []
        num_gt = 0
        for thr in thresholds:
            flags, scores, num_gt = _match_class(preds, gts, class_id, thr, max_detections)
            aps.append(_interpolated_ap(flags, scores, num_gt))
        ap50 = aps[[abs(t - 0.5) < 1e-9 for t in thresholds].index(True)]
        name = (class_names[class_id] if class_names is not None
                and 0 <= class_id < len(class_names) else str(class_id))
        per_class[name] = {'ap50': ap50, 'ap50_95': float(np.mean(aps)), 'num_gt': num_gt}
        ap50s.append(ap50)
        ap_all.append(float(np.mean(aps)))
    return {
        'map50': float(np.mean(ap50s)) if ap50s else float('nan'),
        'map50_95': float(np.mean(ap_all)) if ap_all else float('nan'),
        'per_class': per_class,
        'num_images': len(gts),
        'num_gt': int(sum(len(t) for t in gts)),
        'num_detections': int(sum(len(p) for p in preds)),
    }
