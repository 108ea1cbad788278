"""A model without detection head (``model.detect: false``, issue 14) through the whole core.

Network, config, loss, checkpoint, torch engine, ONNX export and onnxruntime backend, and the
IR-role chroma that a grey visible-role image with a colour IR-role image (medical pairs) gets.
"""

import json

import cv2
import numpy as np
import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from tarfuse_ros.core.chroma import ir_chroma, ir_chroma_for, NEUTRAL_CHROMA
from tarfuse_ros.core.chroma import restore_ir_chroma
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.losses import TarFuseLoss
from tarfuse_ros.core.model.tarfuse import build_model, parameter_counts, TarFuseConfig
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.training.config import TrainingConfig
import torch


def _model(detect=False, seed=0):
    torch.manual_seed(seed)
    model = build_model({'detect': detect}).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('nodet') / 'nodet.safetensors'
    save_checkpoint(path, _model(), provenance={'note': 'random init, no detection head'})
    return path


def _pair(height=96, width=128, seed=0):
    rng = np.random.default_rng(seed)
    vi = cv2.GaussianBlur(rng.integers(0, 256, (height, width), dtype=np.uint8), (0, 0), 3)
    ir = cv2.GaussianBlur(rng.integers(0, 256, (height, width), dtype=np.uint8), (0, 0), 3)
    return ir, vi


def test_config_without_detection_has_no_classes_and_old_configs_keep_the_head():
    config = TarFuseConfig(detect=False)
    assert config.class_names == () and config.num_classes == 0
    assert TarFuseConfig.from_dict(config.to_dict()) == config
    old = TarFuseConfig().to_dict()
    del old['detect']  # checkpoints written before the field existed
    assert TarFuseConfig.from_dict(old).detect is True
    with pytest.raises(ValueError, match='detect must be true or false'):
        TarFuseConfig(detect='no')


def test_network_without_detection_has_no_neck_or_head_and_fewer_parameters():
    full, fusion_only = _model(True), _model(False)
    assert fusion_only.neck is None and fusion_only.detect is None
    assert not any(name.startswith(('neck.', 'detect.'))
                   for name in fusion_only.state_dict())
    counts_full, counts = parameter_counts(full), parameter_counts(fusion_only)
    assert 'detect' not in counts and 'neck' not in counts
    assert counts['total'] == counts_full['total'] - counts_full['neck'] - counts_full['detect']
    ir, vi = torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    out = fusion_only.predict_raw(ir, vi)
    assert out['det'] is None and out['fused'].shape == (2, 1, 64, 96)
    # Same weights elsewhere give the same fusion and registration as the model with a head.
    full.load_state_dict(fusion_only.state_dict(), strict=False)
    reference = full.predict_raw(ir, vi)
    for key in ('fused', 'flow', 'registered_ir'):
        assert torch.equal(out[key], reference[key])


def test_loss_without_detection_head_has_no_detection_term_and_trains():
    model = _model().train()
    criterion = TarFuseLoss(model)
    assert criterion.detection is None
    ir, vi = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    batch = {'ir_aligned': ir, 'vi': vi, 'flow_gt': torch.zeros(2, 2, 64, 64),
             'batch_idx': torch.zeros(1), 'cls': torch.zeros(1, 1),
             'bboxes': torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
             'has_labels': torch.tensor([True, False])}
    total, parts = criterion(model(ir, vi, ir_aligned=ir), batch)
    assert parts['detection'] == 0 and torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.reconstruction.parameters())


def _raw_config(**data):
    return {'data': {'train': ['roadscene:train'], 'crop': 64, **data},
            'train': {'epochs': 1, 'batch': 2, 'lr': 1e-3}, 'model': {'detect': False}}


def test_training_config_without_detection_needs_no_class_map_and_refuses_one():
    config = TrainingConfig.from_dict(_raw_config())
    assert config.model.detect is False and config.model.num_classes == 0
    assert TrainingConfig.from_dict(config.to_dict()).model == config.model
    with pytest.raises(ValueError, match='data.class_map must be left out'):
        TrainingConfig.from_dict(_raw_config(class_map={'person': 0}))
    raw = _raw_config()
    del raw['model']
    with pytest.raises(ValueError, match='data.class_map must be set'):
        TrainingConfig.from_dict(raw)


