"""One pair preparation: the dataset, the engine and the evaluation give identical tensors."""

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import images
from tarfuse_ros.core.checkpoint import save_checkpoint
from tarfuse_ros.core.data import PairedDataset
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
from tarfuse_ros.evaluation.inputs import prepare
import torch

NARROW = TarFuseConfig(feature_channels=4, cseb_channels=8, pyramid_channels=(8, 8),
                       estimator_channels=(8, 8), corr_radius=1,
                       reconstruction_channels=(4, 4), neck_stem_channels=(4, 8),
                       detect_channels=(8, 8, 8), reg_max=2)


def _texture(height, width, seed, channels=None, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    shape = (height // 8 + 1, width // 8 + 1) + ((channels,) if channels else ())
    coarse = rng.random(shape).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    peak = 255 if dtype == np.uint8 else 4000
    noise = rng.random(smooth.shape) * 0.1
    return np.clip((smooth + noise) * peak * 0.8 + (1000 if dtype == np.uint16 else 0),
                   0, np.iinfo(dtype).max).astype(dtype)


# (IR, visible): same size 8-bit colour; IR larger (shrinks: INTER_AREA); 16-bit IR smaller
# than the frame (grows: INTER_LINEAR, after the robust 16-bit normalisation); grey visible.
CASES = {
    'colour': (_texture(64, 96, 1), _texture(64, 96, 2, 3)),
    'ir_larger': (_texture(100, 150, 3), _texture(64, 96, 4, 3)),
    'ir16_smaller': (_texture(48, 72, 5, dtype=np.uint16), _texture(64, 96, 6, 3)),
    'grey': (_texture(64, 96, 7), _texture(64, 96, 8)),
}


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'narrow.safetensors'
    save_checkpoint(path, build_model(NARROW))
    return FusionEngine(path, device='cpu', cuda_graph='off')


def _dataset_planes(folder, ir, vi):
    for sub in ('ir', 'vi'):
        (folder / sub).mkdir(parents=True)
    assert cv2.imwrite(str(folder / 'ir' / 'p.png'), ir)
    assert cv2.imwrite(str(folder / 'vi' / 'p.png'), vi)
    sample = PairedDataset([(folder, 'all')], augment=False)[0]
    return sample['ir'][0].numpy(), sample['vi'][0].numpy()


@pytest.mark.parametrize('name', sorted(CASES))
def test_dataset_engine_and_evaluation_prepare_identical_tensors(name, engine, tmp_path):
    ir, vi = CASES[name]
    data_ir, data_vi = _dataset_planes(tmp_path / name, ir, vi)
    engine_ir, engine_vi = (t[0, 0].numpy() for t in engine.input_tensors(ir, vi))
    pair = prepare(ir, vi)
    eval_ir, eval_vi = images.unit_plane(pair.ir), images.unit_plane(pair.vi_y)
    assert data_ir.shape == vi.shape[:2] and data_ir.dtype == np.float32
    for ours in (engine_ir, eval_ir):
        np.testing.assert_array_equal(ours, data_ir)
    for ours in (engine_vi, eval_vi):
        np.testing.assert_array_equal(ours, data_vi)


def test_the_rules_of_the_preparation():
    ir, vi = CASES['ir_larger']
    pair = images.prepare_pair(ir, vi, keep_uint8=True)
    # 8-bit colour: OpenCV's 8-bit luma; the IR shrinks with INTER_AREA.
    np.testing.assert_array_equal(pair.vi_y, cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)[:, :, 0])
    np.testing.assert_array_equal(pair.ir, cv2.resize(ir, (96, 64), interpolation=cv2.INTER_AREA))
    assert pair.crcb.shape == (64, 96, 2) and pair.crcb.dtype == np.uint8
    # 16-bit IR: normalised on the frame as given, then resized.
    ir16, vi = CASES['ir16_smaller']
    pair = images.prepare_pair(ir16, vi)
    expected = cv2.resize(images.to_unit_gray(ir16), (96, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(pair.ir, expected)
    assert pair.ir.dtype == np.float32 and pair.vi_y.dtype == np.float32
    grey = images.prepare_pair(*CASES['grey'])
    assert grey.crcb is None
