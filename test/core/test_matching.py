"""Tests of the explicit matching registration: cost volume, affine fit, the network's contract."""

import math

import numpy as np
import pytest
from tarfuse_ros.core.model import build_model, TarFuseConfig
from tarfuse_ros.core.model.matching import (affine_flow, affine_warp, cell_histograms,
                                             fit_affine, local_correlation,
                                             MatchingRegistration)
from tarfuse_ros.core.model.warp import warp
import torch

SMALL = {'feature_channels': 4, 'cseb_channels': 8, 'pyramid_channels': (8, 8, 8),
         'estimator_channels': (8, 8, 8), 'detect_channels': (16, 16, 16),
         'neck_stem_channels': (8, 8), 'reconstruction_channels': (8, 8)}


def _features(seed=0, shape=(2, 6, 12, 16)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def test_correlation_of_identical_normalised_features_peaks_at_zero_offset():
    features = torch.nn.functional.normalize(_features(), dim=1)
    cost = local_correlation(features, features, radius=2)
    assert cost.shape == (2, 25, 12, 16)
    centre = cost[:, 12]
    assert torch.allclose(centre, torch.ones_like(centre), atol=1e-12)  # cosine of itself
    assert torch.equal(cost.argmax(dim=1), torch.full((2, 12, 16), 12))


def test_correlation_finds_a_known_shift():
    reference = torch.nn.functional.normalize(_features(1), dim=1)
    dy, dx = 1, -2
    # moving(y, x) = reference(y - dy, x - dx): the match of reference(p) sits at p + (dy, dx).
    moving = torch.roll(reference, shifts=(dy, dx), dims=(2, 3))
    cost = local_correlation(reference, moving, radius=3)
    expected = (dy + 3) * 7 + (dx + 3)
    interior = cost[:, :, 3:-3, 3:-3]
    assert torch.equal(interior.argmax(dim=1), torch.full_like(interior[:, 0], expected,
                                                               dtype=torch.long))


def test_correlation_is_zero_outside_and_rejects_bad_input():
    features = _features()
    cost = local_correlation(features, features, radius=1)
    assert torch.equal(cost[:, 0, 0, :], torch.zeros_like(cost[:, 0, 0, :]))  # dy=-1 at top
    with pytest.raises(ValueError, match='equal'):
        local_correlation(features, features[:, :3], 1)
    with pytest.raises(ValueError, match='radius'):
        local_correlation(features, features, -1)


def test_correlation_gradient_check():
    a = _features(2, (1, 3, 5, 6)).requires_grad_(True)
    b = _features(3, (1, 3, 5, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: local_correlation(x, y, 2), (a, b))


def _affine_field(theta, height, width):
    return affine_flow(theta.to(torch.float64), height, width)


def test_fit_affine_recovers_a_known_affine_exactly():
    angle = math.radians(7.0)
    theta = torch.tensor([[[1.1 * math.cos(angle), -math.sin(angle), 0.12],
                           [math.sin(angle), 0.9 * math.cos(angle), -0.05]]], dtype=torch.float64)
    flow = _affine_field(theta, 9, 13)
    fitted = fit_affine(flow, ridge=1e-9)
    assert torch.allclose(fitted, theta, atol=1e-6)
    # The same map evaluated on another grid: size-independent.
    assert torch.allclose(affine_flow(fitted, 40, 60), _affine_field(theta, 40, 60), atol=1e-4)


def test_fit_affine_zero_flow_is_identity_and_weights_remove_outliers():
    zero = torch.zeros(2, 2, 6, 8, dtype=torch.float64)
    weights = torch.rand(2, 1, 6, 8, dtype=torch.float64)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(fit_affine(zero, weights), identity.expand(2, 2, 3), atol=1e-12)
    theta = torch.tensor([[[1.0, 0.05, 0.1], [-0.05, 1.0, 0.0]]], dtype=torch.float64)
    flow = _affine_field(theta, 6, 8)
    corrupted = flow.clone()
    corrupted[:, :, 2, 3] += 50.0  # one wild match
    weights = torch.ones(1, 1, 6, 8, dtype=torch.float64)
    assert not torch.allclose(fit_affine(corrupted, weights, ridge=1e-9), theta, atol=1e-3)
    weights[:, :, 2, 3] = 0.0
    assert torch.allclose(fit_affine(corrupted, weights, ridge=1e-9), theta, atol=1e-6)


def test_fit_affine_degenerate_weights_fall_back_to_identity():
    flow = torch.full((1, 2, 4, 4), 3.0, dtype=torch.float64)
    weights = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    weights[..., 1, 1] = 1.0  # a single point cannot fix six parameters
    fitted = fit_affine(flow, weights)
    assert torch.isfinite(fitted).all()
    # The one point is matched (the ridge makes the solution the smallest change from the
    # identity that does so, instead of a singular system).
    moved = affine_flow(fitted, 4, 4)[0, :, 1, 1]
    assert torch.allclose(moved, torch.tensor([3.0, 3.0], dtype=torch.float64), atol=0.01)
    nothing = fit_affine(flow, torch.zeros_like(weights))
    assert torch.isfinite(nothing).all()


def test_fit_affine_gradient_check():
    flow = (0.5 * _features(4, (1, 2, 4, 5))).requires_grad_(True)
    weights = torch.rand(1, 1, 4, 5, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, w: fit_affine(f, w), (flow, weights))


def test_untrained_matching_registration_is_the_identity():
    torch.manual_seed(0)
    net = MatchingRegistration(4, cseb_channels=8, pyramid_channels=(8, 8, 8),
                               estimator_channels=(8, 8, 8))
    c_ir, c_vi = torch.randn(2, 4, 64, 96), torch.randn(2, 4, 64, 96)
    flow, levels = net(c_ir, c_vi, return_levels=True)
    assert flow.shape == (2, 2, 64, 96)
    assert flow.abs().max() < 1e-4  # the affine fit of a zero flow, in float32
    assert len(levels) == 4 and all(level.shape == flow.shape for level in levels)
    assert torch.equal(net(c_ir, c_vi), flow)


def test_global_stage_moves_the_whole_field_by_one_affine_map():
    torch.manual_seed(0)
    net = MatchingRegistration(4, cseb_channels=8, pyramid_channels=(8, 8, 8),
                               estimator_channels=(8, 8, 8))
    with torch.no_grad():
        net.global_estimator.head.bias.copy_(torch.tensor([2.0, -1.0, 0.0]))  # a translation
    _, levels = net(torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64), return_levels=True)
    coarse = levels[0]
    # (2, -1) cells of the 2x2 coarsest level, whose cell centres span the 63 px between the
    # input's pixel centres (the package's resize convention), the same everywhere; the ridge
    # of the fit shrinks it by about 0.1 %.
    expected = torch.tensor([2.0 * 63, -1.0 * 63]).view(1, 2, 1, 1)
    assert torch.allclose(coarse, expected.expand_as(coarse), rtol=2e-3)


def test_paper_and_match_models_and_parameter_budget():
    match = build_model(TarFuseConfig())
    paper = build_model(TarFuseConfig(registration='paper'))
    total = sum(p.numel() for p in match.parameters())
    assert total <= 1_500_000, total  # the paper's size class
    assert isinstance(match.registration, MatchingRegistration)
    assert not isinstance(paper.registration, MatchingRegistration)
    no_global = build_model(TarFuseConfig(global_stage=False, **SMALL))
    assert no_global.registration.global_estimator is None
    with pytest.raises(ValueError, match='registration'):
        TarFuseConfig(registration='raft')


def test_registered_ir_follows_the_flow_in_train_and_eval():
    torch.manual_seed(0)
    model = build_model(TarFuseConfig(**SMALL))
    ir, vi = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    model.train()
    out = model(ir, vi)
    assert len(out['flow_levels']) == 4
    assert torch.allclose(out['registered_ir'], warp(ir, out['flow']), atol=1e-6)
    assert model.predict_raw(ir, vi)['flow'].shape == (1, 2, 64, 64)


def test_global_stage_ignores_where_a_cell_is():
    torch.manual_seed(0)
    net = MatchingRegistration(4, cseb_channels=8, pyramid_channels=(8, 8, 8),
                               estimator_channels=(8, 8, 8))
    for parameter in net.global_estimator.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    cost = torch.randn(1, 81, 5, 7)
    out = net.global_estimator(cost)
    # The same costs moved to another cell give the same output there (no position cue).
    moved = net.global_estimator(torch.roll(cost, shifts=(2, 3), dims=(2, 3)))
    assert torch.allclose(torch.roll(out, shifts=(2, 3), dims=(2, 3)), moved, atol=1e-6)


# -- the orientation-descriptor global stage -------------------------------------------------

def _real_pair(size=(256, 320)):
    """Return the aligned IR and visible luma of a real RoadScene pair, (1, 1, H, W) in [0, 1]."""
    from pathlib import Path
    from tarfuse_ros.core import data
    from tarfuse_ros.core.images import prepare_pair
    folder = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    stem = data.read_split(folder, 'test')[0]
    pair = prepare_pair(*data.load_pair(folder, stem))
    height, width = size
    ir = torch.from_numpy(pair.ir[:height, :width].copy())[None, None].float()
    vi = torch.from_numpy(pair.vi_y[:height, :width].copy())[None, None].float()
    return ir, vi


def test_orientation_descriptors_ignore_contrast_inversion():
    from tarfuse_ros.core.model.matching import orientation_descriptors
    ir, _ = _real_pair()
    plain = orientation_descriptors(ir)
    inverted = orientation_descriptors(1.0 - ir)
    assert plain.shape == (1, 8 * 16, 32, 40)
    norms = torch.linalg.vector_norm(plain, dim=1)
    assert float(norms.max()) == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(plain, inverted, atol=1e-4, rtol=1e-4)


def test_match_cells_recovers_a_known_shift_with_sub_cell_precision():
    from tarfuse_ros.core.model.matching import match_cells, orientation_descriptors
    _, vi = _real_pair()
    # The moving image shows the scene shifted by (+20, -12) px: 2.5 and -1.5 cells.
    shift = torch.tensor([20.0, -12.0]).view(1, 2, 1, 1).expand(1, 2, 256, 320)
    moving = warp(vi, -shift)
    offset, confidence = match_cells(orientation_descriptors(vi), orientation_descriptors(moving),
                                     radius=4)
    inner = (slice(None), slice(None), slice(4, -4), slice(6, -6))
    strong = confidence[inner] > 0.02
    median = offset[inner].flatten(2)[:, :, strong.flatten()].median(dim=2).values[0]
    assert float(median[0]) == pytest.approx(2.5, abs=0.25)
    assert float(median[1]) == pytest.approx(-1.5, abs=0.25)


def test_robust_affine_ignores_a_third_of_wrong_matches():
    from tarfuse_ros.core.model.matching import robust_affine_px
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(300, 2, generator=generator, dtype=torch.float64) * 600
    truth = torch.tensor([[1.05, 0.04, -12.0], [-0.03, 0.97, 7.5]], dtype=torch.float64)
    targets = points @ truth[:, :2].t() + truth[:, 2]
    wrong = torch.rand(300, generator=generator) < 0.33
    targets[wrong] += torch.rand(int(wrong.sum()), 2, generator=generator,
                                 dtype=torch.float64) * 120 - 60
    fitted = robust_affine_px(points, targets[None], torch.ones(1, 300, dtype=torch.float64),
                              scales=(32, 24, 16, 12, 8, 8, 6, 4, 4, 4))
    corners = torch.tensor([[0, 0], [600, 0], [0, 600], [600, 600]], dtype=torch.float64)
    error = (corners @ (fitted[0, :, :2] - truth[:, :2]).t() + fitted[0, :, 2] - truth[:, 2])
    assert float(torch.linalg.vector_norm(error, dim=1).max()) < 0.5
    # No weight at all: the identity.
    none = robust_affine_px(points, targets[None], torch.zeros(1, 300, dtype=torch.float64),
                            scales=(8,))
    torch.testing.assert_close(none[0], torch.eye(3, dtype=torch.float64)[:2])


def test_robust_affine_over_every_cell_of_a_large_frame_is_finite_in_float16():
    # tarfuse-export --half gave NaN flows (and no detections) on 960x704 frames: the normal
    # equations summed the weights of 10,560 cells, and the 3x3 inverse's products of three
    # such sums overflowed float16 (65504).
    from tarfuse_ros.core.model.matching import robust_affine_px
    ys, xs = torch.meshgrid(torch.arange(88.0) * 8 + 4, torch.arange(120.0) * 8 + 4,
                            indexing='ij')
    points = torch.stack((xs.flatten(), ys.flatten()), dim=1)
    truth = torch.tensor([[1.02, -0.01, 3.0], [0.01, 0.99, -5.0]])
    targets = (points @ truth[:, :2].t() + truth[:, 2])[None]
    confidence = torch.rand(1, len(points), generator=torch.Generator().manual_seed(0)) * 2
    fits = {dtype: robust_affine_px(points.to(dtype), targets.to(dtype), confidence.to(dtype),
                                    scales=(16.0, 8.0, 4.0)).float()[0]
            for dtype in (torch.float32, torch.float16)}
    torch.testing.assert_close(fits[torch.float32], truth, atol=1e-3, rtol=0)
    corners = torch.tensor([[0.0, 0.0, 1.0], [960.0, 0.0, 1.0], [0.0, 704.0, 1.0],
                            [960.0, 704.0, 1.0]])
    error = corners @ (fits[torch.float16] - truth).t()
    assert float(torch.linalg.vector_norm(error, dim=1).max()) < 1.0


def _seeded_affine(rotation_deg, scale, translation_px, seed):
    """Return ``(applied, inverse)`` flows of a seeded affine at 480x320 (``deform``)."""
    from tarfuse_ros.core.deform import DeformConfig, random_deformation
    config = DeformConfig(prob=1.0, rotation_deg=rotation_deg, translation=0.0,
                          scale=(1.0 - scale, 1.0 + scale), translation_px=translation_px,
                          elastic_alpha_px=0.0)
    return random_deformation(1, 320, 480, config,
                              generator=torch.Generator().manual_seed(seed))


def test_orientation_matcher_registers_a_real_infrared_visible_pair():
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((320, 480))
    applied, inverse = _seeded_affine(6.0, 0.08, 24.0, 0)
    matcher = OrientationMatcher()

    def epe(moving):
        flow = affine_flow(matcher(warp(moving, applied), vi), 320, 480)
        return float(torch.linalg.vector_norm(flow - inverse, dim=1).mean())

    before = float(torch.linalg.vector_norm(inverse, dim=1).mean())
    assert before > 15.0
    # Infrared onto visible (measured 3.3 px of 20.6), and the visible onto itself.
    assert epe(ir) < 0.35 * before
    assert epe(vi) < 1.5


def test_orientation_global_stage_in_the_network():
    config = TarFuseConfig(**SMALL, global_features='orientation')
    model = build_model(config).eval()
    ir, vi = _real_pair((128, 160))
    shifted = warp(ir, torch.full((1, 2, 128, 160), 6.0))
    with torch.no_grad():
        out = model(shifted, vi)
    # Untrained levels add nothing: the flow is the global stage's affine map alone.
    assert out['flow'].shape == (1, 2, 128, 160)
    assert model.registration.global_estimator is None
    assert model.registration.global_matcher is not None
    with pytest.raises(ValueError, match='needs the input images'):
        model.registration(model.ir_common(ir), model.vi_common(vi))
    with pytest.raises(ValueError, match='global_features'):
        TarFuseConfig(global_features='sift')


def test_block_cost_volume_equals_the_correlation_of_block_descriptors():
    from tarfuse_ros.core.model.matching import (block_cost_volume, cell_histograms,
                                                 orientation_descriptors)
    ir, vi = _real_pair((192, 256))
    ir = torch.roll(ir, (5, -9), (2, 3))
    direct = local_correlation(orientation_descriptors(vi), orientation_descriptors(ir), 4)
    fast = block_cost_volume(cell_histograms(vi), cell_histograms(ir), 4, block=4)
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=1e-5)


