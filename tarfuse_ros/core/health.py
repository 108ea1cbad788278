"""Registration health: a per-frame, ground-truth-free alignment score and a rolling verdict.

A rig's IR and visible cameras stay aligned only as long as nothing changes: a knocked camera,
another lens or broken time synchronisation shows up as an IR that no longer lines up with the
visible image, or as a network that has to correct much more than before. Per scored frame this
module measures (:func:`score_frame`):

- ``alignment``: :func:`~tarfuse_ros.core.metrics.edge_alignment` of the registered IR and the
  visible luma over the pixels the registered IR covers (Pearson correlation of smoothed Sobel
  magnitudes, in [-1, 1], higher is better). Both planes are first shrunk (``cv2.INTER_AREA``)
  so that their longer side is at most ``max_side_px``: the score only needs the scene's coarse
  edges, and its cost falls with the pixel count;
- ``flow_px``: the mean length of the flow the network applied (pixels of the visible frame),
  minus a reference flow when one is given (e.g. the calibration prior's own flow, so that only
  the network's residual counts);
- ``flow_nonaffine_px``: the mean length of what is left of that flow after the best affine
  fit (least squares), i.e. its local, non-global part (parallax, lens residue, noise).

:class:`RegistrationHealth` keeps the last ``window`` scored frames and decides: ``warn`` when
the window's mean alignment is below ``min_alignment`` or its mean flow above ``max_flow_px``
(0 switches that test off), ``ok`` otherwise, ``waiting`` until the window is full. The verdict
clears by itself once enough good frames have replaced the bad ones. No ROS here: the node only
feeds frames and publishes :meth:`RegistrationHealth.summary`.
"""

from collections import deque
from dataclasses import dataclass, replace
import math
import threading
import time

import cv2
import numpy as np
from tarfuse_ros.core import metrics

__all__ = ['HEALTH_STATES', 'FrameScore', 'HealthSettings', 'HealthSummary', 'RegistrationHealth',
           'fit_affine_flow', 'score_frame', 'visible_luma']

HEALTH_STATES = ('off', 'waiting', 'ok', 'warn')
_MIN_PLANE_PX = 8  # the scored plane keeps at least this many pixels per side


