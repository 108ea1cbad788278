"""Online refinement of the calibration prior: a slowly updated IR -> visible homography.

A rig whose prior (:mod:`tarfuse_ros.core.prior`) is slightly off makes the network correct the
same global error on every frame. :class:`OnlinePriorRefiner` keeps an estimate of the global
transform instead and lets the engine use it for the following frames. It starts from the
configured prior (with none: the plain resize of the IR to the visible frame, the engine's
behaviour without a prior) and, for one scored frame in ``every_n``:

1. **fits one homography** ``H_f`` (IR pixels -> visible pixels) to the frame's published flow
   with the calibration fit (:func:`tarfuse_ros.core.calibration.fit_prior`: texture-weighted
   points, MAGSAC++). The published flow is the engine's prior composed with the network's
   residual, so ``H_f`` is the current estimate corrected by the residual's global part;
2. **rejects** the frame (the estimate does not move) when
   - its alignment (:func:`tarfuse_ros.core.health.score_frame`: edge alignment of the
     registered IR and the visible image, in [-1, 1]) is below ``min_alignment``: the IR does
     not line up with the visible image (a swapped or stalled stream, a scene without
     structure), so its flow says nothing about the rig (reason ``alignment``);
   - the fit fails or explains less than ``min_inlier_fraction`` of the sampled points within
     the fit's 3 px threshold (reason ``fit``);
   - ``H_f`` moves a corner of the IR image more than ``max_step_px`` (visible pixels) away
     from where the current estimate puts it: more than a slightly-off prior can explain (a
     flow gone wrong, or the rig knocked: then recalibrate with ``tarfuse-calibrate``)
     (reason ``step``);
3. otherwise **smooths**: the four IR corners (pixel centres ``(0, 0)``, ``(W-1, 0)``,
   ``(W-1, H-1)``, ``(0, H-1)`` of the prior's IR size) as mapped into the visible frame move
   towards ``H_f``'s, ``c <- (1 - alpha) c + alpha c_f``, and the estimate is the homography
   through the smoothed corners (``cv2.getPerspectiveTransform``). An error that the frames
   agree on shrinks by ``(1 - alpha)`` per accepted frame; a single accepted outlier moves the
   estimate by at most ``alpha * max_step_px``.

Units: corner positions, steps and drifts in visible pixels at the prior's image sizes (the
frames' own sizes when no prior is configured); ``alpha`` per accepted frame. The estimate keeps
the configured prior's sizes, so it is scaled like any prior to other incoming sizes. No ROS
here: the node feeds frames (:meth:`OnlinePriorRefiner.observe`), hands
:attr:`OnlinePriorRefiner.prior` to its engine and reports :meth:`OnlinePriorRefiner.summary`.
"""

from dataclasses import dataclass
import math
import threading

import cv2
import numpy as np
from tarfuse_ros.core.calibration import fit_prior, texture_weight
from tarfuse_ros.core.health import score_frame, visible_luma
from tarfuse_ros.core.prior import check_prior, corner_error_px, ir_corners, make_prior
from tarfuse_ros.core.prior import map_points, resize_matrix

__all__ = ['REJECT_REASONS', 'OnlinePriorRefiner', 'RefinementSettings', 'RefinementSummary',
           'RefinementUpdate']

REJECT_REASONS = ('alignment', 'fit', 'step')