def test_box_sum_equals_a_direct_block_sum_and_keeps_empty_blocks_at_zero():
    from tarfuse_ros.core.model.matching import _box_sum
    maps = torch.rand(2, 3, 13, 19, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64)
    maps[:, :, 4:13, 6:19] = 0.0  # an empty region larger than every block below
    for block in (1, 2, 3, 4, 5, 7, 8, 9, 14, 17, 25):  # the last three exceed the 13 rows
        before, after = block // 2, (block - 1) // 2
        padded = torch.nn.functional.pad(maps, (before, after, before, after))
        direct = torch.zeros_like(maps)
        for dy in range(block):
            for dx in range(block):
                direct += padded[:, :, dy:dy + 13, dx:dx + 19]
        fast = _box_sum(maps, block)
        torch.testing.assert_close(fast, direct, atol=1e-12, rtol=1e-12)
        # Blocks wholly in the empty region sum to exactly zero (no rounding residue).
        assert bool((fast[:, :, 4 + before:13 - after, 6 + before:19 - after] == 0).all())


def test_top_two_matches_topk_including_ties():
    from tarfuse_ros.core.model.matching import _top_two, peak_offsets
    cost = torch.rand(2, 25, 6, 7, generator=torch.Generator().manual_seed(2))
    cost[0, :, 0, 0] = 0.5  # every offset ties
    cost[1, 3, 2, 2] = cost[1, 17, 2, 2] = 2.0  # two offsets tie for the best
    best, index, second = _top_two(cost)
    top = torch.topk(cost, 2, dim=1)
    torch.testing.assert_close(best, top.values[:, :1], atol=0, rtol=0)
    torch.testing.assert_close(second, top.values[:, 1:2], atol=0, rtol=0)
    untied = (top.values[:, :1] > top.values[:, 1:2])
    assert bool((index == top.indices[:, :1])[untied].all())
    assert int(index[0, 0, 0, 0]) == 0 and int(index[1, 0, 2, 2]) == 3  # the first maximum
    offset, confidence = peak_offsets(cost, 2)
    assert float(confidence[0, 0, 0, 0]) == 0.0 and float(confidence[1, 0, 2, 2]) == 0.0
    assert offset.shape == (2, 2, 6, 7)
    with pytest.raises(ValueError, match='two offsets'):
        _top_two(cost[:, :1])