@dataclass(frozen=True)
class HealthSettings:
    """How the health is measured and judged.

    ``window``: scored frames in the rolling summary (>= 1). ``every_n``: score one frame in
    ``every_n`` (>= 1). ``max_side_px``: longer side of the scored planes (>= 16 px).
    ``min_alignment``: warn below this window mean alignment (in [-1, 1]). ``max_flow_px``:
    warn above this window mean flow length (visible pixels, >= 0; 0: never).
    """

    window: int = 10
    every_n: int = 1
    max_side_px: int = 160
    min_alignment: float = 0.2
    max_flow_px: float = 0.0

    def __post_init__(self):
        """Raise ``ValueError`` naming the first setting out of range."""
        for name, low in (('window', 1), ('every_n', 1), ('max_side_px', 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
        if not -1.0 <= float(self.min_alignment) <= 1.0:
            raise ValueError(f'min_alignment must be in [-1, 1], got {self.min_alignment!r}')
        if not (math.isfinite(float(self.max_flow_px)) and self.max_flow_px >= 0.0):
            raise ValueError(f'max_flow_px must be a finite number >= 0, got '
                             f'{self.max_flow_px!r}')


@dataclass(frozen=True)
class FrameScore:
    """The health figures of one frame (see the module docstring).

    ``alignment`` in [-1, 1]; ``flow_px`` and ``flow_nonaffine_px`` in visible pixels;
    ``coverage``: the fraction of the scored plane the registered IR covers, in [0, 1];
    ``cost_ms``: the time :func:`score_frame` took, in milliseconds.
    """

    alignment: float
    flow_px: float
    flow_nonaffine_px: float
    coverage: float
    cost_ms: float = float('nan')


@dataclass(frozen=True)
class HealthSummary:
    """The rolling verdict of :class:`RegistrationHealth`.

    ``state``: one of ``waiting``, ``ok``, ``warn`` (the node adds ``off``); ``problems``: the
    sentences behind a ``warn``, with the numbers; then the window's figures (alignment in
    [-1, 1], flows in visible pixels, cost in milliseconds per scored frame).
    """

    state: str
    problems: tuple
    samples: int
    window: int
    frames_seen: int
    frames_scored: int
    alignment_last: float
    alignment_mean: float
    alignment_min: float
    flow_px_mean: float
    flow_px_max: float
    flow_nonaffine_px_mean: float
    cost_ms_mean: float

    def as_dict(self, prefix='registration_'):
        """Return ``{prefix + name: value}`` for the diagnostic key-value list (no problems)."""
        out = {'health': self.state, 'samples': f'{self.samples}/{self.window}',
               'frames_scored': self.frames_scored}
        for name in ('alignment_last', 'alignment_mean', 'alignment_min', 'flow_px_mean',
                     'flow_px_max', 'flow_nonaffine_px_mean', 'cost_ms_mean'):
            out[name] = getattr(self, name)
        return {prefix + key: value for key, value in out.items()}


def visible_luma(visible):
    """Return the visible image's luma as float32 ``HxW`` (BT.601 weights, any intensity scale).

    Args:
        visible: ``HxW``, ``HxWx1``, ``HxWx3`` (BGR) or ``HxWx4`` (BGRA) image, uint8, uint16
            or float.

    Raises:
        ValueError: for another shape or an empty image.

    """
    arr = np.asarray(visible)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.size == 0 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f'visible must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}')
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if arr.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        arr = cv2.cvtColor(arr, code)
    return arr


def _unit(plane):
    """Min-max a float plane to [0, 1] (the alignment score ignores the intensity scale)."""
    lo, hi = float(plane.min()), float(plane.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError('image holds NaN or infinite values')
    if hi <= lo:
        return np.zeros_like(plane)
    return (plane - lo) * np.float32(1.0 / (hi - lo))


def _plane_size(height, width, max_side_px):
    scale = min(1.0, max_side_px / max(height, width))
    return (max(_MIN_PLANE_PX, min(width, round(width * scale))),
            max(_MIN_PLANE_PX, min(height, round(height * scale))))


def _shrink(plane, size):
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    return cv2.resize(plane, size, interpolation=cv2.INTER_AREA)


def fit_affine_flow(flow_px, weights=None):
    """Fit ``flow(x, y) ~ A [x, y, 1]^T`` by (weighted) least squares.

    Args:
        flow_px: ``(H, W, 2)`` flow in pixels (dx, dy), pixel centres at integer ``(x, y)``.
        weights: optional ``(H, W)`` non-negative weights (e.g. a bool mask).

    Returns:
        ``(A, fitted)``: ``A`` the ``(2, 3)`` float64 affine flow model (rows dx, dy) and
        ``fitted`` the ``(H, W, 2)`` float64 flow it predicts. A flow that is itself affine is
        returned exactly (up to float rounding).

    Raises:
        ValueError: for a flow that is not ``(H, W, 2)``, weights of another shape, or
            weights with fewer than three non-zero pixels.

    """
    flow = np.asarray(flow_px, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'flow_px must be (H, W, 2), got shape {flow.shape}')
    height, width = flow.shape[:2]
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64),
                         np.arange(width, dtype=np.float64), indexing='ij')
    basis = np.stack((xs.ravel(), ys.ravel(), np.ones(xs.size)), axis=1)
    target = flow.reshape(-1, 2)
    if weights is None:
        w = np.ones(xs.size)
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (height, width):
            raise ValueError(f'weights has shape {w.shape}, the flow {flow.shape[:2]}')
        w = w.ravel()
    if np.count_nonzero(w) < 3:
        raise ValueError('an affine fit needs at least 3 weighted pixels')
    root = np.sqrt(w)[:, None]
    model, *_ = np.linalg.lstsq(basis * root, target * root, rcond=None)
    return model.T, (basis @ model).reshape(height, width, 2)


