"""The metrics of ``core.metrics`` against independent computations on real pairs.

Each reference here is written from the metric's definition (the MATLAB toolboxes' code, the
COCO evaluation's ``accumulate``) with other tools than the module uses: kornia's SSIM and
end-point error, torch convolutions, numpy histograms and loops. A module change that moves a
figure away from its definition fails here, not only on hand-worked cases.
"""

import math
from pathlib import Path

import cv2
import kornia
import numpy as np
import pytest
from tarfuse_ros.core import metrics
import torch
import torch.nn.functional as functional

ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'


@pytest.fixture(scope='module')
def pair():
    """Return a real aligned RoadScene IR, visible luma and a fused image of them, uint8."""
    ir = cv2.imread(str(ROADSCENE / 'ir' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(ROADSCENE / 'vi' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    assert ir is not None and vi is not None and ir.shape == vi.shape
    fused = np.maximum(ir, cv2.GaussianBlur(vi, (5, 5), 1.0))
    return ir, vi, fused


def _tensor(img):
    return torch.from_numpy(np.asarray(img, np.float64))[None, None]


def _pearson(x, y):
    return float(np.corrcoef(np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64))[0, 1])


def test_cc_ncc_mse_and_epe_match_numpy_and_kornia(pair):
    """CC, NCC, MSE and EPE as numpy's correlation and kornia's end-point error give them."""
    ir, vi, fused = pair
    assert metrics.cc(fused, ir, vi) == pytest.approx(
        (_pearson(fused, ir) + _pearson(fused, vi)) / 2, abs=1e-12)
    assert metrics.ncc(fused, ir) == pytest.approx(_pearson(fused, ir), abs=1e-12)
    assert metrics.mse(fused, ir) == pytest.approx(
        np.mean((fused / 255.0 - ir / 255.0) ** 2), abs=1e-15)
    rng = np.random.default_rng(0)
    flow, truth = rng.normal(0, 3, (2, 40, 60, 2))
    assert metrics.epe(flow, truth) == pytest.approx(
        float(kornia.metrics.aepe(torch.from_numpy(flow), torch.from_numpy(truth))), abs=1e-12)
    assert metrics.epe(np.moveaxis(flow, -1, 0), np.moveaxis(truth, -1, 0),
                       channel_axis=0) == pytest.approx(metrics.epe(flow, truth), abs=1e-12)


def test_ssim_matches_kornia_with_valid_windows(pair):
    """SSIM (Gaussian 11x11, sigma 1.5, 'valid' positions, L 255) is kornia's map mean."""
    ir, vi, fused = pair

    def reference(x, y):
        return float(kornia.metrics.ssim(_tensor(x), _tensor(y), 11, max_val=255.0, eps=0.0,
                                         padding='valid').mean())

    assert metrics.ssim_pair(fused, ir) == pytest.approx(reference(fused, ir), abs=1e-9)
    assert metrics.ssim(fused, ir, vi) == pytest.approx(
        (reference(fused, ir) + reference(fused, vi)) / 2, abs=1e-9)


def _conv2_same(img, kernel):
    """MATLAB ``conv2(img, kernel, 'same')`` for a 3x3 kernel: zeros outside, kernel flipped."""
    flipped = kernel[::-1, ::-1]
    padded = np.pad(img, 1)
    out = np.zeros(img.shape)
    for dy in range(3):
        for dx in range(3):
            out += flipped[dy, dx] * padded[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    return out


def _qabf_vifb(fused, ir, vi):
    """Q^AB/F transcribed from the VIFB toolbox's metricsQabf.m (G = 1 where both are 0)."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)

    def strength_and_angle(img):
        sx, sy = _conv2_same(img, h3), _conv2_same(img, h1)
        angle = np.full(img.shape, math.pi / 2)
        nonzero = sx != 0
        angle[nonzero] = np.arctan(sy[nonzero] / sx[nonzero])
        return np.sqrt(sx * sx + sy * sy), angle

    g_f, a_f = strength_and_angle(fused.astype(np.float64))
    total, weight = 0.0, 0.0
    for source in (ir, vi):
        g, a = strength_and_angle(source.astype(np.float64))
        ratio = np.ones(g.shape)
        above, below = g > g_f, g < g_f
        ratio[above] = g_f[above] / g[above]
        ratio[below] = g[below] / g_f[below]
        orientation = np.abs(np.abs(a - a_f) - math.pi / 2) / (math.pi / 2)
        q = (0.9994 / (1 + np.exp(-15 * (ratio - 0.5)))) * (
            0.9879 / (1 + np.exp(-22 * (orientation - 0.8))))
        total += float((q * g).sum())
        weight += float(g.sum())
    return total / weight


def test_qabf_matches_the_vifb_toolbox(pair):
    """Q^AB/F as the VIFB MATLAB code computes it (conv2, atan, its sigmoid constants)."""
    ir, vi, fused = pair
    assert metrics.qabf(fused, ir, vi) == pytest.approx(_qabf_vifb(fused, ir, vi), abs=1e-12)
    assert metrics.qabf(vi, ir, vi) == pytest.approx(_qabf_vifb(vi, ir, vi), abs=1e-12)


def _vifp_reference(ref, dist, sigma_nsq=2.0):
    """Return VIFp as vifp_mscale.m computes it (torch 'valid' convolutions, fspecial)."""
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    eps = 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        x = np.arange(size) - (size - 1) / 2
        window = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * (size / 5.0) ** 2))
        window = torch.from_numpy(window / window.sum())[None, None]

        def valid(img, window=window):
            return functional.conv2d(_tensor(img), window)[0, 0].numpy()

        if scale > 1:
            ref, dist = valid(ref)[::2, ::2], valid(dist)[::2, ::2]
        mu1, mu2 = valid(ref), valid(dist)
        s1 = np.maximum(valid(ref * ref) - mu1 * mu1, 0)
        s2 = np.maximum(valid(dist * dist) - mu2 * mu2, 0)
        s12 = valid(ref * dist) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += float(np.log10(1 + g * g * s1 / (sv + sigma_nsq)).sum())
        den += float(np.log10(1 + s1 / sigma_nsq).sum())
    return num / den


def test_vif_matches_vifp_mscale(pair):
    """VIF is VIFp(IR, F) + VIFp(VI, F), each as the authors' vifp_mscale computes it."""
    ir, vi, fused = pair
    assert metrics.vif(fused, ir, vi) == pytest.approx(
        _vifp_reference(ir, fused) + _vifp_reference(vi, fused), abs=1e-9)


def test_entropy_mi_sd_sf_scd_match_numpy(pair):
    """EN, MI (bits, 256 bins), SD, SF and SCD from numpy histograms and correlations."""
    ir, vi, fused = pair

    def entropy(img):
        p = np.bincount(img.ravel(), minlength=256) / img.size
        return float(-(p[p > 0] * np.log2(p[p > 0])).sum())

    def mutual(x, y):
        joint = np.histogram2d(x.ravel(), y.ravel(), bins=256, range=[[0, 256], [0, 256]])[0]
        p = joint / joint.sum()
        outer = p.sum(axis=1)[:, None] * p.sum(axis=0)[None]
        nonzero = p > 0
        return float((p[nonzero] * np.log2(p[nonzero] / outer[nonzero])).sum())

    f = fused.astype(np.float64)
    assert metrics.entropy(fused) == pytest.approx(entropy(fused), abs=1e-12)
    assert metrics.mutual_information(fused, ir, vi) == pytest.approx(
        mutual(fused, ir) + mutual(fused, vi), abs=1e-9)
    assert metrics.sd(fused) == pytest.approx(float(np.std(f)), abs=1e-9)
    assert metrics.sf(fused) == pytest.approx(math.sqrt(
        np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)), abs=1e-9)
    assert metrics.scd(fused, ir, vi) == pytest.approx(
        _pearson(f - vi, ir) + _pearson(f - ir, vi), abs=1e-9)


def _edge_alignment_reference(x, y, valid):
    """Sobel (torch, reflected borders) magnitudes, kornia's Gaussian blur, numpy Pearson."""
    overlap = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8),
                        borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)
    sobel = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    magnitudes = []
    for img in (x, y):
        padded = functional.pad(_tensor(img / 255.0), (1, 1, 1, 1), mode='reflect')
        gx = functional.conv2d(padded, sobel[None, None])[0, 0].numpy()
        gy = functional.conv2d(padded, sobel.T[None, None])[0, 0].numpy()
        magnitude = np.where(overlap, np.hypot(gx, gy), 0.0)
        # OpenCV's kernel for sigma 1.5 on float images: 13 taps.
        blurred = kornia.filters.gaussian_blur2d(_tensor(magnitude), (13, 13), (1.5, 1.5),
                                                 border_type='reflect')[0, 0].numpy()
        magnitudes.append(blurred[overlap])
    return _pearson(*magnitudes)


