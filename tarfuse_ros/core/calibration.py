"""Self-calibration of an IR/visible rig: one homography fitted to the network's predicted flows.

The model's flow maps every visible pixel ``p`` to the IR pixel it sees (package convention,
:mod:`tarfuse_ros.core.model.warp`: ``registered_ir(p) = ir_resized(p + flow(p))``). Each
sampled ``p`` gives a correspondence ``IR pixel R^-1 (p + flow(p))`` <-> visible pixel ``p``
(``R``: the resize of the IR to the visible frame, :func:`tarfuse_ros.core.prior.resize_matrix`).
Pooled over pairs spread over a recording, they are fitted by ONE homography (IR pixels ->
visible pixels) with OpenCV's robust estimator (``cv2.findHomography`` with ``USAC_MAGSAC``:
Barath et al., "MAGSAC++, a fast, reliable and accurate robust estimator", CVPR 2020), so
regions with large parallax (near objects) or wrong flow are outliers instead of biasing the fit.

Where the flow can be trusted is where both images have structure: points are drawn with a
probability proportional to :func:`texture_weight` (the geometric mean of the two images'
smoothed gradient magnitudes), so flat sky and road, where the network's flow is unconstrained,
contribute few points.

The result is a :class:`~tarfuse_ros.core.prior.RegistrationPrior` (``tarfuse-calibrate`` writes
it as node parameters) and the residual of the fit per pair. Running the model again with the
fitted prior and fitting the composed flow (:func:`calibrate`, ``iterations > 1``) refines the
fit where the network underestimates large offsets.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import math

import cv2
import numpy as np
from tarfuse_ros.core.prior import make_prior, resize_matrix

__all__ = ['CalibrationResult', 'MIN_ALIGNMENT_GAIN', 'PairResidual', 'calibrate',
           'fit_homography', 'fit_prior', 'flow_correspondences', 'prior_alignment',
           'texture_weight']

DEFAULT_STRIDE_PX = 4
DEFAULT_THRESHOLD_PX = 3.0
DEFAULT_MAX_POINTS = 4000  # per pair, drawn by texture weight
# Least mean gain of the edge alignment at the prior over its chance level (the prior shifted
# by an eighth of the frame): real pairs gain 0.1-0.5, pairs of unrelated scenes about 0.
MIN_ALIGNMENT_GAIN = 0.05
_ALIGNMENT_MAX_SIDE = 640  # px: the alignment is scored on frames shrunk to this


def texture_weight(registered, reference, sigma_px=2.0):
    """Return a per-pixel confidence of the flow: where both images have edges.

    ``w = sqrt(G(|Sobel(registered)|) * G(|Sobel(reference)|))`` with ``G`` a Gaussian blur of
    ``sigma_px``, scaled so that its maximum is 1 (all zeros for two flat images).

    Args:
        registered: ``(H, W)`` registered IR (uint8, or float in [0, 1]).
        reference: ``(H, W)`` visible luma, same shape and types.
        sigma_px: Gaussian blur of the magnitudes, pixels (> 0).

    Returns:
        ``(H, W)`` float32 in [0, 1].

    Raises:
        ValueError: shapes that are not the same 2-D shape, or ``sigma_px`` not > 0.

    """
    a, b = np.asarray(registered), np.asarray(reference)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f'registered and reference must be the same (H, W) shape, got '
                         f'{a.shape} and {b.shape}')
    if not sigma_px > 0:  # cv2.GaussianBlur would fail on a kernel of size 0
        raise ValueError(f'sigma_px must be > 0 (pixels), got {sigma_px!r}')
    magnitudes = []
    for img in (a, b):
        img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
        magnitudes.append(cv2.GaussianBlur(np.hypot(gx, gy), (0, 0), sigma_px))
    weight = np.sqrt(magnitudes[0] * magnitudes[1])
    top = float(weight.max())
    return weight / top if top > 0 else weight


def flow_correspondences(flow_px, ir_wh, weight=None, stride_px=DEFAULT_STRIDE_PX,
                         margin_px=8.0):
    """Turn a predicted flow into IR <-> visible point correspondences.

    Args:
        flow_px: ``(H, W, 2)`` flow in pixels (dx, dy) in the visible frame, relative to the IR
            resized to ``W x H`` (the engine's ``FusionResult.flow_px``).
        ir_wh: ``(width, height)`` of the original IR image.
        weight: optional ``(H, W)`` non-negative confidence (:func:`texture_weight`).
        stride_px: sample every ``stride_px``-th pixel in x and y.
        margin_px: drop points whose IR position lies closer than this to the IR border (the
            flow is extrapolated there, and with a prior the edge of the pre-warped IR is an
            edge of the warp, not of the scene, that :func:`texture_weight` would favour).

    Returns:
        ``(ir_points, vi_points, weights)``: ``(N, 2)`` float64 IR pixels, ``(N, 2)`` float64
        visible pixels, ``(N,)`` float64 weights (ones without ``weight``).

    Raises:
        ValueError: a flow that is not ``(H, W, 2)``, a weight of another size, or
            ``stride_px`` below 1.

    """
    flow = np.asarray(flow_px, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'flow_px must have shape (H, W, 2), got {flow.shape}')
    if not stride_px >= 1:  # 0 divided by zero in np.mgrid, a negative step sampled nothing
        raise ValueError(f'stride_px must be >= 1 (pixels), got {stride_px!r}')
    height, width = flow.shape[:2]
    if weight is not None and np.asarray(weight).shape != (height, width):
        raise ValueError(f'weight must have shape {(height, width)}, got '
                         f'{np.asarray(weight).shape}')
    ys, xs = np.mgrid[0:height:stride_px, 0:width:stride_px]
    xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
    sampled = flow[ys.astype(int), xs.astype(int)]
    qx, qy = xs + sampled[:, 0], ys + sampled[:, 1]
    to_ir = np.linalg.inv(resize_matrix(ir_wh, (width, height)))
    ir_x = to_ir[0, 0] * qx + to_ir[0, 2]
    ir_y = to_ir[1, 1] * qy + to_ir[1, 2]
    keep = ((ir_x >= margin_px) & (ir_x <= ir_wh[0] - 1 - margin_px)
            & (ir_y >= margin_px) & (ir_y <= ir_wh[1] - 1 - margin_px)
            & np.isfinite(ir_x) & np.isfinite(ir_y))
    weights = (np.ones(xs.shape) if weight is None
               else np.asarray(weight, np.float64)[ys.astype(int), xs.astype(int)])
    keep &= weights > 0
    return (np.stack((ir_x[keep], ir_y[keep]), axis=1), np.stack((xs[keep], ys[keep]), axis=1),
            weights[keep])


def _draw(count, weights, rng):
    """Return at most ``count`` point indices drawn without replacement, probability ~ weight."""
    n = len(weights)
    if n <= count:
        return np.arange(n)
    return rng.choice(n, size=count, replace=False, p=weights / weights.sum())


def fit_homography(ir_points, vi_points, threshold_px=DEFAULT_THRESHOLD_PX, seed=0):
    """Fit one IR -> visible homography robustly (``cv2.findHomography``, ``USAC_MAGSAC``).

    Args:
        ir_points, vi_points: ``(N, 2)`` corresponding pixels, N >= 4.
        threshold_px: inlier threshold of the reprojection error, visible pixels.
        seed: OpenCV's random seed (``cv2.setRNGSeed``), for a repeatable fit.

    Returns:
        ``(H, inliers)``: ``(3, 3)`` float64 homography with ``H[2, 2] = 1`` and an ``(N,)``
        bool mask of the points it explains within ``threshold_px``.

    Raises:
        ValueError: fewer than 4 points, or OpenCV finds no homography.

    """
    src = np.ascontiguousarray(ir_points, np.float64).reshape(-1, 2)
    dst = np.ascontiguousarray(vi_points, np.float64).reshape(-1, 2)
    if len(src) < 4 or len(src) != len(dst):
        raise ValueError(f'need at least 4 corresponding points, got {len(src)} and {len(dst)}')
    cv2.setRNGSeed(int(seed))
    matrix, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, float(threshold_px),
                                      maxIters=10000, confidence=0.9999)
    if matrix is None or not np.all(np.isfinite(matrix)):
        raise ValueError(f'no homography explains the {len(src)} flow correspondences (the '
                         f'flows disagree); check that the two topics are the same rig')
    return matrix / matrix[2, 2], mask.ravel().astype(bool)


def _reprojection_px(matrix, ir_points, vi_points):
    mapped = cv2.perspectiveTransform(ir_points.reshape(-1, 1, 2), matrix).reshape(-1, 2)
    return np.hypot(*(mapped - vi_points).T)


@dataclass(frozen=True)
class PairResidual:
    """How well the fitted homography explains one pair's flow (visible pixels).

    ``median_px``, ``p90_px``: of the distance between ``H(IR point)`` and the visible point
    over the pair's sampled points; ``inlier_fraction``: share within the threshold;
    ``points``: sampled points used.
    """

    name: str
    median_px: float
    p90_px: float
    inlier_fraction: float
    points: int


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted prior and how well it explains each pair (see :func:`fit_prior`)."""

    prior: object
    residuals: tuple
    inlier_fraction: float
    points: int


def fit_prior(samples, ir_wh, visible_wh, threshold_px=DEFAULT_THRESHOLD_PX,
              stride_px=DEFAULT_STRIDE_PX, max_points=DEFAULT_MAX_POINTS, seed=0):
    """Fit one prior to the flows of several pairs of one rig.

    Args:
        samples: iterable of ``(name, flow_px, weight)``: ``flow_px`` ``(H, W, 2)`` as the
            engine returns it (visible frame of ``visible_wh``), ``weight`` ``(H, W)``
            confidence or None (uniform). Only the points drawn from each are kept: a
            generator can yield the flows one at a time.
        ir_wh, visible_wh: ``(width, height)`` of the rig's IR and visible images.
        threshold_px: inlier threshold, visible pixels.
        stride_px: grid step of the sampled points.
        max_points: at most this many points per pair, drawn with probability ~ weight.
        seed: seed of the draw and of OpenCV's estimator.

    Returns:
        :class:`CalibrationResult`.

    Raises:
        ValueError: no sample, a flow of another size than ``visible_wh``, fewer than 4 usable
            points (flat images), or no fit.

    """
    rng = np.random.default_rng(seed)
    per_pair = []
    for name, flow, weight in samples:
        if tuple(np.asarray(flow).shape[1::-1]) != tuple(visible_wh):
            raise ValueError(f'{name}: flow of size {np.asarray(flow).shape[1::-1]}, the visible '
                             f'images are {tuple(visible_wh)}; every pair must come from one rig')
        ir_pts, vi_pts, weights = flow_correspondences(flow, ir_wh, weight, stride_px)
        chosen = _draw(max_points, weights, rng) if len(weights) else np.arange(0)
        per_pair.append((name, ir_pts[chosen], vi_pts[chosen]))
    if not per_pair:
        raise ValueError('no pair to calibrate from')
    ir_all = np.concatenate([p[1] for p in per_pair])
    vi_all = np.concatenate([p[2] for p in per_pair])
    if len(ir_all) < 4:  # fit_homography's "need 4 points" would not say why
        raise ValueError(f'{len(ir_all)} usable flow points in {len(per_pair)} pair(s) (a point '
                         f'needs edges in both images and a flow into the IR image): are the '
                         f'images flat (a lens cap, fog, a blank wall)? calibrate on pairs of a '
                         f'scene with structure')
    matrix, inliers = fit_homography(ir_all, vi_all, threshold_px, seed)
    residuals = []
    for name, ir_pts, vi_pts in per_pair:
        if len(ir_pts) == 0:
            residuals.append(PairResidual(name, math.nan, math.nan, 0.0, 0))
            continue
        error = _reprojection_px(matrix, ir_pts, vi_pts)
        residuals.append(PairResidual(name, float(np.median(error)),
                                      float(np.percentile(error, 90)),
                                      float(np.mean(error <= threshold_px)), len(error)))
    prior = make_prior(matrix, ir_wh, visible_wh)
    return CalibrationResult(prior, tuple(residuals), float(inliers.mean()), len(ir_all))


def _visible_grey(vi):
    """Return a visible image the engine takes (``HxW``, ``HxWx1``, BGR or BGRA) as ``HxW``.

    Colour goes through OpenCV's BT.601 grey, which takes uint8, uint16 and float32 only:
    other float dtypes (float16, float64) are converted to float32 first.
    """
    if vi.ndim == 3 and vi.shape[2] == 1:
        vi = vi[:, :, 0]
    if vi.dtype not in (np.uint8, np.uint16):
        vi = vi.astype(np.float32)
    return vi if vi.ndim == 2 else cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)


