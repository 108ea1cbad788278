"""Online refinement of the registration prior in the node, over real DDS, and its parameters.

The node runs the shipped model with a prior file that is 7.2 px off (corner error) the rig's
true homography. Real RoadScene pairs seen through that rig (320x256) are published one at a
time; with ``registration.online_refinement.enabled`` the estimate in ``/diagnostics`` gets
closer to the truth, an IR swapped for another scene is rejected without moving it, and the
node registers the next pair with the estimate. With the refinement off (the default) the node
publishes bit for bit what the engine gives with the configured prior. Bad refinement
parameters stop the node at start-up, naming the parameter.
"""

import json
from pathlib import Path
import re
import time

import cv2
from node_harness import assert_start_up_fails, image_msg, make_checkpoint, NodeProcess, Probe
from node_harness import random_domain_id, VISIBLE_FRAME
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.prior import corner_error_px, make_prior, write_prior_yaml
from tarfuse_ros.ros.params import params_from_values, refinement_settings
import torch

pytestmark = pytest.mark.dds
ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
SIZE = (320, 256)
_C, _S = np.cos(np.radians(1.5)), np.sin(np.radians(1.5))
# The rig: 5 % wider field of view, 1.5 deg roll, (9, -5) px offset, tilt (as test_refine.py).
TRUTH = np.array([[1.05 * _C, -1.05 * _S, 9.0], [1.05 * _S, 1.05 * _C, -5.0],
                  [4e-5, -2e-5, 1.0]])
WRONG = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, -4.0], [0.0, 0.0, 1.0]]) @ TRUTH
SWAP_AT = 3  # this frame's IR comes from another scene
ENABLED = {'registration.online_refinement.enabled': 'true',
           'registration.online_refinement.alpha': 0.3,
           'registration.online_refinement.min_alignment': 0.2}


def test_refinement_parameters_are_validated_naming_the_parameter():
    settings = refinement_settings(params_from_values(
        {'registration.online_refinement.alpha': 0.5,
         'registration.online_refinement.every_n': 4}))
    assert (settings.alpha, settings.every_n, settings.max_step_px) == (0.5, 4, 20.0)
    assert params_from_values({}).refinement_enabled is False  # off by default
    for values, words in [
            ({'registration.online_refinement.alpha': 0.0},
             ['registration.online_refinement.alpha', '(0, 1]']),
            ({'registration.online_refinement.alpha': 1.5},
             ['registration.online_refinement.alpha', 'outside']),
            ({'registration.online_refinement.max_step_px': 0.0},
             ['registration.online_refinement.max_step_px', '> 0']),
            ({'registration.online_refinement.min_alignment': 2.0},
             ['registration.online_refinement.min_alignment']),
            ({'registration.online_refinement.every_n': 0},
             ['registration.online_refinement.every_n'])]:
        with pytest.raises(ValueError) as error:
            params_from_values(values)
        for word in words:
            assert word in str(error.value), str(error.value)


def test_node_refuses_bad_refinement_parameters_at_start_up():
    assert_start_up_fails({'registration.online_refinement.enabled': 'true',
                           'registration.online_refinement.alpha': '0.0'},
                          ('invalid parameter', 'registration.online_refinement.alpha',
                           '(0, 1]'))


