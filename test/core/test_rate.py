"""``max_rate``'s choice of pairs by their stamps (:class:`StampRateLimit`), without ROS."""

import pytest
from tarfuse_ros.core.rate import StampRateLimit

MS = 1_000_000


def _passed(limit, stamps):
    return [stamp for stamp in stamps if limit.admit(stamp)]


def test_a_10_hz_stream_at_2_hz_passes_every_fifth_stamp():
    stamps = [1000 * MS + k * 100 * MS for k in range(30)]
    assert _passed(StampRateLimit.for_rate(2.0), stamps) == stamps[::5]


def test_a_30_hz_stream_at_10_hz_passes_every_third_though_3_frames_are_1_ns_short():
    stamps = [k * 33_333_333 for k in range(300)]  # 3 frames: 99_999_999 ns
    assert _passed(StampRateLimit.for_rate(10.0), stamps) == stamps[::3]


def test_a_rate_between_the_frame_steps_passes_fewer_never_more():
    # 30 Hz at 7 Hz (142.9 ms): 4 frames (133.3 ms) are too close, 5 frames pass: 6 Hz.
    stamps = [k * 33_333_333 for k in range(300)]
    assert _passed(StampRateLimit.for_rate(7.0), stamps) == stamps[::5]


def test_jittered_stamps_pass_every_fifth_and_never_closer_than_the_allowance():
    jitter = [0, 5, -3, 4, -2, 2, -5, 3, -2, 1]  # ms, a USB camera stamping on arrival
    stamps = [k * 100 * MS + jitter[k % 10] * MS for k in range(1, 201)]
    passed = _passed(StampRateLimit.for_rate(2.0), stamps)
    assert passed == stamps[::5]
    # Fifth frames stamped 490 ms after the last pass: without the allowance the sixth would.
    assert min(b - a for a, b in zip(passed, passed[1:])) == 490 * MS
    assert StampRateLimit.for_rate(2.0).min_interval_ns == 475 * MS


def test_a_stamp_a_period_back_starts_a_new_timeline_and_a_small_step_back_is_held():
    limit = StampRateLimit.for_rate(2.0)
    assert _passed(limit, [1000 * MS, 1100 * MS, 1500 * MS]) == [1000 * MS, 1500 * MS]
    assert not limit.admit(1200 * MS)  # behind the last, within a period: held back
    # A bag loop: back to its start; its own steps from there.
    assert _passed(limit, [0, 100 * MS, 400 * MS, 500 * MS]) == [0, 500 * MS]


def test_rate_0_passes_every_stamp_and_a_negative_rate_is_refused():
    assert _passed(StampRateLimit.for_rate(0.0), [5, 5, 6, 1]) == [5, 5, 6, 1]
    with pytest.raises(ValueError, match='rate_hz must be >= 0'):
        StampRateLimit.for_rate(-1.0)


def test_a_rate_less_than_a_twentieth_under_a_frame_step_gives_that_step():
    # The README's numbers: the jitter allowance lets 4 frames (133.3 ms) pass at 7.2 Hz
    # (138.9 ms less 6.9 ms), so 7.5 Hz; at 29 Hz every frame of a 30 Hz camera.
    stamps = [k * 33_333_333 for k in range(300)]
    assert _passed(StampRateLimit.for_rate(7.2), stamps) == stamps[::4]
    assert _passed(StampRateLimit.for_rate(29.0), stamps) == stamps


def test_a_rate_too_small_for_a_period_in_ns_takes_the_longest_period():
    limit = StampRateLimit.for_rate(1e-300)  # 1e9 / rate is inf
    assert limit.period_ns == 2 ** 63
    assert _passed(limit, [5, 10 ** 18, 8 * 10 ** 18]) == [5]  # 8e18 ns: 253 years