def _flow_samples(engine, pairs, iteration, progress):
    """Yield ``(name, flow_px, texture weight)`` of each pair as :func:`fit_prior` takes it."""
    for index, (name, ir, vi) in enumerate(pairs):
        if progress is not None:
            progress(iteration, index, name)
        out = engine.infer(ir, vi)
        vi_y = _visible_grey(vi)
        if vi_y.dtype != np.uint8:
            vi_y = cv2.normalize(vi_y.astype(np.float32), None, 0.0, 1.0, cv2.NORM_MINMAX)
            registered = out.registered_ir.astype(np.float32) / 255.0
        else:
            registered = out.registered_ir
        yield name, out.flow_px, texture_weight(registered, vi_y)


def calibrate(pairs, make_engine, iterations=2, threshold_px=DEFAULT_THRESHOLD_PX,
              stride_px=DEFAULT_STRIDE_PX, max_points=DEFAULT_MAX_POINTS, seed=0,
              initial_prior=None, progress=None):
    """Run the model on pairs of one rig and fit a prior to its flows.

    Args:
        pairs: sequence of ``(name, ir, vi)`` images as the engine takes them; every IR must
            have one size and every visible image one size. Each pair is taken from it once to
            check the sizes and once per iteration, never all at once: a sequence that reads
            a pair when indexed keeps about one in memory (an iterator is listed first).
        make_engine: ``make_engine(prior)`` -> an engine (``FusionEngine`` or the onnxruntime
            one) running with the registration prior ``prior`` (None: none).
        iterations: model runs per pair: each after the first uses the prior fitted before it
            and fits the composed flow again (>= 1).
        threshold_px, stride_px, max_points, seed: as :func:`fit_prior`.
        initial_prior: prior of the first run (None: none).
        progress: optional ``progress(iteration, index, name)`` called before each model run.

    Returns:
        :class:`CalibrationResult` of the last iteration.

    Raises:
        ValueError: no pair, mixed image sizes, ``iterations < 1``, or no fit.

    """
    if not isinstance(pairs, Sequence):
        pairs = list(pairs)
    if not len(pairs):
        raise ValueError('no pair to calibrate from')
    if int(iterations) < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    sizes = {((ir.shape[1], ir.shape[0]), (vi.shape[1], vi.shape[0])) for _, ir, vi in pairs}
    ir_sizes = {ir_wh for ir_wh, _ in sizes}
    vi_sizes = {vi_wh for _, vi_wh in sizes}
    if len(ir_sizes) != 1 or len(vi_sizes) != 1:
        raise ValueError(f'the pairs hold several image sizes (IR {sorted(ir_sizes)}, visible '
                         f'{sorted(vi_sizes)}); calibrate one rig (one size per camera) at a time')
    ir_wh, vi_wh = ir_sizes.pop(), vi_sizes.pop()
    prior, result = initial_prior, None
    for iteration in range(int(iterations)):
        # One pair's flow at a time: the fit keeps the points drawn from it (1000 pairs of
        # 1920x1080 held 25 GB of flows and weights).
        samples = _flow_samples(make_engine(prior), pairs, iteration, progress)
        result = fit_prior(samples, ir_wh, vi_wh, threshold_px, stride_px, max_points, seed)
        prior = result.prior
    return result


