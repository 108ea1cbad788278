"""Evaluate a TarFuse checkpoint: the ``tarfuse-eval`` console script.

``tarfuse-eval --data DIR [--split NAME|FILE] --weights FILE --out DIR [--deform auto|none|
synthetic|dataset] [--stored-ir auto|aligned|unregistered] [--seed N] [--device D]
[--max-pairs N] [--max-side PX]`` writes ``metrics.json``, ``report.md`` and PNG figures into
``--out``.

Protocol, per pair (everything in the VISIBLE frame):

1. The stored pair is the aligned IR ``ir`` and the visible image ``vi`` (luma ``vi_y``); an IR
   of another size is resized to the visible frame, as the engine does.
2. The IR is deformed: ``dataset`` uses ``synthetic_misaligned/ir_warp`` and its ground-truth
   field (``disp`` is the APPLIED field; the registration reference is its inverse,
   ``deform.invert_flow``); ``synthetic`` draws ``deform.random_deformation`` with the default
   :class:`~tarfuse_ros.core.deform.DeformConfig`, seeded per pair from ``--seed`` and the stem;
   ``none`` leaves the IR aligned (zero reference flow); ``auto`` (default) uses the data set's
   field where the pair has one and a seeded synthetic one otherwise.
3. The model (:class:`~tarfuse_ros.core.engine.FusionEngine`) fuses the deformed IR with ``vi``.
4. Metrics (:mod:`tarfuse_ros.core.metrics`): fusion metrics of the fused luma against the
   ALIGNED IR and ``vi_y``; registration MSE/NCC of the registered IR against the aligned IR
   (images in [0, 1]) and EPE of the predicted flow against the reference; the unregistered
   input (deformed IR, zero flow) is scored the same way. Detection: COCO-style AP of the
   detections (visible pixels) against the labels (visible frame), where the set has labels;
   label classes are matched to the checkpoint's class names by name (case-insensitive, with
   ``people``/``pedestrian`` -> ``person``); others are dropped and counted.
5. Baselines on the same inputs: ``unregistered_average``/``unregistered_max`` (naive fusion of
   the deformed IR and ``vi_y``); ``ecc_average`` (OpenCV ECC, affine, on gradient magnitudes,
   then averaging; also gives a flow for EPE); ``model_zero_flow`` (our network with the flow
   forced to zero by a forward hook on ``model.registration``: the registration ablation);
   ``visible_only`` (our network, IR input blanked) and ``ir_only`` (visible input blanked; the
   ALIGNED IR is given, since with a blank visible image there is nothing to register to: the
   generous choice for that baseline).
6. Ground-truth-free registration score for the model, the unregistered input, ECC and the
   zero-flow model: :func:`~tarfuse_ros.core.metrics.edge_alignment` of the registered IR and
   ``vi_y`` over the pixels the registered IR really covers (sampled inside the frame and inside
   the deformed IR's own content), and the fraction of pairs where the model beats the
   unregistered input on it. Where the data set has ``landmarks/<stem>.txt`` (rows ``x_ir y_ir
   x_vi y_vi``, pixels), the landmark error :func:`~tarfuse_ros.core.metrics.landmark_error`
   of each flow (the unregistered input: zero flow), with IR landmarks mapped to the visible
   frame's pixel grid the way the IR is resized.

Sets WITHOUT an aligned IR (``--stored-ir unregistered``; ``auto`` picks it for sets with
``landmarks/``, e.g. real unregistered cameras such as ``cvc14_misaligned``, which must be named
explicitly): the stored IR IS the unregistered input (deformation ``none``; ``synthetic`` and
``dataset`` are refused: there is no reference for them). Everything that needs the aligned IR
is not computed and reported as n/a (None in ``metrics.json``): EPE, MSE, NCC, EPE reduction,
and the fusion metrics that compare the fused image with the IR (CC, Qabf, Qcv, SSIM, MI, VIF,
SCD; against a misaligned IR they would reward not registering). The reference-free fusion
metrics (EN, SD, SF, AG), edge alignment and landmark errors are reported.

Fusion and registration figures are means over pairs; detection is pooled over all labelled pairs
(COCO). Speed: mean wall time of ``FusionEngine.infer`` per pair after one warm-up call.
"""

import argparse
import json
import logging
import math
from pathlib import Path
import sys
import time
import zlib

import cv2
import numpy as np
from tarfuse_ros.core import baselines, data, metrics
from tarfuse_ros.core.images import to_uint8, to_unit_gray, to_unit_visible
from tarfuse_ros.core.paths import shared_datasets_dir
import torch

__all__ = ['DEFORM_MODES', 'STORED_IR_MODES', 'build_parser', 'evaluate', 'load_landmarks',
           'main']

_LOG = logging.getLogger('tarfuse-eval')

