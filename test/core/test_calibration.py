"""The calibration prior (core.prior) and the homography fit (core.calibration) on real pairs.

Real RoadScene pairs (``samples/``, ``test/data/datasets/roadscene``) are warped by a known
rig homography; the tests check the composition of the prior with a flow, the engine's outputs
with a prior, start-up validation, and that the fit recovers the homography from exact flows.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.core.calibration import (calibrate, fit_prior, flow_correspondences,
                                          MIN_ALIGNMENT_GAIN, prior_alignment, texture_weight)
from tarfuse_ros.core.deform import compose_flows
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.prior import (
    compose_flow, corner_error_px, load_prior_yaml, make_prior, prior_flow, resize_matrix,
    write_prior_yaml)
import torch
import yaml

ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
SIZE = (640, 512)


def rig_homography(scale=1.05, rotation_deg=1.5, shift_px=(18.0, -10.0),
                   perspective=(2e-5, -1e-5)):
    """Return a plausible IR -> visible homography at 640x512 (FOV, roll, offset, tilt)."""
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    matrix = np.array([[scale * c, -scale * s, shift_px[0]], [scale * s, scale * c, shift_px[1]],
                       [perspective[0], perspective[1], 1.0]])
    return matrix / matrix[2, 2]


def camera_ir(aligned_ir, homography, ir_wh):
    """Return what an IR camera related to the visible one by ``homography`` records.

    ``ir_cam(u) = aligned_ir(H u)``: visible pixel ``H u`` sees IR pixel ``u``.
    """
    return cv2.warpPerspective(aligned_ir, homography, ir_wh,
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def real_pairs(count, size=SIZE):
    """Load ``count`` RoadScene pairs resized to ``size``: [(stem, ir grey, vi BGR)]."""
    stems = data.read_split(ROADSCENE)[:count]
    pairs = []
    for stem in stems:
        ir, vi = data.load_pair(ROADSCENE, stem)
        pairs.append((stem, cv2.resize(ir, size, interpolation=cv2.INTER_LINEAR),
                      cv2.resize(vi, size, interpolation=cv2.INTER_LINEAR)))
    return pairs


def smooth_residual(height, width, amplitude_px=3.0):
    """Return a smooth, deterministic residual flow (what the network adds on top of a prior)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = amplitude_px * np.sin(2 * np.pi * xs / width) * np.cos(np.pi * ys / height)
    dy = amplitude_px * np.cos(2 * np.pi * ys / height) * np.sin(np.pi * xs / width)
    return np.stack((dx, dy), axis=-1).astype(np.float32)


def to_torch(flow_hw2):
    return torch.from_numpy(np.ascontiguousarray(flow_hw2)).permute(2, 0, 1)[None]


# -- composition -------------------------------------------------------------------------------
def test_warp_by_prior_then_flow_equals_warp_by_the_composed_field():
    _, ir, _ = real_pairs(1)[0]
    height, width = ir.shape
    prior = make_prior(rig_homography(), SIZE, SIZE)
    matrix = prior.pre_warp_for(SIZE, SIZE)
    residual = smooth_residual(height, width)
    composed = compose_flow(residual, matrix)
    # The same composition by sampling the prior's field (deform.compose_flows, bilinear).
    reference = compose_flows(to_torch(prior_flow(matrix, height, width)), to_torch(residual))
    reference = reference[0].permute(1, 2, 0).numpy()
    interior = (slice(8, -8), slice(8, -8))
    assert np.abs(composed - reference)[interior].max() <= 0.05
    # And as images: cv2.warpPerspective by the prior, then the residual flow ==
    # one warp of the IR by the composed field.
    ir_unit = torch.from_numpy(ir.astype(np.float32) / 255.0)[None, None]
    pre_warped = cv2.warpPerspective(ir.astype(np.float32) / 255.0, matrix, (width, height))
    twice = warp(torch.from_numpy(pre_warped)[None, None], to_torch(residual))[0, 0].numpy()
    once = warp(ir_unit, to_torch(composed))[0, 0].numpy()
    inside = (twice > 0) & (once > 0)
    inside[:8], inside[-8:], inside[:, :8], inside[:, -8:] = False, False, False, False
    assert inside.mean() > 0.7
    assert np.abs(twice - once)[inside].mean() < 1.0 / 255.0