def test_checkpoint_without_detection_round_trips_and_older_ones_keep_their_head(
        checkpoint, tmp_path):
    stored = read_checkpoint_config(checkpoint)['model']
    assert stored['detect'] is False and stored['class_names'] == []
    model = load_checkpoint(checkpoint)
    assert model.detect is None
    for name, value in _model().state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert load_checkpoint(default_weights_path()).detect is not None
    # A checkpoint written before the field existed (no 'detect' key) loads with its head.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tarfuse_ros.core.checkpoint import METADATA_KEY
    with safe_open(str(default_weights_path()), framework='pt') as handle:
        header = json.loads(handle.metadata()[METADATA_KEY])
    del header['model']['detect']
    older = tmp_path / 'older.safetensors'
    save_file(load_file(str(default_weights_path())), str(older),
              metadata={METADATA_KEY: json.dumps(header)})
    assert 'detect' not in read_checkpoint_config(older)['model']
    assert load_checkpoint(older).detect is not None


def test_engine_loads_a_detection_free_checkpoint_and_returns_no_detections(checkpoint):
    engine = FusionEngine(checkpoint, device='cpu')
    assert engine.detects is False and engine.class_names == ()
    ir, vi = _pair()
    result = engine.infer(ir, vi)
    assert result.detections == []
    assert result.fused.shape == vi.shape and result.fused.dtype == np.uint8
    colour_vi = cv2.cvtColor(vi, cv2.COLOR_GRAY2BGR)
    colour_vi[..., 2] = 255 - colour_vi[..., 2]
    batch = engine.infer_batch([ir, ir], [colour_vi, vi[:64, :96]])
    assert [r.detections for r in batch] == [[], []]
    assert FusionEngine(default_weights_path(), device='cpu').detects is True
    # A class filter cannot name classes of a model without any.
    with pytest.raises(ValueError):
        engine.set_thresholds(classes=[0])


def test_ir_chroma_is_kept_only_for_colour_uint8_images():
    grey = np.full((8, 10), 90, np.uint8)
    assert ir_chroma(grey, 8, 10) is None
    assert ir_chroma(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 8, 10) is None
    assert ir_chroma(np.zeros((8, 10, 3), np.uint16), 8, 10) is None
    red = np.zeros((8, 10, 3), np.uint8)
    red[..., 2] = 200
    crcb = ir_chroma(red, 16, 20)
    assert crcb.shape == (16, 20, 2)
    assert tuple(crcb[0, 0]) == tuple(cv2.cvtColor(red, cv2.COLOR_BGR2YCrCb)[0, 0, 1:])


def test_ir_chroma_is_used_only_when_the_visible_image_has_no_colour():
    red = np.zeros((8, 10, 3), np.uint8)
    red[..., 2] = 200
    neutral = np.full((8, 10, 2), NEUTRAL_CHROMA, np.uint8)
    expected = ir_chroma(red, 8, 10)
    assert np.array_equal(ir_chroma_for(red, None, 8, 10), expected)
    assert np.array_equal(ir_chroma_for(red, neutral, 8, 10), expected)
    coloured = neutral.copy()
    coloured[0, 0, 0] = 140
    assert ir_chroma_for(red, coloured, 8, 10) is None
    assert ir_chroma_for(red[..., 2], None, 8, 10) is None


