"""Input and output rates of the node's /diagnostics (tarfuse_ros.ros.diagnostics)."""

import pytest
from tarfuse_ros.ros.diagnostics import arrival_rate, InputClock, NodeStats


class FakeClock:
    """A monotonic clock the test moves by hand (s)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize('period', [0.05, 1.0, 3.0])
def test_a_steady_half_hertz_stream_reads_half_a_hertz_whatever_the_diagnostics_period(period):
    # Found by a break test: the rates were counts per diagnostics period, so a 0.5 Hz camera
    # read 0 or 1 Hz with a 1 s period and 0 or 20 Hz with 0.05 s.
    clock = FakeClock()
    stats = NodeStats(clock=clock)
    start = clock.now
    # A message every 2 s and a snapshot every period, in time order, for 30 s.
    events = sorted([(start + 2.0 * k, 'message') for k in range(15)]
                    + [(start + period * (k + 1), 'snapshot') for k in range(int(30 / period))])
    readings = []
    for when, what in events:
        clock.now = when
        if what == 'message':
            stats.count('infrared_msgs')
            stats.count('pairs_received')
        elif when - start > 2.5:  # after two messages
            snap = stats.snapshot()
            readings.append((snap['infrared_rate_hz'], snap['input_rate_hz']))
    assert readings
    for infrared, pairs in readings:
        assert infrared == pytest.approx(0.5, abs=0.02)
        assert pairs == pytest.approx(0.5, abs=0.02)
    assert stats.snapshot()['visible_rate_hz'] == 0.0  # nothing on the other camera


def test_a_stream_that_stops_decays_to_zero():
    clock = FakeClock()
    stats = NodeStats(clock=clock, rate_horizon_s=10.0)
    for _ in range(20):  # 10 Hz for 2 s
        stats.record_output(latency_ms=50.0, inference_ms=40.0)
        clock.now += 0.1
    assert stats.snapshot()['output_rate_hz'] == pytest.approx(10.0, rel=0.01)
    clock.now += 0.9  # 1 s since the last pair: at most 1 Hz now
    assert stats.snapshot()['output_rate_hz'] == pytest.approx(1.0, rel=0.01)
    clock.now += 20.0
    assert stats.snapshot()['output_rate_hz'] == 0.0


def test_arrival_rate_edge_cases():
    assert arrival_rate([], 5.0, 10.0) == 0.0
    assert arrival_rate([4.0], 5.0, 10.0) == pytest.approx(0.1)  # one message in 10 s
    assert arrival_rate([1.0, 2.0, 3.0], 3.5, 10.0) == pytest.approx(1.0)
    # Messages older than the horizon do not count.
    assert arrival_rate([0.0, 0.5, 20.0, 21.0], 21.0, 10.0) == pytest.approx(1.0)
    # Several messages in one instant (a burst) stay finite.
    assert arrival_rate([3.0, 3.0], 3.0, 10.0) > 1e6


def test_the_input_clock_follows_a_running_sim_time_and_the_wall_otherwise():
    """Under use_sim_time the inputs' silences are read in ROS time while /clock runs.

    A bag played at --rate 0.25 was said to have stopped between its pairs (wall time). A
    ROS time that steps back (a loop) or stands still (the bag ended) counts the wall time.
    """
    wall, ros = FakeClock(), [None]
    clock = InputClock(lambda: ros[0], stall_s=1.0, monotonic=wall)

    def at(wall_s, ros_s):
        wall.now, ros[0] = wall_s, None if ros_s is None else round(ros_s * 1e9)
        return clock()

    assert at(101.0, None) == pytest.approx(101.0)  # no sim time: the wall
    start = at(102.0, 5.0)
    # --rate 0.25: 2 s of wall, 0.5 s of ROS time, /clock ticking between.
    for k in range(1, 9):
        assert at(102.0 + 0.25 * k, 5.0 + 0.0625 * k) == pytest.approx(start + 0.0625 * k)
    assert at(104.5, 5.5) == pytest.approx(start + 0.5)  # between two ticks: no step
    assert at(104.9, 5.5) == pytest.approx(start + 0.5)
    # Standing for 1 s or more: the whole stand counts, then the wall.
    assert at(105.0, 5.5) == pytest.approx(start + 1.5)
    assert at(106.5, 5.5) == pytest.approx(start + 3.0)
    # A loop: the ROS time steps back; the wall time between counts, never a step back.
    assert at(107.0, 5.0) == pytest.approx(start + 3.5)
    assert at(107.25, 5.0625) == pytest.approx(start + 3.5625)


def test_a_jump_forward_of_the_ros_time_counts_the_wall_time_it_took():
    """A player seeking 600 s ahead: the inputs were said silent for 600 s at the next check."""
    wall, ros = FakeClock(), [None]
    clock = InputClock(lambda: ros[0], stall_s=1.0, monotonic=wall)

    def at(wall_s, ros_s):
        wall.now, ros[0] = wall_s, round(ros_s * 1e9)
        return clock()

    start = at(101.0, 5.0)
    assert at(101.5, 5.5) == pytest.approx(start + 0.5)
    clock.jumped()  # the node's clock jump callback, once the ROS time moved
    assert at(102.0, 605.5) == pytest.approx(start + 1.0)  # the wall's 0.5 s, not 600 s
    assert at(102.5, 606.0) == pytest.approx(start + 1.5)  # then the ROS time again
    assert at(103.0, 1206.0) == pytest.approx(start + 601.5)  # a step not said to be a jump


@pytest.mark.parametrize('tick_s, follows', [(1.02, 'ros'), (1.5, 'wall')])
def test_a_clock_of_one_hertz_is_followed_not_counted_twice(tick_s, follows):
    """/clock at 1 Hz (``ros2 bag play --clock 1``), its ticks ``tick_s`` s of wall apart.

    Between two ticks the ROS time stands for more than 1 s: that stand was counted as wall
    time, and the tick's step of 1 s on top of it, so with a message every 20 ms the inputs'
    clock ran up to twice as fast as either (rates read two thirds of the truth at 1.02 s).
    Now each stretch counts once: the ROS time where ticks come about 1 s apart, the wall
    time where the ROS time stands half a second more each time.
    """
    wall, ros = FakeClock(), [5_000_000_000]
    clock = InputClock(lambda: ros[0], stall_s=1.0, monotonic=wall)
    start = clock()
    ticks = 0
    for k in range(1, 3001):  # 60 s of wall time, a call every 20 ms
        wall.now = 100.0 + 0.02 * k
        ticks = int(0.02 * k / tick_s + 1e-9)
        ros[0] = 5_000_000_000 + ticks * 1_000_000_000
        clock()
    expected = ticks if follows == 'ros' else 60.0
    assert clock() - start == pytest.approx(expected, abs=1.0)


def _follow(clock, wall, ros, seconds, pace, tick_hz=40.0, every_s=0.02):
    """Run ``seconds`` of wall time: /clock ticking at ``tick_hz`` at ``pace`` x, read often."""
    start_wall, start_ros = wall.now, ros[0]
    for k in range(1, round(seconds / every_s) + 1):
        wall.now = start_wall + every_s * k
        ticks = int(every_s * k * tick_hz + 1e-9)
        ros[0] = start_ros + round(ticks / tick_hz * pace * 1e9)
        clock()


def test_a_seek_shorter_than_the_input_timeout_counts_the_wall_time_it_took():
    """A player seeking 2.5 s ahead, under the node's jump callback (the input timeout, 3 s).

    Counted as time passed, it left 0.5 s before the inputs were said to have stopped (a
    pause of the images of the new time longer than that was said: 'both inputs stopped ...
    for 3.0 s'), and the rates read a third of the truth after it.
    """
    wall, ros = FakeClock(), [5_000_000_000]
    clock = InputClock(lambda: ros[0], stall_s=1.0, monotonic=wall)
    start = clock()
    _follow(clock, wall, ros, 3.0, pace=1.0)
    before = clock()
    assert before - start == pytest.approx(3.0, abs=0.05)
    wall.now += 0.02
    ros[0] += 2_500_000_000  # the seek, between two ticks
    assert clock() == pytest.approx(before + 0.02)  # the wall's 20 ms, not 2.5 s
    _follow(clock, wall, ros, 3.0, pace=1.0)
    assert clock() - before == pytest.approx(3.02, abs=0.05)  # then the ROS time again


@pytest.mark.parametrize('pace, tick_hz, every_s', [(20.0, 40.0, 0.03), (20.0, 40.0, 0.5),
                                                    (100.0, 40.0, 0.03), (2.0, 1.0, 0.02)])
def test_a_bag_played_fast_is_followed_not_taken_for_seeks(pace, tick_hz, every_s):
    """A fast bag's /clock steps (a tick of 2.5 s at 100 x) are its time, not seeks ahead."""
    wall, ros = FakeClock(), [5_000_000_000]
    clock = InputClock(lambda: ros[0], stall_s=1.0, monotonic=wall)
    start = clock()
    _follow(clock, wall, ros, 10.0, pace, tick_hz, every_s)
    assert clock() - start == pytest.approx((ros[0] - 5_000_000_000) / 1e9, abs=0.01 * pace)