def test_edge_alignment_matches_torch_and_kornia(pair):
    """Edge alignment over the whole frame and over a cut overlap, from its definition."""
    ir, vi, _ = pair
    everything = np.ones(ir.shape, bool)
    assert metrics.edge_alignment(ir, vi) == pytest.approx(
        _edge_alignment_reference(ir, vi, everything), abs=1e-9)
    valid = everything.copy()
    valid[:, :40] = False
    valid[300:] = False
    assert metrics.edge_alignment(ir, vi, valid) == pytest.approx(
        _edge_alignment_reference(ir, vi, valid), abs=1e-9)


def test_target_contrast_ratio_from_masks(pair):
    """Each box's inside mean minus its ring's mean, ratio of the fused to the IR means."""
    ir, _, fused = pair
    boxes = np.array([[100.0, 120.0, 140.0, 200.0], [300.4, 50.2, 330.9, 90.7],
                      [0.0, 0.0, 20.0, 12.0], [480.0, 300.0, 520.0, 360.0]])

    def contrast(img, box):
        x1, y1 = math.floor(box[0]), math.floor(box[1])
        x2 = min(math.ceil(box[2]), img.shape[1])
        y2 = min(math.ceil(box[3]), img.shape[0])
        ring = max(4, int(0.5 * min(x2 - x1, y2 - y1)))
        inner = np.zeros(img.shape, bool)
        inner[y1:y2, x1:x2] = True
        outer = np.zeros(img.shape, bool)
        outer[max(y1 - ring, 0):y2 + ring, max(x1 - ring, 0):x2 + ring] = True
        return img[inner].mean() - img[outer & ~inner].mean()

    ir_c = np.array([contrast(ir.astype(np.float64), b) for b in boxes])
    fused_c = np.array([contrast(fused.astype(np.float64), b) for b in boxes])
    assert metrics.target_contrast(ir, boxes) == pytest.approx(ir_c, abs=1e-9)
    keep = ir_c > 0
    assert 0 < keep.sum() < len(boxes)  # the ratio counts only the targets that stand out
    result = metrics.target_contrast_ratio(fused, ir, boxes)
    assert result['boxes'] == int(keep.sum())
    assert result['ratio'] == pytest.approx(fused_c[keep].mean() / ir_c[keep].mean(), abs=1e-9)


