"""The global stage's map over a stream (``FusionEngine(global_every=..., global_window=...)``).

Real RoadScene pairs (test/data) and the shipped model: which fit each pair starts from, when
the fits are forgotten, and the settings that are refused. What the stream does to the error
and the time per pair is measured by ``benchmarks/eval_stream.py``, not here.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.core.checkpoint import save_checkpoint
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.model.matching import affine_flow
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
import torch

FOLDER = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
SIZE = (256, 192)  # one frame size for the whole stream (multiples of 32: nothing padded)


@pytest.fixture(scope='module')
def pairs():
    """Four real pairs at one size: (IR uint8 plane, visible BGR)."""
    stems = ('FLIR_00006', 'FLIR_00018', 'FLIR_00060', 'FLIR_00122')
    out = []
    for stem in stems:
        ir, vi = data.load_pair(FOLDER, stem)
        ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY) if ir.ndim == 3 else ir
        out.append((cv2.resize(ir, SIZE, interpolation=cv2.INTER_AREA),
                    cv2.resize(vi, SIZE, interpolation=cv2.INTER_AREA)))
    return out


@pytest.fixture(scope='module')
def single():
    """Return the default engine: every pair fitted alone."""
    return FusionEngine(cuda_graph='off')


def _fit(engine, pair):
    """Return the global stage's (1, 2, 3) map fitted on one pair alone."""
    ir_t, vi_t = engine.input_tensors(*pair)
    return engine.model.fit_global(ir_t, vi_t)


def _flow_from(engine, pair, theta):
    """Return the published flow of ``pair`` with the learnt levels started from ``theta``."""
    ir_t, vi_t = engine.input_tensors(*pair)
    with torch.inference_mode():
        out = engine.model.predict_raw(ir_t, vi_t, global_theta=theta)
    return out['flow'][0].permute(1, 2, 0).numpy()


def test_the_stage_fits_until_the_window_is_full_then_one_pair_in_every(pairs, single):
    stream = FusionEngine(cuda_graph='off', global_every=2, global_window=2)
    assert stream.streams_global_map and not single.streams_global_map
    fits = [_fit(single, pair) for pair in pairs]
    results = [stream.infer(*pair) for pair in pairs]
    # Pairs 1 and 2 are fitted (the window fills); pair 3 skips the stage and starts from the
    # mean of fits 1 and 2; pair 4 is fitted (2 pairs since the last fit): fits 2 and 4.
    np.testing.assert_array_equal(results[0].flow_px, single.infer(*pairs[0]).flow_px)
    for index, theta in ((1, fits[0] + fits[1]), (2, fits[0] + fits[1]),
                         (3, fits[1] + fits[3])):
        np.testing.assert_allclose(results[index].flow_px,
                                   _flow_from(single, pairs[index], 0.5 * theta), atol=1e-4)
    # Pair 3's own fit is not what it started from.
    assert not torch.allclose(fits[2], 0.5 * (fits[0] + fits[1]), atol=1e-3)


def test_each_pair_starts_from_the_median_of_the_last_window_fits(pairs, single):
    stream = FusionEngine(cuda_graph='off', global_window=3)
    fits = [_fit(single, pair) for pair in pairs]
    got = [stream.infer(*pair).flow_px for pair in pairs]
    # One fit: itself; two: their mean; three and four: the median of the newest three.
    expected = (fits[0], 0.5 * (fits[0] + fits[1]),
                torch.cat(fits[:3]).median(dim=0, keepdim=True).values,
                torch.cat(fits[1:4]).median(dim=0, keepdim=True).values)
    for pair, flow, theta in zip(pairs, got, expected):
        np.testing.assert_allclose(flow, _flow_from(single, pair, theta), atol=1e-4)
    # The median is not the newest fit: the stream's flow differs from the single fit's.
    assert np.abs(got[3] - single.infer(*pairs[3]).flow_px).mean() > 0.01
    # The spread: the median over the held fits of their corners' mean distance (px) from
    # where the map in use puts them (checked through the flows of the two maps).
    held, spread = stream.global_map_state()
    corners = (0, -1)
    median_flow = affine_flow(expected[3], SIZE[1], SIZE[0])
    distances = []
    for fit in fits[1:4]:
        gap = (affine_flow(fit, SIZE[1], SIZE[0]) - median_flow)[0]
        distances.append(np.mean([float(gap[:, y, x].norm()) for y in corners
                                  for x in corners]))
    assert held == 3 and spread == pytest.approx(np.median(distances), rel=1e-4)
    assert spread > 0.1, distances