def test_block_cost_volume_stays_finite_in_float16_beside_empty_blocks():
    """Blocks without texture (a flat region, a frame's padding) have norms near zero.

    Their reciprocals must stay finite in float16 (``tarfuse-export --half``): a floor of 1e-6
    gave 1e6, beyond float16's 65504, and NaN costs.
    """
    from tarfuse_ros.core.model.matching import block_cost_volume, cell_histograms
    ir, vi = _real_pair((96, 128))
    ir = ir.clone()
    ir[..., 64:] = 0.5  # flat: all-zero histograms, and blocks at its edge with tiny norms
    ir_hist, vi_hist = cell_histograms(ir, 4), cell_histograms(vi, 4)
    full = block_cost_volume(vi_hist, ir_hist, 3)
    half = block_cost_volume(vi_hist.half(), ir_hist.half(), 3)
    assert bool(torch.isfinite(half).all())
    torch.testing.assert_close(half.float(), full, atol=1e-2, rtol=0)
    assert float(full.abs().max()) <= 1.0 + 1e-5  # cosines
    # Blocks of the flat region (histograms of rounding noise only) do not vote: zero cosines.
    from tarfuse_ros.core.model.matching import _box_sum, BLOCK_NORM_FLOOR
    norms = _box_sum((ir_hist * ir_hist).sum(1, keepdim=True), 4).sqrt()
    flat_blocks = (norms < BLOCK_NORM_FLOOR).expand_as(full[:, :1])
    assert bool(flat_blocks.any())
    centre = full[:, (full.shape[1] - 1) // 2:(full.shape[1] + 1) // 2]
    assert bool((centre[flat_blocks] == 0).all())


def test_a_featureless_pair_gets_the_identity_from_the_global_stage():
    """No block has texture: nothing votes, and the scale search keeps the unzoomed fit."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir = torch.full((1, 1, 192, 256), 0.5)
    vi = torch.full((1, 1, 192, 256), 0.3)
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    # Without fine passes (which would return the identity whatever the search chose), the
    # tie of three zero scores must keep the 1.0 candidate, not the first (0.8).
    for fine_cell in (0, 4):
        matcher = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25), fine_cell=fine_cell)
        torch.testing.assert_close(matcher(ir, vi), identity, atol=1e-6, rtol=0)


def test_scale_search_reuses_histograms_without_changing_the_map(monkeypatch):
    """Candidates that do not zoom an image share its histograms: the same maps as zooming."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((192, 256))
    ir = torch.roll(ir, (4, -6), (2, 3))
    matcher = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25))
    for scale in (0.8, 1.0, 1.25):
        factors = torch.full((1,), scale)
        cache = {}
        shared = matcher._match_zoomed(ir, vi, factors, cache)
        plain = matcher._match_zoomed(ir, vi, factors)
        torch.testing.assert_close(shared, plain, atol=1e-4, rtol=0)
        assert set(cache) == ({'ir'} if scale >= 1.0 else set()) | \
            ({'vi'} if scale <= 1.0 else set())
    # A batch whose samples differ: the IR is unzoomed for both (cached), the visible is not.
    pair_ir, pair_vi = torch.cat([ir, ir]), torch.cat([vi, vi])
    factors = torch.tensor([1.0, 1.25])
    cache = {}
    shared = matcher._match_zoomed(pair_ir, pair_vi, factors, cache)
    assert set(cache) == {'ir'}
    torch.testing.assert_close(shared, matcher._match_zoomed(pair_ir, pair_vi, factors),
                               atol=1e-4, rtol=0)
    # The whole search with and without the cache (a trace turns it off).
    theta = matcher(ir.requires_grad_(), vi)
    assert not theta.requires_grad  # no learnt parameter: nothing to differentiate
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
    torch.testing.assert_close(theta, matcher(ir, vi), atol=1e-4, rtol=0)


def test_smoothed_sobel_opencv_equals_kornia():
    """The CPU path (OpenCV) and the autograd / GPU / ONNX path (convolutions) give kornia's."""
    import kornia
    from tarfuse_ros.core.model.matching import smoothed_sobel
    ir, vi = _real_pair((192, 256))
    # A batch, and a channel of a two-channel tensor (how the warped IR reaches it).
    both = torch.cat((torch.cat((ir, vi)), torch.cat((vi, ir))), dim=1)
    for image in (ir, torch.cat((ir, 1.0 - vi)), both[:, 1:]):
        fast = smoothed_sobel(image)
        assert not fast[0].requires_grad
        with torch.enable_grad():
            slow = smoothed_sobel(image.clone().requires_grad_(True))  # the autograd path
        assert slow[0].requires_grad
        smooth = kornia.filters.gaussian_blur2d(image, (5, 5), (1.0, 1.0))
        gradient = kornia.filters.spatial_gradient(smooth, mode='sobel', normalized=False)
        for got, ref, want in zip(fast, slow, (gradient[:, :, 0], gradient[:, :, 1])):
            assert got.shape == want.shape == image.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ref.detach(), want, atol=1e-6, rtol=1e-6)
    # A ramp of slope 0.01 per column: gx is 8 times the slope away from the border, gy 0.
    ramp = (torch.arange(64, dtype=torch.float32) * 0.01).expand(1, 1, 48, 64).contiguous()
    gx, gy = smoothed_sobel(ramp)
    torch.testing.assert_close(gx[..., 4:-4], torch.full_like(gx[..., 4:-4], 0.08))
    assert gy.abs().max() < 1e-6


def test_global_stage_cpu_paths_equal_the_general_ones(monkeypatch):
    """The global stage's CPU paths without a gradient give the general paths' values.

    In place, on cell-major planes, cost volumes by offset rows: bit for bit, or up to float
    rounding where ``sum`` adds a cost volume's channels in another order (some grid sizes).
    """
    from tarfuse_ros.core.model import matching
    ir, vi = _real_pair((192, 256))
    theta = torch.tensor([[[1.08, 0.03, 0.04], [-0.02, 1.1, 0.01]]])  # some pixels outside
    support = matching.affine_warp(torch.ones_like(ir), theta)
    gradients = {id(image): matching.smoothed_sobel(image) for image in (ir, vi)}

    def results():
        out = {}
        for cell in (8, 4):
            moving, reference = (cell_histograms(image, cell) for image in (ir, vi))
            out['histograms', cell] = (moving, reference)
            out['inside', cell] = matching._inside_cells(support, cell)
            for radius, block in ((8, 4), (2, 4), (4, 8), (0, 8), (1, 3)):
                out['cost', cell, radius, block] = matching.block_cost_volume(
                    reference, moving, radius, block)
        out['grid'] = matching._affine_grid(theta, 192, 256)
        return out

    fast = results()
    # The general paths: the same gradients (OpenCV's), no in-place arithmetic, stacked grid.
    monkeypatch.setattr(matching, '_plain_cpu', lambda *tensors: False)
    monkeypatch.setattr(matching, 'smoothed_sobel', lambda image: gradients[id(image)])
    general = results()
    general['grid'] = matching._affine_grid(theta.clone().requires_grad_(True), 192, 256)
    for key, value in general.items():
        if key[0] == 'cost':
            torch.testing.assert_close(fast[key], value, atol=1e-6, rtol=0.0)
        else:
            for got, expected in zip(*((fast[key], value) if key[0] == 'histograms'
                                       else ((fast[key],), (value.detach(),)))):
                assert torch.equal(got, expected), key
    assert torch.equal(fast['cost', 4, 4, 8], general['cost', 4, 4, 8])  # 48x64 cells
    assert float(general['inside', 8].mean()) not in (0.0, 1.0)  # cells both in and out


