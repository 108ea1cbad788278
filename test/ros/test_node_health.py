"""Registration health over real DDS: WARN when the IR is swapped mid-stream, cleared after.

The node runs the shipped model in its own process; the test publishes the real sample pair
at 320x224, then the same visible image with the IR of another scene (a swapped or stalled IR
stream), then the real pair again, and reads the verdict from ``/diagnostics``. (At the other
node tests' 160x128 the shipped model distorts this pair: its flow is 15 px on average and the
registered IR scores no better than an unrelated one, 0.24 against 0.25.)
"""

import time

from node_harness import image_msg, running_node, sample_pair
from node_harness import VISIBLE_FRAME
import pytest
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.health import score_frame

pytestmark = pytest.mark.dds
WINDOW = 3
SIZE = (320, 224)
OTHER_SCENE = 'FLIR_04229'


def _unrelated_ir():
    return sample_pair(*SIZE, stem=OTHER_SCENE)[0]


@pytest.fixture(scope='module')
def reference():
    """Return the real and the swapped pair's scores with the node's model, in this process."""
    engine = FusionEngine(None, device='cpu')
    ir, vi = sample_pair(*SIZE)
    scores = []
    for infrared in (ir, _unrelated_ir()):
        result = engine.infer(infrared, vi)
        scores.append(score_frame(result.registered_ir, vi, result.flow_px))
    aligned, swapped = scores
    assert aligned.alignment > swapped.alignment + 0.1, f'no separation: {scores}'
    return aligned, swapped


@pytest.fixture(scope='module')
def threshold(reference):
    """Return a min_alignment half-way between the real and the swapped pair's scores."""
    aligned, swapped = reference
    return round((aligned.alignment + swapped.alignment) / 2, 3)


@pytest.fixture(scope='module')
def setup(threshold):
    with running_node({'diagnostics.period': 0.25, 'registration_health.window': WINDOW,
                       'registration_health.min_alignment': threshold}) as (node, probe):
        yield node, probe


def _publisher(probe, swapped):
    ir, vi = sample_pair(*SIZE)
    if swapped:
        ir = _unrelated_ir()

    def tick():
        stamp = time.time_ns()
        probe.publish_pair(image_msg(ir, 'mono8', stamp, 'infrared_optical_frame'),
                           image_msg(vi, 'bgr8', stamp, VISIBLE_FRAME))
    return tick


def _health(values):
    return values.get('registration_health')


def test_health_warns_when_the_ir_is_swapped_and_clears_when_it_comes_back(setup, threshold):
    node, probe = setup
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: _health(values) == 'ok' and level == b'\x00',
        timeout=60.0, tick=_publisher(probe, swapped=False)), probe.latest_diagnostics()
    _, _, values = probe.latest_diagnostics()
    assert float(values['registration_alignment_mean']) > threshold
    assert values['registration_samples'] == f'{WINDOW}/{WINDOW}'
    for key in ('registration_alignment_last', 'registration_alignment_min',
                'registration_flow_px_mean', 'registration_flow_px_max',
                'registration_flow_nonaffine_px_mean', 'registration_cost_ms_mean',
                'registration_frames_scored'):
        assert key in values, key

    assert probe.wait_for_diagnostics(
        lambda level, msg, values: _health(values) == 'warn' and level == b'\x01',
        timeout=60.0, tick=_publisher(probe, swapped=True)), probe.latest_diagnostics()
    level, message, values = probe.latest_diagnostics()
    assert 'edge alignment' in message and f'min_alignment {threshold:.3f}' in message
    assert f'{float(values["registration_alignment_mean"]):.3f}' in message
    assert float(values['registration_alignment_mean']) < threshold
    # The fused output never stopped: the health only reports.
    assert int(values['pairs_processed']) > 0 and node.alive()

    assert probe.wait_for_diagnostics(
        lambda level, msg, values: _health(values) == 'ok' and level == b'\x00',
        timeout=60.0, tick=_publisher(probe, swapped=False)), probe.latest_diagnostics()
    assert 'registration' not in probe.latest_diagnostics()[1]
    assert 'edge alignment' in node.log()  # the WARN was also logged


def test_health_parameters_change_at_run_time_and_bad_values_are_refused(setup, reference):
    node, probe = setup
    limit = round(reference[0].flow_px / 2, 1)  # half the model's flow on the real pair
    assert limit > 0
    result, = probe.set_parameters(registration_health__min_alignment=1.5)
    assert not result.successful and 'min_alignment' in result.reason
    result, = probe.set_parameters(registration_health__enabled=False)
    assert result.successful, result.reason
    assert probe.wait_for_diagnostics(lambda level, msg, values: _health(values) == 'off')
    results = probe.set_parameters(registration_health__enabled=True,
                                   registration_health__window=1,
                                   registration_health__max_flow_px=limit)
    assert all(r.successful for r in results), [r.reason for r in results]
    # One pair fills the window of 1, with twice the allowed flow.
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: _health(values) == 'warn' and 'residual flow' in msg and
        f'max_flow_px {limit:.1f} px' in msg, timeout=60.0,
        tick=_publisher(probe, swapped=False)), probe.latest_diagnostics()
    results = probe.set_parameters(registration_health__max_flow_px=0.0)
    assert all(r.successful for r in results)