def test_prior_equal_to_the_resize_is_no_prior_and_no_prior_is_a_zero_field():
    ir_wh, visible_wh = (320, 256), (640, 512)
    same = make_prior(resize_matrix(ir_wh, visible_wh), ir_wh, visible_wh)
    matrix = same.pre_warp_for(ir_wh, visible_wh)
    assert np.allclose(matrix, np.eye(3), atol=1e-12)
    assert np.abs(prior_flow(matrix, 512, 640)).max() < 1e-4
    residual = smooth_residual(64, 80)
    assert compose_flow(residual, None) is residual


def test_prior_is_scaled_to_other_image_sizes_and_refuses_another_aspect_ratio():
    homography = rig_homography()
    prior = make_prior(homography, SIZE, SIZE)
    half = prior.homography_for((320, 256), (320, 256))
    u = np.array([[100.0, 50.0], [600.0, 400.0], [0.0, 511.0]])
    full = cv2.perspectiveTransform(u[:, None], homography)[:, 0]
    # The same scene point at half resolution (cv2.resize's half-pixel mapping).
    u_half = (u + 0.5) * 0.5 - 0.5
    expected = (full + 0.5) * 0.5 - 0.5
    assert np.allclose(cv2.perspectiveTransform(u_half[:, None], half)[:, 0], expected,
                       atol=1e-9)
    with pytest.raises(ValueError, match='another aspect ratio.*tarfuse-calibrate'):
        prior.homography_for((640, 480), SIZE)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize('homography, ir_size, visible_size, words', [
    ([1.0] * 8, SIZE, SIZE, ['registration.prior', '9 numbers']),
    # YAML's true and a quoted number are not numbers (float() took them as 1.0 and 1.5).
    ([True, 0, 0, 0, 1, 0, 0, 0, 1], SIZE, SIZE, ['registration.prior', '9 numbers']),
    (['1.5', 0, 0, 0, 1, 0, 0, 0, 1], SIZE, SIZE, ['registration.prior', '9 numbers']),
    ([1, 0, 0, 0, 1, 0, 0, 0, float('nan')], SIZE, SIZE, ['registration.prior', 'finite']),
    ([1, 2, 3, 2, 4, 6, 0, 0, 1], SIZE, SIZE, ['registration.prior', 'not invertible']),
    ([1, 0, 0, 0, 1e-12, 0, 0, 0, 1], SIZE, SIZE, ['registration.prior', 'not invertible']),
    ([1, 0, 0, 0, 1, 0, -0.01, 0, 1], SIZE, SIZE, ['registration.prior', 'line at infinity']),
    (np.eye(3), [], SIZE, ['registration.prior_ir_size', '[width, height]']),
    (np.eye(3), SIZE, [640, 0], ['registration.prior_visible_size', '[width, height]']),
    (np.eye(3), SIZE, [640.5, 512], ['registration.prior_visible_size']),
])
def test_invalid_prior_is_refused_with_the_parameter_named(
        homography, ir_size, visible_size, words):
    with pytest.raises(ValueError) as error:
        make_prior(homography, ir_size, visible_size)
    for word in words:
        assert word in str(error.value)


