"""The node under simulated time over real DDS: a bag played by tarfuse-play --clock.

The node runs the shipped model with ``use_sim_time`` true; tarfuse-play plays a bag of the
sample pairs made by tarfuse-make-bag into it, publishing ``/clock`` as ``ros2 bag play
--clock`` does.
"""

from pathlib import Path
import threading
import time

from node_harness import running_node, SAMPLES
import pytest
from rosgraph_msgs.msg import Clock
from tarfuse_ros.tools.make_bag import make_bag
from tarfuse_ros.tools.play_bag import BagPlayer

pytestmark = pytest.mark.dds
STOPPED = ('both inputs stopped', 'no messages on')
TWO_CLOCKS = '2 publishers on /clock'
DAY_NS = 86400 * 1_000_000_000


@pytest.fixture(scope='module')
def setup():
    """Start the node with use_sim_time, an input timeout of 1 s and diagnostics at 4 Hz."""
    with running_node({'use_sim_time': True, 'diagnostics.period': 0.25,
                       'diagnostics.input_timeout': 1.0},
                      ready_timeout=180.0) as (node, probe):
        yield node, probe


@pytest.fixture(scope='module')
def two_hz_bag(tmp_path_factory):
    """Four sample pairs at 2 Hz, 160x128 (the deformed IR)."""
    bag = tmp_path_factory.mktemp('sim_time') / 'two_hz'
    make_bag(SAMPLES, bag, rate=2.0, max_pairs=4, size=(160, 128),
             ir_dir='synthetic_misaligned/ir_warp')
    return bag


def _play(probe, bag, **options):
    """Play ``bag`` into the node (in a thread) while the probe spins; return the statistics.

    Also returns the node's diagnostics statuses that came while the bag played: those taken
    after its second pair was processed, to the player's last message. Not before: the input
    checks run every 0.5 s (half the input timeout), and a status carries the newest check's
    problems, so one taken just after the first pair can still say rightly that the inputs had
    stopped since the fixture's pairs ('both inputs stopped ... for 1.2 s' in runs beside a
    busy loop, /clock ticking every 30 ms at most). Not to the player's end either: its clock
    stands still after its last message, which the node rightly reads as the end of the bag
    after a second.
    """
    player = BagPlayer(bag, clock=True, wait_for_subscribers=1, wait_timeout=60.0,
                       domain_id=probe.context.get_domain_id(), **options)
    result = {}
    thread = threading.Thread(target=lambda: result.update(stats=player.run()), daemon=True)
    fused = len(probe.received['fused'])
    # (Settled: the fixture's last pair may be counted after the newest status the probe has.)
    processed = int(probe.settled_diagnostics()['pairs_processed'])
    thread.start()
    assert probe.spin_until(lambda: len(probe.received['fused']) > fused or not thread.is_alive(),
                            60.0)
    first = len(probe.diagnostics)
    arrivals = []  # (wall ns, statuses received by then)

    def note():
        arrivals.append((time.time_ns(), len(probe.diagnostics)))
        return not thread.is_alive()

    assert probe.spin_until(note, 60.0)
    thread.join()
    stats = result['stats']
    last = max(wall for _topic, _stamp, wall in stats.published)
    received = max((count for wall, count in arrivals if wall <= last), default=first)
    during = [status for status in probe.diagnostics[first:received]
              if int({kv.key: kv.value for kv in status.values}['pairs_processed'])
              > processed + 1]
    return stats, during


