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

__all__ = ['NodeStats', 'WarningThrottle', 'build_status', 'process_rss_mib']

_COUNTERS = ('infrared_msgs', 'visible_msgs', 'pairs_received', 'pairs_processed',
             'pairs_dropped', 'pairs_rejected', 'messages_rejected', 'sync_resets')


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


class NodeStats:
    """Counters since start, plus per-window rates and latencies for ``/diagnostics``."""

    def __init__(self, clock=time.monotonic, window=1000):
        self._clock = clock
        self._lock = threading.Lock()
        self.totals = dict.fromkeys(_COUNTERS, 0)
        self._window_counts = dict.fromkeys(('infrared_msgs', 'visible_msgs', 'pairs_received',
                                             'pairs_processed'), 0)
        self._window_start = clock()
        self._latencies_ms = deque(maxlen=window)
        self._inference_ms = deque(maxlen=window)
        self.last_latency_ms = float('nan')
        self.last_rejection = ''
        self.last_rejection_time = None  # monotonic time of the last rejected pair
        self.last_pair_time = None  # monotonic time of the last synchronised pair
        self.last_output_time = None  # monotonic time of the last processed pair

    def count(self, name, n=1):
        """Add ``n`` to counter ``name`` (one of the names in ``totals``)."""
        with self._lock:
            self.totals[name] += n
            if name in self._window_counts:
                self._window_counts[name] += n
            if name == 'pairs_received':
                self.last_pair_time = self._clock()

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
            self._window_counts['pairs_processed'] += 1
            if not math.isnan(latency_ms):
                self._latencies_ms.append(float(latency_ms))
            self._inference_ms.append(float(inference_ms))
            self.last_latency_ms = float(latency_ms)
            self.last_output_time = self._clock()

    def snapshot(self, reset_window=True):
        """Return a dict of totals, window rates (Hz) and latency figures (ms)."""
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._window_start, 1e-6)
            lat = np.asarray(self._latencies_ms, dtype=np.float64)
            inf = np.asarray(self._inference_ms, dtype=np.float64)
            snap = dict(self.totals)
            snap.update({
                'infrared_rate_hz': self._window_counts['infrared_msgs'] / elapsed,
                'visible_rate_hz': self._window_counts['visible_msgs'] / elapsed,
                'input_rate_hz': self._window_counts['pairs_received'] / elapsed,
                'output_rate_hz': self._window_counts['pairs_processed'] / elapsed,
                'latency_ms_median': float(np.median(lat)) if lat.size else float('nan'),
                'latency_ms_p90': float(np.percentile(lat, 90)) if lat.size else float('nan'),
                'latency_ms_max': float(lat.max()) if lat.size else float('nan'),
                'latency_ms_last': self.last_latency_ms,
                'inference_ms_median': float(np.median(inf)) if inf.size else float('nan'),
                'last_rejection': self.last_rejection,
            })
            if reset_window:
                self._window_start = now
                self._window_counts = dict.fromkeys(self._window_counts, 0)
                self._latencies_ms.clear()
                self._inference_ms.clear()
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
        name: status name, ``'<node>: fusion'``.
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
