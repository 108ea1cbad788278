"""Cameras' clocks seconds apart while pairs still form, over real DDS (the node's lag check).

One node runs the shipped model with sync.queue_size 40: 4 s of two 10 Hz cameras, so that an
IR camera whose stamps run 3.0 s ahead of the visible one's still pairs (as after a user raised
the queue for images that arrive late): every IR image with the visible image taken 3 s
earlier. The stamps lie on a 100 ms grid, the IR's exactly 30 frames ahead.
"""

import random
import time

from node_harness import running_node
import pytest

pytestmark = pytest.mark.dds
MS = 1_000_000
PERIOD_NS = 100 * MS  # both cameras at 10 Hz
WARNING = 'stamps run'


@pytest.fixture(scope='module')
def setup():
    with running_node({'sync.queue_size': 40, 'diagnostics.period': 0.25,
                       'diagnostics.input_timeout': 1.0}, ready_timeout=180.0) as (node, probe):
        yield node, probe


def _stream(probe, seconds, ir_ahead_ns=0, visible_ahead_ns=0, jitter_ns=0, seed=0):
    """Send both cameras at 10 Hz for ``seconds``; return the statuses that came meanwhile.

    Each image is stamped on a 100 ms grid when it is sent, less up to ``jitter_ns`` (a
    driver's exposure and transport), the IR's ``ir_ahead_ns`` ahead, the visible's
    ``visible_ahead_ns``.
    """
    rng = random.Random(seed)
    ir, visible = probe.good_pair(0)
    start = len(probe.diagnostics)
    base = time.time_ns()
    ticks = [0]

    def tick():
        grid = base + ticks[0] * PERIOD_NS
        ticks[0] += 1
        for msg, ahead in ((ir, ir_ahead_ns), (visible, visible_ahead_ns)):
            stamp = grid + ahead - rng.randrange(jitter_ns + 1)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        probe.publish_pair(ir, visible)

    origin = time.monotonic()
    probe.spin_until(lambda: time.monotonic() - origin > seconds, seconds + 5.0, tick=tick,
                     tick_period=PERIOD_NS / 1e9)
    return [(status.level, status.message, {kv.key: kv.value for kv in status.values})
            for status in probe.diagnostics[start:]]


def _differences(statuses):
    return [float(values['input_lag_difference_s']) for _level, _message, values in statuses
            if not values['input_lag_difference_s'].startswith('collecting')]


def test_a_normal_stream_with_the_jitter_of_real_drivers_is_not_said(setup):
    node, probe = setup
    statuses = _stream(probe, 3.0, jitter_ns=30 * MS)
    differences = _differences(statuses)
    assert len(differences) >= 4, statuses[-1:]
    assert all(abs(difference) < 0.2 for difference in differences), differences
    assert not any(WARNING in message for _level, message, _values in statuses), statuses[-1]
    assert WARNING not in node.log()


def test_ir_stamps_three_seconds_ahead_are_said_while_pairs_form_and_cleared_after(setup):
    node, probe = setup
    before = probe.settled_diagnostics()
    statuses = _stream(probe, 5.0, ir_ahead_ns=3000 * MS, jitter_ns=10 * MS)
    values = probe.settled_diagnostics()
    # Pairs formed: each IR image with the visible image stamped like it, 3 s later.
    assert int(values['pairs_received']) >= int(before['pairs_received']) + 5, values
    warned = [(level, message) for level, message, _values in statuses if WARNING in message]
    assert warned, statuses[-1]
    level, message = warned[-1]
    assert level == b'\x01'
    assert ('/infrared/image_raw stamps run 3.0' in message
            and 'ahead of the /visible/image_raw stamps' in message), message
    assert 'chrony, PTP' in message and 'sync.infrared_time_offset' in message, message
    assert any(abs(difference + 3.0) < 0.1 for difference in _differences(statuses))
    assert 'ahead of the /visible/image_raw stamps' in node.log()
    # The visible camera's clock steps to the IR's (as chrony would step it): the status
    # clears while both cameras go on.
    statuses = _stream(probe, 2.0, ir_ahead_ns=3000 * MS, visible_ahead_ns=3000 * MS,
                       jitter_ns=10 * MS)
    assert WARNING not in statuses[-1][1], statuses[-1]
    assert abs(_differences(statuses)[-1]) < 0.2
