"""Tests of FusionEngine with the real network (random weights, seeded) on real images."""

import logging
import threading

import cv2
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tarfuse_ros.core import images, pair_engine
from tarfuse_ros.core.checkpoint import CheckpointError, save_checkpoint
from tarfuse_ros.core.engine import Detection, FusionEngine, FusionResult
from tarfuse_ros.core.model.tarfuse import build_model
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.onnx_backend import OnnxModelError
from tarfuse_ros.core.paths import share_dir
import torch

CUDA = torch.cuda.is_available()
MEDICAL = share_dir() / 'models' / 'tarfuse_medical.safetensors'


def _random_model(seed=0):
    """Randomly initialised network with random BatchNorm statistics and flow heads.

    The flow heads start at zero in ``build_model``: random ones make the flow (hence
    registration, padding and resizing) non-trivial.
    """
    torch.manual_seed(seed)
    model = build_model().eval()
    with torch.no_grad():
        for module in model.modules():  # trained-looking BatchNorm statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.7, 1.3)
                module.bias.uniform_(-0.1, 0.1)
        for estimator in model.registration.estimators:
            estimator.head.weight.normal_(0.0, 0.03)
        model.registration.estimators[0].head.bias.copy_(torch.tensor([0.4, -0.3]))
    return model


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp('weights') / 'random.safetensors'
    save_checkpoint(path, _random_model(), provenance={'note': 'random init, seed 0'})
    return path


@pytest.fixture(scope='module')
def firing_weights(tmp_path_factory):
    """Random weights whose class-0 score bias is raised so that the head fires everywhere."""
    model = _random_model()
    with torch.no_grad():
        for cls_head in model.detect.cv3:
            cls_head[-1].bias[0] = 6.0
    path = tmp_path_factory.mktemp('weights') / 'firing.safetensors'
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope='module')
def engine(weights):
    return FusionEngine(weights, device='cpu', conf_threshold=0.25)


@pytest.fixture(scope='module')
def firing_engine(firing_weights):
    return FusionEngine(firing_weights, device='cpu', conf_threshold=0.5, max_detections=50)


@pytest.fixture(scope='module')
def pair(roadscene_pair):
    return roadscene_pair


def _small(pair, height=70, width=100):
    ir, vi = pair
    return (cv2.resize(ir, (width, height), interpolation=cv2.INTER_AREA),
            cv2.resize(vi, (width, height), interpolation=cv2.INTER_AREA))


def _check_result(result, height, width, colour):
    assert isinstance(result, FusionResult)
    assert result.fused.dtype == np.uint8
    assert result.fused.shape == ((height, width, 3) if colour else (height, width))
    assert result.registered_ir.dtype == np.uint8
    assert result.registered_ir.shape == (height, width)
    assert result.flow_px.dtype == np.float32 and result.flow_px.shape == (height, width, 2)
    assert np.isfinite(result.flow_px).all()
    for key in ('preprocess', 'model', 'postprocess', 'total'):
        assert result.timings_ms[key] >= 0.0
    for det in result.detections:
        assert isinstance(det, Detection)
        assert 0.0 <= det.x1 < det.x2 <= width and 0.0 <= det.y1 < det.y2 <= height
        assert 0.0 <= det.score <= 1.0


def test_odd_size_and_different_ir_size(firing_engine, pair):
    ir, vi = pair
    vi = cv2.resize(vi, (637, 481), interpolation=cv2.INTER_LINEAR)
    ir = cv2.resize(ir, (320, 240), interpolation=cv2.INTER_AREA)  # another size than vi
    result = firing_engine.infer(ir, vi)
    _check_result(result, 481, 637, colour=True)
    assert result.detections, 'the tweaked head should fire'
    assert len(result.detections) <= 50
    assert all(d.class_name == firing_engine.class_names[d.class_id]
               for d in result.detections)


def test_registered_ir_is_ir_warped_by_flow(engine, pair):
    ir, vi = _small(pair, 75, 97)
    ir = cv2.resize(ir, (61, 43), interpolation=cv2.INTER_AREA)  # smaller IR: resized inside
    result = engine.infer(ir, vi)
    _check_result(result, 75, 97, colour=True)
    assert np.abs(result.flow_px).mean() > 0.2  # a real displacement, not the identity
    ir_unit = images.resize_image(images.to_unit_gray(ir), 75, 97)
    flow = torch.from_numpy(result.flow_px).permute(2, 0, 1)[None]
    expected = warp(torch.from_numpy(ir_unit)[None, None], flow)[0, 0].numpy() * 255.0
    # Away from samples that fall outside the frame (where padding and zeros differ).
    ys, xs = np.mgrid[0:75, 0:97]
    inside = ((xs + result.flow_px[..., 0] >= 0) & (xs + result.flow_px[..., 0] <= 96)
              & (ys + result.flow_px[..., 1] >= 0) & (ys + result.flow_px[..., 1] <= 74))
    assert inside.mean() > 0.5
    diff = np.abs(result.registered_ir.astype(np.float32) - expected)[inside]
    # The engine resizes the 8-bit IR (rounded to 8 bits), the reference resizes floats.
    assert diff.max() <= 1.5


def test_boxes_in_original_pixels_at_two_paddings(firing_engine, pair):
    """A 70x100 frame (padded to 96x128 inside) and the same frame pre-padded to 96x128."""
    ir, vi = _small(pair)
    ir_pad = np.pad(ir, ((0, 26), (0, 28)), mode='edge')
    vi_pad = np.pad(vi, ((0, 26), (0, 28), (0, 0)), mode='edge')
    small = firing_engine.infer(ir, vi)
    padded = firing_engine.infer(ir_pad, vi_pad)
    _check_result(small, 70, 100, colour=True)
    _check_result(padded, 96, 128, colour=True)
    # Identical on the CPU; a GPU may pick other kernels for the two calls (last-bit changes).
    assert np.abs(small.fused.astype(int) - padded.fused[:70, :100].astype(int)).max() <= 1
    np.testing.assert_allclose(small.flow_px, padded.flow_px[:70, :100], atol=1e-4)
    # Same network input, so the small frame's boxes are the padded frame's boxes clipped to it.
    expected = []
    for d in padded.detections:
        x1, x2 = min(d.x1, 100.0), min(d.x2, 100.0)
        y1, y2 = min(d.y1, 70.0), min(d.y2, 70.0)
        if x2 > x1 and y2 > y1:
            expected.append((x1, y1, x2, y2, d.score, d.class_id))
    got = [(d.x1, d.y1, d.x2, d.y2, d.score, d.class_id) for d in small.detections]
    assert got and len(got) == len(expected)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=0, atol=1e-3)