def test_smoothed_sobel_filters_every_channel_and_refuses_other_ranks():
    """Each plane of a (B, C, H, W) image is filtered, as by kornia; no 4-D image is refused.

    The OpenCV path filtered channel 0 alone and returned uninitialised memory as the other
    channels' gradients; a 3-D image was filtered row by row.
    """
    import kornia
    from tarfuse_ros.core.model.matching import smoothed_sobel
    ir, vi = _real_pair((96, 128))
    image = torch.cat((torch.cat((ir, vi, 1.0 - ir), dim=1), torch.cat((vi, ir, vi), dim=1)))
    gradient = kornia.filters.spatial_gradient(
        kornia.filters.gaussian_blur2d(image, (5, 5), (1.0, 1.0)), mode='sobel',
        normalized=False)
    for got, want in zip(smoothed_sobel(image), (gradient[:, :, 0], gradient[:, :, 1])):
        assert got.shape == (2, 3, 96, 128)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for bad in (ir[0], ir[None]):
        with pytest.raises(ValueError, match='image must be'):
            smoothed_sobel(bad)


@pytest.mark.parametrize('shape', [(1, 1, 2, 5), (2, 1, 5, 2), (1, 2, 1, 1), (1, 1, 3, 1),
                                   (1, 1, 3, 3), (1, 1, 4, 5)])
def test_smoothed_sobel_of_a_tiny_image_is_opencvs_on_every_path(shape):
    """An image 1 or 2 px high or wide: the fixed-weight path (float64, autograd) as OpenCV.

    F.pad's reflection needs a side longer than the 2 px pad: float64 or a gradient raised
    RuntimeError where the OpenCV path (float32) filtered the image.
    """
    from tarfuse_ros.core.model.matching import smoothed_sobel
    image = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    want = smoothed_sobel(image)  # OpenCV
    with torch.enable_grad():
        for other in (image.double(), image.clone().requires_grad_(True)):
            for got, expected in zip(smoothed_sobel(other), want):
                torch.testing.assert_close(got.detach().float(), expected, atol=1e-6, rtol=0)
    double = image.double().requires_grad_(True)
    assert torch.autograd.gradcheck(smoothed_sobel, (double,))


def test_global_stage_runs_in_float32_under_autocast():
    """The engine's half=True runs the network under autocast: the global stage stays float32.

    Under autocast its matrix products (and on CUDA its filters) ran in 16 bits: the map of a
    real pair moved by 1 % of the frame with bfloat16. The histograms of a float16 image,
    called directly, are finite (a flat pixel divided 0 by 0 there).
    """
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((192, 256))
    ir = torch.roll(ir, (4, -6), (2, 3))
    matcher = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25))
    expected = matcher(ir, vi)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast('cpu', dtype=dtype):
            got = matcher(ir.to(dtype), vi.to(dtype))
        assert got.dtype == torch.float32
        assert torch.equal(got, matcher(ir.to(dtype).float(), vi.to(dtype).float())), dtype
        with torch.autocast('cpu', dtype=dtype):
            assert torch.equal(matcher(ir, vi), expected), dtype
    half = cell_histograms(vi.half(), 8)
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())
    flat = cell_histograms(torch.full((1, 1, 64, 64), 0.5, dtype=torch.float16), 8)
    assert bool((flat == 0).all())


def test_cell_histograms_of_a_uint8_image_equal_those_of_its_float_copy():
    # The float16 guard chose its epsilon by the image's dtype: torch.finfo(torch.uint8) raised
    # a TypeError, where kornia's filters had always turned the 8-bit image into float32.
    ir, _ = _real_pair((96, 128))
    image = (ir * 255.0).round().to(torch.uint8)
    got = cell_histograms(image, 8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, cell_histograms(image.float(), 8), atol=1e-6, rtol=1e-5)


def test_cell_histograms_equal_every_bin_evaluated_directly():
    """Bins half a turn apart are the two lobes of one cosine: the same as all bins directly.

    Reference: bin b of a cell is the mean over its pixels of max(0, cos(2 theta - phi_b))^3
    |g|, contrast-normalised (:func:`orientation_descriptors`' docstring), bin by bin.
    """
    import math

    import torch.nn.functional as F
    from tarfuse_ros.core.model.matching import smoothed_sobel
    ir, vi = _real_pair((192, 256))
    for image in (ir, vi, 1.0 - vi):
        for cell, bins in ((8, 8), (4, 8), (8, 6)):
            gx, gy = smoothed_sobel(image)  # its own test: the same as kornia's filters
            energy = gx * gx + gy * gy
            magnitude = torch.sqrt(energy + 1e-12)
            # (cos 2 theta, sin 2 theta), 0 where there is no gradient at all.
            cos2, sin2 = (gx * gx - gy * gy) / (energy + 1e-12), 2 * gx * gy / (energy + 1e-12)
            direct = []
            for b in range(bins):
                phi = b * 2.0 * math.pi / bins
                lobe = torch.relu(cos2 * math.cos(phi) + sin2 * math.sin(phi))
                direct.append(F.avg_pool2d(lobe ** 3 * magnitude, cell))
            local = F.avg_pool2d(F.avg_pool2d(magnitude, cell), 5, stride=1, padding=2,
                                 count_include_pad=False)
            expected = torch.cat(direct, dim=1) / (local + 1e-3)
            torch.testing.assert_close(cell_histograms(image, cell, bins), expected,
                                       atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match='bins must be even'):
        cell_histograms(ir, 8, 7)
    from tarfuse_ros.core.model.matching import OrientationMatcher
    for bad in (7, 0, 8.0, True):
        with pytest.raises(ValueError, match='bins must be an even number'):
            OrientationMatcher(bins=bad)