def score_frame(registered_ir, visible, flow_px, max_side_px=160, reference_flow_px=None):
    """Measure one frame's registration health (see the module docstring).

    Args:
        registered_ir: ``HxW`` IR warped onto the visible frame (uint8, uint16 or float).
        visible: the visible image of the pair, ``HxW`` grey or ``HxWx3`` BGR (any dtype
            :func:`visible_luma` takes), of the same ``HxW``.
        flow_px: ``(H, W, 2)`` float flow in visible pixels, ``registered(p) = ir(p +
            flow(p))``; it also says which pixels the registered IR covers.
        max_side_px: longer side of the scored planes in pixels (>= 16).
        reference_flow_px: optional ``(H, W, 2)`` flow subtracted before the flow lengths are
            measured (e.g. the calibration prior's own flow).

    Returns:
        :class:`FrameScore`.

    Raises:
        ValueError: shapes that differ or are not as above, non-finite values.

    """
    start = time.perf_counter()
    registered = np.asarray(registered_ir)
    if registered.ndim == 3 and registered.shape[2] == 1:
        registered = registered[:, :, 0]
    if registered.ndim != 2 or registered.size == 0:
        raise ValueError(f'registered_ir must be HxW, got shape {registered.shape}')
    height, width = registered.shape
    luma = visible_luma(visible)
    flow = np.asarray(flow_px, np.float32)
    if luma.shape != (height, width) or flow.shape != (height, width, 2):
        raise ValueError(f'registered_ir {registered.shape}, visible {np.shape(visible)} and '
                         f'flow_px {flow.shape} must share H and W')
    if isinstance(max_side_px, bool) or not isinstance(max_side_px, (int, np.integer)) or \
            max_side_px < 16:
        raise ValueError(f'max_side_px must be an integer >= 16, got {max_side_px!r}')
    size = _plane_size(height, width, max_side_px)
    small_flow = _shrink(flow, size).astype(np.float64)
    if not np.isfinite(small_flow).all():
        raise ValueError('flow_px holds NaN or infinite values')
    # Where the registered IR has content: the sampled IR position lies inside the frame.
    sx, sy = size[0] / width, size[1] / height
    ys, xs = np.meshgrid((np.arange(size[1]) + 0.5) / sy - 0.5,
                         (np.arange(size[0]) + 0.5) / sx - 0.5, indexing='ij')
    qx, qy = xs + small_flow[:, :, 0], ys + small_flow[:, :, 1]
    covered = (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
    reg_plane = _unit(_shrink(registered.astype(np.float32, copy=False), size))
    vi_plane = _unit(_shrink(luma, size))
    alignment = metrics.edge_alignment(reg_plane, vi_plane, covered)
    if reference_flow_px is not None:
        reference = np.asarray(reference_flow_px, np.float32)
        if reference.shape != flow.shape:
            raise ValueError(f'reference_flow_px has shape {reference.shape}, flow_px '
                             f'{flow.shape}')
        small_flow = small_flow - _shrink(reference, size)
    lengths = np.hypot(small_flow[:, :, 0], small_flow[:, :, 1])
    # The affine model in plane pixels; its residual is in visible pixels like the flow.
    _, fitted = fit_affine_flow(small_flow)
    residual = np.hypot(*(small_flow - fitted).transpose(2, 0, 1))
    return FrameScore(alignment=float(alignment), flow_px=float(lengths.mean()),
                      flow_nonaffine_px=float(residual.mean()),
                      coverage=float(covered.mean()),
                      cost_ms=(time.perf_counter() - start) * 1e3)


class RegistrationHealth:
    """Rolling registration-health verdict over the last ``settings.window`` scored frames.

    Thread-safe: the node's worker feeds frames (:meth:`due`, :meth:`observe`) while its
    executor reads :meth:`summary` and changes :attr:`settings`.
    """

    def __init__(self, settings=None):
        self._lock = threading.Lock()
        self._settings = settings or HealthSettings()
        self._scores = deque(maxlen=self._settings.window)
        self._frames_seen = 0
        self._frames_scored = 0

    @property
    def settings(self):
        """The :class:`HealthSettings` in effect."""
        with self._lock:
            return self._settings

    @settings.setter
    def settings(self, settings):
        """Change the settings; the newest scored frames that fit the new window are kept."""
        if not isinstance(settings, HealthSettings):
            raise TypeError(f'settings must be HealthSettings, got {type(settings).__name__}')
        with self._lock:
            self._settings = settings
            if settings.window != self._scores.maxlen:
                self._scores = deque(self._scores, maxlen=settings.window)

    def update_settings(self, **changes):
        """Replace some settings (``ValueError`` for a bad value, nothing changed then)."""
        self.settings = replace(self.settings, **changes)

    def reset(self):
        """Forget the scored frames (e.g. after the rig was recalibrated)."""
        with self._lock:
            self._scores.clear()

    def due(self):
        """Count one frame; return True when it is to be scored (one in ``every_n``)."""
        with self._lock:
            self._frames_seen += 1
            return (self._frames_seen - 1) % self._settings.every_n == 0

    def observe(self, registered_ir, visible, flow_px, reference_flow_px=None):
        """Score one frame (:func:`score_frame`) and add it to the window; return the score."""
        score = score_frame(registered_ir, visible, flow_px, self.settings.max_side_px,
                            reference_flow_px)
        self.add(score)
        return score

    def add(self, score):
        """Add one :class:`FrameScore` to the window."""
        with self._lock:
            self._scores.append(score)
            self._frames_scored += 1

    def summary(self):
        """Return the :class:`HealthSummary` of the current window."""
        with self._lock:
            settings = self._settings
            scores = list(self._scores)
            seen, scored = self._frames_seen, self._frames_scored
        nan = float('nan')
        alignment = np.array([s.alignment for s in scores])
        flow = np.array([s.flow_px for s in scores])
        figures = {
            'alignment_last': float(alignment[-1]) if scores else nan,
            'alignment_mean': float(alignment.mean()) if scores else nan,
            'alignment_min': float(alignment.min()) if scores else nan,
            'flow_px_mean': float(flow.mean()) if scores else nan,
            'flow_px_max': float(flow.max()) if scores else nan,
            'flow_nonaffine_px_mean': (float(np.mean([s.flow_nonaffine_px for s in scores]))
                                       if scores else nan),
            'cost_ms_mean': (float(np.nanmean([s.cost_ms for s in scores]))
                             if scores and any(math.isfinite(s.cost_ms) for s in scores)
                             else nan),
        }
        problems = []
        if len(scores) < settings.window:
            state = 'waiting'
        else:
            last = f'the last {len(scores)} scored frames'
            if figures['alignment_mean'] < settings.min_alignment:
                problems.append(
                    f'registration: IR/visible edge alignment {figures["alignment_mean"]:.3f} '
                    f'(mean of {last}, min {figures["alignment_min"]:.3f}) is below '
                    f'registration_health.min_alignment {settings.min_alignment:.3f}: the '
                    f'registered IR no longer lines up with the visible image (camera moved, '
                    f'lens changed or time sync broken?)')
            if settings.max_flow_px > 0 and figures['flow_px_mean'] > settings.max_flow_px:
                problems.append(
                    f'registration: residual flow {figures["flow_px_mean"]:.1f} px (mean '
                    f'|flow| of {last}, max {figures["flow_px_max"]:.1f} px) is above '
                    f'registration_health.max_flow_px {settings.max_flow_px:g} px: the '
                    f'network corrects much more misalignment than the rig should have '
                    f'(camera moved or lens changed? recalibrate)')
            state = 'warn' if problems else 'ok'
        return HealthSummary(state=state, problems=tuple(problems), samples=len(scores),
                             window=settings.window, frames_seen=seen, frames_scored=scored,
                             **figures)