def test_a_new_frame_size_a_reset_or_a_batch_forgets_or_keeps_the_fits(pairs, single):
    stream = FusionEngine(cuda_graph='off', global_every=10)
    stream.infer(*pairs[0])
    # Another frame size: the fits of the old one do not apply (fitted afresh, alone).
    ir, vi = (cv2.resize(image, (224, 160), interpolation=cv2.INTER_AREA)
              for image in pairs[1])
    np.testing.assert_array_equal(stream.infer(ir, vi).flow_px, single.infer(ir, vi).flow_px)
    # Back to the first size: that size's fits were forgotten too.
    np.testing.assert_array_equal(stream.infer(*pairs[2]).flow_px,
                                  single.infer(*pairs[2]).flow_px)
    # A batch fits each pair and leaves the stream alone: the next single pair still starts
    # from pair 3's fit.
    batch = stream.infer_batch([pairs[0][0], pairs[1][0]], [pairs[0][1], pairs[1][1]])
    # A batch rounds a little differently (up to 1.1e-4 px on an AVX-512 CPU, 2026-12-04).
    for result, pair in zip(batch, pairs[:2]):
        np.testing.assert_allclose(result.flow_px, single.infer(*pair).flow_px, atol=1e-3)
    np.testing.assert_allclose(stream.infer(*pairs[3]).flow_px,
                               _flow_from(single, pairs[3], _fit(single, pairs[2])), atol=1e-4)
    stream.reset_global_maps()
    assert stream.global_map_state() == (0, None)
    np.testing.assert_array_equal(stream.infer(*pairs[3]).flow_px,
                                  single.infer(*pairs[3]).flow_px)
    assert stream.global_map_state() == (1, None)


def test_a_new_visible_size_forgets_the_fits_when_the_shrink_gives_the_same_input(pairs):
    """input_max_long_side 256: a 256x192 and a 320x240 visible frame both run at 256x192.

    With the same IR camera the two streams once shared their key, so the 320x240 frame
    started from the 256x192 frame's fit (5.6 px off its own flow) instead of being fitted.
    """
    stream = FusionEngine(cuda_graph='off', global_every=10, input_max_long_side=256)
    single = FusionEngine(cuda_graph='off', input_max_long_side=256)
    stream.infer(*pairs[0])
    ir, vi = pairs[1][0], cv2.resize(pairs[1][1], (320, 240), interpolation=cv2.INTER_CUBIC)
    assert stream.network_size(240, 320) == stream.network_size(192, 256) == (192, 256)
    np.testing.assert_array_equal(stream.infer(ir, vi).flow_px, single.infer(ir, vi).flow_px)
    assert stream.global_map_state() == (1, None)


def test_a_mixed_size_batch_an_ir_of_another_shape_and_a_new_prior_are_no_stream_pairs(
        pairs, single):
    stream = FusionEngine(cuda_graph='off', global_every=100)
    stream.infer(*pairs[0])
    # A batch whose pairs differ in size: each is fitted alone, the stream keeps its fit.
    small = tuple(cv2.resize(image, (224, 160), interpolation=cv2.INTER_AREA)
                  for image in pairs[1])
    stream.infer_batch([small[0], pairs[2][0]], [small[1], pairs[2][1]])
    assert stream.global_map_state() == (1, None)
    np.testing.assert_allclose(stream.infer(*pairs[3]).flow_px,
                               _flow_from(single, pairs[3], _fit(single, pairs[0])), atol=1e-4)
    # The same visible frame with an IR of another shape (another IR camera geometry, resized
    # to the visible frame by the engine): fitted afresh.
    ir_crop = np.ascontiguousarray(pairs[3][0][:, 32:])
    np.testing.assert_array_equal(stream.infer(ir_crop, pairs[3][1]).flow_px,
                                  single.infer(ir_crop, pairs[3][1]).flow_px)
    # A new registration prior (another pre-warp): fitted afresh, with the prior.
    from tarfuse_ros.core.prior import make_prior
    prior = make_prior([[1.02, 0.0, 4.0], [0.0, 1.02, -3.0], [0.0, 0.0, 1.0]], SIZE, SIZE)
    stream.set_registration_prior(prior)
    single.set_registration_prior(prior)
    try:
        np.testing.assert_array_equal(stream.infer(*pairs[1]).flow_px,
                                      single.infer(*pairs[1]).flow_px)
    finally:
        single.set_registration_prior(None)
    assert stream.global_map_state() == (1, None)