def test_a_bag_played_slower_than_the_input_timeout_is_not_said_to_have_stopped(
        setup, two_hz_bag):
    """--rate 0.25: the pairs come 2 s apart in wall time, 0.5 s apart in the node's time.

    The input timeout was read in wall time: with diagnostics.input_timeout 1.0 both inputs
    were said to have stopped ('the end of a bag?') between every two pairs, while each was
    fused. Under use_sim_time it is read in the ROS time /clock sets; once the bag ends (its
    clock stands still) it is said again.
    """
    node, probe = setup
    stats, during = _play(probe, Path(two_hz_bag), rate=0.25)
    assert stats.counts() == {'/visible/image_raw': 4, '/infrared/image_raw': 4}
    assert len(during) >= 6, 'diagnostics every 0.25 s over the last 4 s of playback'
    said = [status.message for status in during
            if any(word in status.message for word in STOPPED)]
    assert not said, said
    stamps = {stamp for _topic, stamp, _wall in stats.published}
    assert probe.spin_until(lambda: stamps <= {
        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in probe.received['fused']},
        20.0), 'every pair fused'
    assert probe.wait_for_diagnostics(
        lambda level, message, values: 'both inputs stopped' in message, timeout=10.0), (
        probe.latest_diagnostics())
    assert node.alive()


def test_a_looped_bag_is_fused_round_after_round_with_latencies_measured(setup, two_hz_bag):
    """--clock --loop: every round fused, its stamps forward, diagnostics on, latencies sane.

    /clock stood at each round's last message until the next round: the node's time stood
    still while it processed the round's last pair, whose latency it gave as 0 ms.
    """
    node, probe = setup
    fused = len(probe.received['fused'])
    before = probe.counter('pairs_processed')
    stats, during = _play(probe, Path(two_hz_bag), loop=True, duration=5.6)
    assert stats.loops == 3 and stats.counts() == {'/visible/image_raw': 12,
                                                   '/infrared/image_raw': 12}
    settled = probe.wait_for_diagnostics(
        lambda level, message, values: int(values['pairs_processed'])
        + int(values['pairs_dropped']) >= int(values['pairs_received']), timeout=20.0)
    assert settled, probe.latest_diagnostics()
    # The bag's: the fixture's last pair (stamped now) may be fused after ``fused`` was read.
    played = {stamp for _topic, stamp, _wall in stats.published}
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
              for m in probe.received['fused'][fused:]]
    stamps = [stamp for stamp in stamps if stamp in played]
    rounds = 1 + sum(b < a for a, b in zip(stamps, stamps[1:]))  # forward within each round
    assert rounds == 3 and len(stamps) + probe.counter('pairs_dropped') >= 12, stamps
    assert len(during) >= 15, 'diagnostics every 0.25 s through the loops'
    values = [{kv.key: kv.value for kv in status.values} for status in during]
    # The latency of this play's pairs (the one before, the last of the bag before, came
    # while the time stood at its end): measured, or nan for a pair processed after the step
    # back of a loop; the last pair of a round measured too, never 0.
    latencies = [v['latency_ms_last'] for v in values if int(v['pairs_processed']) > before]
    assert len(latencies) >= 10 and '0.000' not in latencies, latencies
    assert all(not float(latency) < 0 for latency in latencies), latencies
    assert node.alive()


def test_two_clock_publishers_are_said_and_the_inputs_not_taken_for_stopped(setup):
    """Two bags played with --clock: /clock goes back and forth between their times (a day).

    Each step forward to the later clock advanced the inputs' clock by a day: both inputs
    were said to have stopped at every check while pairs flowed. Now the node names the two
    publishers, and reads the inputs' silences in wall time until one is left.
    """
    node, probe = setup
    clocks = [probe.node.create_publisher(Clock, '/clock', 10) for _ in range(2)]
    ticks = []

    def tick():  # each clock at 10 Hz in turn, a day apart; a pair in the first one's time
        now = time.time_ns()
        which = len(ticks) % 2
        message = Clock()
        message.clock.sec, message.clock.nanosec = divmod(now + which * DAY_NS, 1_000_000_000)
        clocks[which].publish(message)
        ticks.append(now)
        if not which:
            probe.publish_pair(*probe.good_pair(now))

    def said_alone():  # the clocks named; the check before may have seen a day's jump
        message = probe.diagnostics[-1].message if probe.diagnostics else ''
        return TWO_CLOCKS in message and not any(word in message for word in STOPPED)

    try:
        assert probe.spin_until(said_alone, 20.0, tick=tick, tick_period=0.05), (
            probe.latest_diagnostics())
        first = len(probe.diagnostics)
        probe.spin_until(lambda: len(probe.diagnostics) >= first + 12, 20.0, tick=tick,
                         tick_period=0.05)
        during = [status.message for status in probe.diagnostics[first:]]
        assert len(during) >= 12 and all(TWO_CLOCKS in message for message in during), during
        said = [message for message in during if any(word in message for word in STOPPED)]
        assert not said, said
        assert 'publishers on /clock' in node.log()
    finally:
        for clock in clocks:
            probe.node.destroy_publisher(clock)
    assert node.alive()


