"""What a new stamp is to the stamps one input has delivered (no ROS import).

The node keeps one :class:`InputTimeline` per camera and asks it about each image's stamp
(the IR's with ``sync.infrared_time_offset`` added) before the synchroniser sees the image.
A stamp after the newest is the timeline's next. One not after it is:

- a copy (:data:`COPY`, ignored): stamped like an image the input has just delivered, on a
  topic with more than one publisher (a relay or bridge publishing the images again, a second
  driver), unless it is a replay;
- on a topic of one publisher, stamped like one of the images just delivered (not the newest,
  nor the timeline's first), either that image delivered again late (a driver or bridge
  repeating its messages) or a loop shorter than the window (a bag replays its stamps): held
  (:data:`HOLD`) until the next image tells which. The other input's image stamped like it
  (within ``slop``; a bag loop moves both cameras back) or this input's next one stamped among
  those delivered (the replay goes on) makes it a replay (:meth:`InputTimeline.replay_held`);
  this input's next image stamped after the newest makes it a copy (:meth:`~InputTimeline.settle`);
- a replay, which is a time jump (a bag's loop or second play): back to the timeline's first
  stamp once it holds more than two, or a second image in a row stamped among those delivered
  (the replay goes on; a relay's copies come between the images of the publisher it copies);
- out of order (:data:`LATE`, ignored): delivered late among the stamps just delivered, by
  :func:`is_time_jump`;
- else a time jump (:data:`JUMP`: the synchroniser is reset), or the jump the other input made
  first (:data:`JUMP_FOLLOWED`: a bag loop moves both cameras back, which is one jump).

A stamp equal to the newest is no copy on a topic of one publisher: it is the timeline's next
(the synchroniser pairs it, and the node skips a pair of a visible image paired already).

Limits (stamps alone cannot tell these apart): on a topic of one publisher, an image delivered
again late stamped like the timeline's first is taken for a replay, a time jump; beside a second
publisher, a bag of two images in a loop comes back to its first stamp as a relay's copy of it
would (a frame behind): that image is ignored as a copy, and its second image, equal to the
newest, is taken for the next (its pair skipped as paired already), so every other loop is
fused. An image held stays held until its input's next image, or until the node gives it up
(:meth:`InputTimeline.drop_held`) when that input has been silent for
``diagnostics.input_timeout`` (no image came to tell: not fused, counted as a rejection).
"""

import collections

__all__ = ['COPY', 'HOLD', 'InputTimeline', 'is_time_jump', 'JUMP', 'JUMP_FOLLOWED', 'LATE',
           'median_interval_ns', 'NEXT']

NEXT, COPY, LATE, JUMP, JUMP_FOLLOWED = 'next', 'copy', 'late', 'jump', 'jump followed'
HOLD = 'hold'


def is_time_jump(recent_ns, stamp_ns):
    """Return whether ``stamp_ns``, behind the newest of ``recent_ns``, is a jump back in time.

    ``recent_ns`` holds the stamps (ns, oldest first) of an input's last few accepted
    messages; ``stamp_ns`` is earlier than the last of them. It is out of order (a message
    delivered late: a driver with several threads, a bridge) when it falls among them: not
    before the oldest, none of them, and behind the newest by at most as many of the input's
    frame intervals (the median interval between the stamps held before the newest, as the
    newest's own step is in question) as there are stamps held.
    Anything else is a time jump (a bag loop, a clock reset): a stamp before them all; one of
    them, as a bag replays its stamps verbatim, so a loop shorter than the window comes back
    to a stamp it still holds; and a step back from a newest stamp that is far ahead of the
    others (one stamp from a clock that glitched forward, which would otherwise have every
    later message taken for a late one until the clock reaches it). With fewer than three
    stamps held there is no interval before the newest to go by: a jump (a glitch as the
    second stamp of a timeline, at start-up or after a jump, had every later message ignored
    until the clock reached it; a jump there loses at most the one partner held).

    A clock stepped back by less than the window's span, onto no stamp held, is therefore
    taken for late messages until its stamps pass the newest again: at most the window's span
    is lost, whereas a jump found in a late message would reset the synchroniser and lose the
    partners it holds.
    """
    if len(recent_ns) < 3 or stamp_ns < recent_ns[0] or stamp_ns in recent_ns:
        return True
    held = list(recent_ns)
    return held[-1] - stamp_ns > len(held) * median_interval_ns(held[:-1])