def test_restored_chroma_follows_the_flow_and_is_neutral_outside_the_image():
    height, width = 24, 32
    crcb = np.full((height, width, 2), NEUTRAL_CHROMA, np.uint8)
    crcb[:, 20:, 0] = 200  # a red band on the right of the IR image
    fused_y = np.full((height, width), 120, np.uint8)
    flow = np.zeros((height, width, 2), np.float32)
    same = cv2.cvtColor(restore_ir_chroma(fused_y, crcb, flow), cv2.COLOR_BGR2YCrCb)
    assert np.abs(same[..., 1:].astype(int) - crcb).max() <= 1
    assert np.abs(same[..., 0].astype(int) - 120).max() <= 1  # the fused luma is kept
    flow[..., 0] = 4.0  # registered(p) = ir(p + 4 px): the band moves 4 px to the left
    moved = cv2.cvtColor(restore_ir_chroma(fused_y, crcb, flow), cv2.COLOR_BGR2YCrCb)
    assert moved[0, 16, 1] > 190 and moved[0, 15, 1] < 140
    assert np.abs(moved[:, -4:, 1:].astype(int) - NEUTRAL_CHROMA).max() <= 1
    with pytest.raises(ValueError, match='visible frame'):
        restore_ir_chroma(fused_y, crcb[:10], flow)


def test_engine_colours_a_grey_visible_fusion_with_the_registered_ir_chroma(checkpoint):
    engine = FusionEngine(checkpoint, device='cpu')
    ir_grey, vi = _pair()
    pet = cv2.applyColorMap(ir_grey, cv2.COLORMAP_JET)  # pseudo-colour, like PET / SPECT
    result = engine.infer(pet, vi)
    assert result.fused.shape == vi.shape + (3,)
    # The network sees the IR luma: the grey fused image of the luma, with the IR chroma.
    grey_fused = engine.infer(cv2.cvtColor(pet, cv2.COLOR_BGR2GRAY), vi).fused
    expected = restore_ir_chroma(grey_fused, ir_chroma(pet, *vi.shape), result.flow_px)
    assert np.array_equal(result.fused, expected)
    luma = cv2.cvtColor(result.fused, cv2.COLOR_BGR2YCrCb)[..., 0].astype(int)
    assert np.median(np.abs(luma - grey_fused.astype(int))) <= 1
    # A grey visible image stored as three equal channels (as the atlas MRI files) is grey.
    assert np.array_equal(engine.infer(pet, cv2.cvtColor(vi, cv2.COLOR_GRAY2BGR)).fused,
                          result.fused)
    # A colour visible image keeps its own chroma (the IR chroma is not used).
    colour_vi = cv2.applyColorMap(vi, cv2.COLORMAP_BONE)
    own = engine.infer(pet, colour_vi).fused
    assert np.array_equal(own, engine.infer(cv2.cvtColor(pet, cv2.COLOR_BGR2GRAY),
                                            colour_vi).fused)


@pytest.fixture(scope='module')
def exported(checkpoint, tmp_path_factory):
    pytest.importorskip('onnxruntime')
    from tarfuse_ros.core.export import export_onnx
    out = tmp_path_factory.mktemp('nodet_onnx') / 'nodet.onnx'
    report = export_onnx(checkpoint, out)
    return out, report


def test_onnx_export_without_detection_has_no_det_output_and_matches_pytorch(exported):
    import onnx
    from tarfuse_ros.core.onnx_backend import FUSION_OUTPUTS, read_onnx_metadata
    path, report = exported
    assert set(report.max_abs_diff) == set(FUSION_OUTPUTS)
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == list(FUSION_OUTPUTS)
    _, export = read_onnx_metadata(path)
    assert set(export['outputs']) == set(FUSION_OUTPUTS)


def test_onnxruntime_backend_without_detection_equals_the_torch_engine(exported, checkpoint):
    from tarfuse_ros.core.onnx_backend import OnnxFusionEngine
    onnx_engine = OnnxFusionEngine(exported[0], device='cpu')
    torch_engine = FusionEngine(checkpoint, device='cpu')
    assert onnx_engine.detects is False
    ir, vi = _pair(seed=3)
    pet = cv2.applyColorMap(ir, cv2.COLORMAP_JET)
    for ir_in in (ir, pet):
        ours, theirs = onnx_engine.infer(ir_in, vi), torch_engine.infer(ir_in, vi)
        assert ours.detections == [] and theirs.detections == []
        assert ours.fused.shape == theirs.fused.shape
        assert np.abs(ours.fused.astype(int) - theirs.fused.astype(int)).max() <= 2
        assert np.abs(ours.flow_px - theirs.flow_px).max() < 1e-2
