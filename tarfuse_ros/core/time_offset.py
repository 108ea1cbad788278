"""The IR camera's time offset, estimated from a recording of a moving scene (no ROS import).

Two cameras on one rig see the same motion: when the rig turns or something crosses the view,
both images change at the same instants. Each stream's *motion signal* is how much its frame
changes per second between consecutive frames (:func:`motion_signal`); the IR's signal, moved
in time by the right offset, lines up with the visible one. :func:`estimate_time_offset`
returns the offset that maximises the Pearson correlation of the two signals (a cross-
correlation over candidate offsets, refined by a parabola through the peak), the node's
``sync.infrared_time_offset``: the visible driver's stamp of an instant minus the IR driver's
stamp of the same instant (-0.06 for an IR camera stamped 60 ms late).

The estimate is the classic time-delay estimate, the peak of the two signals'
cross-correlation (Knapp and Carter, "The generalized correlation method for estimation of
time delay", IEEE Trans. ASSP 24(4), 1976), on signals of frame-to-frame change. It needs
motion that varies over the recording (a rig that turns, stops and turns again; people walking
past): a constant pan or a still scene has no structure to line up, which the result's
correlation and its per-window estimates show.

Each frame is shrunk (long side ``max_side`` px, OpenCV area resampling) and standardised
(zero mean, unit standard deviation), so a thermal camera's gain control, its 16-bit range or
a colour image change nothing; a constant frame (a closed shutter during a thermal camera's
flat-field correction) reads as zero. The change of a frame is the mean absolute difference of
consecutive standardised frames divided by their stamps' interval (1/s), placed at the middle
of the interval: a 9 Hz camera's signal is then a box average over 111 ms centred where a
30 Hz camera's is, so different frame rates do not shift the peak. A frame that repeats the
one before (a thermal core frozen for its flat-field correction, a driver sending a frame
twice) is left out: it was not captured at its stamp, and the change to the next new image is
spread over the whole interval since the last one.
"""

from collections import deque
from dataclasses import dataclass
import threading

import cv2
import numpy as np

__all__ = ['ChangeLog', 'MotionSignal', 'OffsetMonitor', 'TimeOffsetEstimate',
           'correlation_at_offsets', 'estimate_problem', 'estimate_time_offset',
           'estimate_warnings', 'frame_for_motion', 'motion_signal', 'rounded_offset',
           'signal_from_changes']

MAX_SIDE = 160  # px: the motion signal's frame size (long side)
STEP_S = 0.002  # s: the step of the candidate offsets before the parabola's refinement
COARSE_STEP_S = 0.01  # s: the step of the first, coarse search (and of its sampling)
SHARPNESS_SPAN_S = 0.25  # s: how far either side of the peak its sharpness is measured
_EPS = 1e-6
# A frame whose standardised image differs from the one before by no more than this on
# average is that image repeated (a thermal core frozen during its flat-field correction, a
# driver sending a frame twice): bit-identical frames differ by 0, a camera's noise alone by
# about 0.1 and more.
_REPEATED = 1e-4
# s: the least interval a change is measured over (a 100 Hz camera: every third frame).
MIN_INTERVAL_S = 0.02
# An interval between new images longer than this many times the median one is a gap (a
# frozen image, frames lost): its change is left out, and the signal is not read across it.
_GAP = 2.5


