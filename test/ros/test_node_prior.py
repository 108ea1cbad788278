"""The node's registration parameters over real DDS, and their start-up errors.

A calibration prior (registration.prior*), the global stage's scale search switched off
(registration.scale_search), its fine passes set (registration.fine_passes) and its map kept
over a stream (registration.global_every / global_window).

The prior file is the one ``tarfuse-calibrate`` writes (``core.prior.write_prior_yaml``), passed
to the node with ``--params-file`` after the shipped parameters, as the launch file's
``prior_file:=`` does; the node must answer a real sample pair with the registered IR that the
engine gives with the same prior in this process.
"""

from pathlib import Path
import time

from node_harness import assert_start_up_fails, HEIGHT, NodeProcess, Probe, random_domain_id
from node_harness import image_msg, running_node, sample_pair, VISIBLE_FRAME, WIDTH
import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.paths import share_dir
from tarfuse_ros.core.prior import load_prior_yaml, make_prior, write_prior_yaml
from tarfuse_ros.ros.params import decimal_numbers, declare_node_parameters
from tarfuse_ros.ros.params import params_from_values, registration_prior

pytestmark = pytest.mark.dds

HOMOGRAPHY = [[1.04, 0.02, 5.0], [-0.015, 1.03, -3.0], [3e-5, -1e-5, 1.0]]


def test_prior_parameters_are_read_and_validated_naming_the_parameter():
    params = params_from_values({'registration.prior': [1, 0, 2, 0, 1, 3, 0, 0, 1],
                                 'registration.prior_ir_size': [320, 256],
                                 'registration.prior_visible_size': [640, 512]})
    prior = registration_prior(params)
    assert prior.homography[0, 2] == 2.0 and prior.ir_size == (320, 256)
    assert registration_prior(params_from_values({})) is None  # default: no prior
    for values, words in [
            ({'registration.prior': [1.0, 0.0, 0.0]}, ['registration.prior', '9 numbers']),
            ({'registration.prior': [0.0] * 9, 'registration.prior_ir_size': [4, 4],
              'registration.prior_visible_size': [4, 4]}, ['registration.prior',
                                                           'not invertible']),
            ({'registration.prior': [1, 0, 0, 0, 1, 0, 0, 0, 1]},
             ['registration.prior_ir_size']),
            ({'registration.prior': [1, 0, -300, 0, 1, 0, 0, 0, 1],
              'registration.prior_ir_size': [160, 128],
              'registration.prior_visible_size': [160, 128]},
             ['registration.prior', 'IR frame entirely outside the 160x128 visible frame']),
            ({'registration.prior_ir_size': ['a', 'b']}, ['registration.prior_ir_size'])]:
        with pytest.raises(ValueError) as error:
            params_from_values(values)
        for word in words:
            assert word in str(error.value)


@pytest.fixture(scope='module')
def prior_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('prior') / 'rig_prior.yaml'
    write_prior_yaml(path, make_prior(HOMOGRAPHY, (WIDTH, HEIGHT), (WIDTH, HEIGHT)),
                     comments=['node test prior'])
    return path


def _hand_edited(prior_file, out):
    """Write ``prior_file`` as a user edits it: some decimals of the homography made integers."""
    text = prior_file.read_text()
    assert text.count('1.0]') == 1 and text.count('5.0,') == 1  # HOMOGRAPHY's 1.0 and 5.0
    out.write_text(text.replace('1.0]', '1]').replace('5.0,', '5,'))
    return out


def _log_of_a_node_reading_the_prior(params_file, namespace, expected):
    """Start a node on ``params_file``; return its log once it said its prior (``expected``)."""
    node = NodeProcess(random_domain_id(), {'device': 'cpu', 'cpu_threads': 1},
                       namespace=namespace, params_files=[params_file])
    try:
        deadline = time.monotonic() + 120.0
        while node.alive() and 'registration prior (IR' not in node.log():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        log = node.log()
    finally:
        node.close()
    assert f'registration prior (IR {WIDTH}x{HEIGHT} -> visible {WIDTH}x{HEIGHT}): ' \
        f'{expected.homography.ravel().round(6).tolist()}' in log, log
    return log