# A prior fitted for a 3840x2160 visible camera (IR 640x512 at 1.5x, centred) given with
# 640x512 sizes: it was accepted, and the pre-warped IR was all zeros.
FOR_4K = [[1.5, 0.0, 1440.0], [0.0, 1.5, 696.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize('homography, where, corners', [
    (FOR_4K, 'entirely', '(1439.2, 695.2), (2399.2, 695.2), (2399.2, 1463.2), (1439.2, 1463.2)'),
    # IR -> visible of a rig whose IR sits 700 px to the right (no overlap at all).
    ([1.0, 0.0, 700.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 'entirely', '(699.5, -0.5)'),
    # A 4 px sliver of 640 (0.6 % of the frame) still overlaps: refused too.
    ([1.0, 0.0, -636.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 'almost entirely', '(3.5, 511.5)'),
])
def test_prior_mapping_the_ir_frame_outside_the_visible_frame_is_refused_with_its_corners(
        homography, where, corners):
    with pytest.raises(ValueError) as error:
        make_prior(homography, SIZE, SIZE)
    message = str(error.value)
    assert message.startswith(f'registration.prior maps the 640x512 IR frame {where} outside '
                              f'the 640x512 visible frame: its corners land at '), message
    assert corners in message and 'at least 1% needed' in message


@pytest.mark.parametrize('homography, ir_size, visible_size', [
    (FOR_4K, SIZE, (3840, 2160)),  # narrow IR inside a wide visible view
    ([6.0, 0.0, -1600.0, 0.0, 6.0, -1300.0, 0.0, 0.0, 1.0], SIZE, SIZE),  # visible inside IR
    ([1.0, 0.0, -630.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], SIZE, SIZE),  # 10 px, 1.6 %: kept
    ([-1.0, 0.0, 639.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], SIZE, SIZE),  # a mirror, as before
])
def test_prior_overlapping_the_visible_frame_is_accepted(homography, ir_size, visible_size):
    prior = make_prior(homography, ir_size, visible_size)
    assert np.allclose(prior.homography, np.reshape(homography, (3, 3)))
    with pytest.raises(ValueError, match='read-only'):  # validated once: no edit skips it
        prior.homography[0, 2] = 1e6


def test_empty_prior_means_none_and_the_engine_refuses_a_foreign_prior():
    assert make_prior([], [], []) is None and make_prior(None) is None
    with pytest.raises(ValueError, match='registration_prior must be a RegistrationPrior'):
        FusionEngine(registration_prior=np.eye(3))


# -- the engine with a prior ---------------------------------------------------------------------
@pytest.fixture(scope='module')
def small_pair():
    """Return a real pair at 256x192 (the model is slow on a shared CPU), IR seen through a rig."""
    _, ir, vi = real_pairs(1, (256, 192))[0]
    homography = rig_homography(shift_px=(7.0, -4.0), perspective=(4e-5, -2e-5))
    return camera_ir(ir, homography, (256, 192)), vi, homography


def test_engine_with_prior_publishes_the_composed_flow_and_registration(small_pair):
    ir, vi, homography = small_pair
    prior = make_prior(homography, (256, 192), (256, 192))
    engine = FusionEngine(cuda_graph='off', registration_prior=prior)
    assert engine.registration_prior is prior
    ir_t, vi_t = engine.input_tensors(ir, vi)  # IR resized and pre-warped by the prior
    residual = engine.forward_tensors(ir_t, vi_t)['flow'][0].permute(1, 2, 0).numpy()
    result = engine.infer(ir, vi)
    matrix = prior.pre_warp_for((256, 192), (256, 192))
    assert np.abs(result.flow_px - compose_flow(residual, matrix)).max() < 1e-3
    # The package's flow convention holds with the prior: registered = warp(ir_resized, flow).
    again = warp(torch.from_numpy(ir.astype(np.float32) / 255.0)[None, None],
                 to_torch(result.flow_px))[0, 0].numpy() * 255.0
    inside = again > 0
    inside[:4], inside[-4:], inside[:, :4], inside[:, -4:] = False, False, False, False
    assert inside.mean() > 0.6
    assert np.abs(again - result.registered_ir)[inside].mean() < 2.0


def test_identity_prior_at_equal_sizes_changes_nothing(small_pair):
    ir, vi, _ = small_pair
    plain = FusionEngine(cuda_graph='off').infer(ir, vi)
    identity = FusionEngine(cuda_graph='off', registration_prior=make_prior(
        np.eye(3), (256, 192), (256, 192))).infer(ir, vi)
    assert np.array_equal(plain.flow_px, identity.flow_px)
    assert np.array_equal(plain.registered_ir, identity.registered_ir)
    assert np.array_equal(plain.fused, identity.fused)


# -- the fit ------------------------------------------------------------------------------------
@pytest.mark.parametrize('ir_wh', [SIZE, (320, 256)])
def test_fit_recovers_a_known_transform_from_exact_flows_on_real_pairs(ir_wh):
    homography = rig_homography()
    if ir_wh != SIZE:  # an IR camera of lower resolution: H maps its pixels
        homography = homography @ resize_matrix(ir_wh, SIZE)
    truth = make_prior(homography, ir_wh, SIZE)
    matrix = truth.pre_warp_for(ir_wh, SIZE)
    samples = []
    for stem, ir, vi in real_pairs(3):
        ir_cam = camera_ir(ir, homography, ir_wh)
        flow = prior_flow(matrix, SIZE[1], SIZE[0])  # exact: what a perfect network predicts
        registered = warp(torch.from_numpy(cv2.resize(ir_cam, SIZE).astype(np.float32))[None,
                          None], to_torch(flow))[0, 0].numpy()
        weight = texture_weight(registered / 255.0, cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY) / 255.0)
        samples.append((stem, flow, weight))
    result = fit_prior(samples, ir_wh, SIZE)
    error = corner_error_px(result.prior.homography, homography, ir_wh)
    print(f'\nexact flows, IR {ir_wh[0]}x{ir_wh[1]} -> visible 640x512: corner error '
          f'{error:.2e} px, median residuals {[round(r.median_px, 4) for r in result.residuals]}')
    assert error <= 1.0
    assert error < 0.05  # exact flows: only float rounding is left
    assert all(r.inlier_fraction > 0.99 for r in result.residuals)


def test_fit_ignores_a_parallax_region_that_disagrees():
    homography = rig_homography()
    matrix = make_prior(homography, SIZE, SIZE).pre_warp_for(SIZE, SIZE)
    flow = prior_flow(matrix, SIZE[1], SIZE[0])
    flow[300:500, 100:300] += np.float32(25.0)  # a near object: 25 px of parallax
    result = fit_prior([('parallax', flow, None)], SIZE, SIZE)
    assert corner_error_px(result.prior.homography, homography, SIZE) <= 1.0
    assert 0.8 < result.residuals[0].inlier_fraction < 0.95


def test_calibrate_takes_every_visible_image_the_engine_takes(small_pair):
    """An ``HxWx1`` grey or a float16 / float64 colour visible image raised a cv2.error.

    The engine fuses them; the texture weight's grey conversion (``cv2.cvtColor``) refused a
    one-channel image and the float dtypes OpenCV has no colour conversion for.
    """
    ir, vi, homography = small_pair
    grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)

    def fitted(visible):
        result = calibrate([('rig', ir, visible)], lambda prior: FusionEngine(
            cuda_graph='off', registration_prior=prior), iterations=1)
        return result.prior.homography

    reference = fitted(grey)
    assert np.array_equal(fitted(grey[:, :, None]), reference)
    colour = fitted(vi)
    for dtype in (np.float16, np.float64):
        assert corner_error_px(fitted(vi.astype(dtype) / 255.0), colour, (256, 192)) < 1.0


def test_calibrate_holds_one_flow_at_a_time_not_the_flows_of_every_pair(small_pair):
    # Every pair's flow and texture weight (12 bytes a visible pixel) were held until the fit:
    # 1000 pairs of 1920x1080 asked 25 GB.
    import gc
    import weakref
    ir, vi, _ = small_pair
    flows, most_alive = [], []

    class Recording:
        """The real engine; each flow it returns is watched (is it still held?)."""

        def __init__(self, prior):
            self.engine = FusionEngine(cuda_graph='off', registration_prior=prior)

        def infer(self, *images):
            gc.collect()
            most_alive.append(sum(flow() is not None for flow in flows))
            out = self.engine.infer(*images)
            flows.append(weakref.ref(out.flow_px))
            return out

    pairs = [(f'pair{index}', ir, vi) for index in range(4)]
    result = calibrate(pairs, Recording, iterations=1)
    assert len(result.residuals) == 4 and len(most_alive) == 4
    assert max(most_alive) <= 1, most_alive


def test_fit_on_flat_images_says_they_are_flat():
    # It said "need at least 4 corresponding points, got 0 and 0" (tarfuse-calibrate on pairs
    # of a flat grey image).
    flat = np.full(SIZE[::-1], 128, np.uint8)
    weight = texture_weight(flat, flat)
    flow = np.zeros(SIZE[::-1] + (2,), np.float32)
    with pytest.raises(ValueError, match=r'^0 usable flow points in 1 pair\(s\) .* are the '
                                         r'images flat'):
        fit_prior([('flat', flow, weight)], SIZE, SIZE)


def test_texture_weight_and_correspondences_name_a_bad_sigma_or_stride():
    """sigma_px=0 raised a cv2.error (kernel size 0), stride_px=0 a ZeroDivisionError."""
    _, ir, vi = real_pairs(1, (160, 128))[0]
    grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
    weight = texture_weight(ir, grey)
    assert weight.shape == (128, 160) and weight.max() == pytest.approx(1.0)
    for sigma in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='sigma_px must be > 0'):
            texture_weight(ir, grey, sigma_px=sigma)
    flow = np.zeros((128, 160, 2), np.float32)
    assert len(flow_correspondences(flow, (160, 128), weight, stride_px=8)[0]) > 0
    for stride in (0, -4, 0.5):
        with pytest.raises(ValueError, match='stride_px must be >= 1'):
            flow_correspondences(flow, (160, 128), weight, stride_px=stride)


def test_correspondences_drop_points_outside_the_ir_image():
    flow = np.zeros((64, 80, 2), np.float32)
    flow[:, :40, 0] = -100.0  # left half looks outside the IR image
    ir_points, vi_points, weights = flow_correspondences(flow, (80, 64), stride_px=4)
    assert len(ir_points) == len(vi_points) == len(weights) > 0
    assert vi_points[:, 0].min() >= 40 and np.allclose(ir_points, vi_points)


def test_prior_yaml_round_trip_is_a_node_parameters_file(tmp_path):
    prior = make_prior(rig_homography(), (320, 256), SIZE)
    path = tmp_path / 'prior.yaml'
    write_prior_yaml(path, prior, comments=['test prior'])
    document = yaml.safe_load(path.read_text())
    params = document['/**']['ros__parameters']['registration']
    assert all(isinstance(v, float) for v in params['prior'])  # YAML 1.1 reads floats
    assert params['prior_ir_size'] == [320, 256] and params['prior_visible_size'] == [640, 512]
    loaded = load_prior_yaml(path)
    assert np.allclose(loaded.homography, prior.homography, rtol=0, atol=1e-12)
    assert (loaded.ir_size, loaded.visible_size) == ((320, 256), SIZE)


def test_a_hand_edited_prior_with_exponents_without_a_dot_is_read_as_the_node_reads_it(
        tmp_path):
    # rcl reads 3e-5 as a double; PyYAML (YAML 1.1) read the string '3e-5', and tarfuse-fuse
    # --prior, tarfuse-eval --prior and --initial-prior refused the file: "must hold 9 numbers".
    path = tmp_path / 'edited.yaml'
    path.write_text('/**:\n  ros__parameters:\n    registration:\n'
                    '      prior: [1.04, 0.02, 5, -0.015, 1.03, -3.0, 3e-5, -1E-5, 1]\n'
                    '      prior_ir_size: [160, 128]\n      prior_visible_size: [160, 128]\n')
    loaded = load_prior_yaml(path)
    assert loaded.homography[2, :2].tolist() == [3e-5, -1e-5]
    path.write_text(path.read_text().replace('3e-5', "'3e-5'"))  # a string stays refused
    with pytest.raises(ValueError, match='must hold 9 numbers'):
        load_prior_yaml(path)


def test_registered_ir_follows_the_published_flow_where_the_pre_warp_lost_content():
    from tarfuse_ros.core.images import PreparedPair
    from tarfuse_ros.core.prior import apply_prior, registered_ir_for
    rng = np.random.default_rng(0)
    ir = cv2.GaussianBlur(rng.integers(0, 255, (120, 160), dtype=np.uint8), (0, 0), 2.0)
    pair = PreparedPair(ir=ir, vi_y=ir.copy())
    # Shift the IR 20 px right: its left 20 columns leave the visible frame in the pre-warp.
    prior = make_prior([1, 0, 20, 0, 1, 0, 0, 0, 1], (160, 120), (160, 120))
    warped = apply_prior(prior, pair, (160, 120))
    assert np.all(warped.ir[:, :20] == 0) and warped.ir_resized is ir
    # A residual that points back 30 px left reaches content the pre-warp lost.
    residual = np.zeros((120, 160, 2), np.float32)
    residual[..., 0] = -30.0
    flow = compose_flow(residual, warped.pre_warp)
    registered = registered_ir_for(warped, flow, np.zeros_like(ir))
    # registered(p) = ir(p + flow(p)) = ir(p - 50 px): real content wherever x >= 50.
    np.testing.assert_array_equal(registered[:, 60:], ir[:, 60 - 50:160 - 50])
    assert registered_ir_for(pair, flow, ir) is ir  # no prior: the network's own


def test_the_rig_homography_lines_up_a_real_pair_well_above_chance_and_another_scene_does_not():
    stems = data.read_split(ROADSCENE)[:2]
    ir, vi = data.load_pair(ROADSCENE, stems[0])
    ir, vi = cv2.resize(ir, SIZE), cv2.resize(vi, SIZE)
    truth = rig_homography()
    recorded = camera_ir(ir, truth, SIZE)
    score, chance = prior_alignment(recorded, vi, truth)
    assert score - chance > 0.15 and score > prior_alignment(recorded, vi, np.eye(3))[0]
    # 16-bit counts and a BGRA visible image are scored as the engine reads them.
    counts = recorded.astype(np.uint16) * 50 + 20000
    bgra = cv2.cvtColor(vi, cv2.COLOR_BGR2BGRA)
    assert prior_alignment(counts, bgra, truth) == pytest.approx((score, chance), abs=0.02)
    other_ir = cv2.resize(data.load_pair(ROADSCENE, stems[1])[0], SIZE)
    score, chance = prior_alignment(camera_ir(other_ir, truth, SIZE), vi, truth)
    assert score - chance < MIN_ALIGNMENT_GAIN