def _coco_map(predictions, targets, threshold, max_detections=100):
    """Mean AP over the classes with ground truth as COCOeval's evaluateImg + accumulate."""
    classes = sorted({int(c) for t in targets for c in t[:, 4]})
    aps = []
    for class_id in classes:
        found, num_gt = [], 0
        for pred, truth in zip(predictions, targets):
            truth = truth[truth[:, 4] == class_id]
            num_gt += len(truth)
            pred = pred[pred[:, 5] == class_id]
            pred = pred[np.argsort(-pred[:, 4], kind='mergesort')][:max_detections]
            taken = np.zeros(len(truth), bool)
            for det in pred:
                best, match = min(threshold, 1 - 1e-10), -1
                for j, box in enumerate(truth):
                    iw = min(det[2], box[2]) - max(det[0], box[0])
                    ih = min(det[3], box[3]) - max(det[1], box[1])
                    inter = max(iw, 0) * max(ih, 0)
                    union = ((det[2] - det[0]) * (det[3] - det[1])
                             + (box[2] - box[0]) * (box[3] - box[1]) - inter)
                    iou = inter / union
                    if taken[j] or iou < best:
                        continue
                    best, match = iou, j
                if match >= 0:
                    taken[match] = True
                found.append((det[4], match >= 0))
        scores = np.array([score for score, _ in found])
        tp = np.array([hit for _, hit in found], np.float64)[np.argsort(-scores, kind='mergesort')]
        tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1 - tp)
        recall = tp_sum / num_gt
        precision = list(tp_sum / (tp_sum + fp_sum + np.spacing(1)))
        for i in range(len(precision) - 1, 0, -1):
            precision[i - 1] = max(precision[i - 1], precision[i])
        sampled = np.zeros(101)
        for k, index in enumerate(np.searchsorted(recall, np.linspace(0, 1, 101), side='left')):
            if index < len(precision):
                sampled[k] = precision[index]
        aps.append(sampled.mean())
    return float(np.mean(aps))