DEFORM_MODES = ('auto', 'none', 'synthetic', 'dataset')
STORED_IR_MODES = ('auto', 'aligned', 'unregistered')
LANDMARKS_DIR = 'landmarks'
# Fusion metrics computed from the fused image alone (valid without an aligned IR).
REFERENCE_FREE_FUSION = ('EN', 'SD', 'SF', 'AG')
CLASS_ALIASES = {'people': 'person', 'pedestrian': 'person', 'pedestrians': 'person'}
DRAW_THRESHOLD = 0.25
# Issue 4 targets (RoadScene test for registration/fusion, MSRS for detection).
TARGETS = {'EPE reduction': 0.70, 'NCC': 0.976, 'MSE': 0.0024, 'CC': 0.60, 'Qabf': 0.43,
           'SSIM': 0.50}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def resolve_data_dir(path):
    """Return a data set folder: the path itself, or a name under the shared data sets."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    shared = shared_datasets_dir()
    if shared is not None and (shared / str(path)).is_dir():
        return (shared / str(path)).resolve()
    raise ValueError(f'data set {str(path)!r} not found (neither a folder nor a shared set)')


def _scale_pair(ir, vi, max_side):
    """Downscale both images so the longer side is at most ``max_side``; return (ir, vi, s)."""
    height, width = vi.shape[:2]
    if ir.shape[:2] != (height, width):
        ir = cv2.resize(ir, (width, height), interpolation=cv2.INTER_LINEAR)
    if not max_side or max(height, width) <= max_side:
        return ir, vi, (1.0, 1.0)
    scale = max_side / max(height, width)
    new_w, new_h = max(32, round(width * scale)), max(32, round(height * scale))
    ir = cv2.resize(ir, (new_w, new_h), interpolation=cv2.INTER_AREA)
    vi = cv2.resize(vi, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return ir, vi, (new_w / width, new_h / height)


def _field_to_numpy(flow):
    return flow[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)


def _field_to_torch(flow_hw2):
    return torch.from_numpy(np.ascontiguousarray(flow_hw2)).permute(2, 0, 1)[None].float()


def pair_seed(seed, stem):
    """Return the per-pair seed of synthetic deformations (independent of pair order)."""
    return (int(seed) * 1000003 + zlib.crc32(stem.encode('utf-8'))) % (2 ** 63)


def _covered(field_hw2, valid=None):
    """Return where ``warp(img, field)`` holds content: bool HxW (all four taps inside).

    ``valid`` (bool HxW, default all True) marks the content of the image being warped.
    """
    from tarfuse_ros.core.model.warp import warp
    height, width = field_hw2.shape[:2]
    ones = np.ones((height, width), np.float32) if valid is None else valid.astype(np.float32)
    field = _field_to_torch(field_hw2)
    covered = warp(torch.from_numpy(ones)[None, None], field)[0, 0].numpy()
    return covered > 1.0 - 1e-4


def deform_pair(dataset_dir, stem, ir, mode, seed, scale, with_valid=False):
    """Deform the aligned IR of one pair.

    Args:
        dataset_dir: data set folder.
        stem: pair stem.
        ir: aligned IR, uint8 HxW (already scaled by ``scale``).
        mode: ``'dataset'``, ``'synthetic'`` or ``'none'``.
        seed: base seed of synthetic fields.
        scale: (sx, sy) applied to the stored images (for the data set's field).
        with_valid: also return where the deformed IR holds content (the rest sampled outside
            the aligned IR and is black).

    Returns:
        ``(deformed uint8 HxW, reference flow float32 HxWx2)``, plus the bool HxW content mask
        with ``with_valid``; the reference maps the deformed IR back onto the visible frame.

    """
    from tarfuse_ros.core.deform import DeformConfig, invert_flow, random_deformation
    from tarfuse_ros.core.model.warp import warp
    height, width = ir.shape
    if mode == 'none':
        out = ir.copy(), np.zeros((height, width, 2), np.float32)
        return out + (np.ones((height, width), bool),) if with_valid else out
    if mode == 'dataset':
        disp = data.load_disp(dataset_dir, stem)
        deformed = data.load_misaligned_ir(dataset_dir, stem)
        if disp.shape[:2] != (height, width):
            disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
            disp[:, :, 0] *= scale[0]
            disp[:, :, 1] *= scale[1]
            deformed = cv2.resize(deformed, (width, height), interpolation=cv2.INTER_AREA)
        inverse = invert_flow(_field_to_torch(disp), iterations=30)
        out = deformed, _field_to_numpy(inverse)
        return out + (_covered(disp),) if with_valid else out
    if mode != 'synthetic':
        raise ValueError(f'deform mode must be one of {DEFORM_MODES}, got {mode!r}')
    generator = torch.Generator().manual_seed(pair_seed(seed, stem))
    applied, inverse = random_deformation(1, height, width, DeformConfig(), generator=generator)
    ir_t = torch.from_numpy(ir.astype(np.float32) / 255.0)[None, None]
    deformed = warp(ir_t, applied)[0, 0].numpy()
    out = (np.clip(np.rint(deformed * 255.0), 0, 255).astype(np.uint8),
           _field_to_numpy(inverse))
    return out + (_covered(_field_to_numpy(applied)),) if with_valid else out


def load_landmarks(dataset_dir, stem):
    """Load the landmark correspondences of one pair, or None when the pair has none.

    Args:
        dataset_dir: data set folder; the file is ``landmarks/<stem>.txt``, one row
            ``x_ir y_ir x_vi y_vi`` per landmark (pixels of the stored images, x = column,
            y = row, pixel centres at integers), ``#`` comments allowed.
        stem: pair stem.

    Returns:
        ``(ir_points, vi_points)``, float64 (N, 2) each, or None.

    Raises:
        ValueError: the file exists but is not N >= 1 rows of 4 finite numbers.

    """
    path = Path(dataset_dir) / LANDMARKS_DIR / f'{stem}.txt'
    if not path.is_file():
        return None
    try:
        rows = np.loadtxt(path, comments='#', ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f'{str(path)!r}: cannot read landmarks ({exc})') from None
    if rows.ndim != 2 or rows.shape[1] != 4 or len(rows) == 0 or not np.isfinite(rows).all():
        raise ValueError(
            f'{str(path)!r}: expected rows "x_ir y_ir x_vi y_vi", got an array of shape '
            f'{rows.shape}')
    return rows[:, :2].copy(), rows[:, 2:].copy()


def _to_frame(points, src_size, dst_size):
    """Map (N, 2) pixel positions between image sizes (w, h) the way ``cv2.resize`` maps them."""
    factor = np.array([dst_size[0] / src_size[0], dst_size[1] / src_size[1]])
    return (points + 0.5) * factor - 0.5


def _luma(img):
    """uint8 luma (BT.601, as the engine) of a grey or BGR uint8 image."""
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def _class_lookup(dataset_dir, model_names):
    """Map the set's label ids to model class ids (-1: not a model class)."""
    set_names = data.read_classes(dataset_dir)
    index = {name.lower(): i for i, name in enumerate(model_names)}
    if set_names is None:
        return None
    ids = []
    for name in set_names:
        key = name.lower()
        ids.append(index.get(key, index.get(CLASS_ALIASES.get(key, key), -1)))
    return np.asarray(ids, np.int64)


def _targets(labels, lookup, width, height):
    """YOLO labels -> ((M, 5) [x1, y1, x2, y2, model_class], number dropped)."""
    if len(labels) == 0:
        return np.zeros((0, 5)), 0
    boxes = data.yolo_to_xyxy(labels, width, height)
    ids = labels[:, 0].astype(np.int64)
    mapped = lookup[ids] if lookup is not None else ids
    keep = mapped >= 0
    boxes[:, 4] = mapped
    return boxes[keep], int((~keep).sum())


def _predictions(detections):
    rows = [[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in detections]
    return np.asarray(rows, np.float64).reshape(-1, 6)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _bgr(img):
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()


def checkerboard(a, b, tiles=8):
    """Return two same-size images interleaved in a checkerboard of about ``tiles`` cells."""
    a, b = _bgr(a), _bgr(b)
    height, width = a.shape[:2]
    cell = max(4, min(height, width) // tiles)
    ys, xs = np.mgrid[0:height, 0:width]
    mask = ((ys // cell + xs // cell) % 2).astype(bool)
    out = a.copy()
    out[mask] = b[mask]
    return out


def draw_detections(img, detections, targets=None, class_names=()):
    """Draw ground truth (red, thin) and detections >= 0.25 (green, with score) with OpenCV."""
    out = _bgr(img)
    if targets is not None:
        for x1, y1, x2, y2, _ in np.asarray(targets).reshape(-1, 5):
            cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 1)
    for det in detections:
        if det.score < DRAW_THRESHOLD:
            continue
        p1, p2 = (int(det.x1), int(det.y1)), (int(det.x2), int(det.y2))
        cv2.rectangle(out, p1, p2, (0, 255, 0), 1)
        cv2.putText(out, f'{det.class_name} {det.score:.2f}', (p1[0], max(8, p1[1] - 2)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 0), 1, cv2.LINE_AA)
    return out


def _tile(img, title, width):
    img = _bgr(img)
    height = max(1, round(img.shape[0] * width / img.shape[1]))
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    band = np.zeros((18, width, 3), np.uint8)
    cv2.putText(band, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([band, img])


def save_pair_figure(path, panels, tile_width=320, columns=3):
    """Write a grid of titled panels ``[(title, image), ...]`` as PNG."""
    tiles = [_tile(img, title, tile_width) for title, img in panels]
    height = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.zeros((height - t.shape[0], tile_width, 3), np.uint8)])
             for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise ValueError(f'cannot write figure {str(path)!r}')


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
class _ZeroFlow:
    """Context manager forcing ``model.registration``'s output (the flow) to zeros."""

    def __init__(self, model):
        self.model = model
        self.handle = None

    def __enter__(self):
        self.handle = self.model.registration.register_forward_hook(
            lambda module, inputs, output: torch.zeros_like(output))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _mean_dicts(items):
    """Mean per key over the dicts; None values (not computed) are left out of the mean."""
    items = [i for i in items if i]
    if not items:
        return None
    keys = list(dict.fromkeys(k for i in items for k in i))
    out = {}
    for key in keys:
        values = [i[key] for i in items if i.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def _fusion_metrics(fused_y, ir_reference, vi_y):
    """Fusion metrics against the aligned IR; only the reference-free ones without it."""
    if ir_reference is not None:
        return metrics.fusion_metrics(fused_y, ir_reference, vi_y)
    everything = dict.fromkeys(metrics.FUSION_METRICS)
    everything.update({'EN': metrics.entropy(fused_y), 'SD': metrics.sd(fused_y),
                       'SF': metrics.sf(fused_y), 'AG': metrics.ag(fused_y)})
    return everything


def _registration_scores(registered, flow_px, content, vi_y, ir_reference, flow_ref,
                         landmarks):
    """Registration figures of one method on one pair (None where not computable)."""
    if ir_reference is not None:
        out = metrics.registration_metrics(registered, ir_reference, flow_px, flow_ref)
    else:
        out = {'MSE': None, 'NCC': None, 'EPE': None}
    covered = _covered(flow_px, content)
    out['edge_alignment'] = metrics.edge_alignment(registered, vi_y, covered)
    out['landmark_error_px'] = (metrics.landmark_error(flow_px, *landmarks)
                                if landmarks is not None else None)
    return out


def _finite(value):
    """Replace NaN/inf (not JSON) with None, recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate(data_dir, weights, out_dir, split='test', deform='auto', seed=0, device='cpu',
             max_pairs=None, max_side=None, labels_dir='labels', figures=8, conf=0.001,
             iou=0.6, threads=None, progress=True, stored_ir='auto'):
    """Run the evaluation protocol (module docstring) and write the outputs.

    Args:
        data_dir: data set folder (or the name of a shared set).
        weights: checkpoint path (``.safetensors``).
        out_dir: output folder (created).
        split: split name or list file (``'all'`` for every pair).
        deform: one of :data:`DEFORM_MODES`.
        seed: base seed of synthetic deformations.
        device: ``cpu``, ``cuda``, ``cuda:N``.
        max_pairs: evaluate only the first N pairs of the split.
        max_side: downscale pairs so the longer side is at most this (None: native size).
        labels_dir: label sub-folder (``labels``, or e.g. ``labels_vi``).
        figures: number of pairs that get figures.
        conf, iou: NMS thresholds (a low ``conf`` for AP, as COCO evaluation does).
        threads: torch CPU threads (None: unchanged).
        progress: show a tqdm bar.
        stored_ir: one of :data:`STORED_IR_MODES`: ``'aligned'`` (the stored IR is registered
            to the visible image: the ground truth), ``'unregistered'`` (it is not: no
            aligned-IR metrics, module docstring), ``'auto'`` (unregistered when the set has
            ``landmarks/``, else aligned).

    Returns:
        the metrics dict written to ``metrics.json``.

    """
    threads_before = torch.get_num_threads()
    try:
        return _evaluate(data_dir, weights, out_dir, split, deform, seed, device, max_pairs,
                         max_side, labels_dir, figures, conf, iou, threads, progress,
                         stored_ir)
    finally:
        torch.set_num_threads(threads_before)  # the engine's setting is process-wide


def _evaluate(data_dir, weights, out_dir, split, deform, seed, device, max_pairs, max_side,
              labels_dir, figures, conf, iou, threads, progress, stored_ir):
    from tarfuse_ros.core.engine import FusionEngine
    if deform not in DEFORM_MODES:
        raise ValueError(f'--deform must be one of {DEFORM_MODES}, got {deform!r}')
    if stored_ir not in STORED_IR_MODES:
        raise ValueError(f'--stored-ir must be one of {STORED_IR_MODES}, got {stored_ir!r}')
    if max_pairs is not None and int(max_pairs) < 1:
        raise ValueError(f'--max-pairs must be >= 1, got {max_pairs}')
    if max_side is not None and int(max_side) < 32:
        raise ValueError(f'--max-side must be >= 32, got {max_side}')
    dataset_dir = resolve_data_dir(data_dir)
    if stored_ir == 'auto':
        stored_ir = 'unregistered' if (dataset_dir / LANDMARKS_DIR).is_dir() else 'aligned'
    aligned = stored_ir == 'aligned'
    if not aligned:
        if deform not in ('auto', 'none'):
            raise ValueError(
                f'--deform {deform}: the stored IR of {str(dataset_dir)!r} is not aligned '
                f'(--stored-ir unregistered), so a deformation of it has no reference; '
                f'use --deform none')
        deform = 'none'
    out_dir = Path(out_dir)
    (out_dir / 'figures').mkdir(parents=True, exist_ok=True)
    stems = data.read_split(dataset_dir, split)
    with_disp = set(data.misaligned_stems(dataset_dir)) if aligned else set()
    if deform == 'dataset':
        skipped = [s for s in stems if s not in with_disp]
        stems = [s for s in stems if s in with_disp]
        if not stems:
            raise ValueError(
                f'--deform dataset: no pair of split {split!r} in {str(dataset_dir)!r} has a '
                f'ground-truth field (synthetic_misaligned/disp); use --deform synthetic')
        if skipped:
            _LOG.warning('--deform dataset: skipping %d of %d pairs without a ground-truth '
                         'field', len(skipped), len(skipped) + len(stems))
    else:
        skipped = []
    if max_pairs is not None:
        stems = stems[:int(max_pairs)]

    engine = FusionEngine(weights, device=device, threads=threads, conf_threshold=conf,
                          iou_threshold=iou, max_detections=100)
    # A second engine for the zero-flow ablation: CUDA graphs would replay without the hook.
    zero_engine = FusionEngine(weights, device=device, cuda_graph='off', conf_threshold=conf,
                               iou_threshold=iou, max_detections=100)
    class_names = list(engine.class_names)
    lookup = _class_lookup(dataset_dir, class_names)

    names = ('unregistered_average', 'unregistered_max', 'ecc_average', 'model_zero_flow',
             'visible_only', 'ir_only')
    per_pair = []
    fus = {'model': []}
    reg = {'model': [], 'unregistered': []}
    preds = {'model': [], 'model_zero_flow': [], 'visible_only': [], 'ir_only': []}
    for name in names:
        fus.setdefault(name, [])
        reg.setdefault(name, [])
    gts = []
    dropped_boxes = 0
    times_ms, model_ms = [], []
    sources = {'dataset': 0, 'synthetic': 0, 'none': 0}
    ecc_failures = 0
    edge_wins = []
    landmark_pairs = 0

    iterator = stems
    if progress:
        from tqdm import tqdm
        iterator = tqdm(stems, desc='tarfuse-eval', unit='pair')
    for index, stem in enumerate(iterator):
        ir_raw, vi_raw = data.load_pair(dataset_dir, stem)
        if ir_raw.dtype != np.uint8:  # 16-bit thermal: the engine's robust normalisation
            ir_raw = to_uint8(to_unit_gray(ir_raw, name=f'{stem} IR'))
        if vi_raw.dtype != np.uint8:
            vi_raw = to_uint8(vi_raw.astype(np.float32) / 65535.0)
        ir, vi, scale = _scale_pair(ir_raw, vi_raw, max_side)
        height, width = vi.shape[:2]
        mode = deform
        if mode == 'auto':
            mode = 'dataset' if stem in with_disp else 'synthetic'
        sources[mode] += 1
        deformed, flow_ref, content = deform_pair(dataset_dir, stem, ir, mode, seed, scale,
                                                  with_valid=True)
        vi_y = to_unit_visible(vi)[0]
        # The aligned IR: the reference of fusion and registration metrics, where there is one.
        ir_unit = ir.astype(np.float32) / 255.0 if aligned else None
        deformed_unit = deformed.astype(np.float32) / 255.0
        landmarks = load_landmarks(dataset_dir, stem)
        if landmarks is not None:
            landmark_pairs += 1
            landmarks = (_to_frame(landmarks[0], ir_raw.shape[1::-1], (width, height)),
                         _to_frame(landmarks[1], vi_raw.shape[1::-1], (width, height)))

        if index == 0:
            engine.infer(deformed, vi)  # warm-up (allocations, lazy initialisation)
        start = time.perf_counter()
        result = engine.infer(deformed, vi)
        times_ms.append((time.perf_counter() - start) * 1e3)
        model_ms.append(result.timings_ms.get('model', float('nan')))
        fused_y = _luma(result.fused)

        entry = {'stem': stem, 'deformation': mode, 'size': [height, width]}
        fus['model'].append(_fusion_metrics(fused_y, ir_unit, vi_y))
        reg['model'].append(_registration_scores(
            result.registered_ir, result.flow_px, content, vi_y, ir_unit, flow_ref, landmarks))
        reg['unregistered'].append(_registration_scores(
            deformed_unit, np.zeros_like(flow_ref), content, vi_y, ir_unit, flow_ref,
            landmarks))
        edge_wins.append(reg['model'][-1]['edge_alignment']
                         > reg['unregistered'][-1]['edge_alignment'])
        entry['fusion'] = fus['model'][-1]
        entry['registration'] = reg['model'][-1]
        entry['unregistered'] = reg['unregistered'][-1]

        # Naive fusion of the unregistered input.
        for name, fuse in (('unregistered_average', baselines.average_fusion),
                           ('unregistered_max', baselines.max_fusion)):
            fus[name].append(_fusion_metrics(fuse(deformed_unit, vi_y), ir_unit, vi_y))
            reg[name].append(reg['unregistered'][-1])
        ecc = baselines.ecc_register(deformed_unit, vi_y)
        ecc_failures += int(not ecc.success)
        fus['ecc_average'].append(_fusion_metrics(
            baselines.average_fusion(ecc.registered, vi_y), ir_unit, vi_y))
        reg['ecc_average'].append(_registration_scores(
            ecc.registered, ecc.flow_px, content, vi_y, ir_unit, flow_ref, landmarks))
        entry['ecc_success'] = ecc.success
        entry['ecc_average'] = reg['ecc_average'][-1]

        with _ZeroFlow(zero_engine.model):
            zero_result = zero_engine.infer(deformed, vi)
        fus['model_zero_flow'].append(
            _fusion_metrics(_luma(zero_result.fused), ir_unit, vi_y))
        reg['model_zero_flow'].append(_registration_scores(
            zero_result.registered_ir, zero_result.flow_px, content, vi_y, ir_unit, flow_ref,
            landmarks))

        labels = data.load_labels(dataset_dir, stem, labels_dir)
        targets = None
        if labels is not None:
            targets, dropped = _targets(labels, lookup, width, height)
            dropped_boxes += dropped
            gts.append(targets)
            preds['model'].append(_predictions(result.detections))
            preds['model_zero_flow'].append(_predictions(zero_result.detections))
            blank_ir = np.zeros_like(deformed)
            preds['visible_only'].append(_predictions(engine.infer(blank_ir, vi).detections))
            blank_vi = np.zeros(vi.shape[:2], np.uint8)
            preds['ir_only'].append(_predictions(engine.infer(ir, blank_vi).detections))
            entry['num_gt'] = int(len(targets))
        per_pair.append(entry)

        if index < figures:
            vi_show = vi if vi.ndim == 3 else _bgr(vi)
            panels = [('IR as given (deformed)', deformed), ('visible', vi_show),
                      ('registered IR', result.registered_ir), ('fused', result.fused),
                      ('detections (green) / labels (red)',
                       draw_detections(result.fused, result.detections, targets, class_names)),
                      ('checkerboard visible / registered IR',
                       checkerboard(_luma(vi), result.registered_ir))]
            save_pair_figure(out_dir / 'figures' / f'{stem}_grid.png', panels)
            save_pair_figure(out_dir / 'figures' / f'{stem}_checkerboard.png', [
                ('visible / IR as given', checkerboard(_luma(vi), deformed)),
                ('visible / registered IR', checkerboard(_luma(vi), result.registered_ir)),
                ('visible / ECC-registered IR', checkerboard(_luma(vi), ecc.registered))],
                tile_width=max(320, min(640, width)))

    def detection(key):
        if not gts:
            return None
        return metrics.detection_metrics(preds[key], gts, class_names=class_names)

    registration = dict(_mean_dicts(reg['model']))
    registration['unregistered'] = _mean_dicts(reg['unregistered'])
    base_epe = registration['unregistered']['EPE']
    if base_epe is None or registration['EPE'] is None:
        registration['epe_reduction'] = None
    else:
        registration['epe_reduction'] = (1.0 - registration['EPE'] / base_epe
                                         if base_epe > 0 else float('nan'))
    registration['edge_alignment_better_than_unregistered_fraction'] = (
        float(np.mean(edge_wins)) if edge_wins else None)
    registration['landmark_pairs'] = landmark_pairs
    baseline_out = {}
    for name in names:
        baseline_out[name] = {
            'fusion': _mean_dicts(fus[name]),
            'registration': _mean_dicts(reg[name]),
            'detection': detection(name) if name in preds else None,
        }
    result = {
        'dataset': str(dataset_dir),
        'split': str(split),
        'weights': str(weights),
        'deform': deform,
        'stored_ir': stored_ir,
        'seed': int(seed),
        'max_side': max_side,
        'num_pairs': len(stems),
        'pairs': stems,
        'skipped_without_ground_truth': skipped,
        'deformation_sources': sources,
        'class_names': class_names,
        'fusion': _mean_dicts(fus['model']),
        'registration': registration,
        'detection': detection('model'),
        'detection_labels': {'folder': labels_dir, 'labelled_pairs': len(gts),
                             'dropped_boxes_unknown_class': dropped_boxes},
        'speed': {'ms_per_pair': float(np.mean(times_ms)),
                  'model_ms_per_pair': float(np.mean(model_ms)),
                  'device': engine.device, 'threads': torch.get_num_threads(),
                  'image_size': per_pair[0]['size'] if per_pair else None},
        'baselines': baseline_out,
        'ecc_failures': ecc_failures,
        'per_pair': per_pair,
        'conventions': {
            'fusion_reference': (
                'fused luma vs aligned IR and visible luma (0-255)' if aligned else
                'no aligned IR: only the reference-free EN, SD, SF, AG (fused luma alone); '
                'metrics comparing with the IR are None'),
            'ssim': 'mean of SSIM(F, IR) and SSIM(F, VI)',
            'mi': 'MI(F, IR) + MI(F, VI), bits',
            'vif': 'VIFp(IR, F) + VIFp(VI, F)',
            'qabf': 'Xydeas-Petrovic, METHOD.md constants, L = 1',
            'registration': (
                'MSE/NCC of images in [0, 1]; EPE in px vs the inverse of the applied field'
                if aligned else 'no aligned IR: MSE, NCC, EPE not computed (None)'),
            'edge_alignment': (
                'Pearson correlation of the Gaussian-smoothed (sigma '
                f'{metrics.EDGE_ALIGNMENT_SIGMA_PX} px) Sobel gradient magnitudes of the '
                'registered IR and the visible luma, over the pixels the registered IR covers; '
                'no ground truth; higher is better; better_than_unregistered_fraction: pairs '
                'where the model scores above the unregistered input'),
            'landmark_error': (
                'mean |v + flow(v) - r| over landmark pairs (v visible, r IR mapped to the '
                'visible frame as the IR is resized), px of the evaluated visible image; '
                'unregistered: zero flow'),
            'detection': 'COCO 101-point AP, IoU 0.5 and 0.5:0.95, max 100 detections/image, '
                         f'NMS conf {conf}, IoU {iou}',
        },
    }
    result = _finite(result)
    (out_dir / 'metrics.json').write_text(json.dumps(result, indent=2) + '\n')
    (out_dir / 'report.md').write_text(render_report(result))
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _fmt(value, digits=4):
    if value is None:
        return 'n/a'
    return f'{value:.{digits}f}'


def _registration_row(name, values, with_landmarks):
    """One Markdown row of the registration table."""
    values = values or {}
    cells = [_fmt(values.get('MSE')), _fmt(values.get('NCC')), _fmt(values.get('EPE'), 2),
             _fmt(values.get('edge_alignment'))]
    if with_landmarks:
        cells.append(_fmt(values.get('landmark_error_px'), 2))
    return f'| {name} | ' + ' | '.join(cells) + ' |'


def render_report(result):
    """Return the Markdown report of a metrics dict."""
    lines = ['# TarFuse evaluation', '',
             f'- data: `{result["dataset"]}` split `{result["split"]}` '
             f'({result["num_pairs"]} pairs, max side {result["max_side"] or "native"})',
             f'- weights: `{result["weights"]}`',
             f'- deformation: `{result["deform"]}` (per pair: {result["deformation_sources"]}), '
             f'seed {result["seed"]}',
             f'- stored IR: {result.get("stored_ir", "aligned")}',
             f'- speed: {_fmt(result["speed"]["ms_per_pair"], 1)} ms per pair '
             f'(model {_fmt(result["speed"]["model_ms_per_pair"], 1)} ms) on '
             f'{result["speed"]["device"]}, {result["speed"]["threads"]} CPU threads', '']
    if result['skipped_without_ground_truth']:
        lines += [f'- skipped (no ground-truth field): '
                  f'{len(result["skipped_without_ground_truth"])} pairs', '']
    aligned = result.get('stored_ir', 'aligned') == 'aligned'
    if not aligned:
        lines += ['The stored IR is NOT aligned with the visible image (real unregistered '
                  'cameras or landmark pairs): there is no aligned IR to compare with, so EPE, '
                  'MSE, NCC and the fusion metrics that compare the fused image with the IR '
                  '(CC, Qabf, Qcv, SSIM, MI, VIF, SCD) are not computed (n/a). Registration is '
                  'scored by edge alignment with the visible image and, where the set has '
                  'them, landmark errors.', '']
    fusion_keys = list(metrics.FUSION_METRICS)
    lines += ['## Fusion (mean over pairs; Qcv: lower is better)', '',
              '| method | ' + ' | '.join(fusion_keys) + ' |',
              '|---' * (len(fusion_keys) + 1) + '|']
    rows = [('TarFuse', result['fusion'])]
    rows += [(name, b['fusion']) for name, b in result['baselines'].items() if b['fusion']]
    for name, values in rows:
        lines.append(f'| {name} | ' + ' | '.join(_fmt(values.get(k), 3) for k in fusion_keys)
                     + ' |')
    reg = result['registration']
    with_landmarks = bool(reg.get('landmark_pairs'))
    header = '| method | MSE | NCC | EPE | edge alignment |'
    rule = '|---|---|---|---|---|'
    if with_landmarks:
        header += ' landmark error (px) |'
        rule += '---|'
    lines += ['', '## Registration (MSE/NCC vs the aligned IR, EPE in px; edge alignment vs the '
              'visible image, higher is better)', '', header, rule,
              _registration_row('TarFuse', reg, with_landmarks),
              _registration_row('unregistered input', reg['unregistered'], with_landmarks)]
    for name in ('ecc_average', 'model_zero_flow'):
        lines.append(_registration_row(name, result['baselines'][name]['registration'],
                                       with_landmarks))
    reduction = reg['epe_reduction']
    better = reg.get('edge_alignment_better_than_unregistered_fraction')
    lines += ['', f'EPE reduction vs the unregistered input: '
              f'{_fmt(None if reduction is None else 100 * reduction, 1)} %. '
              f'Edge alignment above the unregistered input on '
              f'{_fmt(None if better is None else 100 * better, 1)} % of the pairs. '
              f'ECC failures (identity kept): {result["ecc_failures"]}.']
    if with_landmarks:
        lines.append(f'Landmark errors: mean over the {reg["landmark_pairs"]} pairs with '
                     f'landmarks, in pixels of the evaluated visible image.')
    lines.append('')
    det = result['detection']
    if det is None:
        lines += ['## Detection', '', 'No labels in this split: detection not evaluated.', '']
    else:
        names = list(det['per_class'])
        lines += ['## Detection (COCO-style AP, visible frame)', '',
                  f'{result["detection_labels"]["labelled_pairs"]} labelled pairs, '
                  f'{det["num_gt"]} boxes; '
                  f'{result["detection_labels"]["dropped_boxes_unknown_class"]} boxes of '
                  f'classes unknown to the model dropped.', '',
                  '| method | mAP@0.5 | mAP@0.5:0.95 | ' + ' | '.join(
                      f'AP50 {n}' for n in names) + ' |',
                  '|---|---|---|' + '---|' * len(names)]
        rows = [('TarFuse (fused)', det)] + [
            (name, result['baselines'][name]['detection'])
            for name in ('model_zero_flow', 'visible_only', 'ir_only')]
        for name, d in rows:
            lines.append(f'| {name} | {_fmt(d["map50"])} | {_fmt(d["map50_95"])} | ' + ' | '.join(
                _fmt(d['per_class'].get(n, {}).get('ap50')) for n in names) + ' |')
        lines.append('')
    if aligned:
        lines += _target_lines(result, reg, det)
    lines += ['## Conventions', '']
    lines += [f'- {k}: {v}' for k, v in result['conventions'].items()]
    if aligned:
        lines.append('- fused images are compared with the ALIGNED IR; baselines see the same '
                     'deformed IR; `ir_only` gets the aligned IR (nothing to register to '
                     'without a visible image).')
    lines += ['- figures: `figures/<stem>_grid.png`, `figures/<stem>_checkerboard.png`.', '']
    return '\n'.join(lines)


def _target_lines(result, reg, det):
    lines = ['## Issue 4 targets (defined on RoadScene test / MSRS; informative elsewhere)', '',
             '| target | measured | goal | met |', '|---|---|---|---|']
    fusion = result['fusion']
    checks = [('EPE reduction', reg['epe_reduction'], TARGETS['EPE reduction'], '>='),
              ('NCC', reg['NCC'], TARGETS['NCC'], '>='),
              ('MSE', reg['MSE'], TARGETS['MSE'], '<='),
              ('CC', fusion['CC'], TARGETS['CC'], '>='),
              ('Qabf', fusion['Qabf'], TARGETS['Qabf'], '>='),
              ('SSIM', fusion['SSIM'], TARGETS['SSIM'], '>=')]
    for key in ('Qabf', 'SSIM'):
        best = max(b['fusion'][key] for b in result['baselines'].values() if b['fusion'])
        checks.append((f'{key} above every baseline', fusion[key], best, '>'))
    if det is not None:
        for name in ('visible_only', 'ir_only'):
            other = result['baselines'][name]['detection']['map50']
            checks.append((f'mAP@0.5 above {name}', det['map50'], other, '>'))
    for name, value, goal, op in checks:
        met = None
        if value is not None and goal is not None:
            met = {'>=': value >= goal, '<=': value <= goal, '>': value > goal}[op]
        lines.append(f'| {name} | {_fmt(value)} | {op} {_fmt(goal)} | '
                     f'{"yes" if met else ("no" if met is not None else "n/a")} |')
    return lines + ['']


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser():
    """Return the ``tarfuse-eval`` argument parser."""
    parser = argparse.ArgumentParser(
        prog='tarfuse-eval',
        description='Evaluate a TarFuse checkpoint (fusion, registration, detection, baselines).')
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, labels/, list files) or a shared name')
    parser.add_argument('--split', default='test',
                        help="split name or list file ('all' for every pair; default test)")
    parser.add_argument('--weights', default=None,
                        help='checkpoint (.safetensors; default: the shipped weights)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--deform', default='auto', choices=DEFORM_MODES,
                        help="IR deformation: the data set's ground truth where present "
                             "('auto'), 'dataset' only, seeded 'synthetic', or 'none'")
    parser.add_argument('--stored-ir', default='auto', choices=STORED_IR_MODES,
                        help='whether the stored IR is aligned with the visible image (the '
                             "ground truth) or 'unregistered' (real unregistered cameras: no "
                             'aligned-IR metrics, --deform none); auto: unregistered for sets '
                             'with landmarks/, else aligned')
    parser.add_argument('--seed', type=int, default=0, help='seed of synthetic deformations')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    parser.add_argument('--max-pairs', type=int, default=None, help='only the first N pairs')
    parser.add_argument('--max-side', type=int, default=None,
                        help='downscale so the longer side is at most this many pixels')
    parser.add_argument('--labels', default='labels', help='label sub-folder (e.g. labels_vi)')
    parser.add_argument('--figures', type=int, default=8, help='pairs that get figures')
    parser.add_argument('--conf', type=float, default=0.001, help='NMS confidence threshold')
    parser.add_argument('--iou', type=float, default=0.6, help='NMS IoU threshold')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def main(argv=None):
    """Entry point of ``tarfuse-eval``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    weights = args.weights
    if weights is None:
        from tarfuse_ros.core.paths import default_weights_path
        weights = default_weights_path()
    try:
        result = evaluate(args.data, weights, args.out, split=args.split, deform=args.deform,
                          seed=args.seed, device=args.device, max_pairs=args.max_pairs,
                          max_side=args.max_side, labels_dir=args.labels, figures=args.figures,
                          conf=args.conf, iou=args.iou, threads=args.threads,
                          progress=not args.no_progress, stored_ir=args.stored_ir)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f'tarfuse-eval: error: {exc}', file=sys.stderr)
        return 2
    reg = result['registration']
    fusion = result['fusion']
    line = (f'pairs {result["num_pairs"]}  EPE {_fmt(reg["EPE"], 2)} px '
            f'(unregistered {_fmt(reg["unregistered"]["EPE"], 2)})  NCC {_fmt(reg["NCC"])}  '
            f'MSE {_fmt(reg["MSE"])}  edge alignment {_fmt(reg["edge_alignment"])} '
            f'(unregistered {_fmt(reg["unregistered"]["edge_alignment"])})  '
            f'CC {_fmt(fusion["CC"], 3)}  Qabf {_fmt(fusion["Qabf"], 3)}  '
            f'SSIM {_fmt(fusion["SSIM"], 3)}')
    if reg.get('landmark_pairs'):
        line += (f'  landmark error {_fmt(reg["landmark_error_px"], 2)} px '
                 f'(unregistered {_fmt(reg["unregistered"]["landmark_error_px"], 2)})')
    if result['detection']:
        line += f'  mAP50 {result["detection"]["map50"]:.3f}'
    print(line)
    print(f'wrote {Path(args.out) / "metrics.json"} and report.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