def _statuses_around_a_seek(probe, seek_ns, silent_s, after_s, settle_s=0.0):
    """Seek /clock ahead by ``seek_ns`` as a player does; return the node's statuses meanwhile.

    /clock follows the wall a day back, with a pair of its time at each tick, until the node
    says 'fusing' (then ``settle_s`` more, for the pace of the ROS time); then it jumps ahead,
    the pairs stop for ``silent_s`` (the images of the new time on their way) and come again
    for ``after_s``. The input timeout is 3 s meanwhile (a loaded machine's late images are no
    silence of 1 s here). Returns ``[(message, {key: value})]`` from the seek on.
    """
    clock = probe.node.create_publisher(Clock, '/clock', 10)
    offset = [-DAY_NS]
    sending = [True]

    def tick():
        stamp = time.time_ns() + offset[0]
        message = Clock()
        message.clock.sec, message.clock.nanosec = divmod(stamp, 1_000_000_000)
        clock.publish(message)
        if sending[0]:
            probe.publish_pair(*probe.good_pair(stamp))

    assert probe.set_parameters(diagnostics__input_timeout=3.0)[0].successful
    try:
        assert probe.wait_for_diagnostics(
            lambda level, message, values: message == 'fusing', timeout=30.0, tick=tick), (
            probe.latest_diagnostics())
        if settle_s:
            probe.spin_until(lambda: False, settle_s, tick=tick, tick_period=0.05)
        first = len(probe.diagnostics)
        offset[0] += seek_ns
        sending[0] = False
        probe.spin_until(lambda: False, silent_s, tick=tick, tick_period=0.05)
        sending[0] = True
        probe.spin_until(lambda: False, after_s, tick=tick, tick_period=0.05)
        return [(status.message, {kv.key: kv.value for kv in status.values})
                for status in probe.diagnostics[first:]]
    finally:
        assert probe.set_parameters(diagnostics__input_timeout=1.0)[0].successful
        probe.node.destroy_publisher(clock)


def test_a_clock_seeking_ahead_is_no_silence_of_the_inputs(setup):
    """A player seeking ahead moves /clock forward at once, here by 600 s.

    The inputs' clock took the jump for time passed: with the images of the new time 1.5 s
    on their way, each input check said 'both inputs stopped ... for 601.5 s'. The jump now
    counts the wall time it took.
    """
    node, probe = setup
    during = _statuses_around_a_seek(probe, 600 * 1_000_000_000, silent_s=1.5, after_s=1.0)
    assert len(during) >= 6, during
    said = [message for message, _ in during if any(word in message for word in STOPPED)]
    assert not said, said
    assert node.alive()


def test_a_short_seek_ahead_is_no_silence_of_the_inputs(setup):
    """A seek of 2.5 s: shorter than the jumps the node is told of (the input timeout, 3 s).

    Taken for time passed, it left the images of the new time 0.5 s: on their way for 1 s,
    they were said to have stopped ('both inputs stopped ... for 3.0 s', WARN, logged), and
    the rates read 0.3 Hz. The step now counts the wall time it took.
    """
    node, probe = setup
    during = _statuses_around_a_seek(probe, 2_500_000_000, silent_s=1.0, after_s=1.5,
                                     settle_s=3.0)
    assert len(during) >= 8, during
    said = [message for message, _ in during if any(word in message for word in STOPPED)]
    assert not said, said
    rates = [float(values['visible_rate_hz']) for _, values in during]
    assert min(rates) > 0.5, rates
    assert node.alive()
