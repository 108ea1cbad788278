"""Metrics against values worked out by hand on tiny images."""

import math
from pathlib import Path
import warnings

import cv2
import numpy as np
import pytest

from tarfuse_ros.core import data, metrics


def _ramp(height=16, width=16):
    """Smooth, non-trivial float image in [0, 1] (gradients in both directions)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return 0.5 + 0.25 * np.sin(x / 2.0) + 0.2 * np.cos(y / 3.0)


def _half_half(height=4, width=4):
    img = np.zeros((height, width), np.uint8)
    img[:, width // 2:] = 255
    return img


# --- fusion -------------------------------------------------------------------------------

def test_identical_images_give_ssim_and_cc_one():
    img = (_ramp() * 255).round().astype(np.uint8)
    assert metrics.ssim(img, img, img) == pytest.approx(1.0, abs=1e-12)
    assert metrics.cc(img, img, img) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_flat_images_is_the_luminance_term():
    x = np.full((16, 16), 100, np.uint8)
    y = np.full((16, 16), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100 ** 2 + 150 ** 2 + c1)
    assert metrics.ssim_pair(x, y) == pytest.approx(expected, rel=1e-9)
    # The fusion SSIM is the mean over the two sources: (1 + expected) / 2.
    assert metrics.ssim(x, x, y) == pytest.approx((1 + expected) / 2, rel=1e-9)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match='11x11'):
        metrics.ssim_pair(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))


def test_cc_of_an_inverted_source_cancels():
    a = (_ramp() * 255).round().astype(np.uint8)
    # Pearson(F, A) = 1 and Pearson(F, 255 - A) = -1.
    assert metrics.cc(a, a, 255 - a) == pytest.approx(0.0, abs=1e-12)


def test_cc_upper_bound_is_reached_by_the_standardised_sum_and_never_beaten():
    rng = np.random.default_rng(3)
    a = _ramp(32, 32)
    b = np.clip(1.0 - a + 0.3 * rng.random((32, 32)), 0, 1)  # anti-correlated, like IR vs sky
    rho = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    bound = metrics.cc_upper_bound(a, b)
    assert rho < 0 and bound == pytest.approx(math.sqrt((1 + rho) / 2), abs=1e-9)
    best = (a - a.mean()) / a.std() + (b - b.mean()) / b.std()
    best = (best - best.min()) / (best.max() - best.min())  # any affine rescaling keeps CC
    assert metrics.cc(best, a, b) == pytest.approx(bound, abs=1e-9)
    for _ in range(20):
        weights = rng.normal(size=3)
        other = np.clip(weights[0] * a + weights[1] * b + weights[2] * rng.random((32, 32)), 0, 1)
        assert metrics.cc(other, a, b) <= bound + 1e-9
    assert metrics.cc_upper_bound(a, a) == pytest.approx(1.0, abs=1e-9)
    # A flat source counts 0 in cc: the other source alone reaches half.
    flat = np.full_like(a, 0.5)
    assert metrics.cc_upper_bound(a, flat) == 0.5 == metrics.cc(a, a, flat)
    assert metrics.cc_upper_bound(flat, a) == 0.5
    assert metrics.cc_upper_bound(flat, flat) == 0.0


def _qabf_q(strength, orientation):
    c = metrics.QABF_CONSTANTS
    q_g = c['Tg'] / (1 + math.exp(c['kg'] * (strength - c['Dg'])))
    q_a = c['Ta'] / (1 + math.exp(c['ka'] * (orientation - c['Da'])))
    return q_g * q_a


def test_qabf_of_identical_images_is_the_sigmoid_ceiling():
    a = _ramp()
    # G = 1 and A = 1 everywhere: Q = Qg(1) Qa(1) = 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4).
    expected = _qabf_q(1.0, 1.0)
    assert expected == pytest.approx(0.97479, abs=1e-5)
    assert metrics.qabf(a, a, a) == pytest.approx(expected, rel=1e-12)
    # A source without gradients has no weight: F = A, B flat gives the same.
    assert metrics.qabf(a, a, np.zeros_like(a)) == pytest.approx(expected, rel=1e-12)


def test_qabf_of_half_contrast_sits_at_the_strength_midpoint():
    a = _ramp()
    # F = A / 2: gradient ratio G = 0.5 (= Dg), same orientation: Q = Qg(0.5) Qa(1).
    expected = _qabf_q(0.5, 1.0)
    assert expected == pytest.approx(0.9994 / 2 * 0.9879 / (1 + math.exp(-4.4)), rel=1e-12)
    assert metrics.qabf(a / 2, a, a) == pytest.approx(expected, rel=1e-9)


def test_qabf_is_symmetric_in_its_sources():
    a = _ramp()
    b = _ramp().T[::-1].copy()
    f = (a + b) / 2
    assert metrics.qabf(f, a, b) == pytest.approx(metrics.qabf(f, b, a), rel=1e-12)
    assert 0.0 < metrics.qabf(f, a, b) < _qabf_q(1.0, 1.0)


def _csf(r):
    return 2.6 * (0.0192 + 0.144 * r) * math.exp(-(0.144 * r) ** 1.1)


@pytest.mark.parametrize('cycles, axis', [(2, 1), (4, 0)])
def test_qcv_of_a_cosine_difference_is_the_filtered_power(cycles, axis):
    # F = 0.5 + 0.5 cos(2 pi k t / 32) spans exactly [0, 1] (min-max normalisation keeps it);
    # A = B = 1 - F, so A - F = -cos(...) * 255 on the 0-255 scale, a single frequency whose
    # CSF gain is csf(k / 4). Each 16x16 block holds whole periods: mean cos^2 = 1/2, so
    # D = (255 csf)^2 / 2 in every block, and Q = D whatever the saliency weights.
    t = np.arange(32, dtype=np.float64)
    wave = 0.5 + 0.5 * np.cos(2 * math.pi * cycles * t / 32)
    fused = np.tile(wave, (32, 1)) if axis == 1 else np.tile(wave[:, None], (1, 32))
    expected = (255 * _csf(cycles / 4)) ** 2 / 2
    assert metrics.qcv(fused, 1 - fused, 1 - fused) == pytest.approx(expected, rel=1e-9)
    assert metrics.qcv(fused, fused, fused) == pytest.approx(0.0, abs=1e-9)


def test_entropy_of_two_and_four_equal_levels():
    assert metrics.entropy(_half_half()) == pytest.approx(1.0, abs=1e-12)
    img = np.array([[0, 85, 170, 255]] * 4, np.uint8)
    assert metrics.entropy(img) == pytest.approx(2.0, abs=1e-12)
    assert metrics.entropy(np.full((4, 4), 7, np.uint8)) == 0.0


def test_mutual_information_in_bits():
    f = _half_half()
    # MI(F, F) = H(F) = 1 bit, twice.
    assert metrics.mutual_information(f, f, f) == pytest.approx(2.0, abs=1e-12)
    # Left/right halves vs top/bottom halves are independent: MI = 0.
    g = f.T.copy()
    assert metrics.mutual_information(f, g, g) == pytest.approx(0.0, abs=1e-12)


def test_sd_sf_ag_of_a_column_pattern():
    img = np.array([[0, 255, 0, 255]] * 4, np.uint8)
    assert metrics.sd(_half_half()) == pytest.approx(127.5)
    # Every horizontal difference is +-255, every vertical one 0.
    assert metrics.sf(img) == pytest.approx(255.0)
    assert metrics.ag(img) == pytest.approx(255.0 / math.sqrt(2.0))


def test_vif_identity_and_flat_fused():
    a = np.random.default_rng(0).random((48, 48))
    assert metrics.vifp(a, a) == pytest.approx(1.0, abs=1e-9)
    # Fused = A = B: VIFp(A, F) + VIFp(B, F) = 2 (we report the sum).
    assert metrics.vif(a, a, a) == pytest.approx(2.0, abs=1e-9)
    # A flat fused image carries no information about the sources.
    assert metrics.vif(np.full_like(a, 0.5), a, a) == pytest.approx(0.0, abs=1e-12)


def test_vif_refuses_images_smaller_than_its_finest_window():
    """A 16x16 crop of a real image had VIFp 0 with itself (every scale skipped), not 1."""
    _, vi = data.load_pair(ROADSCENE, 'FLIR_00006')
    grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)[100:117, 200:217]
    assert metrics.vifp(grey, grey) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match=r'17x17.* got \(16, 16\)'):
        metrics.vifp(grey[:16, :16], grey[:16, :16])
    with pytest.raises(ValueError, match='17x17'):
        metrics.fusion_metrics(grey[:16, :], grey[:16, :], grey[:16, :])


def test_scd_of_a_sum():
    rng = np.random.default_rng(1)
    a = rng.random((8, 8)) * 0.5
    b = rng.random((8, 8)) * 0.5
    # F - B = A and F - A = B: both correlations are 1.
    assert metrics.scd(a + b, a, b) == pytest.approx(2.0, abs=1e-12)


def test_fusion_metrics_keys_and_ranges():
    a = _ramp(32, 32)
    b = _ramp(32, 32).T.copy()
    result = metrics.fusion_metrics((a + b) / 2, a, b)
    assert set(result) == set(metrics.FUSION_METRICS)
    assert all(math.isfinite(v) for v in result.values())
    assert -1 <= result['CC'] <= 1 and 0 <= result['Qabf'] <= 1 and result['Qcv'] >= 0


def test_fusion_inputs_are_validated():
    with pytest.raises(ValueError, match='same shape'):
        metrics.cc(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        metrics.entropy(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match='2-D'):
        metrics.sd(np.zeros((2, 4, 4)))


# --- registration -------------------------------------------------------------------------

def test_epe_names_a_channel_axis_the_flows_do_not_have():
    """channel_axis=3 on (H, W, 2) flows raised IndexError 'tuple index out of range'."""
    disp = data.load_disp(ROADSCENE, 'FLIR_00122')
    assert metrics.epe(disp, disp, channel_axis=2) == 0.0
    with pytest.raises(ValueError, match=r'flow axis 3 must hold \(dx, dy\), got shape'):
        metrics.epe(disp, disp, channel_axis=3)


def test_mse_ncc_epe_by_hand():
    black = np.zeros((4, 4), np.uint8)
    white = np.full((4, 4), 255, np.uint8)
    assert metrics.mse(black, white) == pytest.approx(1.0)
    assert metrics.mse(white, np.full((4, 4), 0.5)) == pytest.approx(0.25)
    x = _ramp(8, 8)
    assert metrics.ncc(0.5 * x + 0.1, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ncc(1 - x, x) == pytest.approx(-1.0, abs=1e-12)
    gt = np.zeros((4, 4, 2))
    gt[..., 0], gt[..., 1] = 3.0, 4.0
    assert metrics.epe(np.zeros((4, 4, 2)), gt) == pytest.approx(5.0)
    assert metrics.epe(np.zeros((2, 4, 4)), gt.transpose(2, 0, 1), channel_axis=0) == 5.0
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    gt[0, 0] = (0.0, 1.0)
    assert metrics.epe(np.zeros((4, 4, 2)), gt, mask=mask) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='same shape'):
        metrics.epe(np.zeros((4, 4, 2)), np.zeros((4, 5, 2)))


def _texture(height=64, width=80, seed=0):
    """Blurred random texture, float64 in [0, 1], with edges in every direction."""
    noise = np.random.default_rng(seed).random((height, width))
    img = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return (img - img.min()) / (img.max() - img.min())


def _shifted(img, dx, dy):
    """Return ``out(p) = img(p - (dx, dy))`` for integer dx, dy >= 0 and where it is defined."""
    out = np.zeros_like(img)
    valid = np.zeros(img.shape, bool)
    height, width = img.shape
    out[dy:, dx:] = img[:height - dy, :width - dx]
    valid[dy:, dx:] = True
    return out, valid


def test_edge_alignment_of_steps_by_hand():
    # Rows [0 0 1 1 1 1] and [0 0 0 1 1 1]: with reflected borders the Sobel magnitude rows
    # are [0 4 4 0 0 0] and [0 0 4 4 0 0]; their Pearson correlation is (48/9) / (192/9).
    step = np.zeros((6, 6))
    step[:, 2:] = 1.0
    later = np.zeros((6, 6))
    later[:, 3:] = 1.0
    assert metrics.edge_alignment(step, later, sigma_px=0) == pytest.approx(0.25, abs=1e-12)
    # The same edge with the opposite sign (another modality) agrees fully.
    assert metrics.edge_alignment(step, 1.0 - step, sigma_px=0) == pytest.approx(1.0)


def test_edge_alignment_is_one_for_identical_images_of_any_dtype_and_contrast():
    img = _texture()
    as_uint8 = np.round(img * 255).astype(np.uint8)
    as_uint16 = np.round(img * 65535).astype(np.uint16)
    assert metrics.edge_alignment(img, img) == pytest.approx(1.0, abs=1e-12)
    assert metrics.edge_alignment(as_uint8, 255 - as_uint8) == pytest.approx(1.0, abs=1e-12)
    assert metrics.edge_alignment(as_uint16, img) == pytest.approx(1.0, abs=1e-6)
    assert metrics.edge_alignment(as_uint8[:, :, None], img) == pytest.approx(1.0, abs=1e-3)


def test_edge_alignment_falls_with_the_offset():
    img = _texture()
    scores = []
    for shift in (1, 3, 6):
        moved, valid = _shifted(img, shift, shift // 2)
        scores.append(metrics.edge_alignment(moved, img, valid))
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_edge_alignment_counts_only_the_overlap():
    img = _texture()
    registered = img.copy()
    registered[:, :20] = 0.0  # sampled outside the source: black, with a false edge at x = 20
    valid = np.ones(img.shape, bool)
    valid[:, :20] = False
    assert metrics.edge_alignment(registered, img, valid) == pytest.approx(1.0, abs=1e-12)
    assert metrics.edge_alignment(registered, img) < 0.9


def test_edge_alignment_of_flat_images_and_empty_overlaps_is_zero():
    flat = np.full((32, 32), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert metrics.edge_alignment(flat, _texture(32, 32)) == 0.0
        assert metrics.edge_alignment(flat, flat) == 0.0
        nothing = np.zeros((32, 32), bool)
        assert metrics.edge_alignment(_texture(32, 32), _texture(32, 32), nothing) == 0.0


def test_edge_alignment_inputs_are_validated():
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match='same shape'):
        metrics.edge_alignment(img, np.zeros((8, 9)))
    with pytest.raises(ValueError, match='2-D'):
        metrics.edge_alignment(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r'valid has shape \(8, 7\)'):
        metrics.edge_alignment(img, img, np.ones((8, 7), bool))
    with pytest.raises(ValueError, match='sigma_px'):
        metrics.edge_alignment(img, img, sigma_px=-1.0)
    with pytest.raises(ValueError, match='dtype'):
        metrics.edge_alignment(np.zeros((8, 8), np.int32), img)


# Two of the 18 RoadScene test pairs with their ground-truth deformation, in the repository.
ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'


def test_edge_alignment_ranks_real_pairs_like_the_ground_truth():
    """On RoadScene test pairs: aligned IR > SuperFusion-misaligned IR, 2 px > 8 px shift.

    Measured with the default sigma 1.5 px on all 18 test pairs of the shared set: aligned
    0.25-0.68 vs misaligned 0.07-0.47 (the smallest gap 0.10); the 2 px shift beats the 8 px
    one on 18/18, the smallest gap 0.02. Here: the two pairs shipped in test/data.
    """
    stems = data.read_split(ROADSCENE, 'test')
    assert len(stems) == 2
    for stem in stems:
        ir, vi = data.load_pair(ROADSCENE, stem)
        vi_y = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY) if vi.ndim == 3 else vi
        misaligned = data.load_misaligned_ir(ROADSCENE, stem)
        disp = data.load_disp(ROADSCENE, stem).astype(np.float64)
        height, width = ir.shape
        ys, xs = np.mgrid[0:height, 0:width]
        x, y = xs + disp[..., 0], ys + disp[..., 1]
        sampled_inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        aligned_score = metrics.edge_alignment(ir, vi_y)
        misaligned_score = metrics.edge_alignment(misaligned, vi_y, sampled_inside)
        assert aligned_score > misaligned_score, stem
        small_shift, small_valid = _shifted(ir, 2, 1)
        large_shift, large_valid = _shifted(ir, 8, 4)
        assert (metrics.edge_alignment(small_shift, vi_y, small_valid)
                > metrics.edge_alignment(large_shift, vi_y, large_valid)), stem


def test_landmark_error_by_hand():
    flow = np.zeros((10, 20, 2))
    vi_points = np.array([[2.0, 3.0], [10.0, 5.0]])
    ir_points = vi_points + np.array([[3.0, 4.0], [0.0, 1.0]])
    # Zero flow: the unregistered distances 5 and 1.
    assert metrics.landmark_error(flow, ir_points, vi_points) == pytest.approx(3.0)
    # A constant flow (3, 4): the first point lands exactly, the second (3, 3) px off.
    flow[..., 0], flow[..., 1] = 3.0, 4.0
    assert metrics.landmark_error(flow, ir_points, vi_points) == pytest.approx(
        (0.0 + 3.0 * math.sqrt(2.0)) / 2)
    # The flow is sampled bilinearly at the visible landmark: dx = x / 2 gives 1.25 at x = 2.5.
    ramp = np.zeros((10, 20, 2))
    ramp[..., 0] = np.arange(20)[None, :] / 2.0
    point = np.array([[2.5, 4.0]])
    assert metrics.landmark_error(ramp, point + [1.25, 0.0], point) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r'\(H, W, 2\)'):
        metrics.landmark_error(np.zeros((2, 10, 20)), ir_points, vi_points)
    with pytest.raises(ValueError, match='N >= 1'):
        metrics.landmark_error(flow, ir_points[:1], vi_points)
    with pytest.raises(ValueError, match='NaN'):
        metrics.landmark_error(flow, ir_points * np.nan, vi_points)


# --- detection ----------------------------------------------------------------------------

GT = np.array([[10, 10, 30, 30, 0], [50, 50, 70, 90, 1]], np.float64)


def test_perfect_detections_give_ap_one():
    preds = np.array([[10, 10, 30, 30, 0.9, 0], [50, 50, 70, 90, 0.8, 1]])
    result = metrics.detection_metrics([preds], [GT], class_names=['person', 'car'])
    assert result['map50'] == pytest.approx(1.0)
    assert result['map50_95'] == pytest.approx(1.0)
    assert result['per_class']['car']['ap50'] == pytest.approx(1.0)
    assert result['per_class']['person']['num_gt'] == 1


def test_false_positive_ranked_first_halves_the_ap():
    # Ranked: FP (recall 0, precision 0), TP (recall 1, precision 1/2). The precision envelope
    # is 1/2 at every recall in [0, 1], so all 101 points read 0.5.
    gt = [np.array([[10, 10, 30, 30, 0]], np.float64)]
    preds = [np.array([[60, 60, 80, 80, 0.9, 0], [10, 10, 30, 30, 0.5, 0]])]
    assert metrics.average_precision(preds, gt, class_id=0) == pytest.approx(0.5)


def test_missing_recall_counts_zero_precision():
    # Two ground-truth boxes, one found first then an FP: precision 1 up to recall 0.5
    # (51 of the 101 points: 0.00 ... 0.50) and 0 beyond: AP = 51 / 101.
    gt = [np.array([[10, 10, 30, 30, 0], [40, 40, 60, 60, 0]], np.float64)]
    preds = [np.array([[10, 10, 30, 30, 0.9, 0], [100, 100, 120, 120, 0.5, 0]])]
    assert metrics.average_precision(preds, gt, class_id=0) == pytest.approx(51 / 101)


def test_iou_thresholds_of_map50_95():
    # IoU 0.72 matches at thresholds 0.50 ... 0.70 (5 of 10): map50 = 1, map50_95 = 0.5.
    gt = [np.array([[0, 0, 10, 10, 0]], np.float64)]
    preds = [np.array([[0, 0, 10, 7.2, 0.9, 0]])]
    assert metrics.box_iou(preds[0][:, :4], gt[0][:, :4])[0, 0] == pytest.approx(0.72)
    result = metrics.detection_metrics(preds, gt)
    assert result['map50'] == pytest.approx(1.0)
    assert result['map50_95'] == pytest.approx(0.5)


def test_classes_without_ground_truth_do_not_count():
    # A detection of class 3 (no ground truth anywhere) and a missed class-1 box.
    preds = [np.array([[10, 10, 30, 30, 0.9, 0], [0, 0, 5, 5, 0.99, 3]]), np.zeros((0, 6))]
    targets = [GT, np.zeros((0, 5))]
    assert metrics.map_at(preds, targets, 0.5) == pytest.approx(0.5)
    result = metrics.detection_metrics(preds, targets)
    assert set(result['per_class']) == {'0', '1'}
    assert result['per_class']['1']['ap50'] == 0.0
    assert math.isnan(metrics.average_precision(preds, targets, class_id=3))


def test_a_duplicate_detection_is_a_false_positive():
    gt = [np.array([[10, 10, 30, 30, 0]], np.float64)]
    preds = [np.array([[10, 10, 30, 30, 0.9, 0], [11, 11, 30, 30, 0.8, 0]])]
    # TP then FP: precision 1 at recall 1 for every point.
    assert metrics.average_precision(preds, gt, class_id=0) == pytest.approx(1.0)
    preds = [np.array([[11, 11, 30, 30, 0.95, 0], [10, 10, 30, 30, 0.9, 0]])]
    # The slightly worse box (IoU 0.9025) ranked first takes the match; the exact one is then
    # an FP. At IoU 0.95 the first is an FP and the exact one a TP: AP = 0.5.
    assert metrics.average_precision(preds, gt, class_id=0) == pytest.approx(1.0)
    assert metrics.average_precision(
        preds, gt, class_id=0, iou_threshold=0.95) == pytest.approx(0.5)


def test_detection_inputs_are_validated():
    with pytest.raises(ValueError, match='one prediction array per target'):
        metrics.detection_metrics([np.zeros((0, 6))], [])


def test_boxes_with_other_columns_are_refused_not_reshaped():
    """Rows of another width were reshaped into other boxes, silently (real RoadScene labels).

    The six boxes of FLIR_00018 as detection rows (x1, y1, x2, y2, score, class) given to
    ``box_iou`` became nine 4-column boxes; the same rows with a seventh column (a track id)
    became seven 6-column detections with wrong classes and scores.
    """
    labels = data.load_labels(ROADSCENE, 'FLIR_00018')
    targets = data.yolo_to_xyxy(labels, 478, 322)
    assert targets.shape == (6, 5)
    rows = np.column_stack((targets[:, :4], np.full(6, 0.9), targets[:, 4]))
    assert metrics.box_iou(rows[:, :4], targets[:, :4]).shape == (6, 6)
    assert metrics.box_iou(rows[0, :4], targets[:, :4]).shape == (1, 6)  # one (4,) box
    with pytest.raises(ValueError, match=r'boxes_a must have shape \(N, 4\), got \(6, 6\)'):
        metrics.box_iou(rows, targets[:, :4])
    assert metrics.detection_metrics([rows], [targets])['map50'] == pytest.approx(1.0)
    tracked = np.column_stack((rows, np.arange(6)))
    with pytest.raises(ValueError, match=r'image 0: predictions .* \(N, 6\), got \(6, 7\)'):
        metrics.detection_metrics([tracked], [targets])
    with pytest.raises(ValueError, match=r'image 0: targets .* \(N, 5\), got \(6, 6\)'):
        metrics.map_at([rows], [rows])


def test_target_contrast_on_hand_made_images():
    image = np.full((40, 60), 50, np.uint8)
    image[10:20, 20:30] = 150  # a warm target
    contrast = metrics.target_contrast(image, [[20, 10, 30, 20]], ring_px=5)
    assert contrast == pytest.approx([100.0])
    # A box on flat background has no contrast; a dark target a negative one.
    image[30:36, 5:11] = 10
    both = metrics.target_contrast(image, [[40, 25, 50, 35], [5, 30, 11, 36]], ring_px=3)
    assert both[0] == pytest.approx(0.0)
    assert both[1] == pytest.approx(-40.0)
    # Outside the image: NaN, no crash; float input in [0, 1] is on the 0-255 scale.
    assert np.isnan(metrics.target_contrast(image, [[70, 50, 80, 60]]))[0]
    assert metrics.target_contrast(image / 255.0, [[20, 10, 30, 20]], 5)[0] == pytest.approx(100)
    with pytest.raises(ValueError, match='N, 4'):
        metrics.target_contrast(image, [[1, 2, 3]])


def test_target_contrast_names_a_non_finite_box():
    """A NaN box raised 'cannot convert float NaN to integer' (real RoadScene IR and labels)."""
    ir, _ = data.load_pair(ROADSCENE, 'FLIR_00006')
    boxes = data.yolo_to_xyxy(data.load_labels(ROADSCENE, 'FLIR_00006'), ir.shape[1],
                              ir.shape[0])[:, :4]
    assert np.isfinite(metrics.target_contrast(ir, boxes)).all()
    boxes[1, 2] = np.nan
    with pytest.raises(ValueError, match=r'non-finite coordinates: box 1 is \[.*nan'):
        metrics.target_contrast(ir, boxes)
    with pytest.raises(ValueError, match='box 1'):
        metrics.target_contrast_ratio(ir, ir, boxes)


def test_target_contrast_ratio_counts_only_targets_that_stand_out_in_the_ir():
    ir = np.full((40, 60), 40, np.uint8)
    ir[10:20, 20:30] = 120                    # stands out by 80
    fused = np.full((40, 60), 60, np.uint8)
    fused[10:20, 20:30] = 100                 # keeps 40 of it
    boxes = [[20, 10, 30, 20], [40, 25, 50, 35]]  # the second is flat in the IR: not counted
    result = metrics.target_contrast_ratio(fused, ir, boxes, ring_px=5)
    assert result['boxes'] == 1
    assert result['ratio'] == pytest.approx(0.5)
    assert result['ir_contrast'] == pytest.approx(80.0)
    lost = metrics.target_contrast_ratio(np.full_like(fused, 60), ir, boxes, ring_px=5)
    assert lost['ratio'] == pytest.approx(0.0)
    none = metrics.target_contrast_ratio(fused, np.full_like(ir, 40), boxes)
    assert none['boxes'] == 0 and np.isnan(none['ratio'])