def motion_size(height, width, max_side=MAX_SIDE):
    """Return the ``(width, height)`` (px) :func:`frame_for_motion` shrinks a frame to."""
    scale = max_side / max(height, width)
    if scale >= 1.0:  # never enlarged
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_for_motion(image, max_side=MAX_SIDE):
    """Return ``image`` as the motion signal reads it: grey, shrunk, standardised.

    Args:
        image: (H, W) or (H, W, 3) array (uint8, uint16 or float; colour in any channel
            order: the channels are averaged).
        max_side: the long side (px) the frame is shrunk to (never enlarged).

    Returns:
        (h, w) float32 array of zero mean and unit standard deviation (all zeros for a
        constant image).

    Raises:
        ValueError: an image that is not 2-D or 3-D with 1, 3 or 4 channels, or empty.

    """
    array = np.asarray(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise ValueError(f'an image must be (H, W) or (H, W, 3), got shape {array.shape}')
    if array.size == 0:
        raise ValueError(f'an empty image, shape {array.shape}')
    if array.ndim == 3:
        array = array[..., :3]
    if array.dtype not in (np.uint8, np.uint16, np.float32):  # what cv2.resize takes
        array = array.astype(np.float32)
    size = motion_size(*array.shape[:2], max_side)
    if size != array.shape[1::-1]:  # shrunk first: a 1920x1080 colour frame costs 3 ms, not 46
        array = cv2.resize(np.ascontiguousarray(array), size, interpolation=cv2.INTER_AREA)
    array = array.astype(np.float32)
    if array.ndim == 3:
        array = array.mean(axis=2)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    std = float(array.std())
    if std < _EPS * max(1.0, float(np.abs(array).max())):
        return np.zeros_like(array)
    return (array - float(array.mean())) / std


@dataclass(frozen=True)
class MotionSignal:
    """How much one camera's frames change per second (:func:`motion_signal`).

    ``times_s`` (N,) are the middles of consecutive frames' stamps (s, increasing), ``values``
    (N,) the mean absolute change of the standardised frame per second there (1/s);
    ``max_gap_s`` the longest interval between two samples read as one stretch of signal.
    """

    times_s: np.ndarray
    values: np.ndarray
    max_gap_s: float = float('inf')

    def readable(self, times_s):
        """Return a mask of the times (s) within the signal and not inside a gap."""
        after = np.searchsorted(self.times_s, times_s, side='left')
        inside = (after > 0) & (after < len(self.times_s))
        exact = np.isin(times_s, self.times_s)
        after = np.clip(after, 1, len(self.times_s) - 1)
        gaps = self.times_s[after] - self.times_s[after - 1]
        return exact | (inside & (gaps <= self.max_gap_s))


class ChangeLog:
    """One camera's changes between consecutive new images, as they come (not thread-safe).

    :meth:`add` takes images in stamp order; it keeps the newest image and, per pair of
    consecutive new images, ``(start_s, end_s, change)``: the mean absolute difference of the
    standardised images (NaN across a size change). An image stamped at or before the newest
    is left out (delivered late, or its stamp repeated), as is one that repeats the image
    before (change <= 1e-4: a frozen thermal core) and one less than :data:`MIN_INTERVAL_S`
    after the newest (a fast camera's change is measured over that much at least: between
    frames 10 ms apart it is mostly noise). With ``keep_s``, changes ending more than that
    before the newest stamp are dropped.
    """

    def __init__(self, keep_s=None):
        self.keep_s = keep_s
        self.newest = None  # (stamp_s, frame)
        self.first_s = None
        self.changes = deque()

    def add(self, stamp_s, frame):
        """Add one standardised frame (:func:`frame_for_motion`) stamped ``stamp_s``."""
        stamp_s = float(stamp_s)
        if self.newest is None:
            self.newest, self.first_s = (stamp_s, frame), stamp_s
            return
        if stamp_s - self.newest[0] < MIN_INTERVAL_S:
            return
        change = (_change(frame, self.newest[1]) if _same_size(frame, self.newest[1])
                  else float('nan'))
        if change <= _REPEATED:
            return  # the same image again: the next change spans the whole interval
        self.changes.append((self.newest[0], stamp_s, change))
        self.newest = (stamp_s, frame)
        if self.keep_s is not None:
            while self.changes and self.changes[0][1] < stamp_s - self.keep_s:
                self.changes.popleft()

    @property
    def span_s(self):
        """Return the seconds of stamps since the first image."""
        return 0.0 if self.newest is None else self.newest[0] - self.first_s


def motion_signal(stamps_s, frames):
    """Return the :class:`MotionSignal` of frames (see :func:`frame_for_motion`) and stamps.

    Args:
        stamps_s: (N,) the frames' stamps (s), in any order: frames are sorted by stamp, and
            of frames with the same stamp the first is kept.
        frames: N standardised frames (:func:`frame_for_motion`; float16 copies save half
            the memory and change no result that matters). Where the size changes (a
            camera set to another resolution mid-recording) the change between the two sizes
            is left out, as a lost frame's.

    Raises:
        ValueError: lengths that differ, or fewer than 3 distinct stamps or images (a frame
            equal to the one before is left out).

    """
    stamps = np.asarray(stamps_s, dtype=np.float64)
    if stamps.ndim != 1 or len(stamps) != len(frames):
        raise ValueError(f'{len(frames)} frames with stamps of shape {stamps.shape}')
    order = np.argsort(stamps, kind='stable')
    kept = [order[0]] if len(order) else []
    for index in order[1:]:
        if stamps[index] > stamps[kept[-1]]:
            kept.append(index)
    if len(kept) < 3:
        raise ValueError(f'{len(kept)} frames of distinct stamps; the motion signal needs 3')
    log = ChangeLog()
    for index in kept:
        log.add(stamps[index], frames[index])
    try:
        return signal_from_changes(log.changes)
    except ValueError as exc:
        raise ValueError(f'{len(log.changes) + 1} distinct images among {len(kept)} frames: '
                         f'{exc}') from None


def signal_from_changes(changes):
    """Return the :class:`MotionSignal` of ``[(start_s, end_s, change)]`` of new images.

    ``change`` is the mean absolute difference of the standardised images at the two stamps
    (NaN: not comparable, a size change). An interval longer than :data:`_GAP` times the
    median one is a gap (left out, and not read across), as is a NaN change.

    Raises:
        ValueError: fewer than 2 intervals without a gap.

    """
    table = np.asarray(changes, dtype=np.float64).reshape(-1, 3)
    intervals = table[:, 1] - table[:, 0]
    limit = _GAP * float(np.median(intervals)) if len(table) else 0.0
    keep = (intervals <= limit) & np.isfinite(table[:, 2]) & (intervals > 0)
    if keep.sum() < 2:
        resized = int(np.isnan(table[:, 2]).sum())
        why = (f' ({resized} of the {len(table)} join images of different sizes: a camera '
               f'changing its resolution)' if resized else '')
        raise ValueError(f'{int(keep.sum())} intervals without a gap{why}; the motion signal '
                         f'needs 2')
    return MotionSignal(0.5 * (table[keep, 0] + table[keep, 1]),
                        table[keep, 2] / intervals[keep], limit)


def _change(frame, other):
    """Return the mean absolute difference of two frames (float32 arithmetic)."""
    return float(np.abs(np.asarray(frame, np.float32) - np.asarray(other, np.float32)).mean())


def _same_size(frame, other):
    return np.shape(frame) == np.shape(other)


def _grid(visible, infrared, offset_s, step_s):
    """Return the times (s) where both signals are defined with the IR moved by ``offset_s``."""
    start = max(visible.times_s[0], infrared.times_s[0] + offset_s)
    stop = min(visible.times_s[-1], infrared.times_s[-1] + offset_s)
    if stop - start < 10 * step_s:
        return None
    return np.arange(start, stop, step_s)


def correlation_at_offsets(visible, infrared, offsets_s, step_s=STEP_S):
    """Return the Pearson correlation of the two signals at each candidate IR offset.

    The IR signal's times are moved by each offset (the IR stamps plus the offset, as the node
    corrects them) and both signals are sampled every ``step_s`` seconds (linear
    interpolation) where both are defined and not inside a gap; NaN where they share less
    than half of the visible signal's length (and ten steps) or a signal is constant there.

    Args:
        visible, infrared: :class:`MotionSignal` of each camera.
        offsets_s: (K,) candidate offsets (s).
        step_s: the sampling step (s).

    Returns:
        (K,) float64 correlations in [-1, 1] or NaN.

    """
    out = np.full(len(offsets_s), np.nan)
    # Compared over less than half the visible signal, a few samples can correlate by chance
    # (a frozen IR image masks a stretch of one part of the recording).
    own = np.arange(visible.times_s[0], visible.times_s[-1], step_s)
    needed = max(10, 0.5 * int(visible.readable(own).sum()))
    for index, offset in enumerate(offsets_s):
        grid = _grid(visible, infrared, offset, step_s)
        if grid is None:
            continue
        keep = visible.readable(grid) & infrared.readable(grid - offset)
        if keep.sum() < needed:
            continue
        a = np.interp(grid[keep], visible.times_s, visible.values)
        b = np.interp(grid[keep] - offset, infrared.times_s, infrared.values)
        a, b = a - a.mean(), b - b.mean()
        norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
        if norm > _EPS:
            out[index] = float((a * b).sum() / norm)
    return out


def _peak(offsets, correlations):
    """Return ``(offset, correlation)`` of the highest correlation, refined by a parabola."""
    if not np.isfinite(correlations).any():
        return None, float('nan')
    best = int(np.nanargmax(correlations))
    offset, value = float(offsets[best]), float(correlations[best])
    if 0 < best < len(offsets) - 1 and np.isfinite(correlations[best - 1:best + 2]).all():
        left, mid, right = correlations[best - 1:best + 2]
        curvature = left - 2 * mid + right
        if curvature < 0:
            shift = 0.5 * (left - right) / curvature
            offset += shift * float(offsets[best + 1] - offsets[best])
            value = float(mid - 0.25 * (left - right) * shift)
    return offset, value


@dataclass(frozen=True)
class TimeOffsetEstimate:
    """The IR camera's time offset found by :func:`estimate_time_offset`.

    Attributes:
        offset_s: the node's ``sync.infrared_time_offset`` (s): the visible stamp of an
            instant minus the IR stamp of the same instant. None when no offset could be
            scored (recordings that do not overlap in time).
        correlation: the motion signals' Pearson correlation at ``offset_s`` (1: identical).
        runner_up: the highest other peak (local maximum) of the curve more than
            ``separation_s`` from ``offset_s``, NaN if none (a second peak nearly as high: a
            periodic motion, an ambiguous estimate).
        window_offsets_s: the estimate in each of ``windows`` equal parts of the overlap
            (None for a part with no peak): how much the estimate moves over the recording.
        window_correlations: the peak correlation of each part (NaN for a part with none).
        sharpness: how much the correlation changes within :data:`SHARPNESS_SPAN_S` of the
            peak (its highest minus its lowest value there): near 0 for motion that varies too
            slowly to place in time (a steady pan), whose curve is flat around the peak.
        window_sharpness: the same for each part (NaN for a part with no peak).
        offsets_s, correlations: the candidate offsets (s) and their correlations (the curve).
        separation_s: the distance (s) from the peak beyond which ``runner_up`` is sought.
        window_spans_s: ``(start_s, stop_s)`` of each part, in seconds of visible stamps since
            the two recordings first overlap.

    """

    offset_s: float
    correlation: float
    runner_up: float
    window_offsets_s: tuple
    window_correlations: tuple
    sharpness: float
    window_sharpness: tuple
    offsets_s: np.ndarray
    correlations: np.ndarray
    separation_s: float
    window_spans_s: tuple = ()

    def window_spread_s(self, min_correlation=0.0, min_sharpness=0.0):
        """Return the range (s) of the estimates of the parts with a clear peak.

        A part counts when its peak correlation reaches ``min_correlation`` and its sharpness
        ``min_sharpness`` (a part without motion has no estimate to trust). NaN with fewer
        than two such parts.
        """
        found = [offset for offset, value, sharp in zip(
            self.window_offsets_s, self.window_correlations, self.window_sharpness)
            if offset is not None and value >= min_correlation and sharp >= min_sharpness]
        return max(found) - min(found) if len(found) > 1 else float('nan')


def _sharpness(offsets, correlations, offset_s):
    """Return the range of the correlations within :data:`SHARPNESS_SPAN_S` of ``offset_s``."""
    near = (np.abs(offsets - offset_s) <= SHARPNESS_SPAN_S) & np.isfinite(correlations)
    return float(np.ptp(correlations[near])) if near.any() else float('nan')


def _median_interval(signal):
    return float(np.median(np.diff(signal.times_s))) if len(signal.times_s) > 1 else 0.0


def estimate_time_offset(visible, infrared, max_offset_s=0.5, windows=3, step_s=STEP_S):
    """Estimate the IR time offset (s) that lines the two cameras' motion signals up.

    Args:
        visible, infrared: :class:`MotionSignal` of each camera (:func:`motion_signal`).
        max_offset_s: the largest offset (s) tried, either way (the node takes up to 1 s).
        windows: the number of equal parts of the overlap estimated on their own as well
            (0: none).
        step_s: the step (s) of the candidate offsets near the best (first searched every
            :data:`COARSE_STEP_S`; the curve kept in the result is that coarse one).

    Returns:
        :class:`TimeOffsetEstimate`.

    Raises:
        ValueError: ``max_offset_s`` not in (0, 1], ``step_s`` not positive or not below
            ``max_offset_s``, or ``windows`` negative.

    """
    if not 0 < max_offset_s <= 1:
        raise ValueError(f'max_offset_s must be in (0, 1] s, got {max_offset_s}')
    if not 0 < step_s < max_offset_s:
        raise ValueError(f'step_s must be in (0, max_offset_s), got {step_s}')
    if windows < 0:
        raise ValueError(f'windows must be >= 0, got {windows}')
    # Coarse to fine: every offset COARSE_STEP_S apart on signals sampled as often, then
    # every step_s within two coarse steps of the best (a 30 s window: 0.2 s, not 3 s).
    coarse_step = max(step_s, COARSE_STEP_S)
    count = int(round(max_offset_s / coarse_step))
    offsets = np.arange(-count, count + 1) * coarse_step
    correlations = correlation_at_offsets(visible, infrared, offsets, coarse_step)
    offset, value = _fine_peak(visible, infrared, offsets, correlations, step_s, max_offset_s)
    # A second peak is sought beyond the slower camera's frame interval from the first.
    separation = max(_median_interval(visible), _median_interval(infrared),
                     4 * coarse_step)
    runner_up = float('nan')
    if offset is not None:
        runner_up = _second_peak(offsets, correlations, offset, separation)
    found, found_values, found_sharpness, spans = [], [], [], []
    if windows and offset is not None:
        start = max(visible.times_s[0], infrared.times_s[0] + offset)
        stop = min(visible.times_s[-1], infrared.times_s[-1] + offset)
        edges = np.linspace(start, stop, windows + 1)
        for low, high in zip(edges[:-1], edges[1:]):
            part = _window(visible, low, high)
            curve = (None if part is None
                     else correlation_at_offsets(part, infrared, offsets, coarse_step))
            window_offset, window_value = (None, float('nan')) if curve is None else (
                _fine_peak(part, infrared, offsets, curve, step_s, max_offset_s))
            found.append(window_offset)
            found_values.append(window_value)
            found_sharpness.append(float('nan') if window_offset is None
                                   else _sharpness(offsets, curve, window_offset))
            spans.append((float(low - start), float(high - start)))
    sharpness = float('nan') if offset is None else _sharpness(offsets, correlations, offset)
    return TimeOffsetEstimate(offset, value, runner_up, tuple(found), tuple(found_values),
                              sharpness, tuple(found_sharpness), offsets, correlations,
                              separation, tuple(spans))


def _fine_peak(visible, infrared, offsets, correlations, step_s, max_offset_s):
    """Return ``(offset, correlation)``: the coarse curve's peak searched every ``step_s``.

    Within two coarse steps of the coarse curve's highest point (and ``max_offset_s``), on
    signals sampled every ``step_s``, refined by a parabola (:func:`_peak`).
    """
    if not np.isfinite(correlations).any():
        return None, float('nan')
    best = float(offsets[int(np.nanargmax(correlations))])
    reach = 2 * float(offsets[1] - offsets[0])
    fine = np.arange(max(best - reach, -max_offset_s), min(best + reach, max_offset_s)
                     + step_s / 2, step_s)
    return _peak(fine, correlation_at_offsets(visible, infrared, fine, step_s))


def _second_peak(offsets, correlations, offset_s, separation_s):
    """Return the highest local maximum of the curve more than ``separation_s`` from the peak.

    Only local maxima count (a point above both neighbours): the slopes of a broad peak are
    not a second one. NaN when there is none.
    """
    values = np.where(np.isfinite(correlations), correlations, -np.inf)
    inner = (values[1:-1] > values[:-2]) & (values[1:-1] >= values[2:])
    maxima = np.flatnonzero(inner) + 1
    maxima = maxima[np.abs(offsets[maxima] - offset_s) > separation_s]
    return float(values[maxima].max()) if len(maxima) else float('nan')


def _window(signal, start_s, stop_s):
    """Return the part of ``signal`` between two times (None with fewer than 3 samples).

    Its gaps stay gaps: the part is not read across them.
    """
    keep = (signal.times_s >= start_s) & (signal.times_s <= stop_s)
    if keep.sum() < 3:
        return None
    return MotionSignal(signal.times_s[keep], signal.values[keep], signal.max_gap_s)


MIN_CORRELATION = 0.5  # below: the signals share too little to trust the peak
MIN_SHARPNESS = 0.05  # below: the curve is flat around its peak (motion too slow to place)
PEAK_MARGIN = 0.1  # another peak within this of the highest: ambiguous
# Parts of the recording with clear peaks of their own that disagree by more than this many
# frame intervals of the slower camera: no one offset fits (a chance peak, drifting stamps).
MAX_SPREAD_INTERVALS = 3
# s: the node's default sync.slop (tarfuse_ros.ros.params). An offset wrong by more than this
# pairs each image with none, or with another than the one captured with it: the offsets of
# the first and last parts of a recording further apart drift more than a fixed offset pairs.
PAIRING_TOLERANCE_S = 0.05
# The parts of a recording must each hold this many frame intervals of the slower camera for
# their offsets to tell drifting stamps: parts of a steady rig's recording (IR 9 Hz, 60 ms
# late) of 10 s (30 intervals) moved one way by more than PAIRING_TOLERANCE_S in 3 of 16
# simulated recordings (127 ms apart at most), of 14 s and 20 s (42, 60) in none of 24.
DRIFT_MIN_INTERVALS = 40


def rounded_offset(offset_s):
    """Return ``offset_s`` (s) rounded to the millisecond, as the tools print and write it.

    An estimate within half a millisecond below zero gives 0.0, not -0.0 (printed ``-0``).
    """
    value = round(float(offset_s), 3)
    return 0.0 if value == 0 else value


def estimate_problem(estimate, max_offset_s, min_correlation=MIN_CORRELATION):
    """Return why ``estimate`` cannot be trusted (a sentence), or None when it can.

    Refused: no overlap; a peak at the edge of the offsets searched (the offset may lie
    beyond); a peak correlation below ``min_correlation`` (too little shared motion); a
    sharpness below :data:`MIN_SHARPNESS` (motion that varies too slowly to place in time);
    another peak within :data:`PEAK_MARGIN` of the highest (a periodic motion); parts of the
    recording whose own clear peaks lie more than :data:`MAX_SPREAD_INTERVALS` frame intervals
    of the slower camera apart (no one offset fits).
    """
    if estimate.offset_s is None or not np.isfinite(estimate.correlation):
        return ('the recordings of the two cameras do not overlap in time, or too little: at '
                'no offset tried do they share half of the visible recording (or its motion '
                'signal is constant); record both cameras at once, for a few seconds')
    step = float(estimate.offsets_s[1] - estimate.offsets_s[0])
    if abs(estimate.offset_s) >= max_offset_s - 1.5 * step:
        return (f'the best offset lies at the edge of the offsets searched '
                f'({estimate.offset_s:+.3f} s of +-{max_offset_s:g} s): the offset may be '
                f'larger; raise --max-offset')
    if estimate.correlation < min_correlation:
        return (f'the motion signals correlate at most {estimate.correlation:.2f} (below '
                f'{min_correlation:g}): the recording has too little motion seen by both '
                f'cameras; record the rig turning and stopping, or something crossing both '
                f'views')
    if not estimate.sharpness >= MIN_SHARPNESS:
        return (f'the correlation hardly changes with the offset ({estimate.sharpness:.3f} '
                f'within {SHARPNESS_SPAN_S:g} s of the best, below {MIN_SHARPNESS:g}): the '
                f'motion varies too slowly to place in time (a steady pan); record the rig '
                f'starting and stopping')
    if estimate.runner_up >= estimate.correlation - PEAK_MARGIN:
        return (f'another offset fits nearly as well (correlation {estimate.runner_up:.2f} '
                f'against {estimate.correlation:.2f}): a periodic motion; record motion that '
                f'varies')
    spread = estimate.window_spread_s(min_correlation, MIN_SHARPNESS)
    if spread > MAX_SPREAD_INTERVALS * estimate.separation_s:
        return (f'the parts of the recording, each with a clear peak of its own, give offsets '
                f'{1000 * spread:.0f} ms apart, more than {MAX_SPREAD_INTERVALS} frame '
                f'intervals of the slower camera ({1000 * estimate.separation_s:.0f} ms): no '
                f'one offset fits the whole recording (a peak by chance, where the cameras '
                f'share little motion, or stamps that drift); record the rig turning and '
                f'stopping for longer, and check the clocks of both cameras')
    return None


def estimate_warnings(estimate, min_correlation=MIN_CORRELATION,
                      tolerance_s=PAIRING_TOLERANCE_S):
    """Return notes on an accepted ``estimate`` that its user should see (possibly none).

    The parts of the recording with a clear peak (a peak correlation of ``min_correlation``
    and a sharpness of :data:`MIN_SHARPNESS` at least) are compared:

    * their offsets move one way through the recording and the first and the last part's are
      more than ``tolerance_s`` (s; :data:`PAIRING_TOLERANCE_S`, the node's default
      ``sync.slop``) apart: the stamps drift, and no fixed offset pairs the whole recording
      (the note names both parts' offsets and times); with parts of fewer than
      :data:`DRIFT_MIN_INTERVALS` frame intervals of the slower camera the note says instead
      that they are too short to tell a drift from chance, and how long to record;
    * else, they spread over more than the slower camera's frame interval: the offset drifts,
      or a part's motion is weak;
    * a part without a clear peak is named too.
    """
    notes = []
    clear = [(value >= min_correlation and sharp >= MIN_SHARPNESS)
             for value, sharp in zip(estimate.window_correlations, estimate.window_sharpness)]
    drift = _drift(estimate, clear, tolerance_s)
    spread = estimate.window_spread_s(min_correlation, MIN_SHARPNESS)
    if drift is not None:
        notes.append(drift)
    elif spread > estimate.separation_s:
        interval_ms = 1000 * estimate.separation_s
        notes.append(f'the parts of the recording disagree by {1000 * spread:.0f} ms, more '
                     f'than the frame interval of the slower camera ({interval_ms:.0f} ms): '
                     f'the offset may drift (stamps from two clocks), or a part has little '
                     f'motion; record again and compare')
    unclear = len(clear) - sum(clear)
    if unclear:
        notes.append(f'{unclear} of {len(clear)} parts of the recording have no clear peak of '
                     f'their own (too little motion there)')
    return notes


def _drift(estimate, clear, tolerance_s):
    """Return the note on an offset drifting by more than ``tolerance_s`` (s), or None.

    Drifting: the clear parts' offsets move one way through the recording (a part's chance
    error moves them back and forth), the first and the last more than ``tolerance_s`` apart,
    in parts of :data:`DRIFT_MIN_INTERVALS` frame intervals at least (shorter ones: a note that
    they cannot tell).
    """
    parts = [(offset, span) for offset, span, sure in zip(
        estimate.window_offsets_s, estimate.window_spans_s, clear) if sure]
    if len(parts) < 2:
        return None
    steps = np.diff([offset for offset, _ in parts])
    (first, (start, end)), (last, (later, stop)) = parts[0], parts[-1]
    if abs(last - first) <= tolerance_s or not ((steps >= 0).all() or (steps <= 0).all()):
        return None
    ends = (f'{rounded_offset(first):+.3f} s in its part {start:.1f}-{end:.1f} s, '
            f'{rounded_offset(last):+.3f} s in its part {later:.1f}-{stop:.1f} s '
            f'({1000 * abs(last - first):.0f} ms apart')
    intervals = (end - start) / estimate.separation_s
    if intervals < DRIFT_MIN_INTERVALS:  # the parts' own errors move them that far
        needed_s = len(estimate.window_offsets_s) * DRIFT_MIN_INTERVALS * estimate.separation_s
        return (f'the offsets of the parts of the recording move one way: {ends}), but parts '
                f'of {intervals:.0f} frame intervals of the slower camera, fewer than '
                f'{DRIFT_MIN_INTERVALS}, are too short to tell drifting stamps from chance; '
                f'record {needed_s:.0f} s or more to check')
    return (f'the offset drifts through the recording: {ends}, more than the '
            f'{tolerance_s:g} s within which the node pairs images at its default sync.slop): a '
            f'fixed offset cannot pair the whole recording; the clocks of the two cameras drift '
            f'apart: stamp both from one clock (synchronise them, e.g. with PTP)')


# A monitor's window must hold this many frame intervals of the slower camera: over fewer
# (a 0.5 s window of a 9 Hz camera holds 4), the noise of a still scene correlated above 0.5 at
# some offset in one check of seven (benchmarks/time_offset.py's still scene).
MIN_INTERVALS = 16
# s: a camera whose newest stamp lags the other's by more than the largest offset searched and
# this has stopped (the window would be read from the other camera's past).
STOPPED_S = 0.5


class OffsetMonitor:
    """The IR time offset of a live stream, from its last ``window_s`` seconds (thread-safe).

    Images go in with :meth:`add` as they arrive (the IR with its driver's own stamp, before
    any correction); :meth:`check` estimates the offset over the window as
    :func:`estimate_time_offset` does and judges it with :func:`estimate_problem`. A stamp
    more than a second behind its camera's newest (a bag loop, a clock reset) starts both
    cameras over. A window holding fewer than :data:`MIN_INTERVALS` frame intervals of the
    slower camera, or a camera whose newest stamp lags the other's by more than ``max_offset_s``
    and :data:`STOPPED_S` (it stopped), gives no estimate.
    """

    def __init__(self, window_s, max_offset_s=1.0):
        if not window_s > 0:
            raise ValueError(f'window_s must be > 0, got {window_s}')
        self.window_s = float(window_s)
        self.max_offset_s = float(max_offset_s)
        # Per camera: the changes between consecutive new images (a few numbers per image, so
        # a long window costs no memory to speak of), those of the window and the search's
        # reach beyond it.
        self._logs = self._new_logs()
        self._lock = threading.Lock()

    def _new_logs(self):
        return {camera: ChangeLog(self.window_s + self.max_offset_s) for camera in ('ir', 'vi')}

    def add(self, camera, stamp_s, image):
        """Add one image (``camera`` ``'ir'`` or ``'vi'``; see :func:`frame_for_motion`).

        Images are left out as :class:`ChangeLog` leaves them out. Returns whether the image
        started both cameras over (a time jump back).
        """
        frame = frame_for_motion(image)
        stamp_s = float(stamp_s)
        with self._lock:
            newest = self._logs[camera].newest
            jumped = newest is not None and stamp_s < newest[0] - 1.0
            if jumped:
                self._logs = self._new_logs()
            self._logs[camera].add(stamp_s, frame)
        return jumped

    def span_s(self):
        """Return ``{camera: seconds of stamps since its first image (since a start over)}``."""
        with self._lock:
            return {camera: log.span_s for camera, log in self._logs.items()}

    def check(self, windows=3):
        """Return ``(estimate, problem)`` over the window, or None before it is full.

        ``problem`` is :func:`estimate_problem`'s sentence, or None for an estimate to trust.
        """
        with self._lock:
            held = {camera: list(log.changes) for camera, log in self._logs.items()}
            spans = {camera: log.span_s for camera, log in self._logs.items()}
        if any(len(changes) < 2 or spans[camera] < self.window_s
               for camera, changes in held.items()):
            return None
        newest = {camera: changes[-1][1] for camera, changes in held.items()}
        lag = max(newest.values()) - min(newest.values())
        if lag > self.max_offset_s + STOPPED_S:  # more than any offset searched explains
            silent = 'IR' if newest['ir'] < newest['vi'] else 'visible'
            return None, (f'no {silent} images for the last {lag:.1f} s of the other '
                          f"camera's stamps: the {silent} camera stopped, or its images are "
                          f'left out')
        newest = min(newest.values())
        signals = {}
        for camera, changes in held.items():
            try:
                signals[camera] = signal_from_changes(changes)
            except ValueError as exc:  # a frozen or constant camera: no motion to place
                return None, f'no motion signal from the {camera} camera ({exc})'
        visible = _window(signals['vi'], newest - self.window_s, newest)
        if visible is None:
            return None, 'too few visible images in the window'
        infrared = signals['ir'].times_s
        intervals = min(len(visible.times_s), int(np.count_nonzero(
            (infrared >= newest - self.window_s) & (infrared <= newest))))
        if intervals < MIN_INTERVALS:
            return None, (f'the last {self.window_s:g} s hold {intervals} frame intervals of '
                          f'the slower camera, fewer than {MIN_INTERVALS}: too few to tell '
                          f'motion from noise (a still scene correlates by chance); lengthen '
                          f'the window')
        estimate = estimate_time_offset(visible, signals['ir'], self.max_offset_s, windows)
        return estimate, estimate_problem(estimate, self.max_offset_s)
