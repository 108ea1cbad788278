"""max_rate over real DDS: the model runs on at most max_rate pairs per second of their stamps.

The node runs the shipped model with max_rate 2; pairs come at 10 Hz. The pairs left out are
counted in pairs_skipped_max_rate, apart from pairs_dropped (the model busy).
"""

import time

from node_harness import assert_start_up_fails, running_node
import pytest

pytestmark = pytest.mark.dds
MS = 1_000_000
COUNTERS = ('pairs_received', 'pairs_processed', 'pairs_dropped', 'pairs_skipped_max_rate',
            'pairs_rejected')


@pytest.fixture(scope='module')
def setup():
    # Reliable inputs, with a queue for every pair of a run: the tests count every pair sent,
    # and best effort (or a queue of 5) can lose one while a loaded machine starves the node.
    with running_node({'diagnostics.period': 0.25, 'max_rate': 2.0,
                       'qos.reliability': 'reliable', 'qos.depth': 50},
                      ready_timeout=180.0,
                      probe_options={'reliability': 'reliable'}) as (node, probe):
        yield node, probe


def _stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _counts(values):
    return {name: int(values[name]) for name in COUNTERS}


def _settled(probe, received):
    """Return the counters of a status where ``received`` pairs came and each was finished."""
    found = []

    def done(level, msg, values):
        counts = _counts(values)
        if counts['pairs_received'] >= received and counts['pairs_received'] == sum(
                counts[name] for name in COUNTERS[1:]):
            found.append(counts)
        return bool(found)
    assert probe.wait_for_diagnostics(done, timeout=30.0), probe.latest_diagnostics()
    return found[0]


def _quiet(probe):
    """Return the counters once every pair sent before was received and finished.

    The pairs sent to find the node ready (one each 0.5 s until the model answered) could
    still be in the worker when a test began on a loaded machine, and counted as its own.
    """
    probe.settled_diagnostics()
    return _settled(probe, 0)


def _answered(probe, stamps, processed):
    """Return the stamps whose fused image came, once ``processed`` of them did (10 s at most).

    The count of a pair processed can reach the probe before the pair's fused image does.
    """
    def answered():
        return sorted(s for s in stamps if probe.outputs_for('fused', s))
    probe.spin_until(lambda: len(answered()) >= processed, 10.0)
    return answered()


def _send_at_10_hz(probe, count):
    """Publish ``count`` pairs 100 ms apart, by their stamps and in time; return the stamps."""
    base = time.time_ns()
    stamps = [base + k * 100 * MS for k in range(count)]
    for stamp in stamps:
        probe.publish_pair(*probe.good_pair(stamp))
        probe.spin_until(lambda: time.time_ns() >= stamp + 100 * MS, 1.0)
    return stamps


def test_pairs_at_10_hz_are_fused_at_2_hz_and_the_others_counted_as_skipped(setup):
    node, probe = setup
    before = _quiet(probe)
    _, _, values = probe.latest_diagnostics()
    assert values['max_rate_hz'] == '2'
    stamps = _send_at_10_hz(probe, 30)
    after = _settled(probe, before['pairs_received'] + len(stamps))
    delta = {name: after[name] - before[name] for name in COUNTERS}
    assert delta['pairs_received'] == len(stamps), delta
    answered = _answered(probe, stamps, delta['pairs_processed'])
    # One pair in 5 let in: 6 (fewer answered only where the model was too busy for one).
    assert 1 <= len(answered) < len(stamps) / 2, (answered, delta)
    assert delta['pairs_processed'] == len(answered), delta
    assert delta['pairs_skipped_max_rate'] == len(stamps) - len(answered) \
        - delta['pairs_dropped'] - delta['pairs_rejected'], delta
    assert delta['pairs_skipped_max_rate'] == 24, delta
    # By their stamps: the fused pairs are at least 1 / max_rate apart.
    assert all(later - earlier >= 500 * MS for earlier, later in zip(answered, answered[1:]))
    for stamp in answered:
        assert len(probe.outputs_for('detections', stamp)) == 1