def _random_detections(rng, images=4):
    """Random boxes of 3 classes and noisy, partly missing, partly extra detections of them."""
    predictions, targets = [], []
    for _ in range(images):
        count = int(rng.integers(0, 6))
        corner = rng.uniform(0, 200, (count, 2))
        truth = np.c_[corner, corner + rng.uniform(8, 60, (count, 2)), rng.integers(0, 3, count)]
        found = truth[rng.random(count) < 0.8]
        extra = rng.uniform(0, 200, (int(rng.integers(0, 4)), 2))
        extra = np.c_[extra, extra + 20, rng.integers(0, 3, len(extra))]
        boxes = np.r_[found, extra].reshape(-1, 5)
        boxes[:, :4] += rng.normal(0, 3, (len(boxes), 4))
        predictions.append(np.c_[boxes[:, :4], rng.random(len(boxes)), boxes[:, 4]])
        targets.append(truth.reshape(-1, 5))
    return predictions, targets


@pytest.mark.parametrize('seed', range(6))
def test_map_matches_the_coco_evaluation(seed):
    """mAP@0.5 and mAP@0.5:0.95 as COCOeval computes them, on random sets of 4 images."""
    predictions, targets = _random_detections(np.random.default_rng(seed))
    result = metrics.detection_metrics(predictions, targets)
    assert result['map50'] == pytest.approx(_coco_map(predictions, targets, 0.5), abs=1e-9)
    assert result['map50_95'] == pytest.approx(np.mean(
        [_coco_map(predictions, targets, t) for t in metrics.COCO_IOU_THRESHOLDS]), abs=1e-9)
    assert metrics.map_at(predictions, targets) == pytest.approx(result['map50'], abs=1e-12)


def test_map_edge_cases():
    """Empty labels, no detections, a class without ground truth, constant images."""
    box = np.array([[10.0, 10.0, 50.0, 50.0, 0.0]])
    hit = np.array([[10.0, 10.0, 50.0, 50.0, 0.9, 0.0]])
    none = np.zeros((0, 6))
    # No detection anywhere: AP 0 for every class with ground truth.
    assert metrics.detection_metrics([none], [box])['map50'] == 0.0
    # An image without labels: its detections are false positives of their class.
    fp_first = np.array([[60.0, 60.0, 90.0, 90.0, 0.95, 0.0]])
    result = metrics.detection_metrics([hit, fp_first], [box, np.zeros((0, 5))])
    assert result['map50'] == pytest.approx(_coco_map([hit, fp_first], [box, np.zeros((0, 5))],
                                                      0.5))
    assert result['map50'] == pytest.approx(0.5, abs=1e-12)  # precision 1/2 at recall 1
    # A class with detections and no ground truth counts nowhere.
    other = np.array([[10.0, 10.0, 50.0, 50.0, 0.99, 2.0]])
    result = metrics.detection_metrics([np.r_[hit, other]], [box])
    assert result['map50'] == 1.0 and list(result['per_class']) == ['0']
    # No labels at all: no class to average, NaN (JSON null), not 0.
    assert math.isnan(metrics.detection_metrics([hit], [np.zeros((0, 5))])['map50'])