def test_match_scales_fits_each_candidate_as_alone():
    """The scale candidates fitted side by side in one batch: each map as fitted alone."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((192, 256))
    narrow = torch.roll(ir, (5, -7), (2, 3))
    matcher = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25), support_mask=True)
    for scales in ((0.8, 1.25), (0.8, 1.0, 1.25), (0.64, 1.5625), (1.25,)):
        for pair_ir, pair_vi in ((narrow, vi), (torch.cat([narrow, ir]), torch.cat([vi, vi]))):
            cache = {}
            together = matcher._match_scales(pair_ir, pair_vi, scales, cache)
            assert len(together) == len(scales)
            for scale, theta in zip(scales, together):
                factors = torch.full((pair_ir.shape[0],), scale)
                alone = matcher._match_zoomed(pair_ir, pair_vi, factors)
                torch.testing.assert_close(theta, alone, atol=1e-4, rtol=0)
            # Histograms of an image no candidate zooms are kept for later candidates.
            assert ('ir' in cache) == any(scale >= 1.0 for scale in scales)


def test_warped_views_reuse_earlier_passes_without_changing_the_map(monkeypatch):
    """The search's score of the winning map and the first extra pass warp the IR by one map.

    So do the first fine pass and the fine-pass check: each warped IR's histograms are
    computed once, and the map is the same bit for bit as without the memo.
    """
    from tarfuse_ros.core.model import matching
    ir, vi = _real_pair((192, 256))
    ir = torch.roll(ir, (3, -5), (2, 3))
    matcher = matching.OrientationMatcher(
        scale_candidates=(0.8, 1.0, 1.25), extra_passes=2, extra_radius=4, fine_cell=4,
        fine_passes=2, fine_radius=4, support_mask=True, fine_check=True)
    calls = {'n': 0}
    histograms = matching.cell_histograms

    def counted(*args, **kwargs):
        calls['n'] += 1
        return histograms(*args, **kwargs)

    monkeypatch.setattr(matching, 'cell_histograms', counted)
    memo = matcher(ir, vi)
    with_memo = calls['n']

    class Unmemoised(matching._WarpedViews):
        def __init__(self, matcher, ir, memo=False):
            super().__init__(matcher, ir, memo=False)

    monkeypatch.setattr(matching, '_WarpedViews', Unmemoised)
    calls['n'] = 0
    plain = matcher(ir, vi)
    assert torch.equal(memo, plain)
    # The unzoomed candidate wins here, so the extra passes run: two histograms saved.
    assert with_memo == calls['n'] - 2, (with_memo, calls['n'])
    # A batch of two different pairs: each sample's map as alone.
    pair = matcher(torch.cat([ir, vi]), torch.cat([vi, vi]))
    torch.testing.assert_close(pair[:1], plain, atol=1e-5, rtol=0)


def test_shifted_copies_equal_one_slice_per_offset(monkeypatch):
    from tarfuse_ros.core.model.matching import _shifted_copies
    maps = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(3))
    copies = _shifted_copies(maps, 2)
    assert copies.shape == (2, 25, 5, 7)
    # Offset (dy, dx) = (1, -2) is channel (1 + 2) * 5 + (-2 + 2) = 15; zeros outside.
    assert torch.equal(copies[:, 15, :4, 2:], maps[:, 0, 1:, :5])
    assert bool((copies[:, 15, 4:] == 0).all()) and bool((copies[:, 15, :, :2] == 0).all())
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)  # the ONNX trace's slices
    assert torch.equal(_shifted_copies(maps, 2), copies)


def test_zoom_samples_about_the_centre():
    from tarfuse_ros.core.model.matching import zoom
    image = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(zoom(image, 1.0), image, atol=1e-5, rtol=0)
    # Zoomed in by 2: the centre pixel stays, the frame shows the central half.
    centre = torch.zeros(1, 1, 33, 33)
    centre[:, :, 16, 16] = 1.0
    centre[:, :, 8, 8] = 0.5
    zoomed = zoom(centre, 0.5)
    assert float(zoomed[0, 0, 16, 16]) == pytest.approx(1.0)
    assert float(zoomed[0, 0, 0, 0]) == pytest.approx(0.5)


def _narrow_field_of_view(image, fov):
    """Return the central ``fov`` of ``image`` (1, 1, H, W) resized back to (H, W).

    What a camera with a narrower field of view sees (cv2, as benchmarks/eval_fov.py).
    """
    import cv2
    height, width = image.shape[2:]
    crop_h, crop_w = int(round(height * fov)), int(round(width * fov))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    plane = image[0, 0, top:top + crop_h, left:left + crop_w].numpy()
    return torch.from_numpy(cv2.resize(plane, (width, height),
                                       interpolation=cv2.INTER_LINEAR))[None, None]


def test_scale_candidates_recover_a_narrower_thermal_field_of_view():
    """One fit misses a 1.25 zoom (blocks do not match across scales); the search finds it."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((320, 480))
    narrow = _narrow_field_of_view(ir, 0.8)
    truth = affine_flow(torch.tensor([[[1.25, 0.0, 0.0], [0.0, 1.25, 0.0]]]), 320, 480)

    def error(matcher, moving):
        flow = affine_flow(matcher(moving, vi), 320, 480)
        return float(torch.linalg.vector_norm(flow - truth, dim=1).mean())

    before = float(torch.linalg.vector_norm(truth, dim=1).mean())
    single = OrientationMatcher()
    search = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25))
    assert error(single, narrow) > 0.5 * before
    assert error(search, narrow) < 0.15 * before
    # A wider thermal view (the IR shows more: scale 0.8) and an aligned pair.
    wide_truth = affine_flow(torch.tensor([[[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]]]), 320, 480)
    wide = _narrow_field_of_view(vi, 0.8)  # the visible image is the narrow one
    flow = affine_flow(search(ir, wide), 320, 480)
    assert float(torch.linalg.vector_norm(flow - wide_truth, dim=1).mean()) < 0.15 * before
    aligned = affine_flow(search(ir, vi), 320, 480)
    assert float(torch.linalg.vector_norm(aligned, dim=1).mean()) < 2.0
    scores = search.alignment_score(ir, vi, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    worse = search.alignment_score(ir, vi, torch.tensor([[[1.1, 0, 0.05], [0, 1.1, 0]]]))
    assert float(scores) > float(worse)
    with pytest.raises(ValueError, match='scale_candidates'):
        OrientationMatcher(scale_candidates=(0.0, 1.0))
    with pytest.raises(ValueError, match='global_scale_candidates'):
        TarFuseConfig(global_scale_candidates=())


def test_scale_accept_skips_the_search_only_where_the_unzoomed_map_explains_the_pair(
        monkeypatch):
    """An aligned pair keeps the unzoomed fit without the zoomed ones; a narrower view does not.

    The maps are those of the full search, alone, in a batch of both, and in an ONNX trace
    (which fits every candidate).
    """
    from tarfuse_ros.core.model import matching
    ir, vi = _real_pair((320, 480))
    narrow = _narrow_field_of_view(ir, 0.8)
    full = matching.OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25))
    accept = matching.OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25), scale_accept=0.25)
    zoomed = []
    match_zoomed = matching.OrientationMatcher._match_zoomed

    def counted(self, ir, vi, factors, cache=None):
        zoomed.append(round(float(factors[0]), 3))
        return match_zoomed(self, ir, vi, factors, cache)

    match_scales = matching.OrientationMatcher._match_scales

    def counted_batch(self, ir, vi, scales, cache):
        zoomed.extend(round(scale, 3) for scale in scales if len(scales) > 1)
        return match_scales(self, ir, vi, scales, cache)

    monkeypatch.setattr(matching.OrientationMatcher, '_match_zoomed', counted)
    monkeypatch.setattr(matching.OrientationMatcher, '_match_scales', counted_batch)
    aligned = accept(ir, vi)
    assert zoomed == [1.0]  # accepted: no zoomed fit
    # Bit for bit with NumPy 2.4 / OpenCV 4.14; 3e-7 apart with Humble's NumPy 1.26 / OpenCV 4.11
    # (the unzoomed map fitted alone or in a batch of three candidates).
    assert torch.allclose(aligned, full(ir, vi), rtol=0.0, atol=1e-6)
    zoomed.clear()
    wider = accept(narrow, vi)
    assert sorted(zoomed) == [0.8, 1.0, 1.25]  # not accepted: the whole search
    # The two zoomed candidates are fitted in one batch: the same maps up to float rounding.
    torch.testing.assert_close(wider, full(narrow, vi), atol=1e-4, rtol=0)
    assert float(wider[0, 0, 0]) > 1.15  # the 1.25 zoom
    both = accept(torch.cat([ir, narrow]), torch.cat([vi, vi]))
    torch.testing.assert_close(both, torch.cat([aligned, wider]), atol=1e-5, rtol=0)
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
    torch.testing.assert_close(accept(torch.cat([ir, narrow]), torch.cat([vi, vi])), both,
                               atol=1e-4, rtol=0)
    for bad in (-0.1, 1.5, True, '0.2'):
        with pytest.raises(ValueError, match='scale_accept'):
            matching.OrientationMatcher(scale_accept=bad)
    with pytest.raises(ValueError, match='global_scale_accept'):
        TarFuseConfig(global_scale_accept=2.0)


def test_wide_search_brings_back_a_shift_beyond_the_first_pass_reach(monkeypatch):
    """A real pair shifted by 96 px (the first pass reaches 64): the wide search registers it.

    An aligned pair, which the map found explains, keeps that map bit for bit (no wide fit);
    a batch of both gives each its own map, and so does an ONNX trace (every fit runs).
    """
    from tarfuse_ros.core.model import matching
    ir, vi = _real_pair((320, 480))
    shift = torch.tensor([88.0, 38.0])  # 96 px
    moved = warp(ir, -shift.view(1, 2, 1, 1).expand(1, 2, 320, 480))  # moved(p) = ir(p - s)
    settings = {'scale_candidates': (0.8, 1.0, 1.25), 'scale_accept': 0.25, 'extra_passes': 2,
                'extra_radius': 4, 'support_mask': True}
    plain = matching.OrientationMatcher(**settings)
    wide = matching.OrientationMatcher(**settings, wide_below=0.15, wide_scales=(0.64, 1.5625))

    def error(theta):
        # Mean distance (px) to the true field over the frame's inner half.
        flow = affine_flow(theta, 320, 480)[:, :, 80:240, 120:360]
        return float(torch.linalg.vector_norm(flow - shift.view(1, 2, 1, 1), dim=1).mean())

    assert error(plain(moved, vi)) > 20.0  # beyond the search: the plain stage fails
    found = wide(moved, vi)
    assert error(found) < 3.0
    starts = []
    match_from_half = matching.OrientationMatcher._match_from_half

    def counted(self, ir, vi, factor=2):
        starts.append(factor)
        return match_from_half(self, ir, vi, factor)

    monkeypatch.setattr(matching.OrientationMatcher, '_match_from_half', counted)
    aligned = wide(ir, vi)
    assert starts == [] and torch.equal(aligned, plain(ir, vi))
    both = wide(torch.cat([ir, moved]), torch.cat([vi, vi]))
    torch.testing.assert_close(both, torch.cat([aligned, found]), atol=1e-4, rtol=0)
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
    torch.testing.assert_close(wide(torch.cat([ir, moved]), torch.cat([vi, vi])), both,
                               atol=1e-3, rtol=0)
    for bad in (-0.1, 1.5, True, '0.2'):
        with pytest.raises(ValueError, match='wide_below'):
            matching.OrientationMatcher(wide_below=bad)
    with pytest.raises(ValueError, match='wide_scales'):
        matching.OrientationMatcher(wide_scales=(0.0, 1.5))
    with pytest.raises(ValueError, match='global_wide_below'):
        TarFuseConfig(global_wide_below=2.0)
    with pytest.raises(ValueError, match='global_wide_scales'):
        TarFuseConfig(global_wide_scales=(-1.0,))


