"""The IR and visible images' lags (arrival minus stamp) compared at one time (core.input_lags)."""

import random
import statistics

import pytest
from tarfuse_ros.core.input_lags import LagCheck

S = 1_000_000_000
IR, VISIBLE = 0, 1


def _events(seconds, ir_hz=9.0, vi_hz=30.0, ir_ahead_s=0.0, rate=1.0, stamp_origin_s=0.0,
            jitter_s=0.0, seed=0):
    """Return (arrival ns, input, stamp ns) of two cameras, in arrival order.

    Each image is taken at its time on the rig, stamped by its driver's clock (the IR's
    ``ir_ahead_s`` ahead), and arrives at a time that runs ``1 / rate`` as fast (a bag played
    at ``rate``), plus a transport delay of up to ``jitter_s``.
    """
    rng = random.Random(seed)
    events = []
    for index, hz, ahead in ((IR, ir_hz, ir_ahead_s), (VISIBLE, vi_hz, 0.0)):
        for k in range(int(seconds * hz)):
            taken = k / hz
            arrival = 5.0 + taken / rate + 0.01 + rng.uniform(0.0, jitter_s)
            events.append((round(arrival * S), index, round((stamp_origin_s + taken + ahead) * S)))
    events.sort()
    return events


def _feed(check, events):
    for arrival, index, stamp in events:
        check.add(index, arrival, stamp)
    return check


def test_ir_stamps_three_seconds_ahead_read_as_a_difference_of_minus_three_seconds():
    check = _feed(LagCheck(), _events(3.0, ir_ahead_s=3.0, jitter_s=0.03))
    assert check.difference_s() == pytest.approx(-3.0, abs=0.03)


def test_a_normal_stream_with_the_jitter_of_real_drivers_reads_near_zero():
    for seed in range(5):
        check = _feed(LagCheck(), _events(3.0, jitter_s=0.04, seed=seed))
        assert abs(check.difference_s()) < 0.04


@pytest.mark.parametrize('rate', [0.1, 0.5, 2.0, 10.0, 50.0])
def test_a_bag_played_at_any_rate_without_restamping_reads_near_zero(rate):
    # Stamps of a recording made long ago, arrivals in the node's clock: the lags of both
    # cameras change by 1 - rate s each second of arrival (the transport jitter scaled down
    # with the player's pace, so that each camera's images still come in order).
    events = _events(3.0, rate=rate, stamp_origin_s=1.6e9, jitter_s=0.002 / max(rate, 1.0))
    check = _feed(LagCheck(), events)
    assert abs(check.difference_s()) < 0.01
    if rate == 0.1:
        # Compared camera by camera, the median lags of each camera's last 9 images are read
        # at different times (9 IR images came over 8.9 s, 9 visible ones over 3 s): seconds
        # apart, as the lag moved 0.9 s each second.
        lags = {index: [arrival - stamp for arrival, i, stamp in events if i == index][-9:]
                for index in (IR, VISIBLE)}
        naive = (statistics.median(lags[IR]) - statistics.median(lags[VISIBLE])) / S
        assert abs(naive) > 1.0


def test_one_late_image_does_not_move_the_median():
    events = _events(3.0, jitter_s=0.02)
    late = max(i for i, event in enumerate(events) if event[1] == VISIBLE) - 3
    arrival, index, stamp = events[late]
    events[late] = (arrival, index, stamp - 2 * S)  # its lag reads 2 s more
    check = _feed(LagCheck(), events)
    assert abs(check.difference_s()) < 0.03


def test_no_verdict_before_the_window_fills_and_none_after_a_reset():
    check = LagCheck(window=5)
    events = _events(2.0, ir_ahead_s=3.0)
    taken = 0
    while check.count < 5:
        check.add(events[taken][1], events[taken][0], events[taken][2])
        if check.count < 5:
            assert check.difference_s() is None
        taken += 1
    assert check.difference_s() == pytest.approx(-3.0, abs=0.001)
    check.reset()
    assert check.count == 0 and check.difference_s() is None
    # After the reset the first images have nothing of the other camera before them.
    _feed(check, events[taken:taken + 2])
    assert check.count == 0


def test_a_camera_that_stops_adds_no_differences():
    events = _events(2.0, jitter_s=0.02)
    check = _feed(LagCheck(), events)
    held = check.count
    last_arrival = events[-1][0]
    for k in range(1, 60):  # only the visible camera goes on, 2 s
        stamp = round((2.0 + k / 30) * S)
        check.add(VISIBLE, last_arrival + round(k / 30 * S), stamp)
    assert check.count == held
    assert abs(check.difference_s()) < 0.03


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match='window must be at least 1, got 0'):
        LagCheck(window=0)