def median_interval_ns(stamps):
    """Return the median interval (ns) between consecutive ``stamps``, None for fewer than 2."""
    held = list(stamps)
    if len(held) < 2:
        return None
    intervals = sorted(later - earlier for earlier, later in zip(held[:-1], held[1:]))
    return intervals[len(intervals) // 2]


class InputTimeline:
    """One input's stamps since start-up or its last time jump; :meth:`receive` judges a new one.

    ``window`` stamps are kept (at least 3; the node keeps ``sync.queue_size``, as many as the
    synchroniser holds: a driver's threads reorder a few messages, not more). Stamps are ints
    (ns). The module docstring states the rule.
    """

    def __init__(self, window):
        # The stamps of the last accepted messages, oldest first, since the last time jump.
        self._recent = collections.deque(maxlen=max(3, window))
        self.newest = None  # the newest accepted stamp
        # The first stamp of this timeline, where a bag's loop or second play starts again.
        self._first = None
        # Whether the last message was ignored as a copy (a copy comes between a publisher's
        # own images, a replay does not).
        self._copy_ignored = False
        # The stamps held before the last time jump (a copy of one, behind the newest, is no
        # second jump: each such copy had reset the synchroniser).
        self._before_jump = frozenset()
        # The newest stamp when the other input jumped back in time (a bag loop): this input
        # has still to make that jump, which then resets nothing again; else None.
        self._jump_pending = None
        # (stamp, item) of an image held until the next one tells a copy from a replay.
        self._held = None

    @property
    def stamps(self):
        """Return the window's stamps, oldest first (a tuple)."""
        return tuple(self._recent)

    @property
    def held(self):
        """Return the stamp of the image kept back (:data:`HOLD`), None when there is none."""
        return None if self._held is None else self._held[0]

    def receive(self, stamp, publishers, after_silence=False, item=None):
        """Judge ``stamp`` and record it; return NEXT, COPY, LATE, HOLD, JUMP or JUMP_FOLLOWED.

        ``publishers`` is a callable returning how many publishers the input's topic has,
        called only for a stamp that may be a copy. ``after_silence``: the input was silent
        for longer than ``diagnostics.input_timeout`` before this message (a bag played
        again), so it is no copy. A copy and a late stamp leave the timeline as it was (but
        that a copy was the last message); a jump starts a new timeline at ``stamp``. HOLD
        keeps ``stamp`` and ``item`` (the caller's image) for :meth:`settle` or
        :meth:`replay_held`; an image held already is to be settled first.
        """
        last = self.newest
        if last is not None and stamp <= last and self._jump_pending is None \
                and not after_silence and self._delivered(stamp) and not self._replay(stamp):
            if publishers() > 1:
                self._copy_ignored = True
                return COPY
            if stamp < last and stamp in self._recent and stamp != self._first:
                self._held = (stamp, item)
                return HOLD
        if last is not None and stamp < last:
            if self._jump_pending is None and not is_time_jump(self._recent, stamp):
                return LATE
            return self._jump(stamp)
        self._take(stamp)
        return NEXT

    def settle(self, stamp):
        """Tell the image held by the input's next stamp; return ``(verdict, stamp, item)``.

        ``stamp`` stamped among those delivered, not after the newest: the held image began a
        replay, JUMP (or JUMP_FOLLOWED), recorded as the new timeline's first (``stamp`` is
        then to be received after it). Else it was a copy, COPY. None when no image is held.
        """
        if self._held is None:
            return None
        if stamp <= self.newest and self._delivered(stamp):
            return self.replay_held()
        held, self._held = self._held, None
        return (COPY, *held)

    def replay_held(self):
        """Take the image held for a replay's first; return ``(verdict, stamp, item)``.

        For the other input's image stamped like it (a bag loop moves both cameras back):
        JUMP, or JUMP_FOLLOWED when the other input made the jump first.
        """
        (stamp, item), self._held = self._held, None
        return self._jump(stamp), stamp, item

    def drop_held(self):
        """Give up the image held (its input went silent); return ``(stamp, item)``, or None.

        No image came to tell a copy from a replay's first: it is not fused; the timeline is
        left as it was, so the input's next image is judged as if it had not come.
        """
        held, self._held = self._held, None
        return held

    def _jump(self, stamp):
        """Start a new timeline at ``stamp``; return JUMP, or JUMP_FOLLOWED if one was due."""
        verdict = JUMP if self._jump_pending is None else JUMP_FOLLOWED
        self._jump_pending = None
        self._before_jump = frozenset(self._recent)
        self._recent.clear()  # the old timeline's stamps say nothing about the new one's
        self._take(stamp)
        return verdict

    def _take(self, stamp):
        """Record ``stamp`` as the newest."""
        self.newest = stamp
        self._copy_ignored = False
        if not self._recent:
            self._first = stamp
        self._recent.append(stamp)

    def _delivered(self, stamp):
        """Return whether ``stamp`` is one just delivered (here, or before the last jump)."""
        return stamp in self._recent or (stamp < self.newest and stamp in self._before_jump)

    def _replay(self, stamp):
        """Return whether ``stamp``, one just delivered, is a replay rather than a copy.

        Back to the timeline's first stamp once it holds more than two (a bag's loop or second
        play; a relay's copy of the first image comes a frame behind), or a second image in a
        row stamped among those delivered. A second publisher on the topic (a driver waiting
        for its camera, a bridge) had every loop of a short bag ignored as copies.
        """
        return ((stamp == self._first and len(self._recent) > 2) or self._copy_ignored) \
            and stamp in self._recent

    def expect_jump(self):
        """Note that the other input jumped back to before this one's newest stamp.

        A bag loop moves both cameras back: this input's own step back is then the same jump
        (:data:`JUMP_FOLLOWED`), not one to reset the synchroniser for again.
        """
        self._jump_pending = self.newest

    def other_passed(self, stamp):
        """Note the other input's accepted ``stamp``: past this one's newest, no jump follows.

        The other input's new timeline has passed this one's old stamps: this input did not
        jump with it (one camera's clock reset), so a later step back is a jump of its own.
        """
        if self._jump_pending is not None and stamp > self._jump_pending:
            self._jump_pending = None
