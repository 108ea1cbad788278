"""Which pairs the node runs its model on under ``max_rate`` (no ROS import).

The pairs are judged by their stamps, not by a clock: the node's clock is the sim time of a
bag under ``use_sim_time`` (0 before the first ``/clock``, stepping back at each loop), and a
steady clock would make which pairs run depend on the machine's load and a bag's playback
speed. By stamps the same recording always gives the same pairs, the outputs' own stamps are
spaced as asked, and a camera's stamps are its capture clock: the rate is what the robot sees.
"""

__all__ = ['StampRateLimit']

# The longest period (ns): no stamp (int64 ns) is further from another. 1e9 / a rate under
# about 1e-299 Hz is no float at all (inf), which int() refuses.
_MAX_PERIOD_NS = 2 ** 63

# Share of the period by which two stamps let through may be closer: a camera's stamps jitter
# by a few ms (and 3 frames of 33_333_333 ns fall 1 ns short of 100 ms), which would otherwise
# make a 10 Hz camera at max_rate 2 pass a frame 0.6 s after the last whenever the fifth frame
# was stamped early.
_JITTER_SHARE = 20


class StampRateLimit:
    """Let through stamps at least ``period_ns`` apart, less a twentieth of it for jitter.

    A stamp passes when it is that far after the last one let through (or is the first);
    a stamp more than a period before the last one (a bag loop, a clock reset: a new
    timeline) passes too and is the new last; any other is held back. ``period_ns`` 0: every
    stamp passes. A stream faster than the rate passes its first frame at or after each
    period (less the allowance): a 10 Hz camera at 2 Hz passes one frame in 5, a 30 Hz camera
    at 7 Hz one in 5 (6 Hz: never more than the rate but for the allowance).
    """

    def __init__(self, period_ns=0):
        if period_ns < 0:
            raise ValueError(f'period_ns must be >= 0, got {period_ns}')
        self.period_ns = int(period_ns)
        self.min_interval_ns = self.period_ns - self.period_ns // _JITTER_SHARE
        self._last_ns = None  # the last stamp let through

    @classmethod
    def for_rate(cls, rate_hz):
        """Return a limit of ``rate_hz`` stamps per second (0: no limit).

        A rate whose period exceeds ``2**63`` ns (under 1.1e-10 Hz) has that period: one
        stamp, then none for centuries.
        """
        if not rate_hz >= 0:
            raise ValueError(f'rate_hz must be >= 0, got {rate_hz}')
        return cls(round(min(1e9 / rate_hz, _MAX_PERIOD_NS)) if rate_hz else 0)

    def admit(self, stamp_ns):
        """Return whether ``stamp_ns`` (ns) passes; one that passes is the new last."""
        if not self.period_ns:
            return True
        stamp_ns = int(stamp_ns)
        last = self._last_ns
        if last is not None and last - self.period_ns <= stamp_ns < last + self.min_interval_ns:
            return False
        self._last_ns = stamp_ns
        return True
