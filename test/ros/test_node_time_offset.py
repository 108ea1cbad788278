"""sync.infrared_time_offset over real DDS: IR stamps corrected before pairing, outputs visible.

Three nodes run the shipped model at once, each on a domain of its own: exact sync without the
offset, exact sync with -0.06 s, and approximate sync (slop 0.017 s) with -0.06 s. The IR
camera stamps its frames 60 ms after the visible camera stamps a frame of the same instant.
"""

import time

from node_harness import assert_start_up_fails, NodeProcess, Probe, random_domain_id
from node_harness import VISIBLE_FRAME
import pytest

pytestmark = pytest.mark.dds
MS = 1_000_000
IR_LAG_NS = 60 * MS  # the IR driver stamps an instant 60 ms after the visible driver
CONFIGS = {
    'exact': {'sync.approximate': False},
    'exact_offset': {'sync.approximate': False, 'sync.infrared_time_offset': -0.06},
    'approximate_offset': {'sync.slop': 0.017, 'sync.infrared_time_offset': -0.06},
}


def _lagged_pair(probe, stamp_ns, ir_lag_ns=IR_LAG_NS):
    """Return (IR, visible) of one instant, the visible stamped ``stamp_ns``, the IR later."""
    ir, _ = probe.good_pair(stamp_ns + ir_lag_ns)
    _, vi = probe.good_pair(stamp_ns)
    return ir, vi


def _wait_until_ready(probe, ir_lag_ns, timeout):
    """Send pairs of one instant (IR ``ir_lag_ns`` late) until one is answered."""
    stamps = []

    def tick():
        stamps.append(time.time_ns())
        probe.publish_pair(*_lagged_pair(probe, stamps[-1], ir_lag_ns))

    return probe.spin_until(
        lambda: any(probe.outputs_for('fused', s) for s in stamps) and probe.diagnostics,
        timeout, tick=tick, tick_period=0.5)


@pytest.fixture(scope='module')
def nodes():
    """Start the three nodes together (they load the model in parallel); yield name -> pair."""
    started, domains = {}, set()
    while len(domains) < len(CONFIGS):  # one each: a node must not hear another's probe
        domains.add(random_domain_id())
    try:
        for (name, config), domain in zip(CONFIGS.items(), sorted(domains)):
            node = NodeProcess(domain, {
                'device': 'cpu', 'cpu_threads': 1, 'diagnostics.period': 0.25,
                'diagnostics.input_timeout': 3.0, **config})
            started[name] = (node, Probe(domain))
        for name, (node, probe) in started.items():
            # Without the offset only pairs of identical stamps pair.
            lag = 0 if name == 'exact' else IR_LAG_NS
            if not _wait_until_ready(probe, lag, 180.0):
                pytest.fail(f'node {name} never answered a pair; its log:\n{node.log()}')
        yield started
    finally:
        for node, probe in started.values():
            probe.close()
            node.close()


def _stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _diagnostics_since(probe, start):
    return [{kv.key: kv.value for kv in status.values} for status in probe.diagnostics[start:]]


def _drained(probe):
    """Return ``probe`` once the statuses its node sent while the probe was idle are taken.

    A probe is spun only by its own test: the statuses of the tests before wait in its
    subscription and would pass for new ones.
    """
    probe.spin_until(lambda: False, 0.5)
    probe.drain()  # all of them, though a loaded machine starved the probe meanwhile
    return probe


def test_exact_sync_pairs_nothing_without_the_offset_and_every_pair_with_it(nodes):
    stamps = [time.time_ns() + k * 100 * MS for k in range(6)]
    # Without the offset: the cameras' stamps of one instant differ, exact sync never pairs.
    node, probe = nodes['exact']
    _drained(probe)
    before = probe.settled_diagnostics()
    for stamp in stamps:
        probe.publish_pair(*_lagged_pair(probe, stamp))
        probe.spin_until(lambda: False, 0.1)
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: int(values['infrared_msgs']) >= int(before['infrared_msgs'])
        + len(stamps) and int(values['visible_msgs']) >= int(before['visible_msgs'])
        + len(stamps)), probe.latest_diagnostics()
    values = probe.settled_diagnostics()
    assert values['pairs_received'] == before['pairs_received']
    assert values['sync_infrared_time_offset_s'] == '0'
    assert not any(probe.outputs_for('fused', stamp) for stamp in stamps)

    def keep_sending():
        probe.publish_pair(*_lagged_pair(probe, time.time_ns()))

    # Both flow, nothing pairs: the warning names the parameter that corrects it.
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: level == b'\x01' and 'exact sync needs identical stamps'
        in msg and 'sync.infrared_time_offset' in msg, timeout=20.0, tick=keep_sending), \
        probe.latest_diagnostics()

    # With -0.06 s: every pair, each output carrying the visible image's header.
    node, probe = nodes['exact_offset']
    _drained(probe)
    before = probe.settled_diagnostics()
    for stamp in stamps:
        probe.publish_pair(*_lagged_pair(probe, stamp))
        assert probe.wait_for_outputs(stamp, keys=('fused', 'detections', 'registered')), \
            f'no output for the pair stamped {stamp}:\n{node.log()}'
    for stamp in stamps:
        for key in ('fused', 'detections', 'registered'):
            outputs = probe.outputs_for(key, stamp)
            assert len(outputs) == 1 and outputs[0].header.frame_id == VISIBLE_FRAME
        assert not probe.outputs_for('fused', stamp + IR_LAG_NS)
    values = probe.settled_diagnostics()
    assert int(values['pairs_received']) == int(before['pairs_received']) + len(stamps)
    assert values['sync_infrared_time_offset_s'] == '-0.06'