def _unit_grey(image):
    """Return an image the engine takes as ``HxW`` float32 in [0, 1] (min-max scaled)."""
    grey = _visible_grey(np.asarray(image)).astype(np.float32)
    return cv2.normalize(grey, None, 0.0, 1.0, cv2.NORM_MINMAX)


def prior_alignment(ir, vi, homography):
    """Return how well a homography lines a pair up, and how well it would by chance.

    The IR warped by ``homography`` onto the visible frame is scored against the visible
    image by :func:`~tarfuse_ros.core.metrics.edge_alignment` (over the warped IR's extent);
    the chance level is the median of the same score with the warp shifted by an eighth of the
    frame in the 8 directions. A prior fitted to the network's flows on pairs that share no
    scene (another camera's topic, the IR of another place) scores about its chance level: any
    smooth flow is fitted well by a homography, so the fit's residual cannot tell. Frames longer
    than 640 px are shrunk (area average) for it, the homography scaled with them.

    Args:
        ir, vi: images as the engine takes them (``HxW``, ``HxWx1``, BGR or BGRA; 8-bit,
            16-bit or float).
        homography: ``(3, 3)`` IR pixels -> visible pixels at these images' sizes.

    Returns:
        ``(score, chance)``: floats in [-1, 1].

    """
    from tarfuse_ros.core.metrics import edge_alignment
    ir, vi = _unit_grey(ir), _unit_grey(vi)
    homography = np.asarray(homography, np.float64)
    # Scored on frames at most _ALIGNMENT_MAX_SIDE long (1920x1080: 3.1 s a pair at full size).
    sizes = []
    for image in (ir, vi):
        scale = min(1.0, _ALIGNMENT_MAX_SIDE / max(image.shape))
        sizes.append((max(1, round(image.shape[1] * scale)),
                      max(1, round(image.shape[0] * scale))))
    homography = (resize_matrix(vi.shape[::-1], sizes[1]) @ homography
                  @ np.linalg.inv(resize_matrix(ir.shape[::-1], sizes[0])))
    ir, vi = (cv2.resize(image, size, interpolation=cv2.INTER_AREA)
              for image, size in zip((ir, vi), sizes))
    height, width = vi.shape
    extent = np.ones(ir.shape, np.float32)

    def score(matrix):
        warped = cv2.warpPerspective(ir, matrix, (width, height), flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(extent, matrix, (width, height),
                                    flags=cv2.INTER_NEAREST) > 0.5
        return edge_alignment(warped, vi, valid)

    step_x, step_y = width / 8.0, height / 8.0
    shifted = [score(np.array([[1.0, 0.0, dx * step_x], [0.0, 1.0, dy * step_y],
                               [0.0, 0.0, 1.0]]) @ homography)
               for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    return score(homography), float(np.median(shifted))