def test_fine_check_keeps_the_map_that_the_fine_passes_drifted_away_from():
    """A narrower thermal view at night: four fine passes shrink the map; the check keeps it."""
    import cv2
    from pathlib import Path
    from tarfuse_ros.core import data
    from tarfuse_ros.core.model.matching import OrientationMatcher
    folder = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'msrs_train'
    ir, vi = data.load_pair(folder, '00854N')  # msrs_train val, 640x480

    def plane(image):
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        resized = cv2.resize(grey, (640, 512), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(resized.astype(np.float32) / 255.0)[None, None]

    narrow, vi = _narrow_field_of_view(plane(ir), 0.8), plane(vi)
    truth = affine_flow(torch.tensor([[[1.25, 0.0, 0.0], [0.0, 1.25, 0.0]]]), 512, 640)
    # The shipped global stage's settings (models/tarfuse_default.safetensors).
    shipped = {'scale_candidates': (0.8, 1.0, 1.25), 'fine_cell': 4, 'fine_block': 8,
               'coarse_side': 640, 'fine_passes': 4, 'fine_radius': 4, 'support_mask': True}
    errors = {}
    for check in (False, True):
        matcher = OrientationMatcher(fine_check=check, **shipped)
        flow = affine_flow(matcher(narrow, vi), 512, 640)
        errors[check] = float(torch.linalg.vector_norm(flow - truth, dim=1).mean())
    # Measured (benchmarks/eval_fov.py's zoom, docs/METHOD.md): 2.5 px before the fine passes,
    # 19.2 after them, 2.5 with the check.
    assert errors[False] > 8.0 and errors[True] < 4.0, errors
    # Extra 8 px passes pull a narrower view's scale off (00854N: 2.6 -> 9.2 px, global stage
    # alone, docs/METHOD.md): they run only where the unzoomed scale candidate won, which the
    # 1.25 zoom here does not.
    matcher = OrientationMatcher(fine_check=True, **shipped)
    extra = OrientationMatcher(fine_check=True, extra_passes=2, extra_radius=4, **shipped)
    torch.testing.assert_close(extra(narrow, vi), matcher(narrow, vi))
    reference = cell_histograms(vi, extra.cell, extra.bins)
    theta, unit = extra._search_scales(narrow, vi, reference)
    assert not bool(unit.any())
    forced = affine_flow(extra._fine(narrow, vi, extra._extra(narrow, vi, theta, reference)),
                         512, 640)
    assert float(torch.linalg.vector_norm(forced - truth, dim=1).mean()) > errors[True] + 1.0
    with pytest.raises(ValueError, match='fine_check'):
        OrientationMatcher(fine_check=1)
    for margin in (-0.1, 1.0, float('nan'), True, 'abc', None):
        with pytest.raises(ValueError, match='fine_check_margin'):
            OrientationMatcher(fine_check_margin=margin)
    # Nothing to check without a fine pass.
    with pytest.raises(ValueError, match='fine_check needs a fine pass'):
        OrientationMatcher(fine_check=True)
    with pytest.raises(ValueError, match='global_fine_check needs a fine pass'):
        TarFuseConfig(global_features='orientation', global_fine_check=True)
    with pytest.raises(ValueError, match='global_fine_check'):
        TarFuseConfig(global_fine_check='yes')
    # A stored pass count the engines' fine_passes setting refuses (at most 8) was taken.
    with pytest.raises(ValueError, match='global_fine_passes must be at most 8, got 100'):
        TarFuseConfig(global_fine_passes=100)
    assert TarFuseConfig(global_fine_passes=8).global_fine_passes == 8
    # The config reaches the matcher; checkpoints without the field keep the passes' map.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation', global_fine_cell=4,
                                      global_fine_check=True))
    assert model.registration.global_matcher.fine_check is True
    assert TarFuseConfig().global_fine_check is False


def test_normalised_and_pixel_affine_maps_round_trip():
    from tarfuse_ros.core.model.matching import (_normalised_affine_to_pixel,
                                                 _pixel_affine_to_normalised)
    theta_px = torch.tensor([[[1.05, 0.03, -7.5], [-0.02, 0.97, 12.0]]], dtype=torch.float64)
    theta = _pixel_affine_to_normalised(theta_px, 240, 320)
    torch.testing.assert_close(_normalised_affine_to_pixel(theta, 240, 320), theta_px)
    # The pixel map moves pixel (x, y) where the normalised map's flow says.
    flow = affine_flow(theta, 240, 320)
    x, y = 250, 40
    moved = theta_px[0, :, :2] @ torch.tensor([x, y], dtype=torch.float64) + theta_px[0, :, 2]
    torch.testing.assert_close(moved - torch.tensor([x, y], dtype=torch.float64),
                               flow[0, :, y, x])


def _mean_affine_error(matcher):
    """Mean EPE (px) of ``matcher``'s map on a real 480x320 pair under three seeded affines."""
    from tarfuse_ros.core.deform import DeformConfig, random_deformation
    ir, vi = _real_pair((320, 480))
    config = DeformConfig(prob=1.0, rotation_deg=6.0, translation=0.0, scale=(0.92, 1.08),
                          translation_px=24.0, elastic_alpha_px=0.0)
    found = []
    for seed in range(3):
        applied, inverse = random_deformation(1, 320, 480, config,
                                              generator=torch.Generator().manual_seed(seed))
        flow = affine_flow(matcher(warp(ir, applied), vi), 320, 480)
        found.append(float(torch.linalg.vector_norm(flow - inverse, dim=1).mean()))
    return sum(found) / len(found)


def test_fine_pass_refines_the_global_map_on_a_real_pair():
    """4 px cells after the 8 px passes: closer to a known affine (real IR / visible pair)."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    errors = {cell: _mean_affine_error(OrientationMatcher(fine_cell=cell)) for cell in (0, 4)}
    assert errors[4] < 0.8 * errors[0], errors
    with pytest.raises(ValueError, match='fine_cell'):
        OrientationMatcher(fine_cell=-1)
    with pytest.raises(ValueError, match='global_fine_cell'):
        TarFuseConfig(global_fine_cell=3)
    # The network's config reaches the matcher; checkpoints without the fields have no pass.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation', global_fine_cell=4,
                                      global_fine_block=6))
    assert (model.registration.global_matcher.fine_cell,
            model.registration.global_matcher.fine_block) == (4, 6)
    assert TarFuseConfig().global_fine_cell == 0


def test_repeated_fine_passes_converge_closer_to_a_known_affine():
    """Each fine pass re-matches on the IR warped by the last map: several passes beat one."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    errors = {passes: _mean_affine_error(OrientationMatcher(fine_cell=4, fine_passes=passes,
                                                            fine_radius=radius))
              for passes, radius in ((1, 2), (4, 4))}
    assert errors[4] < errors[1], errors
    for name in ('fine_passes', 'fine_radius'):
        with pytest.raises(ValueError, match=name):
            OrientationMatcher(fine_cell=4, **{name: 0})
        with pytest.raises(ValueError, match='global_' + name):
            TarFuseConfig(**{'global_' + name: 0})
    # The config reaches the matcher; checkpoints without the fields keep one pass of radius 2.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation', global_fine_cell=4,
                                      global_fine_passes=3, global_fine_radius=4))
    matcher = model.registration.global_matcher
    assert (matcher.fine_passes, matcher.fine_radius) == (3, 4)
    assert (TarFuseConfig().global_fine_passes, TarFuseConfig().global_fine_radius) == (1, 2)


def test_corner_shift_is_the_largest_corner_displacement_in_pixels():
    from tarfuse_ros.core.model.matching import corner_shift_px
    before = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]).repeat(2, 1, 1)
    after = before.clone()
    after[0, :, 2] = torch.tensor([3.0, 4.0])  # a translation moves every corner by 5 px
    after[1, 0, 0] = 1.01  # 1 % wider about the origin: the far corners move 0.01 * 99 px
    torch.testing.assert_close(corner_shift_px(before, after, 50, 100),
                               torch.tensor([5.0, 0.99]))