def test_constant_images_score_as_documented():
    """Flat images: CC 0, Qabf 0, VIF 0 (no information), edge alignment 0, SSIM luminance.

    Qabf pads with zeros, as MATLAB's filter2 does: only a black source has no gradient at
    all (a flat grey one has edges at the frame's border).
    """
    flat = np.full((40, 40), 128, np.uint8)
    ramp = np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))
    assert metrics.cc(flat, ramp, ramp) == 0.0
    black = np.zeros_like(flat)
    assert metrics.qabf(ramp, black, black) == 0.0
    assert metrics.qabf(ramp, flat, flat) == pytest.approx(_qabf_vifb(ramp, flat, flat),
                                                           abs=1e-12)
    assert metrics.vifp(flat, ramp) == 0.0
    assert metrics.edge_alignment(flat, ramp) == 0.0
    assert metrics.ssim_pair(flat, flat) == pytest.approx(1.0, abs=1e-12)
    other = np.full((40, 40), 64, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim_pair(flat, other) == pytest.approx(
        (2 * 128 * 64 + c1) / (128 ** 2 + 64 ** 2 + c1), abs=1e-9)


def test_an_evaluations_figures_are_the_metrics_of_its_images(tmp_path):
    """metrics.json's per-pair figures, recomputed from the model's own outputs.

    tarfuse-eval with ``--deform none`` on a real pair: the IR given to the model is the
    aligned IR, so CC, SSIM, EN (fused luma vs aligned IR and visible luma), MSE and NCC
    (registered vs aligned IR, [0, 1]) and EPE (flow vs the zero reference, px) follow from
    one run of the engine on the same prepared pair, computed here with numpy and kornia.
    """
    from tarfuse_ros.core import data
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.paths import default_weights_path
    from tarfuse_ros.evaluation import inputs
    from tarfuse_ros.evaluation.protocol import evaluate
    tno = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'tno'
    weights = default_weights_path()
    result = evaluate(tno, weights, tmp_path / 'eval', split='all', deform='none', max_pairs=1,
                      max_side=128, figures=0, progress=False, threads=1)
    entry = result['per_pair'][0]
    pair = inputs.prepare(*data.load_pair(tno, entry['stem']), 128)
    assert list(pair.vi_y.shape) == entry['size']
    out = FusionEngine(weights, device='cpu').infer(pair.ir, pair.vi)
    fused = out.fused if out.fused.ndim == 2 else cv2.cvtColor(out.fused, cv2.COLOR_BGR2GRAY)
    ir, vi_y = pair.ir.astype(np.float64), pair.vi_y.astype(np.float64)

    def ssim(x, y):
        return float(kornia.metrics.ssim(_tensor(x), _tensor(y), 11, max_val=255.0, eps=0.0,
                                         padding='valid').mean())

    counts = np.bincount(fused.ravel(), minlength=256) / fused.size
    registered = np.asarray(out.registered_ir, np.float64)
    registered = registered / 255.0 if out.registered_ir.dtype == np.uint8 else registered
    expected = {
        ('fusion', 'CC'): (_pearson(fused, ir) + _pearson(fused, vi_y)) / 2,
        ('fusion', 'SSIM'): (ssim(fused, ir) + ssim(fused, vi_y)) / 2,
        ('fusion', 'EN'): float(-(counts[counts > 0] * np.log2(counts[counts > 0])).sum()),
        ('registration', 'MSE'): float(np.mean((registered - ir / 255.0) ** 2)),
        ('registration', 'NCC'): _pearson(registered, ir),
        ('registration', 'EPE'): float(np.linalg.norm(out.flow_px, axis=-1).mean()),
    }
    for (part, name), value in expected.items():
        assert entry[part][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (part, name)
    assert result['registration']['EPE'] == pytest.approx(entry['registration']['EPE'])
    assert result['registration']['unregistered']['EPE'] == 0.0