@dataclass(frozen=True)
class RefinementSettings:
    """How the estimate is updated (see the module docstring).

    ``alpha``: smoothing factor per accepted frame, in (0, 1] (1: the newest fit replaces the
    estimate). ``max_step_px``: largest corner displacement (visible pixels, > 0) of one frame's
    fit from the current estimate that is accepted. ``min_alignment``: frames whose edge
    alignment is below this, in [-1, 1], are rejected. ``every_n``: use one frame in
    ``every_n`` (>= 1). ``min_inlier_fraction``: frames whose fit explains a smaller share of
    points, in [0, 1], are rejected. ``max_side_px``: longer side (px, >= 16) of the planes the
    alignment is scored on when the caller does not give it.
    """

    alpha: float = 0.1
    max_step_px: float = 20.0
    min_alignment: float = 0.3
    every_n: int = 1
    min_inlier_fraction: float = 0.5
    max_side_px: int = 160

    def __post_init__(self):
        """Raise ``ValueError`` naming the first setting out of range."""
        for name, low in (('every_n', 1), ('max_side_px', 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
        checks = (('alpha', 0.0 < _number(self.alpha) <= 1.0, 'in (0, 1]'),
                  ('max_step_px', _number(self.max_step_px) > 0.0, 'a finite number > 0'),
                  ('min_alignment', -1.0 <= _number(self.min_alignment) <= 1.0, 'in [-1, 1]'),
                  ('min_inlier_fraction', 0.0 <= _number(self.min_inlier_fraction) <= 1.0,
                   'in [0, 1]'))
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f'{name} must be {rule}, got {getattr(self, name)!r}')


def _number(value):
    """Return ``value`` as a float, NaN for anything else (so every range check fails)."""
    if isinstance(value, bool):
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class RefinementUpdate:
    """What :meth:`OnlinePriorRefiner.observe` did with one frame.

    ``accepted``; ``reason``: ``''`` when accepted, else one of :data:`REJECT_REASONS`;
    ``detail``: a sentence with the numbers; ``alignment`` in [-1, 1]; ``inlier_fraction`` of
    the fit in [0, 1] (NaN when not fitted); ``step_px``: corner displacement of the frame's fit
    from the estimate before it (visible pixels, NaN when not fitted); ``drift_px``: corner
    displacement of the estimate after the frame from the configured prior (visible pixels).
    """

    accepted: bool
    reason: str
    detail: str
    alignment: float
    inlier_fraction: float
    step_px: float
    drift_px: float


@dataclass(frozen=True)
class RefinementSummary:
    """The refiner's state for reporting (see :meth:`OnlinePriorRefiner.summary`).

    ``state``: ``waiting`` (no accepted frame yet) or ``on``; ``frames_seen``: frames counted
    by :meth:`~OnlinePriorRefiner.due`; ``accepted``: accepted frames; ``rejected``:
    ``{reason: count}``; ``drift_px``: the estimate's largest corner displacement from the
    configured prior (visible pixels); ``last_step_px``: the newest fitted frame's step;
    ``last``: what happened to the newest used frame; ``homography``: the estimate, 9 floats
    row-major (IR pixels -> visible pixels), at ``ir_size`` / ``visible_size``
    (``(width, height)``; empty before the first frame without a configured prior).
    """

    state: str
    frames_seen: int
    accepted: int
    rejected: dict
    drift_px: float
    last_step_px: float
    last: str
    homography: tuple
    ir_size: tuple
    visible_size: tuple

    def as_dict(self, prefix='registration_refinement_'):
        """Return ``{key: value}`` for the diagnostic key-value list (``prefix`` + name)."""
        sizes = ''
        if self.ir_size:
            sizes = (f' (IR {self.ir_size[0]}x{self.ir_size[1]} -> visible '
                     f'{self.visible_size[0]}x{self.visible_size[1]})')
        out = {prefix.rstrip('_'): self.state,
               prefix + 'accepted': self.accepted,
               prefix + 'rejected': sum(self.rejected.values())}
        for reason in REJECT_REASONS:
            out[f'{prefix}rejected_{reason}'] = self.rejected[reason]
        out[prefix + 'drift_px'] = round(self.drift_px, 3)
        out[prefix + 'last_step_px'] = round(self.last_step_px, 3)
        out[prefix + 'last'] = self.last
        out[prefix + 'homography'] = (
            str([float(f'{v:.9g}') for v in self.homography]) + sizes if self.homography
            else '')
        return out


class OnlinePriorRefiner:
    """Refine a calibration prior across frames (see the module docstring).

    Args:
        settings: :class:`RefinementSettings` (default: the defaults).
        configured_prior: the :class:`~tarfuse_ros.core.prior.RegistrationPrior` the engine
            starts with, or None (the estimate then starts as the resize of the IR to the
            visible frame, at the first frame's sizes).

    Thread-safe: one thread feeds frames while another reads :meth:`summary` or changes
    :attr:`settings`.

    Raises:
        ValueError: ``settings`` or ``configured_prior`` of the wrong type.

    """

    def __init__(self, settings=None, configured_prior=None):
        settings = RefinementSettings() if settings is None else settings
        if not isinstance(settings, RefinementSettings):
            raise ValueError(f'settings must be RefinementSettings, got '
                             f'{type(settings).__name__}')
        self._settings = settings
        self._configured = check_prior(configured_prior)
        self._lock = threading.Lock()
        self._estimate = None  # the refined RegistrationPrior, None before the first update
        # The starting homography, its sizes and the estimate's IR corners in the visible frame.
        self._base = self._ir_size = self._visible_size = self._corners_vi = None
        if configured_prior is not None:
            self._start(configured_prior.homography, configured_prior.ir_size,
                        configured_prior.visible_size)
        self._frames_seen = 0
        self._accepted = 0
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._last_step_px = math.nan
        self._last = 'no frame used yet'

    def _start(self, homography, ir_wh, visible_wh):
        self._base = np.asarray(homography, np.float64)
        self._ir_size, self._visible_size = tuple(ir_wh), tuple(visible_wh)
        self._corners_vi = map_points(self._base, ir_corners(ir_wh))

    @property
    def settings(self):
        """The :class:`RefinementSettings` in effect (settable: the following frames use it)."""
        with self._lock:
            return self._settings

    @settings.setter
    def settings(self, settings):
        """Change the settings; the estimate and the counts are kept."""
        if not isinstance(settings, RefinementSettings):
            raise ValueError(f'settings must be RefinementSettings, got '
                             f'{type(settings).__name__}')
        with self._lock:
            self._settings = settings

    @property
    def configured_prior(self):
        """The prior the refinement started from (None: none was configured)."""
        return self._configured

    @property
    def prior(self):
        """The refined :class:`~tarfuse_ros.core.prior.RegistrationPrior` for the next frames.

        The configured prior until a frame is accepted (None when none was configured, so the
        engine runs exactly as without refinement until then).
        """
        with self._lock:
            return self._configured if self._estimate is None else self._estimate

    def start_over_for(self, ir_wh, visible_wh):
        """Forget an estimate that frames of these sizes cannot use; return True if forgotten.

        Only without a configured prior: the estimate then starts from the plain resize at the
        first frames' sizes, and a camera that changes to another aspect ratio (another sensor
        mode) would have every pair refused by the engine. The refinement starts over from the
        resize at the new sizes (:attr:`prior` is None again; the counts are kept). With a
        configured prior nothing is forgotten: that prior does not fit those sizes either
        (calibrate again).

        Args:
            ir_wh, visible_wh: ``(width, height)`` of the incoming IR and visible images.

        """
        with self._lock:
            if self._configured is not None or self._base is None:
                return False
            try:
                make_prior(self._base, self._ir_size, self._visible_size).homography_for(
                    ir_wh, visible_wh)
                return False
            except ValueError:  # another aspect ratio
                self._estimate = None
                self._base = self._ir_size = self._visible_size = self._corners_vi = None
                self._last = (f'started over: the images are now IR {ir_wh[0]}x{ir_wh[1]}, '
                              f'visible {visible_wh[0]}x{visible_wh[1]} (another aspect ratio)')
                return True

    def due(self):
        """Count one frame; return True when it is to be used (one in ``every_n``)."""
        with self._lock:
            self._frames_seen += 1
            return (self._frames_seen - 1) % self._settings.every_n == 0

    def observe(self, flow_px, registered_ir, visible, ir_wh, alignment=None):
        """Use one frame's engine outputs to update the estimate (module docstring).

        Args:
            flow_px: ``(H, W, 2)`` published flow in visible pixels (``FusionResult.flow_px``:
                the prior the frame ran with, composed with the network's residual).
            registered_ir: ``HxW`` registered IR of the frame (uint8, uint16 or float).
            visible: the frame's visible image, ``HxW`` grey or ``HxWx3`` BGR, same ``HxW``.
            ir_wh: ``(width, height)`` of the frame's IR image as it came in.
            alignment: the frame's edge alignment if already scored
                (``FrameScore.alignment``); None: scored here at ``max_side_px``.

        Returns:
            :class:`RefinementUpdate`.

        Raises:
            ValueError: shapes that do not match (as
                :func:`~tarfuse_ros.core.health.score_frame`), or frame sizes whose aspect
                ratio differs from the configured prior's.

        """
        flow = np.asarray(flow_px)
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f'flow_px must have shape (H, W, 2), got {flow.shape}')
        visible_wh = (flow.shape[1], flow.shape[0])
        ir_wh = (int(ir_wh[0]), int(ir_wh[1]))
        settings = self.settings  # one frame, one set of settings
        if alignment is None:
            alignment = score_frame(registered_ir, visible, flow,
                                    settings.max_side_px).alignment
        with self._lock:
            if self._base is None:  # no configured prior: start from the plain resize
                self._start(resize_matrix(ir_wh, visible_wh), ir_wh, visible_wh)
            corners_vi = self._corners_vi
        # Only the feeding thread changes the estimate, so it is still corners_vi below.
        reason, detail, inliers, step_px, estimate, corners = self._judge(
            flow, registered_ir, visible, ir_wh, float(alignment), corners_vi, settings)
        with self._lock:
            if not math.isnan(step_px):
                self._last_step_px = step_px
            if reason:
                self._rejected[reason] += 1
                self._last = f'rejected: {detail}'
            else:
                self._accepted += 1
                self._estimate, self._corners_vi = estimate, corners
                self._last = f'accepted (step {step_px:.2f} px, alignment {alignment:.3f})'
            return RefinementUpdate(not reason, reason, detail, float(alignment), inliers,
                                    step_px, self._drift_px())

    def _judge(self, flow, registered_ir, visible, ir_wh, alignment, corners_vi, settings):
        """Return ``(reason, detail, inlier_fraction, step_px, estimate, corners)``.

        ``reason`` is ``''`` for an accepted frame, whose new estimate and corners follow.
        """
        nan = math.nan
        if not alignment >= settings.min_alignment:  # NaN (nothing covered) too
            return ('alignment', f'edge alignment {alignment:.3f} < min_alignment '
                    f'{settings.min_alignment:.3f}', nan, nan, None, None)
        weight = texture_weight(np.asarray(registered_ir, np.float32), visible_luma(visible))
        try:
            fit = fit_prior([('frame', flow, weight)], ir_wh, (flow.shape[1], flow.shape[0]))
        except ValueError as exc:
            return 'fit', f'no homography fits the flow ({exc})', nan, nan, None, None
        inliers = fit.inlier_fraction
        if not inliers >= settings.min_inlier_fraction:
            return ('fit', f'the fit explains {inliers:.2f} of the points < '
                    f'min_inlier_fraction {settings.min_inlier_fraction:.2f}', inliers, nan,
                    None, None)
        # The frame's fit at the estimate's sizes (raises for another aspect ratio).
        corners_ir = ir_corners(self._ir_size)
        frame_corners = map_points(fit.prior.homography_for(self._ir_size, self._visible_size),
                                   corners_ir)
        step_px = float(np.max(np.hypot(*(frame_corners - corners_vi).T)))
        if not step_px <= settings.max_step_px:
            return ('step', f'the fit moves a corner {step_px:.1f} px > max_step_px '
                    f'{settings.max_step_px:.1f}', inliers, step_px, None, None)
        corners = (1.0 - settings.alpha) * corners_vi + settings.alpha * frame_corners
        homography = cv2.getPerspectiveTransform(corners_ir.astype(np.float32),
                                                 corners.astype(np.float32))
        try:
            estimate = make_prior(homography, self._ir_size, self._visible_size)
        except ValueError as exc:  # degenerate smoothed corners: keep the estimate
            return ('fit', f'the smoothed estimate is not a valid prior ({exc})', inliers,
                    step_px, None, None)
        return '', '', inliers, step_px, estimate, corners

    def _drift_px(self):
        """Corner displacement of the estimate from the configured prior (the lock is held)."""
        if self._estimate is None:
            return 0.0
        return corner_error_px(self._estimate.homography, self._base, self._ir_size)

    def summary(self):
        """Return the :class:`RefinementSummary` now."""
        with self._lock:
            current = self._base if self._estimate is None else self._estimate.homography
            return RefinementSummary(
                state='waiting' if self._estimate is None else 'on',
                frames_seen=self._frames_seen, accepted=self._accepted,
                rejected=dict(self._rejected), drift_px=self._drift_px(),
                last_step_px=self._last_step_px, last=self._last,
                homography=() if current is None else tuple(float(v) for v in current.ravel()),
                ir_size=self._ir_size or (), visible_size=self._visible_size or ())