@pytest.fixture(scope='module')
def frames():
    """Return the six RoadScene pairs seen through TRUTH, frame SWAP_AT an IR of another scene."""
    pairs = []
    for stem in data.read_split(ROADSCENE):
        ir, vi = data.load_pair(ROADSCENE, stem)
        ir, vi = cv2.resize(ir, SIZE), cv2.resize(vi, SIZE)
        # ir_cam(u) = ir(H u): visible pixel H u sees IR pixel u.
        ir_cam = cv2.warpPerspective(ir, TRUTH, SIZE,
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        pairs.append((stem, ir_cam, vi))
    swapped = (f'{pairs[SWAP_AT][0]} with the IR of {pairs[0][0]}', pairs[0][1],
               pairs[SWAP_AT][2])
    return pairs[:SWAP_AT] + [swapped] + pairs[SWAP_AT:]


@pytest.fixture(scope='module')
def prior_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('refine') / 'wrong_prior.yaml'
    write_prior_yaml(path, make_prior(WRONG, SIZE, SIZE), comments=['7.2 px off the rig'])
    return path


def _start(parameters, prior_file, namespace):
    domain = random_domain_id()
    node = NodeProcess(domain, {'device': 'cpu', 'cpu_threads': 1, 'qos.depth': 10,
                                'diagnostics.period': 0.25, **parameters},
                       namespace=namespace, params_files=[prior_file])
    return node, Probe(domain, namespace=namespace)


def _send(probe, node, ir, vi, timeout=180.0):
    """Publish one pair; return (registered IR, fused).

    Best effort: a pair can be lost (at start-up, even once the node subscribes). Sent again
    where the node's ``/diagnostics`` counted neither image 2 s on, or no answer came in 60 s;
    not sooner, since each pair the node answers is one more step of the refinement.
    """
    if not probe.wait_for_subscribers():
        pytest.fail('the node never subscribed to the cameras; its log:\n' + node.log())
    stamps, sent = [], []

    def counts():
        return probe.counter('infrared_msgs'), probe.counter('visible_msgs')

    def tick():
        if sent:
            (ir_before, vi_before), when = sent[-1]
            ir_count, vi_count = counts()
            if (ir_count > ir_before and vi_count > vi_before
                    and time.monotonic() - when < 60.0):
                return  # the node has both: its answer is coming
        sent.append((counts(), time.monotonic()))
        stamps.append(time.time_ns())
        probe.publish_pair(image_msg(ir, 'mono8', stamps[-1], 'infrared_optical_frame'),
                           image_msg(vi, 'bgr8', stamps[-1], VISIBLE_FRAME))

    def answered():
        return any(probe.outputs_for('registered', s) and probe.outputs_for('fused', s)
                   for s in stamps)
    if not probe.spin_until(answered, timeout, tick=tick, tick_period=2.0):
        pytest.fail('the node did not answer a pair; its log:\n' + node.log())
    stamp = next(s for s in stamps if probe.outputs_for('registered', s))
    registered, = probe.outputs_for('registered', stamp)
    fused, = probe.outputs_for('fused', stamp)
    return (np.frombuffer(registered.data, np.uint8).reshape(SIZE[1], SIZE[0]),
            np.frombuffer(fused.data, np.uint8).reshape(SIZE[1], SIZE[0], 3))


def _used(values):
    return (int(values.get('registration_refinement_accepted', 0))
            + int(values.get('registration_refinement_rejected', 0)))


def _estimate(values):
    """Return the refined homography of a diagnostics key-value dict."""
    text = values['registration_refinement_homography']
    assert text.endswith('(IR 320x256 -> visible 320x256)'), text
    return np.array(json.loads(text.split(' (')[0])).reshape(3, 3)


def test_node_refines_a_slightly_wrong_prior_and_rejects_a_swapped_ir(frames, prior_file):
    torch.set_num_threads(1)
    node, probe = _start(ENABLED, prior_file, '/refine')
    history = []  # (name, diagnostics after the frame, registered IR of the frame)
    try:
        for name, ir, vi in frames:
            before = _used(probe.latest_diagnostics()[2]) if probe.diagnostics else 0
            registered, _ = _send(probe, node, ir, vi)
            assert probe.wait_for_diagnostics(
                lambda level, msg, values: _used(values) > before, timeout=30.0), node.log()
            history.append((name, probe.latest_diagnostics()[2], registered))
        log = node.log()
    finally:
        probe.close()
        node.close()
    assert 'online refinement of the registration prior' in log, log
    start = corner_error_px(WRONG, TRUTH, SIZE)
    print(f'\nnode, shipped model, 320x256, alpha 0.3, prior off by {start:.2f} px:')
    for name, values, _ in history:
        print(f'  {name}: accepted {values["registration_refinement_accepted"]}, rejected '
              f'{values["registration_refinement_rejected"]}, drift '
              f'{values["registration_refinement_drift_px"]} px, corner error '
              f'{corner_error_px(_estimate(values), TRUTH, SIZE):.2f} px, last: '
              f'{values["registration_refinement_last"]}')
    # The swapped IR: rejected, the estimate unchanged.
    before, after = history[SWAP_AT - 1][1], history[SWAP_AT][1]
    assert int(after['registration_refinement_rejected']) > int(
        before['registration_refinement_rejected'])
    assert after['registration_refinement_accepted'] == before['registration_refinement_accepted']
    assert after['registration_refinement_homography'] == before[
        'registration_refinement_homography']
    final = history[-1][1]
    assert final['registration_refinement'] == 'on'
    assert float(final['registration_refinement_drift_px']) > 1.0
    for reason in ('alignment', 'fit', 'step'):
        assert f'registration_refinement_rejected_{reason}' in final, reason
    assert 'registration_refinement_last_step_px' in final
    error = corner_error_px(_estimate(final), TRUTH, SIZE)
    # Measured in process (test_refine.py): 7.21 px -> 2.6 px after the six real frames.
    assert error < 4.0 and error < 0.6 * start, error
    # The last frame ran with the estimate published after the frame before it.
    name, ir, vi = frames[-1]
    estimate = make_prior(_estimate(history[-2][1]), SIZE, SIZE)
    expected = FusionEngine(cuda_graph='off', registration_prior=estimate).infer(ir, vi)
    # The diagnostics give the estimate rounded, so a few edge pixels differ by some levels.
    diff = np.abs(history[-1][2].astype(int) - expected.registered_ir)
    assert diff.mean() <= 0.05 and np.percentile(diff, 99) <= 1, (diff.mean(), diff.max())


def test_node_without_refinement_publishes_the_configured_prior_bit_for_bit(frames, prior_file):
    torch.set_num_threads(1)
    node, probe = _start({}, prior_file, '/plain')
    engine = FusionEngine(cuda_graph='off', registration_prior=make_prior(WRONG, SIZE, SIZE))
    try:
        for name, ir, vi in frames[:2]:
            registered, fused = _send(probe, node, ir, vi)
            expected = engine.infer(ir, vi)
            assert np.array_equal(registered, expected.registered_ir), name
            assert np.array_equal(fused, expected.fused), name
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: values.get('registration_refinement') == 'off')
        _, _, values = probe.latest_diagnostics()
        log = node.log()
    finally:
        probe.close()
        node.close()
    assert not any(key.startswith('registration_refinement_') for key in values), values
    assert 'online refinement' not in log


