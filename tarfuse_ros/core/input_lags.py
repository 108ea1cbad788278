"""Whether the two cameras' stamps run apart against the time they arrive (no ROS import).

Each image's *lag* is the time the node took it minus its header stamp. The two cameras'
lags differ by the offset of the clocks their drivers stamp by (less the difference of their
transport latencies, tens of ms on one computer). When the drivers' clocks are seconds apart
(two computers not synchronised, a camera stamping with its time since boot) and the offset is
close to a whole number of frame intervals, the approximate synchroniser still forms pairs, of
images taken seconds apart: the stamps alone cannot show it, the lags do.

A bag played without restamping, and without ``use_sim_time``, at ``--rate R`` gives both
cameras a lag that changes by ``1 - R`` s per second: two cameras of different frame rates
compared by the median of each one's last lags would then be compared at different times (up
to seconds apart at a high rate). So each image is compared with the other camera's lag *at
its arrival*, interpolated between the other camera's images that came just before and just
after it: exact for any constant rate, and for a live stream (a constant lag). The arrival
times come from one clock for both cameras (the node's monotonic clock).

:class:`LagCheck` keeps the last ``window`` such differences; their median is robust to one
late image (a late image gives one wrong difference, and at most two of the other camera's
are interpolated with it).
"""

from collections import deque
import statistics

__all__ = ['LagCheck', 'MAX_INFRARED_TIME_OFFSET_S']

# s: the most sync.infrared_time_offset corrects, either way (its range); cameras whose lags
# differ by more have clocks apart (the node's check, the bag tools' check of a recording).
MAX_INFRARED_TIME_OFFSET_S = 1.0


class LagCheck:
    """The median difference of the IR and visible images' lags at the same arrival time.

    Feed it every image accepted for pairing (:meth:`add`, in arrival order); call
    :meth:`reset` where the stamps start a new timeline (a bag loop, a clock reset) or one
    camera's images stopped for a while: the differences across it would mix two timelines.

    Args:
        window: how many differences the median is taken over, and how many are needed before
            :meth:`difference_s` gives one (at least 1).

    Raises:
        ValueError: ``window`` below 1.

    """

    def __init__(self, window=15):
        if window < 1:
            raise ValueError(f'window must be at least 1, got {window}')
        self.window = window
        self._newest = [None, None]  # per input: (arrival ns, lag ns) of its newest image
        # Per input: its images not compared yet, each waiting for the other input's next
        # image as (arrival ns, lag ns, the other input's newest (arrival, lag) or None).
        self._waiting = [deque(maxlen=window), deque(maxlen=window)]
        self._differences = deque(maxlen=window)  # IR lag - visible lag (ns)

    def reset(self):
        """Forget every image and difference: the check starts over."""
        self._newest = [None, None]
        for waiting in self._waiting:
            waiting.clear()
        self._differences.clear()

    def add(self, index, arrival_ns, stamp_ns):
        """Take an image of input ``index`` (0 IR, 1 visible).

        Args:
            index: 0 for the IR input, 1 for the visible one.
            arrival_ns: when the node took it (ns), one monotonic clock for both inputs,
                never before the arrival of an image added before.
            stamp_ns: its header stamp (ns), the IR's with ``sync.infrared_time_offset``.

        """
        lag = arrival_ns - stamp_ns
        other = 1 - index
        for arrival, other_lag, before in self._waiting[other]:
            if before is None:  # nothing of this input before it: nothing to interpolate
                continue
            before_arrival, before_lag = before
            span = arrival_ns - before_arrival
            share = (arrival - before_arrival) / span if span > 0 else 1.0
            lag_then = before_lag + share * (lag - before_lag)
            self._differences.append(other_lag - lag_then if other == 0
                                     else lag_then - other_lag)
        self._waiting[other].clear()
        self._newest[index] = (arrival_ns, lag)
        self._waiting[index].append((arrival_ns, lag, self._newest[other]))

    @property
    def count(self):
        """The differences held (at most ``window``)."""
        return len(self._differences)

    def difference_s(self):
        """Return the median IR lag minus visible lag (s), or None before ``window`` of them.

        Negative: the IR stamps run ahead of the visible ones (or the visible images arrive
        later); positive: the IR stamps run behind (or the IR images arrive later).
        """
        if len(self._differences) < self.window:
            return None
        return statistics.median(self._differences) / 1e9