def test_detections_match_model_output_scale(firing_weights, pair):
    """Boxes from the engine equal NMS on the raw model output at the network input size."""
    from ultralytics.utils.nms import non_max_suppression
    eng = FusionEngine(firing_weights, conf_threshold=0.5, iou_threshold=0.45,
                       max_detections=20)
    ir, vi = _small(pair, 64, 96)  # already a multiple of 32: no padding
    result = eng.infer(ir, vi)
    y, _ = images.to_unit_visible(vi)
    with torch.inference_mode():
        raw = eng.model.predict_raw(torch.from_numpy(images.to_unit_gray(ir))[None, None],
                                    torch.from_numpy(y)[None, None])
    rows = non_max_suppression(raw['det'], 0.5, 0.45, max_det=20)[0].numpy()
    rows[:, [0, 2]] = rows[:, [0, 2]].clip(0, 96)
    rows[:, [1, 3]] = rows[:, [1, 3]].clip(0, 64)
    got = np.array([[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in result.detections])
    assert len(got) == len(rows) > 0
    np.testing.assert_allclose(got, rows[:, :6], atol=1e-4)


def test_batchnorm_folding_keeps_outputs(engine, weights, pair):
    unfused = FusionEngine(weights, fuse_bn=False)
    # The matching registration's flow path uses GroupNorm, which does not fold.
    assert engine._fused_layers > 30 and unfused._fused_layers == 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.model.modules())
    ir, vi = _small(pair)
    a, b = engine.infer(ir, vi), unfused.infer(ir, vi)
    assert np.abs(a.fused.astype(int) - b.fused.astype(int)).max() <= 1
    np.testing.assert_allclose(a.flow_px, b.flow_px, atol=1e-3)
    assert len(a.detections) == len(b.detections)
    for da, db in zip(a.detections, b.detections):
        np.testing.assert_allclose([da.x1, da.y1, da.x2, da.y2, da.score],
                                   [db.x1, db.y1, db.x2, db.y2, db.score], atol=1e-2)


def test_channels_last_feeds_the_heads_one_channels_last_map(weights, pair):
    """The fused features reach both heads channels-last, so neither converts them again.

    The warped IR features come out of ``grid_sample`` contiguous; a plain concatenation with
    the visible ones was contiguous too and the reconstruction head and the detection neck each
    converted the full-resolution 32-channel map (about 20 ms each at 640x512, 1 thread).
    Layouts only: the outputs are the contiguous engine's up to float rounding.
    """
    fast, plain = FusionEngine(weights), FusionEngine(weights, channels_last=False)
    layouts = []

    def record(module, args):
        layouts.append((args[0].shape[1], args[0].is_contiguous(
            memory_format=torch.channels_last)))

    for head in (fast.model.reconstruction, fast.model.neck):
        head.register_forward_pre_hook(record)
    ir, vi = _small(pair, 96, 128)
    a, b = fast.infer(ir, vi), plain.infer(ir, vi)
    channels = fast.model.config.feature_channels * 4
    assert layouts == [(channels, True), (channels, True)]
    assert np.abs(a.fused.astype(int) - b.fused.astype(int)).max() <= 1
    np.testing.assert_allclose(a.flow_px, b.flow_px, atol=1e-3)
    assert [d.class_id for d in a.detections] == [d.class_id for d in b.detections]
    for da, db in zip(a.detections, b.detections):
        np.testing.assert_allclose([da.x1, da.y1, da.x2, da.y2, da.score],
                                   [db.x1, db.y1, db.x2, db.y2, db.score], atol=1e-3)


def test_uint16_and_float_ir_match_uint8(weights, pair):
    eng = FusionEngine(weights, ir_norm='fixed')
    ir, vi = _small(pair)
    base = eng.infer(ir, vi)
    as16 = eng.infer(ir.astype(np.uint16) * 257, vi)
    as_float = eng.infer(ir.astype(np.float32) / 255.0, vi)
    as_double = eng.infer(ir.astype(np.float64) / 255.0, vi)
    for other in (as16, as_float, as_double):
        assert np.abs(other.fused.astype(int) - base.fused.astype(int)).max() <= 1
        np.testing.assert_allclose(other.flow_px, base.flow_px, atol=1e-3)


def test_float_ir_temperatures_in_celsius_are_stretched_like_kelvin(engine, pair):
    # A 32FC1 thermal frame in degrees Celsius was read as 8-bit grey levels (divided by 255:
    # a 15-40 degree scene kept a tenth of the grey range) or, below freezing, clipped to a
    # black frame; in kelvin (above 255) it was stretched per frame. All three are stretched.
    ir, vi = _small(pair)
    celsius = 15.0 + ir.astype(np.float32) * np.float32(25.0 / 255.0)
    kelvin = engine.infer(celsius + np.float32(273.15), vi)
    for frame in (celsius, celsius - np.float32(45.0)):  # 15-40 and -30 to -5 degrees
        plane = images.prepare_pair(frame, vi).ir
        assert plane.min() == 0.0 and plane.max() == 1.0
        result = engine.infer(frame, vi)
        assert np.abs(result.fused.astype(int) - kelvin.fused.astype(int)).max() <= 1
        assert np.abs(result.registered_ir.astype(int)
                      - kelvin.registered_ir.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r'outside \[0, 1\]'):
        images.prepare_pair(celsius, vi, ir_norm='fixed')
    # The visible image keeps its 8-bit float scale.
    y, _ = images.to_unit_visible(np.array([[0.0, 127.5, 255.0]], np.float32))
    np.testing.assert_allclose(y, [[0.0, 0.5, 1.0]], atol=1e-6)


def test_uint16_ir_percentile(engine, pair):
    ir, vi = _small(pair)
    ir16 = (ir.astype(np.uint16) * 40 + 20000)
    ir16[0, 0] = 65535  # a hot pixel must not flatten the frame
    result = engine.infer(ir16, vi)
    _check_result(result, 70, 100, colour=True)
    assert result.registered_ir.std() > 5.0


