"""What a new stamp is to the stamps one input has delivered (no ROS import).

The node keeps one :class:`InputTimeline` per camera and asks it about each image's stamp
(the IR's with ``sync.infrared_time_offset`` added) before the synchroniser sees the image;
the class states the rule.
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
    later message taken for a late one until the clock reaches it). With two stamps held
    (at start-up, or after a jump: after each loop of a bag) there is no interval before the
    newest to go by, only the newest's own step: a step back of less than half of it is out
    of order (driver jitter, stamps a few ms back; it had reset the synchroniser, and its
    pair was fused after the newer one), one of half of it or more a jump (a glitch as the
    second stamp: the first message after it steps back by most of the glitch's step; one
    taken for late messages loses less than two frames). With one stamp held: a jump.

    A clock stepped back by less than the window's span, onto no stamp held, is therefore
    taken for late messages until its stamps pass the newest again: at most the window's span
    is lost, whereas a jump found in a late message would reset the synchroniser and lose the
    partners it holds.
    """
    if len(recent_ns) < 2 or stamp_ns < recent_ns[0] or stamp_ns in recent_ns:
        return True
    held = list(recent_ns)
    if len(held) == 2:
        return 2 * (held[1] - stamp_ns) >= held[1] - held[0]
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

    ``window`` stamps are kept (at least 3; the node keeps ``sync.queue_size``, 10 by default,
    as many as the synchroniser holds: 0.33 s of a 30 Hz camera; a driver's threads reorder a
    few messages, not more). Stamps are ints (ns). The rule, for a stamp of this input:

    - After the newest: the next (:data:`NEXT`). Equal to the newest: the next as well (the
      synchroniser pairs it, and the node skips a pair of a visible image paired already), but
      beside a second publisher, where it is a copy.
    - After a silence longer than ``diagnostics.input_timeout`` (3 s by default; a bag played
      again): the next, or a time jump if behind the newest; never a copy nor held.
    - Behind the newest, onto a stamp the window holds (stamped like an image just delivered):
      a replay, which is a time jump (:data:`JUMP`; a bag's loop, its stamps verbatim), when

      * the run of such images (those held or ignored as copies, and the newest again after
        them, in a row) went back: this stamp is not after the last of them (a loop shorter
        than the window came round to its start again; copies delivered late go forward);
      * it is the start of the last replay and the newest is its end again (the loop comes
        round once more: jumped at once, round after round, until the stamps pass its end; a
        replay taken at an image held starts at the first of the run held before it);
      * beside a second publisher: the timeline's first stamp once the window holds more than
        two (a relay's copy of the first image comes a frame behind), or the second image in
        a row stamped among those delivered (a relay's copies come between the images of the
        publisher it copies);
      * on a topic of one publisher: it is held and the other input's run holds a stamp
        within ``sync.slop`` of it (0.05 s by default, 0 with exact sync): a bag loop moves
        both cameras back, whichever image of a stamp comes first, even an image or more
        ahead (the node's check, :attr:`run`, :meth:`replay_held`, the other input's image
        held too); or the other input jumped back first (:meth:`expect_jump`; :meth:`settle`).

      Else it is a copy: beside a second publisher ignored at once (:data:`COPY`); on a topic
      of one publisher held (:data:`HOLD`, the timeline's first stamp too) until this input's
      next image, which makes it a copy (:meth:`settle`) whether it is new or stamped among
      those delivered as well (late copies in a row, each held in turn).
    - Behind the newest onto no stamp held: out of order (:data:`LATE`, ignored) when among the
      window's stamps, by :func:`is_time_jump` (at most as many frame intervals behind the
      newest as the window holds stamps; with two held, less than half the newest's own
      step: 0.05 s at 10 Hz); else a time jump (:data:`JUMP`), or the jump the
      other input made first (:data:`JUMP_FOLLOWED`: a bag loop moves both cameras back,
      which is one jump and one reset).

    Limits (stamps alone cannot tell these apart): a loop of one camera alone (the other
    camera's bag of another length), shorter than the window, is a jump from its second round
    on: its first round comes back as copies delivered late would (ignored as copies). In a
    loop of both cameras whose images of one stamp come an image or more apart, the camera
    ahead has its images ignored as copies until the other's first comes back (the first
    loop's first pair, or more, is lost; from then on every round is whole). Late copies on
    both cameras at once, stamped alike, are taken for a loop. Beside a second publisher, the
    first round of a loop of two images is ignored as a relay's copies would be (from the
    second on, every round is fused). An image held stays held until its input's next image,
    or until the node gives it up (:meth:`drop_held`) when that input has been silent for
    ``diagnostics.input_timeout`` (not fused, counted as a rejection).
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
        # The stamps of the run of images stamped among those delivered (held, copies, the
        # newest again after them), in order: one going back to the last is a loop.
        self._run = collections.deque(maxlen=self._recent.maxlen)
        # (start, end) of the last replay: the timeline jumped from ``end`` back to ``start``.
        # Back at ``start`` with ``end`` the newest again, the loop comes round: a replay.
        self._loop = None

    @property
    def stamps(self):
        """Return the window's stamps, oldest first (a tuple)."""
        return tuple(self._recent)

    @property
    def run(self):
        """Return the stamps of the run of images stamped among those delivered, oldest first.

        Those held or ignored as copies in a row, and the newest again after them: empty once
        a new image came (or a jump). The node looks there for the other input's stamp.
        """
        return tuple(self._run)

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
                if not self._relay_replay(stamp):
                    self._copy_ignored = True
                    self._run.append(stamp)
                    return COPY
            elif stamp < last and stamp in self._recent:
                self._held = (stamp, item)
                self._run.append(stamp)
                return HOLD
        if last is not None and stamp < last:
            if self._jump_pending is None and not self._replay(stamp) \
                    and not is_time_jump(self._recent, stamp):
                return LATE
            return self._jump(stamp)
        self._take(stamp)
        return NEXT

    def settle(self, stamp):
        """Tell the image held by the input's next stamp; return ``(verdict, stamp, item)``.

        The other input jumped back meanwhile (:meth:`expect_jump`) and ``stamp`` is not
        after the newest: the held image began this input's part of that jump, JUMP_FOLLOWED,
        recorded as the new timeline's first (``stamp`` is then to be received after it). Else
        it was a copy, COPY: ``stamp`` is after the newest, or stamped among those delivered
        as well (copies in a row; :meth:`receive` takes ``stamp`` for a replay if the run of
        them went back). None when no image is held.
        """
        if self._held is None:
            return None
        if self._jump_pending is not None and stamp <= self.newest:
            return self.replay_held()
        held, self._held = self._held, None
        return (COPY, *held)

    def replay_held(self):
        """Take the image held for a replay's first; return ``(verdict, stamp, item)``.

        For the other input's image stamped like it (a bag loop moves both cameras back):
        JUMP, or JUMP_FOLLOWED when the other input made the jump first.
        """
        (stamp, item), self._held = self._held, None
        return self._jump(stamp, held=True), stamp, item

    def drop_held(self):
        """Give up the image held (its input went silent); return ``(stamp, item)``, or None.

        No image came to tell a copy from a replay's first: it is not fused; the timeline is
        left as it was, so the input's next image is judged as if it had not come.
        """
        held, self._held = self._held, None
        self._run.clear()
        return held

    def _jump(self, stamp, held=False):
        """Start a new timeline at ``stamp``; return JUMP, or JUMP_FOLLOWED if one was due.

        ``held``: ``stamp`` is the image held, taken for a replay.
        """
        verdict = JUMP if self._jump_pending is None else JUMP_FOLLOWED
        self._jump_pending = None
        # Back onto a stamp still held, a replay: a loop from the newest back to its start;
        # for an image held, the first of the run of images held before it (their loop's).
        # The loop coming round again keeps it (its start is no longer held when the last
        # jump was to a later stamp, the start ignored as a copy).
        start = min(stamp, self._run[0]) if self._run and held else stamp
        if self._loop != (stamp, self.newest):
            self._loop = (start, self.newest) if stamp in self._recent \
                and start in self._recent else None
        self._run.clear()
        self._before_jump = frozenset(self._recent)
        self._recent.clear()  # the old timeline's stamps say nothing about the new one's
        self._take(stamp)
        return verdict

    def _take(self, stamp):
        """Record ``stamp`` as the newest."""
        if self.newest is None or stamp > self.newest:
            self._run.clear()  # a new image ends a run of copies
            if self._loop is not None and stamp > self._loop[1]:
                self._loop = None  # past the loop's end: it does not come round again
        elif self._run:
            self._run.append(stamp)  # the newest again, in a run of copies: the run goes on
        self.newest = stamp
        self._copy_ignored = False
        if not self._recent:
            self._first = stamp
        self._recent.append(stamp)

    def _delivered(self, stamp):
        """Return whether ``stamp`` is one just delivered (here, or before the last jump)."""
        return stamp in self._recent or (stamp < self.newest and stamp in self._before_jump)

    def _replay(self, stamp):
        """Return whether ``stamp``, behind the newest or the newest, is a replay (any topic).

        The last replay's start as the timeline reached that loop's end again (the loop comes
        round; the start may be held no longer), or a stamp the window holds not after the
        last of a run of copies (the run went back: a loop). The newest again is no replay (it
        is the next; its pair is skipped).
        """
        if self._loop == (stamp, self.newest):
            return True
        if stamp not in self._recent or stamp == self.newest:
            return False
        return bool(self._run) and stamp <= self._run[-1]

    def _relay_replay(self, stamp):
        """Return whether ``stamp``, one just delivered, is a replay beside a second publisher.

        Back to the timeline's first stamp once it holds more than two (a bag's loop or second
        play; a relay's copy of the first image comes a frame behind), or a second image in a
        row stamped among those delivered (a relay's copies come between the images of the
        publisher it copies). A second publisher on the topic (a driver waiting for its
        camera, a bridge) had every loop of a short bag ignored as copies.
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