def test_max_rate_changes_at_run_time_and_a_negative_value_is_refused(setup):
    node, probe = setup
    result, = probe.set_parameters(max_rate=-1.0)
    assert not result.successful and 'max_rate' in result.reason, result.reason
    result, = probe.set_parameters(max_rate=0.0)
    assert result.successful, result.reason
    # As fast as the model runs: each pair of a 10 Hz stream answered (sent once the one
    # before was, so none waits for a busy model); max_rate 2 would answer 1 or 2 of them.
    before = _quiet(probe)
    stamp = time.time_ns()
    for k in range(5):
        probe.publish_pair(*probe.good_pair(stamp + k * 100 * MS))
        assert probe.wait_for_outputs(stamp + k * 100 * MS), node.log()
    after = _settled(probe, before['pairs_received'] + 5)
    assert after['pairs_skipped_max_rate'] == before['pairs_skipped_max_rate']
    assert probe.latest_diagnostics()[2]['max_rate_hz'] == 'off'
    # And back to a limit: 1 Hz, applied from the next pair.
    result, = probe.set_parameters(max_rate=1.0)
    assert result.successful, result.reason
    stamps = _send_at_10_hz(probe, 15)
    settled = _settled(probe, after['pairs_received'] + 15)
    answered = _answered(probe, stamps, settled['pairs_processed'] - after['pairs_processed'])
    assert 1 <= len(answered) <= 2, answered


def test_a_negative_max_rate_stops_the_start_with_a_clear_message():
    assert_start_up_fails({'max_rate': -1.0},
                          ['max_rate=-1.0 is outside [0.0, 1000.0]',
                           'fix it on the command line (-p max_rate:=-1.0)'])


def test_each_loop_of_a_recording_shorter_than_the_period_runs_its_first_pair(setup):
    """A 1.5 s recording looped at max_rate 0.5 (2 s): its first pair at every loop.

    The stamps of each loop lie within the period of the first loop's pair: without starting
    over at the loop's time jump, no pair of a later loop was ever let through.
    """
    node, probe = setup
    result, = probe.set_parameters(max_rate=0.5)
    assert result.successful, result.reason
    stamps = [1_700_000_000 * 1_000_000_000 + k * 100 * MS for k in range(15)]
    for loop in (1, 2, 3):
        before = _quiet(probe)
        started = time.monotonic()
        for k, stamp in enumerate(stamps):
            probe.publish_pair(*probe.good_pair(stamp))
            probe.spin_until(lambda: time.monotonic() >= started + (k + 1) * 0.1, 1.0)
        after = _settled(probe, before['pairs_received'] + len(stamps))
        delta = {name: after[name] - before[name] for name in COUNTERS}
        assert delta['pairs_received'] == len(stamps), delta
        assert delta['pairs_processed'] == 1 and delta['pairs_skipped_max_rate'] == 14, \
            (loop, delta)
        probe.spin_until(lambda: len(probe.outputs_for('fused', stamps[0])) >= loop, 10.0)
        assert len(probe.outputs_for('fused', stamps[0])) == loop, loop
        assert not any(probe.outputs_for('fused', stamp) for stamp in stamps[1:])


def test_a_rate_too_small_for_a_period_in_ns_is_taken_and_the_node_runs_on(setup):
    """max_rate 1e-300 (in range): 1e9 / rate overflowed and the exception ended the node."""
    node, probe = setup
    result, = probe.set_parameters(max_rate=1e-300)
    assert result.successful, result.reason
    before = _quiet(probe)
    stamps = _send_at_10_hz(probe, 5)
    after = _settled(probe, before['pairs_received'] + len(stamps))
    assert node.alive(), node.log()
    # The first pair after the change, then none for ages.
    assert after['pairs_processed'] - before['pairs_processed'] == 1, (before, after)
    assert after['pairs_skipped_max_rate'] - before['pairs_skipped_max_rate'] == 4