def _settled(values):
    """Whether every received pair went through the worker and the refiner."""
    processed = int(values['pairs_processed'])
    return (int(values['infrared_msgs']) == int(values['visible_msgs'])
            == int(values['pairs_received'])
            == processed + int(values['pairs_dropped']) + int(values['pairs_rejected'])
            and _used(values) == processed)


def _refinement_alignment(probe, node, stamp):
    """Publish the sample pair; return the alignment the refinement rejected it with."""
    before = _used(probe.latest_diagnostics()[2])
    probe.publish_pair(*probe.good_pair(stamp))
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: _used(values) > before and _settled(values),
        timeout=60.0), node.log()
    last = probe.latest_diagnostics()[2]['registration_refinement_last']
    match = re.fullmatch(r'rejected: edge alignment (\S+) < min_alignment 1\.000', last)
    assert match, last
    return match.group(1)


def test_the_refinement_scores_at_the_run_time_registration_health_max_side(tmp_path):
    # registration_health.max_side changes at run time; the refinement's alignment check, which
    # scores a pair itself when the health did not, must follow it (the health's own score
    # is handed over when there is one). min_alignment 1.0 rejects every pair, so the
    # estimate never moves and the same pair gives the same outputs each time.
    weights = tmp_path / 'random.safetensors'
    make_checkpoint(weights)
    domain = random_domain_id()
    node = NodeProcess(domain, {
        'weights': str(weights), 'device': 'cpu', 'cpu_threads': 1, 'qos.depth': 10,
        'diagnostics.period': 0.25, 'registration.online_refinement.enabled': 'true',
        'registration.online_refinement.min_alignment': 1.0}, namespace='/side')
    probe = Probe(domain, namespace='/side')
    try:
        if not probe.wait_until_ready(90.0):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        assert probe.wait_for_diagnostics(lambda level, msg, values: _settled(values)), \
            node.log()
        stamp = time.time_ns()
        scored_by_health = {160: _refinement_alignment(probe, node, stamp)}
        assert probe.set_parameters(registration_health__max_side=16)[0].successful
        scored_by_health[16] = _refinement_alignment(probe, node, stamp + 100_000_000)
        assert scored_by_health[16] != scored_by_health[160], scored_by_health
        # Without the health the refinement scores the pair itself, at the current max_side.
        assert probe.set_parameters(registration_health__enabled=False)[0].successful
        own = _refinement_alignment(probe, node, stamp + 200_000_000)
        assert own == scored_by_health[16], (own, scored_by_health)
        assert probe.set_parameters(registration_health__max_side=160)[0].successful
        own = _refinement_alignment(probe, node, stamp + 300_000_000)
        assert own == scored_by_health[160], (own, scored_by_health)
    finally:
        probe.close()
        node.close()


def test_refinement_without_a_prior_starts_over_when_the_camera_mode_changes_aspect(frames):
    # No configured prior: the estimate is made at the first frames' sizes. A camera that then
    # streams another aspect ratio (4:3 after 5:4) must still be fused (the estimate starts over
    # from the plain resize), not have every pair refused as if a prior had been configured.
    domain, namespace = random_domain_id(), '/mode'
    node = NodeProcess(domain, {
        'device': 'cpu', 'cpu_threads': 1, 'qos.depth': 10, 'diagnostics.period': 0.25,
        'registration.online_refinement.enabled': 'true',
        'registration.online_refinement.alpha': 1.0,
        'registration.online_refinement.min_alignment': -1.0,
        'registration.online_refinement.max_step_px': 10000.0}, namespace=namespace)
    probe = Probe(domain, namespace=namespace)
    try:
        if not probe.wait_until_ready(120.0):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: values.get('registration_refinement') == 'on',
            timeout=30.0), node.log()
        _, ir, vi = frames[1]
        ir, vi = ir[8:-8], vi[8:-8]  # 320x240
        stamp = time.time_ns()
        probe.publish_pair(image_msg(ir, 'mono8', stamp, 'infrared_optical_frame'),
                           image_msg(vi, 'bgr8', stamp, VISIBLE_FRAME))
        assert probe.wait_for_outputs(stamp, keys=('registered', 'fused'), timeout=60.0), \
            node.log()
        registered, = probe.outputs_for('registered', stamp)
        assert (registered.width, registered.height) == (320, 240)
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: values.get('registration_refinement') == 'on'
            and values['registration_refinement_homography'].endswith(
                '(IR 320x240 -> visible 320x240)'), timeout=30.0), node.log()
        log = node.log()
    finally:
        probe.close()
        node.close()
    assert 'starts over' in log, log