def test_fine_tolerance_stops_the_fine_passes_once_the_map_has_settled():
    """Fewer passes for the same map; each sample stops on its own, whatever the batch."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((320, 480))
    moved = []
    for seed in range(2):
        applied, _ = _seeded_affine(6.0, 0.08, 24.0, seed)
        moved.append(warp(ir, applied))
    moved = torch.cat(moved)
    vi = vi.expand(2, -1, -1, -1)
    settings = {'fine_cell': 4, 'fine_passes': 4, 'fine_radius': 4}
    maps, passes = {}, {}
    for tolerance in (0.0, 0.25, 1e6):
        matcher = OrientationMatcher(**settings, fine_tolerance=tolerance)
        calls = []
        fine_pass = matcher._refine

        def counted(*args, **kwargs):
            calls.append(kwargs.get('radius'))
            return fine_pass(*args, **kwargs)

        matcher._refine = counted
        first = matcher(moved[:1], vi[:1])
        passes[tolerance] = calls.count(4)  # the fine passes search within 4 cells
        # In a batch with a sample that needs all four passes (the second), each sample gets
        # the map it gets alone.
        maps[tolerance] = matcher(moved, vi)
        alone = torch.cat([first, matcher(moved[1:], vi[1:])])
        torch.testing.assert_close(alone, maps[tolerance], atol=1e-5, rtol=0)
    # Measured: the first sample settles after 3 passes at 0.25 px, the second after 4.
    assert passes[0.0] == 4 and passes[1e6] == 1 and 1 < passes[0.25] < 4, passes
    one_pass = OrientationMatcher(fine_cell=4, fine_passes=1, fine_radius=4)(moved, vi)
    torch.testing.assert_close(maps[1e6], one_pass)

    def corner_px(theta):
        return _corner_shift(maps[0.0], theta)

    # The passes left out move the map by less than a pixel (measured 0.1-0.4 px).
    assert float(corner_px(maps[0.25]).max()) < 1.0
    for bad in (-0.1, float('nan'), True, '0.25'):
        with pytest.raises(ValueError, match='tolerance'):
            OrientationMatcher(fine_cell=4, fine_tolerance=bad)
    with pytest.raises(ValueError, match='global_fine_tolerance'):
        TarFuseConfig(global_fine_tolerance=-1.0)
    # The config reaches the matcher; checkpoints without the field run every pass.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation', global_fine_cell=4,
                                      global_fine_tolerance=0.25))
    assert model.registration.global_matcher.fine_tolerance == 0.25
    assert TarFuseConfig().global_fine_tolerance == 0.0


def _corner_shift(theta_a, theta_b, height=320, width=480):
    """Largest corner displacement (px) between two normalised affine maps."""
    from tarfuse_ros.core.model.matching import _normalised_affine_to_pixel, corner_shift_px
    return corner_shift_px(_normalised_affine_to_pixel(theta_a, height, width),
                           _normalised_affine_to_pixel(theta_b, height, width), height, width)


def test_extra_passes_bring_a_map_left_far_off_back_onto_a_real_pair():
    """8 px passes within 4 cells reach a map 34 px off; passes within 2 cells do not."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    ir, vi = _real_pair((320, 480))
    applied, inverse = _seeded_affine(4.0, 0.05, 16.0, 1)
    moved = warp(ir, applied)
    # The true map (a least-squares fit of the inverse field) moved 32 px right and 12 px
    # down: a start like the 15-40 px misses of the first passes on validation
    # (docs/METHOD.md).
    truth = fit_affine(inverse, torch.ones(1, 1, 320, 480))
    start = truth.clone()
    start[:, 0, 2] += 32.0 * 2.0 / (480 - 1)
    start[:, 1, 2] += 12.0 * 2.0 / (320 - 1)

    def error(theta):
        flow = affine_flow(theta, 320, 480)
        return float(torch.linalg.vector_norm(flow - inverse, dim=1).mean())

    errors = {}
    for radius in (2, 4):
        matcher = OrientationMatcher(extra_passes=2, extra_radius=radius, support_mask=True)
        reference = cell_histograms(vi, matcher.cell, matcher.bins)
        errors[radius] = error(matcher._extra(moved, vi, start, reference))
    # Measured: 34.2 px at the start, 22.6 after two passes within 2 cells, 2.5 within 4.
    assert error(start) > 30.0
    assert errors[4] < 4.0 and errors[2] > 10.0, errors
    for name, bad in (('extra_passes', -1), ('extra_passes', True), ('extra_radius', 0),
                      ('extra_radius', 2.5)):
        with pytest.raises(ValueError, match=name):
            OrientationMatcher(**{name: bad})
        with pytest.raises(ValueError, match='global_' + name):
            TarFuseConfig(**{'global_' + name: bad})
    # The config reaches the matcher; checkpoints without the fields run no extra pass.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation',
                                      global_extra_passes=3, global_extra_radius=4))
    matcher = model.registration.global_matcher
    assert (matcher.extra_passes, matcher.extra_radius) == (3, 4)
    assert (TarFuseConfig().global_extra_passes, TarFuseConfig().global_extra_radius) == (0, 2)


def test_support_mask_keeps_the_black_border_of_the_warped_ir_out_of_the_fit():
    """Blocks whose search window leaves the warped IR's support pull the map inwards."""
    from tarfuse_ros.core.model.matching import OrientationMatcher
    # The seeded affines (rotation, scale, 24 px shifts) pull black borders into the warped IR.
    errors = {mask: _mean_affine_error(OrientationMatcher(support_mask=mask))
              for mask in (False, True)}
    assert errors[True] < 0.7 * errors[False], errors
    with pytest.raises(ValueError, match='support_mask'):
        OrientationMatcher(support_mask=1)
    with pytest.raises(ValueError, match='global_support_mask'):
        TarFuseConfig(global_support_mask='yes')
    # The config reaches the matcher; checkpoints without the field keep every block.
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation',
                                      global_support_mask=True))
    assert model.registration.global_matcher.support_mask is True
    assert TarFuseConfig().global_support_mask is False


def test_support_mask_keeps_every_block_when_too_few_would_be_left():
    """A map that keeps a sliver of the IR: the masked pass falls back to the unmasked one."""
    from tarfuse_ros.core.model.matching import _cell_centres, cell_histograms, \
        OrientationMatcher
    ir, vi = _real_pair((128, 192))
    matcher = OrientationMatcher(support_mask=True)
    reference = cell_histograms(vi, matcher.cell, matcher.bins)
    points = _cell_centres(reference.shape[2], reference.shape[3], matcher.cell, vi)

    def refined(shift, mask):
        theta = torch.tensor([[[1.0, 0.0, shift], [0.0, 1.0, 0.0]]])
        return matcher._refine(ir, reference, points, theta, matcher.cell, matcher.block,
                               matcher.refine_scales, mask_support=mask)

    # A shift of 85 % of the width: the warped IR covers a 29 px band, narrower than a window.
    torch.testing.assert_close(refined(1.7, True), refined(1.7, False))
    # A shift of 10 %: most blocks stay, those near the black band are dropped.
    assert not torch.allclose(refined(0.2, True), refined(0.2, False))


def test_valid_size_fits_the_map_on_the_image_and_not_on_its_padding():
    """Padded rows/columns are the same in both images; with ``valid_size`` they are not read."""
    from tarfuse_ros.core import images
    from tarfuse_ros.core.deform import DeformConfig, random_deformation
    from tarfuse_ros.core.model.matching import (_normalised_affine_to_pixel, crop_to_valid,
                                                 OrientationMatcher)
    ir, vi = _real_pair((320, 480))
    ir, vi = ir[:, :, :301, :457], vi[:, :, :301, :457]  # as a 457x301 camera frame
    config = DeformConfig(prob=1.0, rotation_deg=6.0, translation=0.0, scale=(0.92, 1.08),
                          translation_px=24.0, elastic_alpha_px=0.0)
    applied, _ = random_deformation(1, 301, 457, config,
                                    generator=torch.Generator().manual_seed(1))
    moving = warp(ir, applied)
    padded_ir, _ = images.pad_to_multiple(moving)
    padded_vi, _ = images.pad_to_multiple(vi)
    assert padded_ir.shape[2:] == (320, 480)
    matcher = OrientationMatcher(scale_candidates=(0.8, 1.0, 1.25), fine_cell=4)
    alone = _normalised_affine_to_pixel(matcher(moving, vi), 301, 457)
    for valid in ((301, 457), torch.tensor([301, 457])):
        cropped = _normalised_affine_to_pixel(matcher(padded_ir, padded_vi, valid), 320, 480)
        # The same pixel map as on the unpadded images (pixel coordinates are unchanged).
        torch.testing.assert_close(cropped, alone, atol=1e-3, rtol=1e-4)
    ignored = _normalised_affine_to_pixel(matcher(padded_ir, padded_vi), 320, 480)
    assert not torch.allclose(ignored, alone, atol=1e-3)  # the padding did change the fit
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation')).eval()
    with torch.no_grad():
        flow = model(padded_ir, padded_vi, valid_size=(301, 457))['flow']
    assert flow.shape == (1, 2, 320, 480)
    for bad in ((0, 457), (321, 457)):
        with pytest.raises(ValueError, match='valid_size'):
            crop_to_valid(padded_ir, bad)


