"""Whether the synchroniser's pairs were the nearest images in time (no ROS import).

message_filters' ``ApproximateTimeSynchronizer`` pairs a message as it arrives with the
nearest of the other camera's messages already queued within ``sync.slop``: the first partner
within slop, not the nearest there will be. With a slop above half the faster camera's frame
interval, an IR image often pairs with the visible image before the one nearest in time (a
9 Hz IR camera beside a 30 Hz visible one at the default 0.05 s: about half the pairs).
:class:`NearestPairCheck` tells it afterwards: once the next message of each camera after a
pair has come, that message either is nearer to the pair's other image or not.
"""

from collections import deque

__all__ = ['NearestPairCheck', 'PairVerdict']


class PairVerdict:
    """How far a settled pair was from the nearest: ``nearer_ns`` (0 when it was the nearest).

    ``index`` is the input (0 IR, 1 visible) whose next image came nearer, None when none did.
    """

    __slots__ = ('index', 'nearer_ns')

    def __init__(self, index, nearer_ns):
        self.index = index
        self.nearer_ns = int(nearer_ns)

    @property
    def nearest(self):
        return self.index is None


class NearestPairCheck:
    """Judge each pair by the next message of each input, as the messages come.

    Feed it every pair (:meth:`paired`, the inputs' stamps in ns) and every message accepted
    before it goes to the synchroniser (:meth:`message`, an input's stamps only increase). A
    pair is not the nearest when the next message of one input after the pair is nearer (by
    more than ``tolerance_ns``) to the pair's image of the other input: a nearer partner came
    after the synchroniser had paired. Only the newest pair is open; a pair replaced before
    both its inputs moved on is judged by what came. :attr:`verdicts` holds the last
    ``window`` settled pairs' :class:`PairVerdict` (oldest first).
    """

    def __init__(self, tolerance_ns=1_000_000, window=20):
        self.tolerance_ns = int(tolerance_ns)
        self.verdicts = deque(maxlen=int(window))
        self._open = None  # [stamps, inputs still to judge, verdict so far]

    def paired(self, stamps):
        """Open the pair of per-input ``stamps`` (ns); return the verdict of the pair replaced."""
        settled = self._settle() if self._open is not None else None
        self._open = [tuple(int(s) for s in stamps), {0, 1}, PairVerdict(None, 0)]
        return settled

    def message(self, index, stamp_ns):
        """Judge the open pair by a message of input ``index``; return its verdict once settled.

        Returns None while the pair waits for the other input's next message (or for one of
        this input stamped after the pair).
        """
        if self._open is None:
            return None
        stamps, waiting, verdict = self._open
        if index not in waiting or stamp_ns <= stamps[index]:
            return None
        waiting.discard(index)
        partner = stamps[1 - index]
        nearer = abs(stamps[index] - partner) - abs(int(stamp_ns) - partner)
        if nearer > self.tolerance_ns and nearer > verdict.nearer_ns:
            self._open[2] = PairVerdict(index, nearer)
        return self._settle() if not waiting else None

    def reset(self):
        """Forget the open pair (the synchroniser was reset: a time jump, a silent input)."""
        self._open = None

    def _settle(self):
        verdict = self._open[2]
        self._open = None
        self.verdicts.append(verdict)
        return verdict

    def share_not_nearest(self):
        """Return ``(pairs not the nearest, pairs judged)`` over the window."""
        return sum(not v.nearest for v in self.verdicts), len(self.verdicts)