def test_padded_frames_stream_on_the_valid_region(pairs, single):
    """Frames that are not multiples of 32 are padded; the fits use the valid region."""
    cut = [(ir[:180, :240].copy(), vi[:180, :240].copy()) for ir, vi in pairs[:2]]
    stream = FusionEngine(cuda_graph='off', global_every=100)
    got = [stream.infer(*pair).flow_px for pair in cut]
    np.testing.assert_array_equal(got[0], single.infer(*cut[0]).flow_px)
    # The second pair started from the first pair's fit on the valid region.
    from tarfuse_ros.core import images
    tensors = [single.input_tensors(*pair) for pair in cut]
    padded = [tuple(images.pad_to_multiple(t, 32, 'replicate')[0] for t in pair)
              for pair in tensors]
    theta = single.model.fit_global(*padded[0], (180, 240))
    with torch.inference_mode():
        out = single.model.predict_raw(*padded[1], (180, 240), global_theta=theta)
    expected = out['flow'][0, :, :180, :240].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got[1], expected, atol=1e-4)


def test_the_fit_of_a_flat_pair_is_not_kept(pairs, single):
    flat = (np.full((SIZE[1], SIZE[0]), 128, np.uint8),
            np.full((SIZE[1], SIZE[0], 3), 77, np.uint8))
    stream = FusionEngine(cuda_graph='off', global_every=2, global_window=3)
    stream.infer(*flat)  # nothing to fit: the pair uses its own map (identity), not kept
    assert stream.global_map_state() == (0, None)
    stream.infer(*pairs[0])
    stream.infer(*flat)
    assert stream.global_map_state()[0] == 1
    # The next real pair starts from the real fit alone.
    np.testing.assert_allclose(stream.infer(*pairs[1]).flow_px,
                               _flow_from(single, pairs[1], 0.5 * (
                                   _fit(single, pairs[0]) + _fit(single, pairs[1]))),
                               atol=1e-4)


def test_the_model_takes_a_given_map_and_returns_the_one_it_used(pairs, single):
    ir_t, vi_t = single.input_tensors(*pairs[0])
    with torch.inference_mode():
        fitted = single.model.predict_raw(ir_t, vi_t)
        given = single.model.predict_raw(ir_t, vi_t, global_theta=fitted['global_theta'])
    assert fitted['global_theta'].shape == (1, 2, 3)
    torch.testing.assert_close(given['flow'], fitted['flow'], rtol=0, atol=0)
    torch.testing.assert_close(given['fused'], fitted['fused'], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'theta must be \(1, 2, 3\)'):
        single.model.predict_raw(ir_t, vi_t, global_theta=torch.zeros(2, 2, 3))


@pytest.mark.parametrize('kwargs, message', [
    ({'global_every': 0}, r'global_every must be an integer in \[1, 10000\]'),
    ({'global_window': 2.5}, r'global_window must be an integer in \[1, 1000\]'),
    ({'global_every': True}, 'global_every must be an integer'),
    ({'global_window': 1001}, 'global_window must be an integer'),
])
def test_bad_stream_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FusionEngine(cuda_graph='off', **kwargs)


def test_numpy_integers_are_settings_and_onnxruntime_refuses_a_stream(tmp_path):
    engine = FusionEngine(cuda_graph='off', global_every=np.int64(5), global_window=np.int32(3))
    assert engine.streams_global_map and engine.global_map_state() == (0, None)
    from tarfuse_ros.core.onnx_backend import OnnxFusionEngine
    with pytest.raises(ValueError, match='need the torch engine'):
        OnnxFusionEngine(tmp_path / 'never_read.onnx', global_every=5)
    # Its own words for a value no engine takes ('other than 1 need the torch engine'), and
    # global_every=True taken as 1.
    for kwargs, message in (({'global_every': 0}, r'global_every must be an integer in \[1, '),
                            ({'global_every': True}, 'global_every must be an integer'),
                            ({'global_track': -1}, 'global_track must be an integer')):
        with pytest.raises(ValueError, match=message):
            OnnxFusionEngine(tmp_path / 'never_read.onnx', **kwargs)


def test_a_model_without_the_orientation_stage_refuses_a_stream_and_a_given_map(tmp_path):
    path = tmp_path / 'learnt_global.safetensors'
    model = build_model(TarFuseConfig()).eval()  # the learnt global stage
    save_checkpoint(path, model, {})
    FusionEngine(path, cuda_graph='off')  # 1 and 1: fine
    with pytest.raises(ValueError, match='orientation global stage'):
        FusionEngine(path, cuda_graph='off', global_every=3)
    image = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match='orientation global stage'):
        model.predict_raw(image, image, global_theta=torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match='no orientation global stage'):
        model.fit_global(image, image)
    assert model.predict_raw(image, image)['global_theta'] is None