def test_coarse_start_reaches_large_displacements_of_large_frames():
    """A frame above ``coarse_side`` is fitted halved first: twice the search reach."""
    from pathlib import Path
    from tarfuse_ros.core.model.matching import OrientationMatcher
    from tarfuse_ros.evaluation import protocol
    from tarfuse_ros.evaluation.options import EvalOptions
    folder = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'm3fd_samples'
    # A real 1024x768 pair with the evaluation's seeded synthetic field (mean 63 px).
    case = protocol.make_case(folder, 'M3FD_00000', 'synthetic', EvalOptions(), True)
    ir = torch.from_numpy(case.deformed_unit).float()[None, None]
    vi = torch.from_numpy(case.vi_y_unit).float()[None, None]
    reference = torch.from_numpy(case.flow_ref).permute(2, 0, 1)[None]
    assert ir.shape[2:] == (768, 1024)

    def epe(matcher):
        flow = affine_flow(matcher(ir, vi), 768, 1024)
        return float(torch.linalg.vector_norm(flow - reference, dim=1).mean())

    direct, halved = epe(OrientationMatcher()), epe(OrientationMatcher(coarse_side=640))
    # Measured 30.4 px without the halved start (the search cannot reach), 10.1 px with it
    # (this matcher: one scale, no fine pass).
    assert halved < 0.4 * direct, (direct, halved)
    # Frames of at most coarse_side px are fitted as before, bit for bit.
    small_ir, small_vi = ir[:, :, :480, :640], vi[:, :, :480, :640]
    torch.testing.assert_close(OrientationMatcher(coarse_side=640)(small_ir, small_vi),
                               OrientationMatcher()(small_ir, small_vi), atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match='coarse_side'):
        OrientationMatcher(coarse_side=-1)
    with pytest.raises(ValueError, match='global_coarse_side'):
        TarFuseConfig(global_coarse_side=-5)
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation',
                                      global_coarse_side=640))
    assert model.registration.global_matcher.coarse_side == 640
    assert TarFuseConfig().global_coarse_side == 0


def test_min_side_enlarges_small_frames_for_the_fit():
    """A small real pair (76 x 114, a low-resolution thermal core): enlarged, the fit lands."""
    from tarfuse_ros.core.deform import DeformConfig, random_deformation
    from tarfuse_ros.core.model.matching import OrientationMatcher
    import torch.nn.functional as F
    ir, vi = _real_pair((320, 480))
    ir, vi = (F.interpolate(image, size=(76, 114), mode='area') for image in (ir, vi))
    config = DeformConfig(prob=1.0, rotation_deg=4.0, translation=0.0, scale=(0.95, 1.05),
                          translation_px=4.0, elastic_alpha_px=0.0)
    errors = {0: [], 160: []}
    for seed in range(3):
        applied, inverse = random_deformation(1, 76, 114, config,
                                              generator=torch.Generator().manual_seed(seed))
        for side in errors:
            matcher = OrientationMatcher(fine_cell=4, min_side=side)
            flow = affine_flow(matcher(warp(ir, applied), vi), 76, 114)
            errors[side].append(float(torch.linalg.vector_norm(flow - inverse, dim=1).mean()))
    mean = {side: sum(values) / len(values) for side, values in errors.items()}
    assert mean[160] < 0.6 * mean[0], mean
    # Frames at least min_side px on their shorter side are fitted exactly as before.
    big_ir, big_vi = _real_pair((192, 256))
    torch.testing.assert_close(OrientationMatcher(fine_cell=4, min_side=160)(big_ir, big_vi),
                               OrientationMatcher(fine_cell=4)(big_ir, big_vi))
    with pytest.raises(ValueError, match='min_side'):
        OrientationMatcher(min_side=-1)
    with pytest.raises(ValueError, match='global_min_side'):
        TarFuseConfig(global_min_side=1.5)
    model = build_model(TarFuseConfig(**SMALL, global_features='orientation',
                                      global_min_side=160))
    assert model.registration.global_matcher.min_side == 160
    assert TarFuseConfig().global_min_side == 0


def test_skipped_learnt_levels_pass_the_flow_unchanged():
    """``registration_skip_levels``: a skipped level adds nothing, the others run as before."""
    from tarfuse_ros.core.model.matching import MatchingRegistration
    torch.manual_seed(0)
    ir, vi = _real_pair(size=(128, 160))
    c_ir, c_vi = torch.randn(1, 4, 128, 160), torch.randn(1, 4, 128, 160)
    every = MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), global_features='orientation')
    with torch.no_grad():
        for estimator in every.estimators:  # heads start at zero: give each a residual
            estimator.head.weight.normal_(0.0, 0.05)
            estimator.head.bias.normal_(0.0, 0.5)
    skipping = MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), global_features='orientation',
                                    skip_levels=(1, 2))
    skipping.load_state_dict(every.state_dict())  # the same weights: nothing else differs
    zeroed = MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), global_features='orientation')
    zeroed.load_state_dict(every.state_dict())
    with torch.no_grad():
        for index in (1, 2):
            zeroed.estimators[index].head.weight.zero_()
            zeroed.estimators[index].head.bias.zero_()
        flows = [net.eval()(c_ir, c_vi, return_levels=True, ir=ir, vi=vi)
                 for net in (every, skipping, zeroed)]
    (full, levels_all), (skipped, levels_skip), (zero_heads, _) = flows
    assert torch.equal(skipped, zero_heads)
    assert (full - skipped).abs().max() > 0.1  # the skipped levels did move the flow
    # Levels listed coarse to fine after the global map: the two coarser ones only resample
    # the map they got (bilinear, so not bit-equal), the finest adds its residual.
    moved = [[(levels[k + 1] - levels[k]).abs().max().item() for k in range(3)]
             for levels in (levels_all, levels_skip)]
    assert min(moved[0]) > 1.0 and max(moved[1][:2]) < 1e-3 and moved[1][2] > 1.0, moved
    with pytest.raises(ValueError, match='0..2'):
        MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), skip_levels=(3,))
    with pytest.raises(ValueError, match="registration 'match'"):
        TarFuseConfig(registration='paper', registration_skip_levels=(0,))
    with pytest.raises(ValueError, match='registration_skip_levels'):
        TarFuseConfig(registration_skip_levels=('coarse',))
    model = build_model(TarFuseConfig(**SMALL, registration_skip_levels=[2]))
    assert model.registration.skip_levels == {2}
    assert TarFuseConfig().registration_skip_levels == ()


def test_pyramid_runs_only_the_levels_an_estimator_reads():
    """Skipped levels' features are not computed; their sizes carry the flow as before."""
    from tarfuse_ros.core.model.matching import MatchingRegistration, PyramidEncoder
    pyramid = PyramidEncoder(4, (8, 8, 8))
    for size in ((33, 47), (64, 96), (17, 9)):
        outputs = pyramid(torch.randn(1, 4, *size))
        assert pyramid.sizes(size) == [tuple(out.shape[2:]) for out in outputs]
        assert len(pyramid(torch.randn(1, 4, *size), 1)) == 2
    ran = []
    for skip, read in (((1, 2), 0), ((2,), 1), ((), 2)):
        net = MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), global_features='orientation',
                                   skip_levels=skip).eval()
        ran.clear()
        for index, level in enumerate(net.pyramid.levels):
            level.register_forward_hook(lambda module, args, out, index=index: ran.append(index))
        ir, vi = _real_pair(size=(128, 160))
        with torch.no_grad():
            flow = net(torch.randn(1, 4, 128, 160), torch.randn(1, 4, 128, 160), ir=ir, vi=vi)
        assert flow.shape == (1, 2, 128, 160)
        # Level k of the estimators reads pyramid output k (0: the CSEB output itself), for
        # the IR and the visible features: levels 1..k ran twice each, the deeper ones never.
        assert sorted(ran) == sorted(list(range(read)) * 2), (skip, ran)
    learnt = MatchingRegistration(4, 8, (8, 8, 8), (8, 8, 8), skip_levels=(0, 1, 2))
    assert learnt._depth() == 3  # the learnt global stage reads the coarsest level


@pytest.mark.parametrize('size', [(1, 512, 640), (3, 7, 5), (2, 1, 9), (1, 4, 1)])
def test_affine_warp_samples_the_grid_of_affine_grid(size):
    """affine_warp builds F.affine_grid's grid (align_corners) by broadcasting: equal values."""
    import torch.nn.functional as F
    batch, height, width = size
    generator = torch.Generator().manual_seed(height * width)
    noise = torch.randn(batch, 2, 3, generator=generator)
    theta = torch.eye(2, 3).expand(batch, 2, 3) + 0.1 * noise
    image = torch.rand(batch, 2, height, width, generator=generator)
    grid = F.affine_grid(theta, [batch, 2, height, width], align_corners=True)
    expected = F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros',
                             align_corners=True)
    got = affine_warp(image, theta)
    assert got.shape == expected.shape
    # Grids equal up to float rounding (about 5e-7 of the half-width: 2e-4 px at 640 px), times
    # the image's steepest step (about 1 in noise).
    assert torch.allclose(got, expected, atol=1e-3)
    if height * width <= 64:  # differentiable in theta, as the affine_grid one
        theta64 = theta.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: affine_warp(image.double(), t), (theta64,))
