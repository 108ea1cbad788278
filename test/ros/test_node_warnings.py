"""The node's warnings over real DDS: each problem logged once per throttle period (5 s).

The node reads the IR camera from a short topic, ``/ir`` (``-r infrared/image_raw:=/ir``), as
a rig's launch file might remap it; the test stops that camera while the visible one goes on.
"""

import time

from node_harness import make_checkpoint, running_node
import pytest

pytestmark = pytest.mark.dds
SILENT = 'no messages on /ir for '


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    weights = tmp_path_factory.mktemp('node') / 'random.safetensors'
    make_checkpoint(weights)
    with running_node({'diagnostics.period': 0.25, 'diagnostics.input_timeout': 1.0}, weights,
                      probe_options={'topics': {'infrared': '/ir'}},
                      remaps=['infrared/image_raw:=/ir']) as (node, probe):
        yield node, probe


def test_a_silent_camera_is_warned_once_per_period_though_its_silence_grows(setup):
    """A silence of 1.4 s, 1.9 s, ...: each check (0.5 s) was a new warning for a short topic.

    The throttle's key was the problem's first 30 characters, which held the seconds.
    """
    node, probe = setup

    def visible_only():
        probe.visible_pub.publish(probe.good_pair(time.time_ns())[1])

    stopped = time.monotonic()
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: SILENT in msg, timeout=15.0, tick=visible_only), (
        probe.latest_diagnostics())
    start = time.monotonic()
    probe.spin_until(lambda: time.monotonic() - start > 7.0, 10.0, tick=visible_only)
    warnings = [line for line in node.log().splitlines() if SILENT in line]
    # One per 5 s of silence (the throttle's period), and the first: about 9 s gave 2
    # (16 before, one per check).
    allowed = int((time.monotonic() - stopped) / 5.0) + 1
    assert 1 <= len(warnings) <= allowed, '\n'.join(warnings)
