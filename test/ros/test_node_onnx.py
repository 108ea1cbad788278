"""The node with ``backend:=onnxruntime`` over real DDS, and its start-up errors.

The shipped model is exported once (``tarfuse-export``); the node runs the ``.onnx`` file in its
own process and must answer a real sample pair with the images and detections that the
onnxruntime engine gives in this process.
"""

import json
import time

import cv2
from node_harness import assert_start_up_fails, HEIGHT, make_checkpoint, running_node
from node_harness import sample_pair, WIDTH
import numpy as np
import onnx
import pytest
from tarfuse_ros.core.export import export_onnx
from tarfuse_ros.core.onnx_backend import CONFIG_KEY, OnnxFusionEngine
from tarfuse_ros.core.paths import default_weights_path

pytestmark = pytest.mark.dds


@pytest.fixture(scope='module')
def exported(shipped_onnx_file):
    return shipped_onnx_file


@pytest.fixture(scope='module')
def node_and_probe(exported):
    with running_node({'backend': 'onnxruntime', 'diagnostics.period': 0.25, 'qos.depth': 10},
                      exported, ready_timeout=120.0, probe_options={'namespace': '/onnx'},
                      namespace='/onnx') as (node, probe):
        yield node, probe


def test_node_with_the_onnxruntime_backend_answers_a_pair_like_the_engine(
        exported, node_and_probe):
    node, probe = node_and_probe
    stamp = time.time_ns()
    probe.publish_pair(*probe.good_pair(stamp))
    assert probe.wait_for_outputs(stamp, keys=('fused', 'detections', 'registered')), node.log()
    fused, = probe.outputs_for('fused', stamp)
    detections, = probe.outputs_for('detections', stamp)
    assert (fused.encoding, fused.width, fused.height) == ('bgr8', WIDTH, HEIGHT)
    expected = OnnxFusionEngine(exported, threads=1).infer(*sample_pair())
    pixels = np.frombuffer(fused.data, np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert np.abs(pixels.astype(int) - expected.fused).max() <= 1
    got = [d.results[0].hypothesis.class_id for d in detections.detections]
    assert got == [d.class_name for d in expected.detections]
    assert probe.wait_for_diagnostics(lambda level, msg, values: values.get('backend') ==
                                      'onnxruntime', 10.0)


def test_the_engines_warnings_reach_the_ros_log(node_and_probe):
    # The 160x128 test frames are below the global stage's min side (160 px): the onnxruntime
    # engine warns once (Python logging). The line went to stderr bare (no level, node name or
    # /rosout), so a ROS user's log tools never saw it.
    node, _ = node_and_probe
    lines = [line for line in node.log().splitlines()
             if "frame is below the global stage's min side" in line]
    assert len(lines) == 1, node.log()
    assert lines[0].startswith('[WARN] ') and '[onnx.tarfuse]: a 160x128 frame' in lines[0]


def test_node_with_the_onnxruntime_backend_answers_like_the_pytorch_engine(node_and_probe):
    # The node's answer was compared with the onnxruntime engine's only, on frames below the
    # global stage's min side where the two backends differ by design. Here: a 16-bit IR
    # and a grey visible image of a real pair, 320x256, against FusionEngine (PyTorch; the
    # export has no scale search), within the tolerances of test/core/test_onnx.py: 2 grey
    # levels (fused), 4 (registered), the same detections with boxes within 0.05 px.
    from node_harness import image_msg, VISIBLE_FRAME
    import torch
    from tarfuse_ros.core.engine import FusionEngine
    node, probe = node_and_probe
    ir, vi = sample_pair(320, 256, stem='FLIR_04229')
    ir16 = ir.astype(np.uint16) * 180 + 7000  # counts of a 14-bit thermal camera
    vi_grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
    stamp = time.time_ns()
    probe.publish_pair(image_msg(ir16, 'mono16', stamp, 'infrared_optical_frame'),
                       image_msg(vi_grey, 'mono8', stamp, VISIBLE_FRAME))
    assert probe.wait_for_outputs(stamp, keys=('fused', 'detections', 'registered'),
                                  timeout=60.0), node.log()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = FusionEngine(default_weights_path(), scale_search=False).infer(ir16, vi_grey)
    finally:
        torch.set_num_threads(threads)
    fused, = probe.outputs_for('fused', stamp)
    registered, = probe.outputs_for('registered', stamp)
    detections, = probe.outputs_for('detections', stamp)
    assert (fused.encoding, fused.width, fused.height) == ('mono8', 320, 256)
    for msg, pixels, tolerance in ((fused, expected.fused, 2),
                                   (registered, expected.registered_ir, 4)):
        got = np.frombuffer(msg.data, np.uint8).reshape(256, 320)
        assert np.abs(got.astype(int) - pixels).max() <= tolerance
    assert expected.detections, 'the pair should hold detections to compare'
    assert len(detections.detections) == len(expected.detections)
    for got, want in zip(detections.detections, expected.detections):
        assert got.results[0].hypothesis.class_id == want.class_name
        centre = (got.bbox.center.position.x, got.bbox.center.position.y)
        assert np.allclose(centre, ((want.x1 + want.x2) / 2, (want.y1 + want.y2) / 2),
                           atol=0.05)
        assert np.allclose((got.bbox.size_x, got.bbox.size_y),
                           (want.x2 - want.x1, want.y2 - want.y1), atol=0.05)


@pytest.mark.parametrize('case', ['corrupt_onnx', 'checkpoint_given', 'onnx_given_to_torch'])
def test_onnxruntime_start_up_errors_say_what_to_do(case, tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x00\x01 this is not an ONNX file' * 20)
    exported = tmp_path / 'model.onnx'  # any ONNX file: the torch backend must name it
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])], 'other',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])), str(exported))
    params, words = {
        'corrupt_onnx': ({'weights': str(corrupt)},
                         ['cannot load the model', 'not a loadable ONNX model', 'tarfuse-export']),
        'checkpoint_given': ({'weights': str(default_weights_path())},
                             ['invalid parameter', 'backend onnxruntime runs an .onnx file',
                              'tarfuse-export']),
        # It said 'not a readable safetensors file (truncated or corrupt ...)'.
        'onnx_given_to_torch': ({'weights': str(exported), 'backend': 'torch'},
                                ['cannot load the model', 'is an ONNX model',
                                 '-p backend:=onnxruntime']),
    }[case]
    assert_start_up_fails(dict({'backend': 'onnxruntime'}, **params), words)


