"""message_filters' approximate pairing of a 9 Hz IR and a 30 Hz visible camera, as judged.

The synchroniser (the distro's or the project's stand-in, same algorithm) pairs an IR image
with the first visible image queued within ``slop``, so with the default 0.05 s it often takes
the visible image before the nearest; :class:`NearestPairCheck` must flag exactly those pairs.
"""

import message_filters
from tarfuse_ros.core.pairing import NearestPairCheck

MS = 1_000_000
IR, VISIBLE = 0, 1


class _Header:
    def __init__(self, stamp_ns):
        self.stamp = type('Stamp', (), {})()
        self.stamp.sec, self.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)


class _Msg:
    def __init__(self, stamp_ns):
        self.header = _Header(stamp_ns)
        self.stamp_ns = stamp_ns


def _pair_9_and_30_hz(slop, visible_late_ms, seconds=20):
    """Run the cameras through the synchroniser in arrival order: (pairs, visible, check)."""
    start = 1_000 * 1_000_000_000
    visible = [start + 7 * MS + round(k * 1e9 / 30) for k in range(30 * seconds)]
    infrared = [start + round(k * 1e9 / 9) for k in range(9 * seconds)]
    # Arrival: the IR 5 ms after its stamp, the visible ``visible_late_ms`` after its own.
    arrivals = sorted([(s + 5 * MS, IR, s) for s in infrared]
                      + [(s + visible_late_ms * MS, VISIBLE, s) for s in visible])
    relays = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
    sync = message_filters.ApproximateTimeSynchronizer(relays, 10, slop)
    check = NearestPairCheck(window=10_000)
    pairs = []

    def on_pair(ir_msg, vi_msg):
        pairs.append((ir_msg.stamp_ns, vi_msg.stamp_ns))
        check.paired(pairs[-1])

    sync.registerCallback(on_pair)
    for _, index, stamp in arrivals:  # each judged before the synchroniser, as in the node
        check.message(index, stamp)
        relays[index].signalMessage(_Msg(stamp))
    return pairs, visible, check


def _nearest(visible, stamp):
    return min(visible, key=lambda v: abs(v - stamp))


def test_the_default_slop_pairs_ir_images_with_visible_images_before_the_nearest():
    wrongs = []
    for late in (0, 20, 40):
        pairs, visible, check = _pair_9_and_30_hz(0.05, visible_late_ms=late)
        wrong = sum(vi != _nearest(visible, ir) for ir, vi in pairs[:-1])  # the last is open
        assert check.share_not_nearest() == (wrong, len(pairs) - 1)
        wrongs.append(wrong)
    # A third of the pairs when both arrive at once, nearly all with the visible 40 ms late.
    assert wrongs[0] > len(pairs) // 4 and wrongs[2] > len(pairs) * 9 // 10


def test_a_slop_just_over_half_the_visible_interval_pairs_each_ir_with_the_nearest():
    for late in (5, 40):
        pairs, visible, check = _pair_9_and_30_hz(0.017, visible_late_ms=late)
        assert len(pairs) == 9 * 20  # none lost
        assert all(vi == _nearest(visible, ir) for ir, vi in pairs)
        assert check.share_not_nearest()[0] == 0
