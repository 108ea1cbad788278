"""Counters, rates, latencies and throttled warnings of the fusion node, and their diagnostics.

Everything here is plain Python (thread-safe where the node's worker and executor threads both
touch it); :func:`build_status` turns a snapshot into a ``diagnostic_msgs/DiagnosticStatus``.
"""

from collections import deque
import math
import os
import resource
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
import numpy as np

__all__ = ['InputClock', 'NodeStats', 'WarningThrottle', 'arrival_rate', 'build_status',
           'process_rss_mib']

# pairs_dropped: overwritten in the keep-newest slot while the model was busy (an overload);
# pairs_skipped_max_rate: left out by max_rate before the slot (asked for).
_COUNTERS = ('infrared_msgs', 'visible_msgs', 'pairs_received', 'pairs_processed',
             'pairs_dropped', 'pairs_skipped_max_rate', 'pairs_rejected', 'messages_rejected',
             'sync_resets', 'pairs_not_nearest', 'codec_warnings')


class WarningThrottle:
    """Let one message per key through every ``period_s`` seconds, counting the ones held back.

    A key names the cause (``'zero_stamp:infrared'``), so different causes never hide each other.
    """

    def __init__(self, period_s=5.0, clock=time.monotonic):
        self.period_s = float(period_s)
        self._clock = clock
        self._last = {}
        self._held = {}
        self._lock = threading.Lock()

    def admit(self, key):
        """Return ``None`` to hold the message back, else how many were held since the last."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


class InputClock:
    """Seconds that never go back, for the inputs' silences and rates: the node's own time.

    Wall (monotonic) time, or under ``use_sim_time`` the ROS time while ``/clock`` runs: a
    bag played at ``--rate 0.5`` delivers its images twice as far apart in wall time, and at
    ``diagnostics.input_timeout`` below that spacing both inputs were said to have stopped
    while every pair was fused. ``ros_now_ns()`` returns the simulated ROS time (ns), or None
    where there is none (``use_sim_time`` false, no ``/clock`` yet). Its steps forward advance
    this clock; a step back (a bag's loop) advances it by the wall time passed, as does a ROS
    time standing still for ``stall_s`` or more (a bag ended or paused: nothing comes, and its
    stand is counted from its start). The step forward that ends a stand counted so adds only
    what it exceeds the stand by. A jump forward (a player seeking ahead), said by
    :meth:`jumped`, advances it by the wall time passed too: counted, it was a silence of every
    input as long as the jump, 'both inputs stopped ... for 600.0 s' at the next input check
    while the images of the new time were on their way. So does a step forward beyond the ROS
    time's pace over the last 2 s of readings (ROS s per wall s, known after 1 s) by more
    than 1 s and twice the largest step of those readings: a seek shorter than the jumps
    :meth:`jumped` is told of (the node's input timeout, which a fast bag's ticks may reach),
    counted, made a silence of a jump just under the timeout and a short pause of the images,
    and read the rates low for 10 s. A fast bag's ticks keep its pace.
    """

    def __init__(self, ros_now_ns, stall_s=1.0, monotonic=time.monotonic):
        self._ros_now_ns = ros_now_ns
        self.stall_s = float(stall_s)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._wall = monotonic()
        self._value = self._wall
        self._ros = None
        self._ros_changed = None  # wall time of the ROS time's last change
        self._jumped = False  # a jump forward since the last reading
        # (wall s, ROS ns, ROS step s) of the readings of the last 2 s since the ROS time
        # last stepped back or jumped: its pace.
        self._recent = deque()

    def _stand(self, wall):
        """Return the wall time (s) a ROS time standing since it changed counts at ``wall``."""
        standing = wall - self._ros_changed
        return standing if standing >= self.stall_s else 0.0

    def jumped(self):
        """Note that the ROS time jumped forward: the reading after counts the wall time."""
        with self._lock:
            self._jumped = True

    def _beyond_pace(self, wall, ros_step):
        """Return whether a step forward of ``ros_step`` s at ``wall`` is a jump."""
        recent = self._recent
        if len(recent) < 2 or self._wall - recent[0][0] < 1.0:
            return False  # no pace known yet
        pace = (self._ros - recent[0][1]) / 1e9 / (self._wall - recent[0][0])
        largest = max(step for _, _, step in recent)
        return ros_step > pace * (wall - self._wall) + max(1.0, 2.0 * largest)

    def _note_pace(self, wall, ros, jumped):
        """Add a reading to the pace's; start over where the ROS time stepped back or jumped."""
        recent = self._recent
        if ros is None or self._ros is None or jumped or ros < self._ros:
            recent.clear()
        if ros is not None:
            recent.append((wall, ros, (ros - self._ros) / 1e9 if recent else 0.0))
            while len(recent) > 2 and wall - recent[1][0] >= 2.0:
                recent.popleft()

    def __call__(self):
        """Return the clock's time (s)."""
        with self._lock:
            wall, ros = self._monotonic(), self._ros_now_ns()
            step = wall - self._wall  # no ROS time to follow, it stepped back or jumped
            jumped, self._jumped = self._jumped, False
            if (not jumped and ros is not None and self._ros is not None and ros > self._ros
                    and self._beyond_pace(wall, (ros - self._ros) / 1e9)):
                jumped = True
            self._note_pace(wall, ros, jumped)
            if ros is not None and self._ros is not None and not jumped:
                if ros > self._ros:
                    # Less the stand counted before it (the wall time that stood in for the
                    # ROS time this step covers): a /clock of 1 Hz, its ticks a little over
                    # 1 s apart, had both counted, and this clock ran up to twice as fast.
                    step = (ros - self._ros) / 1e9 - self._stand(self._wall)
                elif ros == self._ros:
                    step = self._stand(wall) - self._stand(self._wall)
            if ros is not None and ros != self._ros:
                self._ros_changed = wall
            self._wall, self._ros = wall, ros
            self._value += max(step, 0.0)
            return self._value


# Counters whose rates /diagnostics reports, and the names of those rates.
_RATES = {'infrared_msgs': 'infrared_rate_hz', 'visible_msgs': 'visible_rate_hz',
          'pairs_received': 'input_rate_hz', 'pairs_processed': 'output_rate_hz'}


def arrival_rate(times, now, horizon_s):
    """Return the rate (Hz) of events at monotonic ``times`` (ascending), seen at ``now``.

    Over the events of the last ``horizon_s`` seconds: one over their mean interval (as
    ``ros2 topic hz``), or one over the time since the last event where that is longer (a
    stream that stopped decays towards 0 instead of keeping its old rate); one event in the
    horizon gives ``1 / horizon_s``, none 0. Unlike a count per diagnostics period, a steady
    0.5 Hz stream reads 0.5 whatever the period.
    """
    recent = [t for t in times if now - t <= horizon_s]
    if len(recent) < 2:
        return len(recent) / horizon_s
    interval = (recent[-1] - recent[0]) / (len(recent) - 1)
    return 1.0 / max(interval, now - recent[-1], 1e-9)


class NodeStats:
    """Counters since start, plus rates and per-window latencies for ``/diagnostics``.

    Rates are :func:`arrival_rate` over the last ``rate_horizon_s`` seconds (at most
    ``window`` events per counter); latencies, and the synchronised pairs' stamp gaps, are
    those of the pairs since the last snapshot.
    """

    def __init__(self, clock=time.monotonic, window=1000, rate_horizon_s=10.0):
        self._clock = clock
        self._lock = threading.Lock()
        self.totals = dict.fromkeys(_COUNTERS, 0)
        self.rate_horizon_s = float(rate_horizon_s)
        self._arrivals = {name: deque(maxlen=window) for name in _RATES}
        self._latencies_ms = deque(maxlen=window)
        self._inference_ms = deque(maxlen=window)
        self._pair_gaps_ms = deque(maxlen=window)
        self.last_latency_ms = float('nan')
        self.last_rejection = ''
        self.last_rejection_time = None  # monotonic time of the last rejected pair
        self.first_pair_time = None  # monotonic time of the first synchronised pair
        self.last_pair_time = None  # monotonic time of the last synchronised pair
        self.last_output_time = None  # monotonic time of the last processed pair

    def count(self, name, n=1):
        """Add ``n`` to counter ``name`` (one of the names in ``totals``)."""
        with self._lock:
            self.totals[name] += n
            now = self._clock()
            if name in self._arrivals:
                self._arrivals[name].extend([now] * n)
            if name == 'pairs_received':
                if self.first_pair_time is None:  # set first: the health check reads unlocked
                    self.first_pair_time = now
                self.last_pair_time = now

    def record_pair_gap(self, gap_ms):
        """Add the stamp difference of one synchronised pair, |IR - visible| (ms)."""
        with self._lock:
            self._pair_gaps_ms.append(float(gap_ms))

    def reject(self, cause, pair=True):
        """Count a rejected pair (or a single rejected message) and remember the cause."""
        with self._lock:
            self.totals['pairs_rejected' if pair else 'messages_rejected'] += 1
            self.last_rejection = cause
            if pair:
                self.last_rejection_time = self._clock()

    def record_output(self, latency_ms, inference_ms):
        """Count one processed pair with its latency (now - input stamp) and engine time.

        A latency of NaN (the time is unknown: sim time before the first /clock) is not
        added to the window figures.
        """
        with self._lock:
            self.totals['pairs_processed'] += 1
            self._arrivals['pairs_processed'].append(self._clock())
            if not math.isnan(latency_ms):
                self._latencies_ms.append(float(latency_ms))
            self._inference_ms.append(float(inference_ms))
            self.last_latency_ms = float(latency_ms)
            self.last_output_time = self._clock()

    def snapshot(self, reset_window=True):
        """Return a dict of totals, rates (Hz) and latency figures (ms) of the window."""
        with self._lock:
            now = self._clock()
            lat = np.asarray(self._latencies_ms, dtype=np.float64)
            inf = np.asarray(self._inference_ms, dtype=np.float64)
            gaps = np.asarray(self._pair_gaps_ms, dtype=np.float64)
            snap = dict(self.totals)
            snap.update({rate: arrival_rate(self._arrivals[name], now, self.rate_horizon_s)
                         for name, rate in _RATES.items()})
            snap.update({
                'latency_ms_median': float(np.median(lat)) if lat.size else float('nan'),
                'latency_ms_p90': float(np.percentile(lat, 90)) if lat.size else float('nan'),
                'latency_ms_max': float(lat.max()) if lat.size else float('nan'),
                'latency_ms_last': self.last_latency_ms,
                'inference_ms_median': float(np.median(inf)) if inf.size else float('nan'),
                'pair_stamp_gap_ms_median': (float(np.median(gaps)) if gaps.size
                                             else float('nan')),
                'pair_stamp_gap_ms_max': float(gaps.max()) if gaps.size else float('nan'),
                'last_rejection': self.last_rejection,
            })
            if reset_window:
                self._latencies_ms.clear()
                self._inference_ms.clear()
                self._pair_gaps_ms.clear()
            return snap


def process_rss_mib():
    """Return the resident memory of this process in MiB (peak RSS where /proc is absent)."""
    try:
        with open('/proc/self/statm') as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf('SC_PAGE_SIZE') / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _format(value):
    if isinstance(value, float):
        return 'nan' if value != value else f'{value:.3f}'
    return str(value)


def build_status(name, hardware_id, snapshot, problems, extra=None):
    """Return a ``DiagnosticStatus``: WARN listing ``problems`` if any, else OK.

    Args:
        name: status name, ``'<namespace>/<node>: fusion'`` (``'<node>: fusion'`` in ``/``).
        hardware_id: the device the model runs on.
        snapshot: :meth:`NodeStats.snapshot` output.
        problems: list of human-readable problem strings (empty when healthy).
        extra: more ``{key: value}`` pairs (device, model, memory).

    """
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    if problems:
        status.level = DiagnosticStatus.WARN
        status.message = '; '.join(problems)
    elif snapshot['pairs_processed'] == 0:
        status.level = DiagnosticStatus.OK
        status.message = 'waiting for input pairs'
    else:
        status.level = DiagnosticStatus.OK
        status.message = 'fusing'
    items = dict(snapshot)
    items.update(extra or {})
    status.values = [KeyValue(key=str(k), value=_format(v)) for k, v in items.items()]
    return status