def test_fine_passes_equal_to_the_graphs_own_are_accepted(exported):
    # The shipped model's export runs its 4 fine passes (the metadata says so):
    # -p registration.fine_passes:=4 asks for what the graph runs. It was refused as if any
    # count needed backend torch.
    with running_node({'backend': 'onnxruntime', 'registration.fine_passes': 4}, exported,
                      ready_timeout=120.0) as (node, probe):
        lines = [line for line in node.log().splitlines()
                 if 'registration.fine_passes 4' in line]
        # At run time another count is refused with why a restart would fail too (not 'restart
        # the node with -p registration.fine_passes:=2'); -1 (the same graph) with the restart.
        refused, = probe.set_parameters(registration__fine_passes=2)
        restart, = probe.set_parameters(registration__fine_passes=-1)
    assert len(lines) == 1 and lines[0].startswith('[INFO] '), node.log()
    assert "the ONNX graph's own count" in lines[0], lines[0]
    assert not refused.successful and 'would be refused at start-up too' in refused.reason and (
        'runs the 4 fine passes it was exported with' in refused.reason), refused.reason
    assert not restart.successful and (
        'restart the node with -p registration.fine_passes:=-1' in restart.reason), restart.reason


def test_fine_passes_of_a_graph_without_a_global_stage_are_refused_as_none_apply(tmp_path):
    # The default architecture has no orientation global stage: the refusal said to export a
    # graph with 2 passes (tarfuse-export refuses that checkpoint), not that none apply.
    checkpoint = tmp_path / 'plain.safetensors'
    make_checkpoint(checkpoint)
    export_onnx(checkpoint, tmp_path / 'plain.onnx', verify=False)
    assert_start_up_fails(
        {'backend': 'onnxruntime', 'weights': str(tmp_path / 'plain.onnx'),
         'registration.fine_passes': 2},
        ['registration.fine_passes 2', 'has no fine stage (no orientation global stage',
         "set registration.fine_passes to 0 or -1 (the model's own)"])
    # At run time too (it said to export a graph with 2 passes and restart with it). 0 starts,
    # said to have no effect (it said "the ONNX graph's own count (it was exported with these
    # fine passes built in)").
    with running_node({'backend': 'onnxruntime', 'registration.fine_passes': 0},
                      tmp_path / 'plain.onnx', ready_timeout=120.0) as (node, probe):
        refused, = probe.set_parameters(registration__fine_passes=2)
        lines = [line for line in node.log().splitlines()
                 if 'registration.fine_passes 0' in line]
    assert len(lines) == 1 and lines[0].startswith('[INFO] ') and lines[0].endswith(
        f'registration.fine_passes 0 has no effect: the ONNX graph has no fine stage (no '
        f'orientation global stage: {tmp_path / "plain.onnx"})'), lines
    assert not refused.successful and 'would be refused at start-up too' in refused.reason and (
        'has no fine stage (no orientation global stage), so no fine passes apply; set '
        'registration.fine_passes to 0 or -1' in refused.reason), refused.reason
    assert '--fine-passes' not in refused.reason, refused.reason


def test_a_graph_whose_metadata_lacks_its_fine_passes_takes_minus_one_only(exported, tmp_path):
    # The metadata's count was read as the checkpoint loader's default (1), while the graph
    # runs the shipped model's 4: registration.fine_passes 1 started, 4 was refused.
    proto = onnx.load(str(exported))
    entry, = (entry for entry in proto.metadata_props if entry.key == CONFIG_KEY)
    config = json.loads(entry.value)
    del config['model']['global_fine_passes']
    entry.value = json.dumps(config)
    path = tmp_path / 'unrecorded.onnx'
    onnx.save(proto, str(path))
    why = (f'the metadata of the ONNX graph {path} does not record how many fine passes it runs '
           "(no global_fine_passes), so only -1 (the graph's own) applies; set "
           'registration.fine_passes to -1, or export the graph again with tarfuse-export')
    assert_start_up_fails(
        {'backend': 'onnxruntime', 'weights': str(path), 'registration.fine_passes': 1},
        ['registration.fine_passes 1', why])
    with running_node({'backend': 'onnxruntime'}, path, ready_timeout=120.0) as (node, probe):
        refused, = probe.set_parameters(registration__fine_passes=4)
    assert not refused.successful and 'would be refused at start-up too' in refused.reason and (
        why in refused.reason), refused.reason


def test_fine_passes_other_than_the_graphs_own_name_its_count_and_the_export_option(exported):
    assert_start_up_fails(
        {'backend': 'onnxruntime', 'weights': str(exported), 'registration.fine_passes': 2},
        ['registration.fine_passes 2', 'runs the 4 fine passes it was exported with',
         'tarfuse-export WEIGHTS.safetensors --out MODEL.onnx --fine-passes 2',
         'or set registration.fine_passes to 4 or -1'])