def test_the_raw_ir_stamp_is_checked_for_zero_and_a_corrected_one_before_0_is_refused(nodes):
    node, probe = nodes['exact_offset']
    _drained(probe)
    for raw_ns, cause in ((0, 'zero stamp on /infrared/image_raw'),
                          (30 * MS, '/infrared/image_raw stamped 0.030 s, before time 0 with '
                                    'sync.infrared_time_offset -0.06 s')):
        ir, _ = probe.good_pair(raw_ns)
        rejected = probe.counter('messages_rejected')
        probe.ir_pub.publish(ir)
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: int(values['messages_rejected']) > rejected
            and values['last_rejection'].startswith(cause)), probe.latest_diagnostics()
    # The node goes on pairing.
    stamp = time.time_ns()
    probe.publish_pair(*_lagged_pair(probe, stamp))
    assert probe.wait_for_outputs(stamp), node.log()


def test_approximate_sync_pairs_a_late_stamped_ir_with_the_visible_image_of_its_instant(nodes):
    """A 30 Hz visible camera and a 10 Hz IR one, each IR frame taken 3 ms after a visible one.

    The IR driver stamps it 63 ms after that visible frame's stamp, and it arrives then: after
    the next visible frame (33 ms), before the one after (67 ms, nearest to the raw IR stamp:
    the partner it had without the offset). Corrected, it pairs with the frame of its instant.
    """
    node, probe = nodes['approximate_offset']
    start = len(_drained(probe).diagnostics)
    before = probe.settled_diagnostics()
    base = time.time_ns() + 200 * MS
    visible = [base + k * 33_333_333 for k in range(60)]  # 2 s
    partners = visible[::3]
    events = [(stamp, 'visible', stamp) for stamp in visible]
    events += [(stamp + 3 * MS + IR_LAG_NS, 'infrared', stamp) for stamp in partners]
    events.sort()
    origin = time.monotonic() - (events[0][0] - base) / 1e9
    for raw_stamp, camera, instant in events:
        # Sent at its stamp, as a driver stamping on arrival would (in order, on time).
        due = origin + (raw_stamp - base) / 1e9
        probe.spin_until(lambda: time.monotonic() >= due, 5.0)
        if camera == 'visible':
            probe.visible_pub.publish(probe.good_pair(raw_stamp)[1])
        else:
            probe.ir_pub.publish(probe.good_pair(raw_stamp)[0])
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: int(values['infrared_msgs']) >= int(before['infrared_msgs'])
        + len(partners) and int(values['pairs_received']) >= int(before['pairs_received'])
        + len(partners)), (probe.latest_diagnostics(), node.log())
    values = probe.settled_diagnostics()
    # Every IR image paired, each with the visible image of its instant (3 ms apart).
    assert int(values['pairs_received']) == int(before['pairs_received']) + len(partners)
    assert values['pairs_not_nearest'] == before['pairs_not_nearest']
    gaps = [float(d['pair_stamp_gap_ms_max']) for d in _diagnostics_since(probe, start)
            if d['pair_stamp_gap_ms_max'] != 'nan']
    assert gaps and all(abs(gap - 3.0) < 0.01 for gap in gaps), gaps
    answered = sorted({_stamp(m) for m in probe.received['fused'] if _stamp(m) >= base})
    assert answered, 'no pair of the 30 Hz stream was fused'
    assert set(answered) <= set(partners), [(s - base) / MS for s in answered]
    for stamp in answered:
        assert probe.outputs_for('detections', stamp)


def test_an_offset_outside_one_second_stops_the_start_with_a_clear_message():
    assert_start_up_fails({'sync.infrared_time_offset': 1.5},
                          ['sync.infrared_time_offset=1.5 is outside [-1.0, 1.0]'])