def test_16_bit_bgra_ir_drops_alpha_before_its_range(engine, pair):
    # An opaque 16-bit alpha (65535, as cv2.IMREAD_UNCHANGED reads a 16-bit PNG with alpha)
    # took part in the percentile range: the IR came out in [0, 0.22] instead of [0, 1].
    ir, vi = _small(pair)
    ir16 = ir.astype(np.uint16) * 40 + 20000
    bgr = np.dstack([ir16] * 3)
    bgra = np.dstack([bgr, np.full(ir.shape, 65535, np.uint16)])
    plane = images.prepare_pair(bgra, vi).ir
    assert plane.max() == 1.0
    np.testing.assert_array_equal(plane, images.prepare_pair(bgr, vi).ir)
    a, b = engine.infer(bgr, vi), engine.infer(bgra, vi)
    np.testing.assert_array_equal(a.fused, b.fused)
    np.testing.assert_array_equal(a.flow_px, b.flow_px)


def test_colour_and_grey_visible(engine, pair):
    ir, vi = _small(pair)
    colour = engine.infer(ir, vi)
    grey = engine.infer(ir, cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY))
    _check_result(colour, 70, 100, colour=True)
    _check_result(grey, 70, 100, colour=False)
    fused_ycrcb = cv2.cvtColor(colour.fused, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    vi_ycrcb = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    # Luma is the grey result (up to the grey input's rounding), chroma is the visible one's.
    assert np.abs(fused_ycrcb[..., 0] - grey.fused).mean() < 1.5
    chroma_err = np.abs(fused_ycrcb[..., 1:] - vi_ycrcb[..., 1:])
    assert np.median(chroma_err) <= 1.0


def test_infer_batch_matches_single(engine, pair):
    ir, vi = _small(pair)
    ir2, vi2 = _small(pair, 64, 80)
    batch = engine.infer_batch([ir, ir2, ir[::-1].copy()], [vi, vi2, vi[::-1].copy()])
    assert [r.fused.shape for r in batch] == [(70, 100, 3), (64, 80, 3), (70, 100, 3)]
    for result, (one_ir, one_vi) in zip(batch, [(ir, vi), (ir2, vi2)]):
        single = engine.infer(one_ir, one_vi)
        assert np.abs(single.fused.astype(int) - result.fused.astype(int)).max() <= 1
        np.testing.assert_allclose(single.flow_px, result.flow_px, atol=1e-3)
        assert len(single.detections) == len(result.detections)
    with pytest.raises(ValueError, match='2 IR images but 1 visible'):
        engine.infer_batch([ir, ir], [vi])
    # One pair given as arrays, not lists: said so (it failed on the image's rows as images).
    with pytest.raises(TypeError, match=r'irs is one array of shape \(70, 100\): pass \[image\]'):
        engine.infer_batch(ir, [vi])
    with pytest.raises(TypeError, match=r'vis is one array of shape \(70, 100, 3\)'):
        engine.infer_batch([ir], vi)
    stacked = engine.infer_batch(np.stack([ir, ir]), np.stack([vi, vi]))  # N x H x W (x C)
    assert len(stacked) == 2 and np.array_equal(stacked[0].fused, stacked[1].fused)


def test_a_large_batch_runs_in_parts_of_at_most_the_pixels_of_one_frame(
        engine, pair, monkeypatch):
    # Every pair of a size ran in one forward pass: 50 pairs at 640x512 held about 15 GB on a
    # CPU (0.3 GB a pair), where a single frame of more than 3840x2160 pixels is refused.
    monkeypatch.setattr(pair_engine, 'MAX_NETWORK_PIXELS', 2 * 70 * 100)  # 2 pairs of 100x70
    run_group, runs = engine._run_group, []

    def counted(items, height, width, stream_key=None):  # the engine's own, counted
        runs.append(len(items))
        return run_group(items, height, width, stream_key)

    monkeypatch.setattr(engine, '_run_group', counted)
    ir, vi = _small(pair)
    flips = (lambda a: a, lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a[::-1, ::-1],
             lambda a: a)
    irs, vis = [flip(ir) for flip in flips], [flip(vi) for flip in flips]
    batch = engine.infer_batch(irs, vis)
    assert runs == [2, 2, 1]
    runs.clear()
    for result, one_ir, one_vi in zip(batch, irs, vis):
        single = engine.infer(one_ir, one_vi)
        assert np.abs(single.fused.astype(int) - result.fused.astype(int)).max() <= 1
        np.testing.assert_allclose(single.flow_px, result.flow_px, atol=1e-3)
    assert runs == [1] * 5


@pytest.mark.parametrize('bad_ir, match', [
    (np.zeros((0, 10), np.uint8), 'empty'),
    (np.zeros((1, 8, 8, 1), np.uint8), 'shape'),
    (np.full((8, 8), np.nan, np.float32), 'NaN'),
    (np.zeros((8, 8), np.int16), 'int16'),
    ([[0, 1], [2, 3]], 'numpy'),
    (np.zeros((1, 1), np.uint8), 'is 1x1: both sides must be at least 16'),
    (np.zeros((2, 640), np.uint8), 'is 640x2: both sides must be at least 16'),
    (np.zeros((20, 400), np.uint8), 'is 400x20: its longer side is 20.0 times the shorter'),
])
def test_bad_inputs_raise(engine, bad_ir, match):
    vi = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        engine.infer(bad_ir, vi)
    if isinstance(bad_ir, np.ndarray) and bad_ir.ndim != 3:
        with pytest.raises(ValueError, match=match):
            engine.infer(np.zeros((32, 32), np.uint8), bad_ir)


def test_thresholds_validated_and_applied(firing_weights, pair):
    eng = FusionEngine(firing_weights, conf_threshold=0.5, max_detections=50)
    ir, vi = _small(pair)
    many = eng.infer(ir, vi).detections
    eng.set_thresholds(max_detections=3)
    assert len(eng.infer(ir, vi).detections) == 3 < len(many)
    eng.set_thresholds(classes=[1])  # the tweak only raised class 0
    assert all(d.class_id == 1 for d in eng.infer(ir, vi).detections)
    eng.set_thresholds(classes=[])  # empty: no filter again
    eng.set_thresholds(conf_threshold=1.0)
    assert eng.infer(ir, vi).detections == []
    before = eng.thresholds
    for bad in ({'conf_threshold': 1.5}, {'conf_threshold': -0.1}, {'iou_threshold': 2},
                {'max_detections': 0}, {'max_detections': 2.5},
                {'classes': [eng.config.num_classes]}, {'classes': ['car']}):
        with pytest.raises(ValueError):
            eng.set_thresholds(**bad)
    assert eng.thresholds == before
    with pytest.raises(ValueError, match='conf_threshold'):
        FusionEngine(firing_weights, conf_threshold=3.0)


def test_thresholds_take_numpy_numbers(firing_weights, pair):
    # np.float32(0.6) was refused as 'conf_threshold must be a number in [0, 1]' (np.float64
    # and np.int64 max_detections were taken).
    ir, vi = _small(pair)
    plain = FusionEngine(firing_weights, conf_threshold=0.6, iou_threshold=0.3)
    numpy = FusionEngine(firing_weights, conf_threshold=np.float32(0.6),
                         iou_threshold=np.float32(0.3), max_detections=np.int64(100))
    assert len(plain.infer(ir, vi).detections) == len(numpy.infer(ir, vi).detections) > 0
    numpy.set_thresholds(conf_threshold=np.int64(1))
    assert numpy.infer(ir, vi).detections == []
    for bad in (np.bool_(True), np.float32('nan'), np.float32(1.5)):
        with pytest.raises(ValueError, match='conf_threshold must be a number in'):
            numpy.set_thresholds(conf_threshold=bad)


def test_classes_on_a_model_without_detection_head_name_the_missing_head():
    # The shipped medical model: 'classes must hold integer ids in [0, 0), got [0]'.
    engine = FusionEngine(MEDICAL)
    assert not engine.detects
    for call in (lambda: FusionEngine(MEDICAL, classes=[0]),
                 lambda: engine.set_thresholds(classes=[0])):
        with pytest.raises(ValueError, match=r'classes \[0\]: this model has no detection '
                                             r'head, so there are no classes to keep; leave '
                                             r'classes None \(or empty\)'):
            call()
    engine.set_thresholds(classes=[])
    assert engine.thresholds[3] is None


def test_set_thresholds_from_another_thread(firing_engine, pair):
    ir, vi = _small(pair, 32, 32)
    stop = threading.Event()
    errors = []

    def toggle():
        value = 1
        while not stop.is_set():
            try:
                firing_engine.set_thresholds(max_detections=value, conf_threshold=0.5)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            value = 1 if value == 5 else 5
            stop.wait(0.002)

    thread = threading.Thread(target=toggle)
    thread.start()
    try:
        counts = {len(firing_engine.infer(ir, vi).detections) for _ in range(6)}
    finally:
        stop.set()
        thread.join()
        firing_engine.set_thresholds(max_detections=50)
    assert not errors and counts <= {1, 5}


def test_properties(engine, weights):
    assert engine.device == 'cpu'
    assert engine.class_names == tuple(engine.config.class_names)[:len(engine.class_names)]
    assert len(engine.class_names) == engine.config.num_classes
    assert not engine.half


def test_missing_and_broken_weights(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        FusionEngine(tmp_path / 'nope.safetensors')
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'not a safetensors file')
    with pytest.raises(CheckpointError):
        FusionEngine(broken)


def test_weights_that_overflow_are_refused_instead_of_giving_a_nan_flow(tmp_path, pair):
    # Finite weights pass the loader's check, but one registration convolution scaled by 1e30
    # (as a diverged training run leaves them) gave an all-NaN flow, published as it was.
    shipped = share_dir() / 'models' / 'tarfuse_default.safetensors'
    with safe_open(str(shipped), framework='pt') as handle:
        metadata = handle.metadata()
    tensors = load_file(str(shipped))
    name = 'registration.cseb_ir.channel.0.0.weight'
    tensors[name] = tensors[name] * 1e30
    assert bool(torch.isfinite(tensors[name]).all())
    path = tmp_path / 'diverged.safetensors'
    save_file(tensors, str(path), metadata=metadata)
    engine = FusionEngine(path, scale_search=False)
    with pytest.raises(ValueError) as raised:
        engine.infer(*_small(pair, 64, 96))
    message = str(raised.value)
    assert 'the network gave NaN or infinite' in message and 'flow' in message, message
    assert 'weights overflow' in message and 'use another checkpoint' in message, message


def test_both_engines_check_their_outputs_finite_with_one_check():
    """Arrays (onnxruntime) and torch tensors (torch engine) give the same message.

    Each engine had its own copy of the check, with its own wording ('the graph gave' from the
    onnxruntime backend).
    """
    flow = np.zeros((1, 2, 64, 96), np.float32)
    flow[0, 1, 5, 7] = np.nan
    image = np.full((1, 1, 64, 96), 0.5, np.float32)
    infinite = image.copy()
    infinite[0, 0, 0, 0] = np.inf
    finite_flow = np.zeros_like(flow)
    cases = (({'fused': image, 'flow': flow, 'registered_ir': image}, 'flow'),
             ({'fused': infinite, 'flow': finite_flow, 'registered_ir': infinite},
              'fused, registered_ir'))
    for raw, names in cases:
        said = []
        for outputs in (raw, {name: torch.from_numpy(value) for name, value in raw.items()}):
            with pytest.raises(OnnxModelError) as raised:
                pair_engine.check_finite_outputs(outputs, 'm.onnx', 'the cause',
                                                 OnnxModelError)
            said.append(str(raised.value))
        assert said == [f'm.onnx: the network gave NaN or infinite {names} for finite inputs: '
                        f'the cause'] * 2
    finite = {'fused': image, 'flow': finite_flow, 'registered_ir': image, 'det': flow}
    pair_engine.check_finite_outputs(finite, 'm.onnx', 'the cause')  # det is not checked here
    tensors = {name: torch.from_numpy(value) for name, value in finite.items()}
    pair_engine.check_finite_outputs(tensors, 'm.safetensors', 'the cause')


@pytest.mark.skipif(CUDA, reason='CUDA is available here; the no-CUDA error cannot occur')
def test_cuda_absent(weights, caplog):
    with pytest.raises(RuntimeError, match='CUDA is not available'):
        FusionEngine(weights, device='cuda')
    with pytest.raises(RuntimeError, match='CUDA'):
        FusionEngine(weights, device='cuda:1')
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.engine'):
        eng = FusionEngine(weights, device='cuda:0', allow_cpu_fallback=True)
    assert eng.device == 'cpu'
    assert 'falling back to the CPU' in caplog.text


def test_bad_settings(weights, caplog):
    with pytest.raises(ValueError, match='device'):
        FusionEngine(weights, device='tpu')
    with pytest.raises(ValueError, match='cuda_graph'):
        FusionEngine(weights, cuda_graph='sometimes')
    with pytest.raises(ValueError, match='threads'):
        FusionEngine(weights, threads=0)
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.engine'):
        eng = FusionEngine(weights, half=True)
    assert not eng.half and 'ignored on the CPU' in caplog.text


@pytest.mark.parametrize('kwargs, words', [
    # Any value was taken by its truth: 'no' (a string from a file or the environment) asked
    # for fp16, for the CPU fallback; ir_low None or '1' raised "TypeError: '<=' not
    # supported between instances of 'float' and 'str'".
    ({'half': 'no'}, "half must be True or False, got 'no'"),
    ({'allow_cpu_fallback': 'false'}, "allow_cpu_fallback must be True or False, got 'false'"),
    ({'fuse_bn': 0}, 'fuse_bn must be True or False, got 0'),
    ({'channels_last': None}, 'channels_last must be True or False, got None'),
    ({'cudnn_benchmark': 'yes'}, "cudnn_benchmark must be True or False, got 'yes'"),
    ({'scale_search': 1}, 'scale_search must be True or False, got 1'),
    ({'ir_low': None}, r'ir_low and ir_high must be numbers \(percentiles, 0-100\), got None'),
    ({'ir_high': '99'}, r"ir_low and ir_high must be numbers .*, got 0.5, '99'")])
def test_settings_of_another_type_are_refused_by_name(weights, kwargs, words):
    with pytest.raises(ValueError, match=words):
        FusionEngine(weights, **kwargs)


def test_numpy_bools_and_numbers_are_taken_as_settings(weights):
    # cuda_graph, which takes True or False too, said "must be one of ('auto', 'on', 'off')"
    # to a NumPy bool.
    engine = FusionEngine(weights, half=np.bool_(False), fuse_bn=np.bool_(True),
                          scale_search=np.bool_(False), ir_low=np.float32(1.0),
                          ir_high=np.int64(99), cuda_graph=np.bool_(False))
    assert not engine.half


@pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU')
def test_cuda_fp16_and_graph_match_cpu(weights, pair):
    ir, vi = _small(pair)
    ref = FusionEngine(weights, device='cpu').infer(ir, vi)
    eager = FusionEngine(weights, device='cuda', cuda_graph='off').infer(ir, vi)
    graph_engine = FusionEngine(weights, device='cuda', half=True, cuda_graph='on')
    first = graph_engine.infer(ir, vi)
    second = graph_engine.infer(ir[::-1].copy(), vi[::-1].copy())  # replay with new inputs
    third = graph_engine.infer(ir, vi)
    assert graph_engine.half and len(graph_engine._graphs) == 1
    for result, tol in ((eager, 1), (first, 3), (third, 3)):
        _check_result(result, 70, 100, colour=True)
        assert np.abs(result.fused.astype(int) - ref.fused.astype(int)).mean() <= tol
        assert np.abs(result.flow_px - ref.flow_px).mean() < 0.05 * tol
    np.testing.assert_array_equal(first.fused, third.fused)
    assert not np.array_equal(first.fused, second.fused)


def test_scale_search_off_fits_one_scale_with_the_shipped_model():
    """scale_search=False: scale 1.0 only; the search is what registers a narrower IR view."""
    from pathlib import Path
    from tarfuse_ros.core import data
    folder = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    ir, vi = data.load_pair(folder, data.read_split(folder, 'test')[0])
    height, width = vi.shape[:2]
    # A thermal camera that sees the central 80 % of the visible view, at the same size.
    top, left = int(round(0.1 * height)), int(round(0.1 * width))
    narrow = cv2.resize(ir[top:height - top, left:width - left], (width, height),
                        interpolation=cv2.INTER_LINEAR)
    search = FusionEngine(cuda_graph='off')
    single = FusionEngine(cuda_graph='off', scale_search=False)
    assert search.config.global_scale_candidates == (0.8, 1.0, 1.25)
    assert single.config.global_scale_candidates == (1.0,)
    assert single.scale_candidates == (1.0,) and search.scale_candidates == (0.8, 1.0, 1.25)
    # A string is not a switch ('false' would otherwise be true).
    with pytest.raises(ValueError, match='scale_search must be True or False'):
        FusionEngine(cuda_graph='off', scale_search='false')

    def ncc(a, b):
        a, b = (x[top:height - top, left:width - left].astype(np.float64) for x in (a, b))
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    truth = ir if ir.ndim == 2 else cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    found = ncc(search.infer(narrow, vi).registered_ir, truth)
    kept = ncc(single.infer(narrow, vi).registered_ir, truth)
    assert found > 0.93 and found > kept + 0.05, (found, kept)  # measured 0.968, 0.852


def test_set_global_scale_candidates_needs_the_orientation_stage():
    model = build_model()  # the learnt global stage: no scales to set
    with pytest.raises(ValueError, match='no orientation global stage'):
        model.set_global_scale_candidates((1.0,))
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    model = build_model(TarFuseConfig(global_features='orientation'))
    model.set_global_scale_candidates((0.9, 1.0))
    assert model.config.global_scale_candidates == (0.9, 1.0)
    assert model.registration.global_matcher.scale_candidates == (0.9, 1.0)
    with pytest.raises(ValueError, match='global_scale_candidates'):
        model.set_global_scale_candidates((0.0,))
    # The scale search off: the wide search keeps its wider start, fits no other scale.
    model = build_model(TarFuseConfig(global_features='orientation',
                                      global_scale_candidates=(0.8, 1.0, 1.25),
                                      global_wide_below=0.15, global_wide_scales=(0.64, 1.5625)))
    model.set_global_scale_candidates((1.0,))
    matcher = model.registration.global_matcher
    assert model.config.global_wide_scales == () and matcher.wide_scales == ()
    assert model.config.global_wide_below == 0.15 == matcher.wide_below


def test_scale_search_off_is_a_no_op_without_the_orientation_stage(tmp_path):
    """A config that lists scales but has no orientation stage (global stage off) still loads."""
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    path = tmp_path / 'no_global.safetensors'
    save_checkpoint(path, build_model(TarFuseConfig(
        global_features='orientation', global_stage=False,
        global_scale_candidates=(0.8, 1.0, 1.25))).eval(), {})
    engine = FusionEngine(path, cuda_graph='off', scale_search=False)
    assert engine.scale_candidates == ()


def _misaligned_sample(stem='FLIR_00993'):
    """Return a real sample pair whose IR is warped (samples/synthetic_misaligned): (ir, vi)."""
    from pathlib import Path
    samples = Path(__file__).resolve().parents[2] / 'samples'
    ir = cv2.imread(str(samples / 'synthetic_misaligned' / 'ir_warp' / f'{stem}.png'),
                    cv2.IMREAD_UNCHANGED)
    vi = cv2.imread(str(samples / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    assert ir is not None and vi is not None, stem
    return ir, vi


def _shipped_saved_with(path, **fields):
    """Save the shipped weights with ``fields`` of their config replaced."""
    from dataclasses import replace
    from tarfuse_ros.core.checkpoint import load_checkpoint, read_checkpoint_config
    from tarfuse_ros.core.paths import default_weights_path
    src = default_weights_path()
    old = load_checkpoint(src)
    model = build_model(replace(old.config, **fields))
    model.load_state_dict(old.state_dict())
    save_checkpoint(path, model.eval(), read_checkpoint_config(src)['provenance'])
    return path


def _assert_same_outputs(first, second):
    for name in ('fused', 'registered_ir', 'flow_px'):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), name)
    assert first.detections == second.detections


def test_fine_passes_run_as_a_checkpoint_saved_with_them(tmp_path):
    """fine_passes 0 / 1 equal, bit for bit, the shipped weights saved with no / one fine pass."""
    pair = _misaligned_sample()
    shipped = FusionEngine(cuda_graph='off')
    assert (shipped.fine_passes, shipped.config.global_fine_passes) == (4, 4)
    assert shipped.config.global_fine_check
    default = shipped.infer(*pair)
    _assert_same_outputs(FusionEngine(cuda_graph='off', fine_passes=None).infer(*pair), default)
    _assert_same_outputs(FusionEngine(cuda_graph='off', fine_passes=4).infer(*pair), default)
    # 0: no fine pass, and so no check of them.
    none = FusionEngine(cuda_graph='off', fine_passes=0)
    assert none.fine_passes == 0
    assert (none.config.global_fine_cell, none.config.global_fine_check) == (0, False)
    saved = FusionEngine(_shipped_saved_with(tmp_path / 'no_fine.safetensors',
                                             global_fine_cell=0, global_fine_check=False),
                         cuda_graph='off')
    without = none.infer(*pair)
    _assert_same_outputs(without, saved.infer(*pair))
    # 1: one pass, with the shipped cells, radius, check and tolerance.
    one = FusionEngine(cuda_graph='off', fine_passes=1)
    matcher = one.model.registration.global_matcher
    assert (one.fine_passes, matcher.fine_cell, matcher.fine_radius, matcher.fine_check,
            matcher.fine_tolerance) == (1, 4, 4, True, 0.25)
    once = one.infer(*pair)
    _assert_same_outputs(once, FusionEngine(
        _shipped_saved_with(tmp_path / 'one_fine.safetensors', global_fine_passes=1),
        cuda_graph='off').infer(*pair))
    # The passes act on this pair: each setting registers it elsewhere (measured 0.31 px and
    # 0.14 px of mean flow from the shipped four passes).
    assert np.abs(without.flow_px - default.flow_px).mean() > 0.05
    assert np.abs(once.flow_px - default.flow_px).mean() > 0.02
    # A stream's fits run the passes set (global_every: the first pair's fit is kept).
    stream = FusionEngine(cuda_graph='off', fine_passes=0, global_every=1000)
    saved_stream = FusionEngine(tmp_path / 'no_fine.safetensors', cuda_graph='off',
                                global_every=1000)
    other = _misaligned_sample('FLIR_04229')
    for engine in (stream, saved_stream):
        engine.infer(*pair)
    _assert_same_outputs(stream.infer(*other), saved_stream.infer(*other))


def test_fine_passes_are_refused_out_of_range_and_without_a_fine_stage(tmp_path):
    for bad in (True, -1, 9, 1.0, '2'):
        with pytest.raises(ValueError, match=r'fine_passes must be an integer in \[0, 8\]'):
            FusionEngine(cuda_graph='off', fine_passes=bad)
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    no_fine = tmp_path / 'orientation_no_fine.safetensors'
    save_checkpoint(no_fine, build_model(TarFuseConfig(global_features='orientation')).eval())
    learnt = tmp_path / 'learnt_global.safetensors'
    save_checkpoint(learnt, build_model().eval())
    for path, stage in ((no_fine, 'global_fine_cell 0'),
                        (learnt, "no orientation global stage: registration 'match'")):
        for passes in (1, 8):
            with pytest.raises(ValueError) as raised:
                FusionEngine(path, cuda_graph='off', fine_passes=passes)
            assert (f'{passes} fine passes asked for, but this checkpoint has no fine stage '
                    f'({stage}' in str(raised.value)), str(raised.value)
            assert "only 0 or the checkpoint's own count apply" in str(raised.value)
        # None or 0: nothing to change, the model runs as saved.
        for passes in (None, 0):
            engine = FusionEngine(path, cuda_graph='off', fine_passes=passes)
            assert engine.fine_passes == 0 and not engine.fine_stage
    # The shipped model has one, with 0 passes asked for too (a restart with 1-8 runs them).
    assert FusionEngine(cuda_graph='off', fine_passes=0).fine_stage


def _resized_and_by_hand(weights, pair, frame, network, interpolation, **setting):
    """Return an engine's result on a pair and a plain engine's on the pair resized by hand.

    The engine has ``setting`` and runs ``pair`` at ``frame`` (h, w); the plain one runs the
    pair resized to ``network`` (h, w) with ``interpolation``. Returns ``(result, by_hand)``
    after checking the result's layout at the frame's size and that its boxes are the hand-run
    ones scaled to the frame.
    """
    ir, vi = _small(pair, *frame)
    engine = FusionEngine(weights, conf_threshold=0.5, max_detections=20, **setting)
    plain = FusionEngine(weights, conf_threshold=0.5, max_detections=20, input_min_long_side=0)
    assert engine.network_size(*frame) == network
    result = engine.infer(ir, vi)
    _check_result(result, *frame, colour=True)
    size = (network[1], network[0])
    by_hand = plain.infer(cv2.resize(ir, size, interpolation=interpolation),
                          cv2.resize(vi, size, interpolation=interpolation))
    assert np.abs(by_hand.flow_px).mean() > 0.2  # a real displacement
    sx, sy = frame[1] / network[1], frame[0] / network[0]
    got = np.array([[d.x1, d.y1, d.x2, d.y2, d.score] for d in result.detections])
    want = np.array([[d.x1 * sx, d.y1 * sy, d.x2 * sx, d.y2 * sy, d.score]
                     for d in by_hand.detections])
    assert len(got) > 0 and len(got) == len(want)
    np.testing.assert_allclose(got[:5], want[:5], atol=0.5)
    return result, by_hand


def test_small_frames_run_enlarged_and_come_back_to_the_frame(firing_weights, pair, tmp_path):
    """input_min_long_side: a 60x80 frame runs at 120x160; outputs are in the 60x80 frame."""
    small, big = _resized_and_by_hand(firing_weights, pair, (60, 80), (120, 160),
                                      cv2.INTER_LINEAR, input_min_long_side=160)
    enlarged = FusionEngine(firing_weights, input_min_long_side=160)
    assert enlarged.input_min_long_side == 160
    assert enlarged.network_size(480, 640) == (480, 640)  # large frames are left alone
    # The network's outputs brought back: the field and the fused image shrunk.
    shrunk_flow = cv2.resize(big.flow_px, (80, 60), interpolation=cv2.INTER_AREA) * 0.5
    np.testing.assert_allclose(small.flow_px, shrunk_flow, atol=0.05)
    shrunk_fused = cv2.resize(big.fused, (80, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(small.fused.astype(int) - shrunk_fused.astype(int)).mean() < 1.0
    # A checkpoint carries the setting; the argument overrides it.
    from dataclasses import replace
    from tarfuse_ros.core.checkpoint import load_checkpoint
    model = load_checkpoint(firing_weights)
    model.config = replace(model.config, input_min_long_side=160)
    path = tmp_path / 'enlarging.safetensors'
    save_checkpoint(path, model)
    assert FusionEngine(path).input_min_long_side == 160
    assert FusionEngine(path, input_min_long_side=0).input_min_long_side == 0
    assert FusionEngine(firing_weights).input_min_long_side == 0  # written before the field
    for bad in (-1, 1.5, True, '640', 10 ** 6):
        with pytest.raises(ValueError, match='input_min_long_side'):
            FusionEngine(firing_weights, input_min_long_side=bad)


def test_large_frames_run_shrunk_and_come_back_to_the_frame(firing_weights, pair):
    """input_max_long_side: a 256x320 frame runs at 205x256; outputs are in the 256x320 frame."""
    large, small = _resized_and_by_hand(firing_weights, pair, (256, 320), (205, 256),
                                        cv2.INTER_AREA, input_max_long_side=256)
    shrinking = FusionEngine(firing_weights, input_max_long_side=256)
    assert (shrinking.input_max_long_side, FusionEngine(firing_weights).input_max_long_side) \
        == (256, 0)
    assert shrinking.network_size(100, 200) == (100, 200)  # small frames are left alone
    ir, vi = _small(pair, 256, 320)
    grown_flow = cv2.resize(small.flow_px, (320, 256), interpolation=cv2.INTER_LINEAR)
    grown_flow *= np.float32([320 / 256, 256 / 205])
    np.testing.assert_allclose(large.flow_px, grown_flow, atol=0.05)
    # The registered IR is the frame's IR warped by the published flow (sharp, not enlarged).
    grid_y, grid_x = np.mgrid[0:256, 0:320].astype(np.float32)
    ir_grey = ir if ir.ndim == 2 else cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    warped = cv2.remap(ir_grey, grid_x + large.flow_px[..., 0], grid_y + large.flow_px[..., 1],
                       interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(large.registered_ir.astype(int) - warped.astype(int)).max() <= 1
    # The fused luma: the network's, enlarged, plus the band of detail the shrink removed.
    small_y = cv2.cvtColor(small.fused, cv2.COLOR_BGR2YCrCb)[..., 0]
    large_y = cv2.cvtColor(large.fused, cv2.COLOR_BGR2YCrCb)[..., 0]
    grown_y = cv2.resize(small_y, (320, 256), interpolation=cv2.INTER_LINEAR)
    back = cv2.resize(large_y, (256, 205), interpolation=cv2.INTER_AREA)
    assert np.abs(back.astype(int) - small_y.astype(int)).mean() < 1.5  # same low band
    vi_y = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)[..., 0].astype(np.float32)
    vi_detail = vi_y - cv2.resize(cv2.resize(vi_y, (256, 205), interpolation=cv2.INTER_AREA),
                                  (320, 256), interpolation=cv2.INTER_LINEAR)
    added = large_y.astype(np.float32) - grown_y
    assert np.abs(added).mean() > 1.0  # detail came back ...
    assert np.corrcoef(added.ravel(), vi_detail.ravel())[0, 1] > 0.5  # ... the frame's own
    for bad in (-1, 100, 1.5, True, '640', 10 ** 6):
        with pytest.raises(ValueError, match='input_max_long_side'):
            FusionEngine(firing_weights, input_max_long_side=bad)
    with pytest.raises(ValueError, match=r'input_max_long_side \(256\) must be 0 or at least '
                                         r"input_min_long_side \(320: the checkpoint's model "
                                         r'field unless the engine is given another\)'):
        FusionEngine(firing_weights, input_min_long_side=320, input_max_long_side=256)


def test_frames_the_network_would_run_above_4k_are_refused_before_anything_runs(
        firing_weights, pair):
    """More than MAX_NETWORK_PIXELS (3840x2160): a clear error, no batch member runs."""
    from tarfuse_ros.core.sizes import check_network_size, MAX_NETWORK_PIXELS
    engine = FusionEngine(firing_weights)
    huge = np.zeros((2200, 4000), np.uint8)  # 8.8 MP
    ir, vi = _small(pair, 64, 80)
    with pytest.raises(ValueError, match=r'the visible frame 4000x2200 would run the network: '
                                         r'8,800,000 pixels, more than the 8,294,400 '
                                         r'\(3840x2160\) it runs at .*set input_max_long_side'):
        engine.infer(huge, huge)
    calls, prepared = [], []
    engine._run_group = lambda *args, **kwargs: calls.append(args)  # what would run
    original_prepare = engine._prepare
    engine._prepare = lambda ir, vi, index: prepared.append(index) or original_prepare(
        ir, vi, index)
    with pytest.raises(ValueError, match='8,800,000 pixels'):
        engine.infer_batch([ir, huge], [vi, huge])
    assert calls == []  # the small pair of the refused batch did not run either
    # Nor was any pair prepared (a 7680x4320 frame took 1 s and 2-5 times its memory first).
    assert prepared == []
    # Enlarged past it (input_min_long_side) is named with the size it would run at.
    with pytest.raises(ValueError, match=r'the visible frame 80x64 would run the network at '
                                         r'4000x3200: 12,800,000 pixels, .*; lower '
                                         r"input_min_long_side \(the checkpoint's model field, "
                                         r"or the engines' argument\), which enlarges it$"):
        FusionEngine(firing_weights, input_min_long_side=4000).infer(ir, vi)
    # An input_max_long_side that leaves it above is to be lowered (it said 'set').
    with pytest.raises(ValueError, match=r'8,800,000 pixels, .*; lower input_max_long_side '
                                         r'\(now 4096; e.g. 1920\) to run large frames shrunk$'):
        FusionEngine(firing_weights, input_max_long_side=4096).infer(huge, huge)
    # At the limit it runs; shrunk with input_max_long_side, the 8.8 MP frame runs.
    check_network_size((2160, 3840), (2160, 3840))
    assert MAX_NETWORK_PIXELS == 3840 * 2160
    shrunk = FusionEngine(firing_weights, input_max_long_side=400).infer(huge, huge)
    assert shrunk.fused.shape == huge.shape and shrunk.flow_px.shape == (2200, 4000, 2)


def test_outputs_come_back_to_the_frame_per_axis():
    """outputs_to_frame (both engines): x and y scaled by their own factors."""
    from tarfuse_ros.core.pair_engine import outputs_to_frame
    fused = np.full((120, 200), 90, np.uint8)
    registered = np.full((120, 200), 40, np.uint8)
    flow = np.zeros((120, 200, 2), np.float32)
    flow[..., 0], flow[..., 1] = 10.0, -6.0
    rows = np.array([[100.0, 60.0, 150.0, 90.0, 0.9, 1.0]])
    out_fused, out_registered, out_flow, out_rows = outputs_to_frame(
        fused, registered, flow, rows, 60, 80)  # x 80 / 200 = 0.4, y 60 / 120 = 0.5
    assert out_fused.shape == out_registered.shape == (60, 80)
    assert (out_fused == 90).all() and (out_registered == 40).all()
    assert out_flow.shape == (60, 80, 2) and out_flow.dtype == np.float32
    np.testing.assert_allclose(out_flow[..., 0], 4.0, atol=1e-5)
    np.testing.assert_allclose(out_flow[..., 1], -3.0, atol=1e-5)
    np.testing.assert_allclose(out_rows, [[40.0, 30.0, 60.0, 45.0, 0.9, 1.0]])
    same = outputs_to_frame(fused, registered, flow, rows, 120, 200)  # no enlargement
    assert same[0] is fused and same[2] is flow and same[3] is rows


def test_forward_tensors_names_a_too_small_or_float64_input(pair):
    """forward_tensors names an input below the network's minimum size, or not float32.

    A 32 px (multiple of 32) input said 'flow_px needs H >= 2', a float64 one 'Input type
    (double) and bias type (float) should be the same' (the shipped model, a real pair).
    """
    engine = FusionEngine(cuda_graph='off')
    ir_t, vi_t = engine.input_tensors(*_small(pair, 32, 64))
    assert tuple(ir_t.shape) == (1, 1, 32, 64) and ir_t.dtype == torch.float32
    with pytest.raises(ValueError, match=r'ir is \(1, 1, 32, 64\): H and W must be at least 64'):
        engine.forward_tensors(ir_t, vi_t)
    ir_p, _ = images.pad_to_multiple(ir_t, 32, min_size=64)
    vi_p, _ = images.pad_to_multiple(vi_t, 32, min_size=64)
    raw = engine.forward_tensors(ir_p, vi_p, valid_size=(32, 64))
    assert tuple(raw['flow'].shape) == (1, 2, 64, 64)
    with pytest.raises(ValueError, match='vi must be a float32 tensor in .* got torch.float64'):
        engine.forward_tensors(ir_p, vi_p.double(), valid_size=(32, 64))


def test_forward_tensors_names_inputs_outside_0_1_and_a_valid_size_not_of_two_integers(pair):
    # 0-255 and NaN tensors ran without a word (a meaningless flow); valid_size 'ab' said
    # "invalid literal for int() with base 10: 'a'".
    engine = FusionEngine(cuda_graph='off')
    ir_t, vi_t = (images.pad_to_multiple(t, 32, min_size=64)[0]
                  for t in engine.input_tensors(*_small(pair, 64, 96)))
    for bad, words in ((ir_t * 255.0, r'ir must hold values in \[0, 1\], got min .*, max 2'),
                       (ir_t.clone().fill_(float('nan')), 'ir must hold values in .*min nan')):
        with pytest.raises(ValueError, match=words) as raised:
            engine.forward_tensors(bad, vi_t)
        assert 'divide 8-bit data by 255' in str(raised.value)
    with pytest.raises(ValueError, match='vi must hold values in'):
        engine.forward_tensors(ir_t, vi_t - 0.5)
    for bad in ('ab', (64,), (64, 96, 1), 64, (64.0, 96.0)):
        with pytest.raises(ValueError, match=r'valid_size must be None or \(h, w\), two '):
            engine.forward_tensors(ir_t, vi_t, valid_size=bad)
    raw = engine.forward_tensors(ir_t, vi_t, valid_size=(np.int64(64), torch.tensor(96)))
    assert tuple(raw['flow'].shape) == (1, 2, 64, 96)