def test_a_hand_edited_prior_file_with_integers_reaches_the_node(prior_file, tmp_path):
    # rcl refused the file before the node could read it ("Sequence should be of same type.
    # Value type 'integer' do not belong"), while load_prior_yaml and the tools took it.
    edited = _hand_edited(prior_file, tmp_path / 'edited_prior.yaml')
    expected = make_prior(HOMOGRAPHY, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    loaded = load_prior_yaml(edited)
    assert np.array_equal(loaded.homography, expected.homography)
    log = _log_of_a_node_reading_the_prior(edited, '/edited', expected)
    assert (f'--params-file {edited}: registration.prior mixes integers and decimals, which '
            f'rcl refuses in one list; its integers were read as decimals') in log, log


def test_a_prior_file_written_as_rows_reaches_the_node_as_the_tools_read_it(tmp_path):
    # numpy's tolist() pasted in: tarfuse-fuse --prior and --initial-prior read it, and the
    # node stopped with rcl's "Couldn't parse params file ... Sequences cannot be key".
    rows = tmp_path / 'rows_prior.yaml'
    rows.write_text('/**:\n  ros__parameters:\n    registration:\n'
                    '      prior: [[1.04, 0.02, 5], [-0.015, 1.03, -3.0], [3e-5, -1e-5, 1]]\n'
                    f'      prior_ir_size: [{WIDTH}, {HEIGHT}]\n'
                    f'      prior_visible_size: [{WIDTH}, {HEIGHT}]\n')
    expected = make_prior(HOMOGRAPHY, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    assert np.array_equal(load_prior_yaml(rows).homography, expected.homography)
    log = _log_of_a_node_reading_the_prior(rows, '/rows', expected)
    assert (f'--params-file {rows}: registration.prior is a list of rows, which rcl refuses (it '
            f'takes flat lists only); its rows were joined into one list') in log, log


def test_number_lists_mixing_integers_and_decimals_are_given_to_rcl_as_doubles(
        prior_file, tmp_path):
    """What the node's main gives rclpy.init: in a params file and in a -p value."""
    edited = _hand_edited(prior_file, tmp_path / 'edited_prior.yaml')
    given = ['fuse_node', '--ros-args', '--params-file', str(edited), '-p',
             'registration.prior:=[1, 0, 0x10, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]', '-p',
             'registration.prior_ir_size:=[160, 128]', '--', '-p', 'x:=[1, 0.5]']
    argv, notes = decimal_numbers(given, tmp_path)
    assert argv[3] != str(edited) and Path(argv[3]).parent == tmp_path
    assert Path(argv[3]).read_text() == prior_file.read_text()  # only the integers changed
    assert argv[5] == 'registration.prior:=[1.0, 0.0, 16.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]'
    assert argv[6:] == given[6:]  # an integer list, and what follows '--', as given
    assert len(notes) == 2 and notes[1].startswith('-p registration.prior:=[1, 0, 0x10,')
    # rcl takes the result: the node's own declarations read the prior as doubles.
    context = rclpy.Context()
    rclpy.init(args=argv[:8], context=context)
    try:
        node = Node('tarfuse', context=context)
        params = declare_node_parameters(node)
        assert node.get_parameter('registration.prior').type_ == Parameter.Type.DOUBLE_ARRAY
        assert registration_prior(params).homography[0, 2] == 16.0  # -p after the file
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert decimal_numbers(given[:3] + [str(prior_file)], tmp_path) == (
        given[:3] + [str(prior_file)], [])  # a valid file is given as it is


def _registered_by_node(parameters, namespace, params_files=()):
    """Start the node, send it the sample pair; return (its registered IR (H, W) uint8, log)."""
    domain = random_domain_id()
    node = NodeProcess(domain, dict({'device': 'cpu', 'cpu_threads': 1, 'qos.depth': 10},
                                    **parameters),
                       namespace=namespace, params_files=params_files)
    probe = Probe(domain, namespace=namespace)
    try:
        if not probe.wait_until_ready(120.0):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        stamp = time.time_ns()
        probe.publish_pair(*probe.good_pair(stamp))
        assert probe.wait_for_outputs(stamp, keys=('registered', 'fused')), node.log()
        registered, = probe.outputs_for('registered', stamp)
        log = node.log()
    finally:
        probe.close()
        node.close()
    return np.frombuffer(registered.data, np.uint8).reshape(HEIGHT, WIDTH), log


def test_node_with_a_prior_file_publishes_the_registration_of_the_engine(prior_file):
    pixels, log = _registered_by_node({}, '/prior', params_files=[prior_file])
    assert 'registration prior' in log, log
    prior = make_prior(HOMOGRAPHY, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    expected = FusionEngine(cuda_graph='off', registration_prior=prior).infer(*sample_pair())
    without = FusionEngine(cuda_graph='off').infer(*sample_pair())
    assert np.abs(pixels.astype(int) - expected.registered_ir).max() <= 1
    # The prior really acted: without it the registered IR is another image (an ignored prior
    # would match it within the 1 grey level above; measured 2.4 on average with the session-28
    # default, whose network alone registers this rig better than earlier ones).
    assert np.abs(pixels.astype(int) - without.registered_ir).mean() > 1.5


@pytest.mark.parametrize('prior, words', [
    ('[1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 0.0, 0.0, 1.0]', ('not invertible',)),
    # The IR frame 200 px to the right of a 160 px wide visible frame: it started, and the
    # network saw an all-zero IR.
    ('[1.0, 0.0, 200.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]',
     ('maps the 160x128 IR frame entirely outside the 160x128 visible frame',
      'its corners land at (199.5, -0.5), (359.5, -0.5), (359.5, 127.5), (199.5, 127.5)'))])
def test_node_refuses_an_invalid_prior_at_start_up_naming_the_parameter(prior, words):
    assert_start_up_fails({
        'registration.prior': prior,
        'registration.prior_ir_size': '[160, 128]',
        'registration.prior_visible_size': '[160, 128]'},
        ('invalid parameter', 'registration.prior') + words)


def test_node_with_the_scale_search_off_publishes_the_single_scale_registration():
    pixels, log = _registered_by_node({'registration.scale_search': 'false'}, '/single')
    assert 'scale search off' in log, log
    expected = FusionEngine(cuda_graph='off', scale_search=False).infer(*sample_pair())
    assert np.abs(pixels.astype(int) - expected.registered_ir).max() <= 1


def test_node_with_no_fine_pass_publishes_the_registration_of_that_engine():
    pixels, log = _registered_by_node({'registration.fine_passes': '0'}, '/no_fine')
    assert 'global stage fine passes: 0 (registration.fine_passes 0' in log, log
    expected = FusionEngine(cuda_graph='off', fine_passes=0).infer(*sample_pair())
    shipped = FusionEngine(cuda_graph='off').infer(*sample_pair())
    assert np.abs(pixels.astype(int) - expected.registered_ir).max() <= 1
    # The setting really acted: the shipped four passes register the pair elsewhere (measured
    # 3.2 grey levels apart on average).
    assert np.abs(pixels.astype(int) - shipped.registered_ir).mean() > 1.0


def test_node_says_fine_passes_have_no_effect_on_a_model_without_the_global_stage():
    # The medical model has no orientation global stage: with registration.fine_passes 0 the
    # node logged 'global stage fine passes: 0' as if it had one to run them in.
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    pixels, log = _registered_by_node({'weights': str(medical), 'registration.fine_passes': '0'},
                                      '/medical_fine')
    assert ('registration.fine_passes 0 has no effect: the model has no orientation global '
            'stage') in log, log
    assert 'global stage fine passes' not in log, log
    expected = FusionEngine(medical, cuda_graph='off').infer(*sample_pair())
    assert np.abs(pixels.astype(int) - expected.registered_ir).max() <= 1


def test_node_says_the_scale_search_switch_has_no_effect_without_the_global_stage():
    # With registration.scale_search false the medical model (no orientation global stage)
    # logged 'global stage scale search off ... scale 1.0 only', a stage it does not have.
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    node = NodeProcess(random_domain_id(), {'device': 'cpu', 'cpu_threads': 1,
                                            'weights': str(medical),
                                            'registration.scale_search': 'false'})
    try:
        deadline = time.monotonic() + 120.0
        while node.alive() and 'ready: model' not in node.log():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        log = node.log()
    finally:
        node.close()
    assert ('registration.scale_search false has no effect: the model has no orientation '
            'global stage') in log, log
    assert 'scale search off' not in log, log


def test_node_refuses_fine_passes_for_a_model_without_a_fine_stage_naming_the_parameter():
    # The engine's words ('2 fine passes asked for ... only 0 or the checkpoint's own (unset)
    # apply') named neither the parameter nor its -1, which the shipped params file sets.
    assert_start_up_fails(
        {'weights': str(share_dir() / 'models' / 'tarfuse_medical.safetensors'),
         'registration.fine_passes': '2'},
        ('registration.fine_passes 2', 'no orientation global stage',
         'set registration.fine_passes to 0 or -1'))


def test_fine_passes_changed_at_run_time_on_a_model_without_a_fine_stage_say_none_apply():
    # It said 'restart the node with -p registration.fine_passes:=2', which the start-up
    # refuses (the test above).
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    with running_node({}, medical, ready_timeout=120.0) as (node, probe):
        refused, = probe.set_parameters(registration__fine_passes=2)
        restart, = probe.set_parameters(registration__fine_passes=0)
    assert not refused.successful and 'would be refused at start-up too' in refused.reason and (
        f'the model {medical} has no fine stage (no orientation global stage), so no fine '
        'passes apply; set registration.fine_passes to 0 or -1' in refused.reason), (
        refused.reason)
    assert ' -p ' not in refused.reason, refused.reason
    # 0 a restart takes: said so.
    assert not restart.successful and (
        'restart the node with -p registration.fine_passes:=0' in restart.reason), restart.reason


@pytest.mark.parametrize('value', ['-2', '9'])
def test_node_refuses_fine_passes_out_of_range_at_start_up(value):
    assert_start_up_fails({'registration.fine_passes': value},
                          ('invalid parameter', 'registration.fine_passes', value))


@pytest.mark.parametrize('name, value', [('registration.scale_search', 'false'),
                                         ('registration.global_every', '5'),
                                         ('registration.global_track', '10')])
def test_node_refuses_a_torch_only_setting_with_onnxruntime_naming_it(tmp_path, name, value):
    model = tmp_path / 'model.onnx'
    model.write_bytes(b'not read: the parameters are checked first')
    assert_start_up_fails({'backend': 'onnxruntime', 'weights': str(model), name: value},
                          ('invalid parameter', name, 'backend torch'))


def _stream_run(namespace, setting, diagnosed):
    """Start a node with a stream ``setting`` and answer the sample pair, then another one.

    The readiness pairs (the sample pair) start the stream; returns the registered IR of the
    other pair (FLIR_04229) as ints, the latest ``/diagnostics`` values once ``diagnosed(values)``
    holds, the node's log and the other pair.
    """
    domain = random_domain_id()
    node = NodeProcess(domain, {'device': 'cpu', 'cpu_threads': 1, 'qos.depth': 10, **setting},
                       namespace=namespace)
    probe = Probe(domain, namespace=namespace)
    other = sample_pair(stem='FLIR_04229')
    try:
        if not probe.wait_until_ready(120.0):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        stamp = time.time_ns()
        probe.publish_pair(image_msg(other[0], 'mono8', stamp, 'infrared_optical_frame'),
                           image_msg(other[1], 'bgr8', stamp, VISIBLE_FRAME))
        assert probe.wait_for_outputs(stamp, keys=('registered',)), node.log()
        registered, = probe.outputs_for('registered', stamp)
        assert probe.wait_for_diagnostics(
            lambda level, message, values: diagnosed(values)), node.log()
        values = probe.latest_diagnostics()[2]
        log = node.log()
    finally:
        probe.close()
        node.close()
    pixels = np.frombuffer(registered.data, np.uint8).reshape(HEIGHT, WIDTH).astype(int)
    return pixels, values, log, other


def test_node_keeps_the_global_map_over_the_stream_and_reports_it():
    """global_every 1000: the first pair's fit registers a later, different pair."""
    pixels, values, log, other = _stream_run(
        '/stream', {'registration.global_every': '1000'},
        lambda values: 'registration_global_map' in values)
    assert 'global stage over the stream' in log, log
    assert values['registration_global_map'] == 'every 1000 pairs, median of 1 fits'
    # One fit held: no spread yet.
    assert (values['registration_global_fits'], values['registration_global_spread_px']) == (
        '1', 'n/a')
    stream = FusionEngine(cuda_graph='off', global_every=1000)
    stream.infer(*sample_pair())
    expected = stream.infer(*other).registered_ir
    alone = FusionEngine(cuda_graph='off').infer(*other).registered_ir
    assert np.abs(pixels - expected).max() <= 1
    # The kept map really acted: the pair's own fit registers it elsewhere.
    assert np.abs(pixels - alone).mean() > 1.0, np.abs(pixels - alone).mean()


def test_node_tracks_the_global_map_over_the_stream_and_reports_it():
    """global_track 1000: the first pair is fitted in full, the next tracked from its map."""
    pixels, values, log, other = _stream_run(
        '/track', {'registration.global_track': '1000'},
        lambda values: int(values.get('registration_global_tracked', 0)) >= 1)
    assert 'global stage tracking the rig' in log, log
    assert values['registration_global_map'] == 'tracked, a full fit every 1000 pairs'
    assert values['registration_global_fitted'] == '1'  # the first pair only
    assert values['registration_global_fit_kept'] == '0'
    stream = FusionEngine(cuda_graph='off', global_track=1000)
    stream.infer(*sample_pair())
    expected = stream.infer(*other).registered_ir
    assert stream.global_track_state()['tracked'] == 1
    # The node's readiness pairs (the sample pair, maybe several) tracked its map on: within
    # rounding of one such pair (measured: mean 0.05, max 2 grey levels).
    difference = np.abs(pixels - expected)
    assert difference.mean() < 0.2 and difference.max() <= 4, (
        difference.mean(), difference.max())
    # The tracked map really acted: the pair's own fit registers it elsewhere (mean 0.73).
    alone = FusionEngine(cuda_graph='off').infer(*other).registered_ir
    assert np.abs(pixels - alone).mean() > 0.4, np.abs(pixels - alone).mean()
