"""Pseudo-label aligned IR/visible pairs with COCO teachers: the ``tarfuse-pseudo-label`` script.

``tarfuse-pseudo-label --data DIR --split NAME [--split NAME ...] --out DIR [--teacher yolov8n|
yolox|both] [--score S] [--skip-labelled] [--overwrite]`` writes ``DIR/labels/<stem>.txt`` (YOLO
``class cx cy w h``, normalised to the visible image), ``DIR/labels/classes.txt``
(``person``, ``bicycle``, ``car``), ``DIR/scores.tsv`` (the same boxes with their teacher
scores), ``DIR/stems.txt`` (the pseudo-labelled stems, usable as a split list file) and a
provenance ``DIR/README.md``. Nothing is written until every pair is labelled; then
``labels/`` is replaced as a whole folder and each other file whole, ``stems.txt`` last, so
a run that fails, is stopped (Ctrl-C, SIGTERM: exit 130) or killed leaves no mix of an
earlier run's label files and its own (``--overwrite`` replaces an earlier run's outputs).

``tarfuse-pseudo-label --calibrate --data DIR --split NAME [--out DIR]`` runs the same
pseudo-labelling on a split WITH human labels and reports precision / recall / F1 of the
pseudo-labels against them at several score thresholds (per class and over all classes), and
the threshold that maximises the overall F1 (ties: the higher threshold, i.e. fewer false
boxes). With ``--out`` it also appends to ``calibration.md`` and ``calibration.jsonl`` there.

Teachers (``shared/teachers``, see its README; ONNX run with onnxruntime on the CPU):

- ``yolov8n``: ``yolov8n_coco_int8.onnx``; input RGB / 255, letterboxed to 640 x 640 (aspect
  kept, centred, pad 114, bilinear); output (1, 84, 8400): ``cx, cy, w, h`` in input pixels then
  80 sigmoid class scores.
- ``yolox``: ``yolox_nano_coco.onnx``; input BGR 0-255, letterboxed to 416 x 416 at the top-left
  (pad 114, bilinear, size rounded down); output (1, 3549, 85): per anchor of strides 8/16/32
  (row-major grids) ``tx, ty, tw, th, objectness, 80 class probabilities``;
  ``xy = (t_xy + grid) * stride``, ``wh = exp(t_wh) * stride``, score = objectness x class prob.

Per anchor the best of the 80 COCO classes is taken (as the teachers' own NMS does), then mapped
to our classes; anchors whose best class has no mapping are dropped.

Class map (COCO id -> ours, in :data:`COCO_TO_OURS`): person -> person; bicycle and motorcycle ->
bicycle; car, bus and truck -> car. Why: our label sets (RoadScene from FLIR ADAS, MSRS) have
exactly these three classes and their annotators labelled riders' two-wheelers as ``bicycle``
and every road vehicle as ``car``; the teachers' README measured its AP with the same map. Other
COCO classes (dogs, traffic lights, ...) are dropped and become background.

Pooling: each teacher runs on the visible image AND on the IR image of the pair (grey replicated
to three channels; an IR image of another size is first resized to the visible one, so all boxes
are in visible pixels; the pairs are aligned, so an IR image of another aspect ratio, whose boxes
that resize would misplace, is refused before any pair is labelled, naming such pairs:
:func:`tarfuse_ros.core.data.check_aspect_ratios`, in both modes). The candidates of both
images (and both teachers with ``both``) are pooled and reduced by class-wise NMS at IoU 0.5
(``torchvision.ops.batched_nms``): a person seen in both images keeps its best box, one seen
only at night in the IR image is kept too. Boxes
with a score below the threshold are dropped (applying the threshold after NMS keeps exactly the
boxes that thresholding before it would, since a box is only suppressed by a higher-scoring one).

``--skip-labelled`` leaves out the stems that already have a human label file in the data set's
``labels/`` folder, so human labels always win. Pairs on which the teachers find nothing get an
EMPTY label file: the teachers' claim "no objects" (see ``data.load_labels``).
"""

import argparse
from contextlib import contextmanager
import datetime
import json
import logging
import os
from pathlib import Path
import shlex
import sys
import time

import cv2
import numpy as np
from tarfuse_ros.console import InterruptedWhenComplete, interrupts_held, terminate_as_interrupt
from tarfuse_ros.core import data
from tarfuse_ros.core.files import (atomic_output, file_sha256, lock_exclusive, output_problem,
                                    remove_stale_outputs, write_text_atomic)
from tarfuse_ros.core.images import normalise, to_uint8, to_unit_gray
from tarfuse_ros.core.paths import shared_datasets_dir
import torch
from torchvision.ops import batched_nms, box_iou

__all__ = [
    'CLASS_NAMES',
    'COCO_NAMES',
    'COCO_TO_OURS',
    'InterruptedWhenComplete',
    'NMS_IOU',
    'TEACHER_FILES',
    'Teacher',
    'boxes_to_yolo',
    'build_parser',
    'calibrate',
    'default_teachers_dir',
    'file_sha256',
    'load_teachers',
    'main',
    'map_coco_classes',
    'match_counts',
    'pool_boxes',
    'pseudo_label',
    'pseudo_label_pair',
    'write_provenance',
]

_LOG = logging.getLogger('tarfuse-pseudo-label')

CLASS_NAMES = ('person', 'bicycle', 'car')
# COCO ids of the teachers (0 person, 1 bicycle, 2 car, 3 motorcycle, 5 bus, 7 truck) -> ours.
COCO_TO_OURS = {0: 0, 1: 1, 3: 1, 2: 2, 5: 2, 7: 2}
COCO_NAMES = {0: 'person', 1: 'bicycle', 2: 'car', 3: 'motorcycle', 5: 'bus', 7: 'truck'}
NMS_IOU = 0.5
MATCH_IOU = 0.5
PAD_VALUE = 114
TEACHER_FILES = {'yolov8n': 'yolov8n_coco_int8.onnx', 'yolox': 'yolox_nano_coco.onnx'}
TEACHER_CHOICES = ('yolov8n', 'yolox', 'both')
# Max overall F1 of yolov8n pseudo-labels on msrs_train (330 pairs) and RoadScene (98).
DEFAULT_SCORE = 0.3
CALIBRATION_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
# Candidates below this score are never kept, whatever the threshold (keeps NMS small).
MIN_CANDIDATE_SCORE = 0.05
MAX_BOXES_PER_PAIR = 300
TEACHER_SOURCES = {
    'yolov8n': 'Ultralytics YOLOv8n COCO, int8 (github.com/Lamri-Meriem/edge-object-detection '
               '@ 6f7f95f, AGPL-3.0)',
    'yolox': 'Megvii YOLOX-Nano COCO (github.com/Bigisland1729/object-detection-models '
             '@ 7f3f2fa; YOLOX upstream Apache-2.0)',
}


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------
def default_teachers_dir():
    """Return ``shared/teachers`` beside the shared data sets, or None when there is none."""
    datasets = shared_datasets_dir()
    if datasets is None:
        return None
    folder = datasets.parent / 'teachers'
    return folder if folder.is_dir() else None


def map_coco_classes(coco_ids):
    """Map COCO class ids to ours (:data:`CLASS_NAMES`).

    Args:
        coco_ids: integer array-like (N,) of COCO ids (0-based, 80 classes).

    Returns:
        int64 array (N,): 0 person, 1 bicycle (bicycle, motorcycle), 2 car (car, bus, truck),
        -1 for every other COCO class (dropped).

    """
    coco_ids = np.asarray(coco_ids, np.int64).reshape(-1)
    lookup = np.full(80, -1, np.int64)
    for coco_id, ours in COCO_TO_OURS.items():
        lookup[coco_id] = ours
    out = np.full(coco_ids.shape, -1, np.int64)
    valid = (coco_ids >= 0) & (coco_ids < 80)
    out[valid] = lookup[coco_ids[valid]]
    return out


def _letterbox(image, size, centred, round_size):
    """Scale ``image`` (HxWx3 uint8) into a ``size`` x ``size`` canvas padded with 114.

    Returns:
        (canvas uint8 size x size x 3, scale, pad_x px, pad_y px): an input pixel ``p`` maps
        to ``p * scale + pad``.

    """
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    to_int = round if round_size else int
    new_w, new_h = max(1, to_int(width * scale)), max(1, to_int(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) \
        if (new_w, new_h) != (width, height) else image
    pad_x = (size - new_w) // 2 if centred else 0
    pad_y = (size - new_h) // 2 if centred else 0
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return canvas, scale, pad_x, pad_y


def _yolox_grid(size, strides=(8, 16, 32)):
    """Return (A, 2) grid cell (x, y) and (A, 1) strides of YOLOX anchors, row-major."""
    grids, stride_col = [], []
    for stride in strides:
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing='ij')
        grids.append(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1))
        stride_col.append(np.full((cells * cells, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(stride_col).astype(np.float32)


class Teacher:
    """One ONNX COCO detector run with onnxruntime (see the module docstring for the formats).

    Args:
        kind: ``'yolov8n'`` or ``'yolox'`` (selects pre- and post-processing).
        model_path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads of this session (default 1: the tool must not
            crowd out other work on a shared machine); inter-op is always 1.

    Raises:
        ValueError: unknown kind, missing file, a file onnxruntime cannot load, or a model
            whose input/output shapes do not match the kind.

    """

    def __init__(self, kind, model_path, threads=1):
        import onnxruntime as ort
        if kind not in TEACHER_FILES:
            raise ValueError(f'unknown teacher {kind!r}; choose from {sorted(TEACHER_FILES)}')
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ValueError(f'teacher model {str(model_path)!r} not found')
        if int(threads) < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.kind = kind
        self.path = model_path
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=['CPUExecutionProvider'])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f'{str(model_path)!r} is not a loadable ONNX model '
                             f'({first[:300]})') from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.size = 640 if kind == 'yolov8n' else 416
        expected_out = (1, 84, 8400) if kind == 'yolov8n' else (1, 3549, 85)
        got_in = tuple(model_input.shape)
        got_out = tuple(self.session.get_outputs()[0].shape)
        if got_in != (1, 3, self.size, self.size) or got_out != expected_out:
            raise ValueError(
                f'{str(model_path)!r} does not look like a {kind} teacher: input {got_in}, '
                f'output {got_out} (expected (1, 3, {self.size}, {self.size}), {expected_out})')
        if kind == 'yolox':
            self._grid, self._strides = _yolox_grid(self.size)

    def _prepare(self, bgr):
        if self.kind == 'yolov8n':
            canvas, scale, pad_x, pad_y = _letterbox(bgr, self.size, True, True)
            blob = canvas[:, :, ::-1].astype(np.float32) / 255.0
        else:
            canvas, scale, pad_x, pad_y = _letterbox(bgr, self.size, False, False)
            blob = canvas.astype(np.float32)
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), scale, pad_x, pad_y

    def _decode(self, output):
        """Return (A, 4) ``cx, cy, w, h`` in input pixels and (A, 80) class scores."""
        if self.kind == 'yolov8n':
            pred = output[0].T
            return pred[:, :4], pred[:, 4:]
        pred = output[0]
        xy = (pred[:, :2] + self._grid) * self._strides
        wh = np.exp(np.minimum(pred[:, 2:4], 20.0)) * self._strides
        return np.concatenate([xy, wh], axis=1), pred[:, 4:5] * pred[:, 5:]

    def detect(self, bgr, min_score=MIN_CANDIDATE_SCORE):
        """Run the teacher on one image.

        Args:
            bgr: HxWx3 uint8 BGR image (a grey image replicated to three channels).
            min_score: candidates below this score are dropped.

        Returns:
            float32 array (N, 6) ``[x1, y1, x2, y2, score, class]``: box edges in pixels of
            ``bgr`` (clipped to it), score in [0, 1], class in our ids (:data:`CLASS_NAMES`).
            Candidates are NOT reduced by NMS (see :func:`pool_boxes`).

        Raises:
            ValueError: not an HxWx3 uint8 image.

        """
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f'teacher input must be HxWx3 uint8, got {bgr.shape} {bgr.dtype}')
        blob, scale, pad_x, pad_y = self._prepare(bgr)
        output = self.session.run(None, {self.input_name: blob})[0]
        cxcywh, class_scores = self._decode(output)
        coco_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(coco_ids)), coco_ids]
        ours = map_coco_classes(coco_ids)
        keep = (scores >= min_score) & (ours >= 0)
        cxcywh, scores, ours = cxcywh[keep], scores[keep], ours[keep]
        height, width = bgr.shape[:2]
        boxes = np.empty((len(scores), 6), np.float32)
        boxes[:, 0] = np.clip((cxcywh[:, 0] - cxcywh[:, 2] / 2 - pad_x) / scale, 0, width)
        boxes[:, 1] = np.clip((cxcywh[:, 1] - cxcywh[:, 3] / 2 - pad_y) / scale, 0, height)
        boxes[:, 2] = np.clip((cxcywh[:, 0] + cxcywh[:, 2] / 2 - pad_x) / scale, 0, width)
        boxes[:, 3] = np.clip((cxcywh[:, 1] + cxcywh[:, 3] / 2 - pad_y) / scale, 0, height)
        boxes[:, 4] = scores
        boxes[:, 5] = ours
        valid = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
        return boxes[valid]


def load_teachers(which='yolov8n', teachers_dir=None, threads=1):
    """Load the teacher(s) ``'yolov8n'``, ``'yolox'`` or ``'both'`` from ``teachers_dir``.

    Returns:
        list of :class:`Teacher`.

    Raises:
        ValueError: unknown choice, or no teachers folder (``shared/teachers`` not found and
            none given).

    """
    if which not in TEACHER_CHOICES:
        raise ValueError(f'unknown teacher {which!r}; choose from {TEACHER_CHOICES}')
    folder = Path(teachers_dir) if teachers_dir is not None else default_teachers_dir()
    if folder is None:
        raise ValueError('shared/teachers not found: pass --teachers-dir (or set '
                         'TARFUSE_SHARED)')
    kinds = ('yolov8n', 'yolox') if which == 'both' else (which,)
    return [Teacher(kind, folder / TEACHER_FILES[kind], threads) for kind in kinds]


# --------------------------------------------------------------------------------------------
# Pooling and label files
# --------------------------------------------------------------------------------------------
def pool_boxes(box_sets, iou=NMS_IOU, max_boxes=MAX_BOXES_PER_PAIR):
    """Pool boxes from several images/teachers of one pair with class-wise NMS.

    Args:
        box_sets: iterable of arrays (N_i, 6) ``[x1, y1, x2, y2, score, class]`` in the same
            pixel frame (the visible image).
        iou: NMS IoU threshold (boxes of one class overlapping more than this with a
            higher-scoring one are dropped; boxes of different classes never suppress each
            other).
        max_boxes: keep at most this many (the highest scores).

    Returns:
        float32 array (M, 6), sorted by score, highest first.

    """
    boxes = [np.asarray(b, np.float32).reshape(-1, 6) for b in box_sets]
    pooled = np.concatenate(boxes) if boxes else np.zeros((0, 6), np.float32)
    if len(pooled) == 0:
        return pooled
    tensor = torch.from_numpy(pooled)
    keep = batched_nms(tensor[:, :4], tensor[:, 4], tensor[:, 5].long(), float(iou))
    return pooled[keep[:max_boxes].numpy()]


def _visible_bgr(vi):
    if vi.dtype != np.uint8:  # 16-bit: the frame's robust range, grey or colour, as the engine
        vi = to_uint8(normalise(vi))
    return vi if vi.ndim == 3 else np.repeat(vi[:, :, None], 3, axis=2)


def _ir_bgr(ir, height, width):
    ir = ir if ir.dtype == np.uint8 else to_uint8(to_unit_gray(ir))
    if ir.shape[:2] != (height, width):
        ir = cv2.resize(ir, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.repeat(ir[:, :, None], 3, axis=2)


def pseudo_label_pair(teachers, ir, vi, iou=NMS_IOU, min_score=MIN_CANDIDATE_SCORE):
    """Detect on the visible and the IR image of one aligned pair and pool the boxes.

    Args:
        teachers: list of :class:`Teacher`.
        ir: HxW uint8/uint16 IR image aligned with ``vi`` (resized to the visible size when
            it differs, so it must have the visible image's aspect ratio).
        vi: HxWx3 BGR or HxW grey visible image (uint8; uint16 is mapped to 8 bits by its
            robust per-frame range, as the engine does: ``images.normalise``).
        iou: NMS IoU of the pooling.
        min_score: candidates below this score are dropped before pooling.

    Returns:
        float32 array (M, 6) ``[x1, y1, x2, y2, score, class]`` in visible pixels, by score.

    """
    vi_bgr = _visible_bgr(vi)
    height, width = vi_bgr.shape[:2]
    ir_bgr = _ir_bgr(ir, height, width)
    found = [t.detect(img, min_score) for t in teachers for img in (vi_bgr, ir_bgr)]
    return pool_boxes(found, iou)


def boxes_to_yolo(boxes, width, height):
    """Convert (N, >=6) ``[x1, y1, x2, y2, score, class]`` pixel boxes to YOLO rows.

    Returns:
        float64 array (N, 5) ``[class, cx, cy, w, h]`` normalised by ``width`` x ``height``
        (clipped to [0, 1]).

    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.size == 0:
        return np.zeros((0, 5), np.float64)
    x1 = np.clip(boxes[:, 0] / width, 0, 1)
    y1 = np.clip(boxes[:, 1] / height, 0, 1)
    x2 = np.clip(boxes[:, 2] / width, 0, 1)
    y2 = np.clip(boxes[:, 3] / height, 0, 1)
    return np.stack([boxes[:, 5], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)


# --------------------------------------------------------------------------------------------
# Calibration against human labels
# --------------------------------------------------------------------------------------------
def match_counts(pred, truth, iou=MATCH_IOU, num_classes=len(CLASS_NAMES)):
    """Count true/false positives and misses of one image, per class.

    Predictions are matched greedily by descending score to the unmatched ground-truth box of
    the same class with the highest IoU, if that IoU is >= ``iou``.

    Args:
        pred: (N, 6) ``[x1, y1, x2, y2, score, class]`` pixels.
        truth: (G, 5) ``[x1, y1, x2, y2, class]`` pixels.
        iou: matching IoU threshold.
        num_classes: classes counted (ids 0..K-1).

    Returns:
        int64 array (K, 3): per class ``[TP, FP, FN]``.

    """
    pred = np.asarray(pred, np.float64).reshape(-1, 6)
    truth = np.asarray(truth, np.float64).reshape(-1, 5)
    counts = np.zeros((num_classes, 3), np.int64)
    for cls in range(num_classes):
        p = pred[pred[:, 5] == cls]
        p = p[np.argsort(-p[:, 4], kind='stable')]
        g = truth[truth[:, 4] == cls]
        if len(p) and len(g):
            ious = box_iou(torch.from_numpy(p[:, :4]), torch.from_numpy(g[:, :4])).numpy()
        used = np.zeros(len(g), bool)
        tp = 0
        for i in range(len(p)):
            if not len(g):
                break
            row = np.where(used, -1.0, ious[i])
            j = int(row.argmax())
            if row[j] >= iou:
                used[j] = True
                tp += 1
        counts[cls] = (tp, len(p) - tp, len(g) - tp)
    return counts


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# Why the pairs must be aligned (data.check_aspect_ratios ends its message with it).
_NOT_ALIGNED = ('the teachers run on the IR and the visible image of each pair and their boxes '
                'are pooled in the visible frame, so the pairs must be aligned (the IR image is '
                'the visible frame, at any size): such a pair is not aligned as stored or not a '
                'pair, and the boxes found in its IR image, stretched to the visible frame, '
                'would land in the wrong place: align its IR image to the visible one, or leave '
                'it out of the split (a list file without it)')


def _split_stems(dataset_dir, splits):
    """Return the stems of ``splits`` joined in order, each once (also one listed twice).

    Split ``all`` leaves out the images whose stem the other folder lacks: logged as a warning.
    """
    stems = list(dict.fromkeys(
        stem for split in splits for stem in data.read_split(dataset_dir, split)))
    if 'all' in splits:
        for note in data.unpaired_notes(dataset_dir, shown=10):
            _LOG.warning('%s', note)
    return stems


def _gt_id_map(dataset_dir, labels_dir='labels'):
    """Map the label ids of ``labels_dir`` to ours by class name (-1: not one of ours)."""
    names = data.read_classes(dataset_dir, labels_dir)
    if names is None:
        raise ValueError(f'{str(dataset_dir)!r} has no classes.txt: cannot compare classes')
    ours = {name: i for i, name in enumerate(CLASS_NAMES)}
    return np.asarray([ours.get(n.lower(), -1) for n in names], np.int64)


def calibrate(teachers, dataset_dir, splits, labels_dir='labels',
              thresholds=CALIBRATION_THRESHOLDS, iou=NMS_IOU, match_iou=MATCH_IOU,
              max_pairs=None, progress=True):
    """Score pseudo-labels against human labels at several score thresholds.

    Args:
        teachers: list of :class:`Teacher`.
        dataset_dir: data set folder with human labels (``labels_dir``) and ``classes.txt``.
        splits: split names (their stems are joined, duplicates once); only stems with a label
            file are used.
        labels_dir: label sub-folder; its own ``classes.txt`` names its ids when it has one
            (else the set's).
        thresholds: score thresholds to evaluate.
        iou: pooling NMS IoU; match_iou: IoU for a pseudo box to count as a true positive.
        max_pairs: only the first N labelled pairs.
        progress: log progress every 25 pairs.

    Returns:
        dict: ``pairs``, ``thresholds`` (list of dicts ``{'score':, 'overall': {precision,
        recall, f1, tp, fp, fn}, 'per_class': {name: {...}}}``), ``best_score`` (the threshold
        with the highest overall F1; ties go to the higher threshold) and ``gt_boxes`` per
        class.

    Raises:
        ValueError: no labelled pair in the splits, no classes.txt, a label file with a
            bad line (a class id beyond classes.txt, ...), or pairs whose IR and visible
            images differ in aspect ratio.

    """
    thresholds = sorted(float(t) for t in thresholds)
    floor = min(MIN_CANDIDATE_SCORE, thresholds[0])
    id_map = _gt_id_map(dataset_dir, labels_dir)
    stems = _split_stems(dataset_dir, splits)
    # Every label file is read (and checked against classes.txt) before the teachers run.
    names = data.read_classes(dataset_dir, labels_dir)
    stems = [s for s in stems
             if data.load_labels(dataset_dir, s, labels_dir, names) is not None]
    if max_pairs is not None:
        stems = stems[:max_pairs]
    if not stems:
        raise ValueError(f'no pair of {splits} has a label file in {labels_dir}/')
    data.check_aspect_ratios([(dataset_dir, stem) for stem in stems], _NOT_ALIGNED)
    counts = np.zeros((len(thresholds), len(CLASS_NAMES), 3), np.int64)
    gt_boxes = np.zeros(len(CLASS_NAMES), np.int64)
    start = time.monotonic()
    for number, stem in enumerate(stems, start=1):
        ir, vi = data.load_pair(dataset_dir, stem)
        height, width = vi.shape[:2]
        pooled = pseudo_label_pair(teachers, ir, vi, iou, floor)
        labels = data.load_labels(dataset_dir, stem, labels_dir, names)
        truth = data.yolo_to_xyxy(labels, width, height)
        ids = id_map[truth[:, 4].astype(np.int64)] if len(truth) else np.zeros(0, np.int64)
        truth = truth[ids >= 0]
        truth[:, 4] = ids[ids >= 0]
        gt_boxes += np.bincount(truth[:, 4].astype(np.int64), minlength=len(CLASS_NAMES))
        for k, threshold in enumerate(thresholds):
            counts[k] += match_counts(pooled[pooled[:, 4] >= threshold], truth, match_iou)
        if progress and (number % 25 == 0 or number == len(stems)):
            _LOG.info('calibration %d/%d pairs (%.0f s)', number, len(stems),
                      time.monotonic() - start)
    rows = []
    for k, threshold in enumerate(thresholds):
        per_class = {}
        for c, name in enumerate(CLASS_NAMES):
            tp, fp, fn = (int(v) for v in counts[k, c])
            p, r, f = _prf(tp, fp, fn)
            per_class[name] = {'precision': p, 'recall': r, 'f1': f, 'tp': tp, 'fp': fp,
                               'fn': fn}
        tp, fp, fn = (int(v) for v in counts[k].sum(axis=0))
        p, r, f = _prf(tp, fp, fn)
        rows.append({'score': threshold, 'per_class': per_class,
                     'overall': {'precision': p, 'recall': r, 'f1': f, 'tp': tp, 'fp': fp,
                                 'fn': fn}})
    best = max(rows, key=lambda row: (round(row['overall']['f1'], 9), row['score']))
    return {'pairs': len(stems), 'thresholds': rows, 'best_score': best['score'],
            'gt_boxes': {n: int(v) for n, v in zip(CLASS_NAMES, gt_boxes)}}


def calibration_markdown(result, title):
    """Return a markdown table (precision / recall / F1 per threshold, overall and per class)."""
    head = '| score | P | R | F1 | ' + ' | '.join(
        f'{n} P | {n} R | {n} F1' for n in CLASS_NAMES) + ' |'
    lines = [f'### {title}', '',
             f'{result["pairs"]} labelled pairs; human boxes: '
             + ', '.join(f'{n} {v}' for n, v in result['gt_boxes'].items()) + '.', '',
             head, '|' + '---|' * (4 + 3 * len(CLASS_NAMES))]
    for row in result['thresholds']:
        cells = [f'{row["score"]:.2f}']
        cells += [f'{row["overall"][k]:.3f}' for k in ('precision', 'recall', 'f1')]
        for name in CLASS_NAMES:
            cells += [f'{row["per_class"][name][k]:.3f}' for k in ('precision', 'recall', 'f1')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', f'Best overall F1 at score >= {result["best_score"]:.2f}.', '']
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------
# Writing pseudo-labels
# --------------------------------------------------------------------------------------------
def _dataset_attribution(dataset_dir):
    """Return the source/licence bullets of the data set's README.md (may be empty)."""
    readme = Path(dataset_dir) / 'README.md'
    if not readme.is_file():
        return []
    lines, keep = [], False
    for line in readme.read_text().splitlines():
        if line.startswith('- '):
            keep = line[2:].lower().startswith(('source', 'license', 'licence'))
        elif not line.startswith('  '):
            keep = False
        if keep:
            lines.append(line)
    return lines


def write_provenance(out_dir, *, teachers, dataset_dir, splits, score, iou, command, counts,
                     skipped, note=None):
    """Write ``out_dir/README.md``: what made the labels, for which images, and how many.

    Args:
        out_dir: output folder (holding ``labels/``).
        teachers: the :class:`Teacher` objects used (file name and sha256 recorded).
        dataset_dir: the data set whose images were labelled (recorded as given).
        splits: split names used.
        score: score threshold; iou: pooling NMS IoU.
        command: the command line, as one string.
        counts: dict with ``pairs`` (label files written) and ``boxes`` (per class name).
        skipped: number of stems left out because they have human labels.
        note: optional extra markdown paragraph.

    Returns:
        the README path.

    """
    out_dir = Path(out_dir)
    skipped_line = ("- Pairs with a human label file in the data set's `labels/` were left out "
                    f'(human labels win): {skipped}.' if skipped is not None else
                    '- Pairs with human labels were not left out.')
    class_map = ', '.join(f'{COCO_NAMES[c]} -> {CLASS_NAMES[o]}' for c, o in
                          sorted(COCO_TO_OURS.items()))
    lines = [
        f'# Pseudo-labels for {Path(dataset_dir).name} ({", ".join(splits)})', '',
        f'YOLO label files (`labels/<stem>.txt`: `class cx cy w h`, normalised to the visible '
        f'image) for the IR/visible pairs of `{dataset_dir}` (splits: '
        f'{", ".join(f"`{s}`" for s in splits)}). They are labels for the images in that '
        f'folder; the images are not copied here. Classes (`labels/classes.txt`): '
        f'{", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))}. `scores.tsv` lists the '
        f'same boxes with their teacher scores.', '',
        'Made by `tarfuse-pseudo-label` (tarfuse_ros/tools/pseudo_label.py): machine-made, '
        'not checked by a person. Use them for training only, never for evaluation.', '',
        '## How', '',
        '- Teachers (ONNX, run with onnxruntime on the CPU):',
    ]
    for teacher in teachers:
        lines.append(f'  - `{teacher.path.name}` sha256 `{file_sha256(teacher.path)}` '
                     f'({TEACHER_SOURCES[teacher.kind]})')
    lines += [
        '- Each teacher ran on the visible image and on the IR image (grey replicated to 3 '
        'channels), preprocessed as `shared/teachers/README.md` specifies.',
        f'- Pooling: the boxes of both images{" and both teachers" if len(teachers) > 1 else ""}'
        f' merged by class-wise NMS at IoU {iou:g} (torchvision `batched_nms`).',
        f'- Score threshold: boxes with score >= {score:g} kept.',
        f'- Class map (COCO -> ours): {class_map}; other COCO classes dropped. Why: our label '
        "sets (FLIR-derived RoadScene, MSRS) have only these three classes and label riders' "
        'two-wheelers as bicycle and all road vehicles as car.',
        '- A pair on which the teachers found nothing has an empty label file (for the '
        'training: labelled, no objects).',
        skipped_line,
        f'- Date: {datetime.datetime.now(datetime.timezone.utc).date().isoformat()} (UTC).',
        f'- Command: `{command}`',
        '',
        '## Counts', '',
        f'{counts["pairs"]} label files; boxes: '
        + ', '.join(f'{n} {counts["boxes"][n]}' for n in CLASS_NAMES)
        + f' ({sum(counts["boxes"].values())} in all).', '',
    ]
    lines += [
        '## Use in training', '',
        '`stems.txt` lists the pseudo-labelled stems. A `PairedDataset` source (absolute paths; '
        'a relative `labels` is taken inside the data set folder):', '',
        "`{'path': '<data set>', 'split': '<this folder>/stems.txt', "
        "'labels': '<this folder>/labels'}`", '',
        "Pairs with human labels come from a second source on the data set's own `labels/`.",
        '',
    ]
    set_classes = data.read_classes(dataset_dir)
    if set_classes is not None and [c.lower() for c in set_classes] == list(CLASS_NAMES):
        lines += ["The data set's own classes.txt lists the same classes in the same order, so "
                  'a data set class map read from it applies to these files too.', '']
    else:
        theirs = 'the data set has no classes.txt' if set_classes is None else \
            f"the data set's classes.txt lists other classes ({', '.join(set_classes)})"
        lines += [f'Note: {theirs}; ids here follow `labels/classes.txt`.', '']
    if (out_dir / 'calibration.md').is_file():
        lines += ['## Threshold', '',
                  'How the threshold was chosen (pseudo-labels scored against human labels): '
                  'see [calibration.md](calibration.md).', '']
    attribution = _dataset_attribution(dataset_dir)
    if (Path(dataset_dir) / 'README.md').is_file():
        terms = 'its README.md gives their source and terms' + (
            ', quoted here:' if attribution else '.')
    else:
        terms = 'it has no README.md: record their source and terms here before sharing them.'
    lines += ['## Images: source and terms', '',
              f'The images these labels describe belong to `{dataset_dir}`; {terms}', '']
    lines += attribution + ([''] if attribution else [])
    if note:
        lines += [note.strip(), '']
    path = out_dir / 'README.md'
    write_text_atomic(path, '\n'.join(lines))  # whole or not at all
    return path


def pseudo_label(teachers, dataset_dir, splits, out_dir, score=DEFAULT_SCORE, iou=NMS_IOU,
                 skip_labelled=False, overwrite=False, command='', max_pairs=None,
                 progress=True, note=None):
    """Pseudo-label the pairs of the given splits and write labels, scores and README.

    Args:
        teachers: list of :class:`Teacher`.
        dataset_dir: data set folder (``ir/``, ``vi/``, list files).
        splits: split names (stems joined in order, each once).
        out_dir: output folder; label files go to ``out_dir/labels/``.
        score: keep boxes with score >= this (in (0, 1]).
        iou: pooling NMS IoU.
        skip_labelled: leave out stems with a human label file in ``dataset_dir/labels/``.
        overwrite: replace an earlier run's ``out_dir/labels/``, ``stems.txt``,
            ``scores.tsv`` and ``README.md`` (else refuse if one is present, e.g. a project's
            own README.md). Nothing is written until every pair is labelled: the new labels
            are then put in place as a whole (:func:`_put_in_place`), so a run that fails or
            is stopped before leaves the earlier ones as they were.
        command: command line recorded in the README.
        max_pairs: only the first N pairs (tests).
        progress: log progress every 25 pairs.
        note: extra paragraph for the README.

    Returns:
        dict: ``pairs`` (files written), ``skipped`` (human-labelled stems left out),
        ``boxes`` (count per class name), ``stems``.

    Raises:
        ValueError: bad threshold, unknown split, a split without pairs, pairs whose IR and
            visible images differ in aspect ratio, existing outputs without ``overwrite``, or
            a ``labels/`` holding anything but label files.
        InterruptedWhenComplete: a SIGINT or SIGTERM came while the outputs were put in
            place; they all were (its ``result`` is the dict returned otherwise).

    """
    if not 0.0 < float(score) <= 1.0:
        raise ValueError(f'score threshold must be in (0, 1], got {score}')
    dataset_dir = Path(dataset_dir)
    out_dir = Path(out_dir)
    labels_out = out_dir / 'labels'
    # Any data set's folder: --overwrite deleted the human labels of another set (a copy).
    same = (out_dir.resolve() / 'labels') == (dataset_dir.resolve() / 'labels')
    if same or ((out_dir / 'ir').is_dir() and (out_dir / 'vi').is_dir()):
        which = 'the data set folder' if same else 'the folder of another data set (ir/, vi/)'
        raise ValueError(f'--out {str(out_dir)!r} is {which}, whose labels/ is for human '
                         'labels (pseudo-labels there would pass for them, and never replace '
                         'them); give another --out')
    # So is a labels/ that is a link to such a folder (--overwrite deleted through it).
    target = labels_out.resolve()
    if labels_out.is_symlink() and (target == (dataset_dir / 'labels').resolve() or (
            (target.parent / 'ir').is_dir() and (target.parent / 'vi').is_dir())):
        raise ValueError(f'--out {str(out_dir)!r}: its labels/ is a link to {str(target)!r}, '
                         'the human labels of a data set (pseudo-labels there would pass for '
                         'them, and never replace them); give another --out')
    existing = sorted(p for p in labels_out.glob('*.txt') if p.name != 'classes.txt') \
        if labels_out.is_dir() else []
    summaries = [out_dir / name for name in ('stems.txt', 'scores.tsv', 'README.md')]
    taken = [f'{len(existing)} label files in labels/'] if existing else []
    taken += [path.name for path in summaries if path.exists()]
    if taken and not overwrite:
        raise ValueError(f'{str(out_dir)!r} already holds {", ".join(taken)}; pass '
                         '--overwrite to replace them, or give another --out')
    # labels/ is replaced as a whole: what else it holds would go with it.
    others = sorted(p.name for p in labels_out.iterdir() if p.suffix != '.txt' or not
                    p.is_file()) if labels_out.is_dir() and not labels_out.is_symlink() else []
    if others:
        more = f' and {len(others) - 5} more' if len(others) > 5 else ''
        raise ValueError(f'{str(labels_out)!r} holds {", ".join(others[:5])}{more}, which are no '
                         'label files: the run replaces that folder as a whole; move them '
                         'elsewhere, or give another --out')
    stems = _split_stems(dataset_dir, splits)
    if not stems:
        raise ValueError(f'no pair to label: {", ".join(splits)} of {str(dataset_dir)!r} holds '
                         'no stem with an image in both ir/ and vi/ (file types: '
                         f'{" ".join(data.IMAGE_EXTENSIONS)})')
    # stems.txt must read back as a split (data.read_split): '#' starts a comment there.
    unlisted = [repr(s) for s in stems if s.split('#', 1)[0].strip() != s]
    if unlisted:
        raise ValueError(f'stems.txt could not list {len(unlisted)} pair(s) '
                         f'({", ".join(unlisted[:10])}): a list file ends a stem at "#" and '
                         'drops the spaces around it; rename their images')
    skipped = 0
    if skip_labelled:
        kept = [s for s in stems if not (dataset_dir / 'labels' / f'{s}.txt').is_file()]
        skipped = len(stems) - len(kept)
        if stems and not kept:  # exit 0 with an empty stems.txt, a split with no pair
            raise ValueError(f'every one of the {len(stems)} pairs has a human label file in '
                             f'{dataset_dir / "labels"} (--skip-labelled): nothing to '
                             f'pseudo-label')
        stems = kept
    if max_pairs is not None:
        stems = stems[:max_pairs]
    data.check_aspect_ratios([(dataset_dir, stem) for stem in stems], _NOT_ALIGNED)
    # The label files are kept here until every pair is labelled: a run stopped half-way (an
    # unreadable image, Ctrl-C, SIGKILL) leaves an earlier run's outputs as they were.
    label_texts = {'classes.txt': ''.join(f'{n}\n' for n in CLASS_NAMES)}
    boxes_per_class = np.zeros(len(CLASS_NAMES), np.int64)
    score_rows = ['stem\tclass\tcx\tcy\tw\th\tscore']
    start = time.monotonic()
    for number, stem in enumerate(stems, start=1):
        try:
            ir, vi = data.load_pair(dataset_dir, stem)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; nothing was written to {out_dir} (an earlier run's outputs there are "
                f'kept): mend or leave out that pair (a split file), then run again') from exc
        height, width = vi.shape[:2]
        pooled = pseudo_label_pair(teachers, ir, vi, iou, min(MIN_CANDIDATE_SCORE, score))
        pooled = pooled[pooled[:, 4] >= score]
        yolo = boxes_to_yolo(pooled, width, height)
        # A box of no area at 6 decimals (clipped away at an edge) is refused by the readers:
        # left out of the file, and of the counts and scores.
        text, kept = data.yolo_label_text(yolo)
        yolo, pooled = yolo[kept], pooled[kept]
        label_texts[f'{stem}.txt'] = text
        boxes_per_class += np.bincount(yolo[:, 0].astype(np.int64), minlength=len(CLASS_NAMES))
        for row, box in zip(yolo, pooled):
            score_rows.append(f'{stem}\t{int(row[0])}\t{row[1]:.6f}\t{row[2]:.6f}\t'
                              f'{row[3]:.6f}\t{row[4]:.6f}\t{box[4]:.4f}')
        if progress and (number % 25 == 0 or number == len(stems)):
            _LOG.info('pseudo-labelled %d/%d pairs (%.0f s)', number, len(stems),
                      time.monotonic() - start)
    counts = {'pairs': len(stems),
              'boxes': {n: int(v) for n, v in zip(CLASS_NAMES, boxes_per_class)}}
    result = {**counts, 'skipped': skipped, 'stems': stems}
    stops = []
    # Claimed first: a Ctrl-C while it waits for another run's claim stops it (nothing written).
    with _out_claimed(out_dir), interrupts_held(stops):
        _put_in_place(out_dir, label_texts, '\n'.join(score_rows) + '\n')
        write_provenance(out_dir, teachers=teachers, dataset_dir=dataset_dir, splits=splits,
                         score=score, iou=iou, command=command, counts=counts,
                         skipped=skipped if skip_labelled else None, note=note)
        # Last: a stems.txt (the list training reads) is there only beside its own labels.
        write_text_atomic(out_dir / 'stems.txt', ''.join(f'{s}\n' for s in stems))
    if stops:
        raise InterruptedWhenComplete(result, 'interrupted once the labelling was complete')
    return result


def _put_in_place(out_dir, label_texts, scores_text):
    """Replace ``out_dir``'s ``labels/`` and ``scores.tsv`` by these, each whole.

    The earlier run's ``stems.txt``, ``scores.tsv`` and ``README.md`` go first (``stems.txt``,
    the list training reads, before the others): whatever stops the process on the way, no
    summary is left beside labels it does not describe. The temporaries a writer killed while
    it wrote them left (``labels.<hex>.tmp``, ``stems.txt.<hex>.tmp``, ...) go too.
    """
    for name in ('stems.txt', 'scores.tsv', 'README.md'):
        (out_dir / name).unlink(missing_ok=True)
    labels_out = out_dir / 'labels'
    for name in ('labels', 'stems.txt', 'scores.tsv', 'README.md'):
        remove_stale_outputs(out_dir / name)
    with atomic_output(labels_out, folder=True) as folder:
        for name, text in label_texts.items():
            (folder / name).write_text(text)
    write_text_atomic(out_dir / 'scores.tsv', scores_text)


@contextmanager
def _out_claimed(out_dir):
    """Create ``out_dir`` and hold an exclusive ``flock`` on it while the block runs.

    A second run into the same folder waits here, saying so, until the first has put all of its
    outputs in place: their steps interleaved could leave one run's ``stems.txt`` beside the
    other's labels. Where the file system has no ``flock`` the block runs without one.
    """
    def no_flock(reason):
        _LOG.warning('no lock on %s (%s): a second run into it at the same moment could mix its '
                     'outputs with this one', out_dir, reason)

    def descriptor():
        return os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        claim = lock_exclusive(descriptor(), no_flock=no_flock)
    except BlockingIOError:  # silent before: the run seemed to hang once labelling was done
        _LOG.info('waiting for another run into %s to put its outputs in place', out_dir)
        claim = lock_exclusive(descriptor(), wait=True, no_flock=no_flock)
    try:
        yield
    finally:
        if claim is not None:
            os.close(claim)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser():
    """Return the ``tarfuse-pseudo-label`` argument parser."""
    parser = argparse.ArgumentParser(
        prog='tarfuse-pseudo-label',
        description='Pseudo-label aligned IR/visible pairs with COCO teachers (ONNX), or '
                    'calibrate the score threshold against human labels.')
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, list files) or a shared set name')
    parser.add_argument('--split', action='append', default=None,
                        help='split name or list file; repeat to join several (default train)')
    parser.add_argument('--out', default=None,
                        help='output folder (labels/, scores.tsv, README.md); required unless '
                             '--calibrate')
    parser.add_argument('--teacher', default='yolov8n', choices=TEACHER_CHOICES,
                        help='teacher detector(s) (default yolov8n)')
    parser.add_argument('--teachers-dir', default=None,
                        help='folder of the ONNX teachers (default: shared/teachers)')
    parser.add_argument('--score', type=float, default=DEFAULT_SCORE,
                        help=f'keep boxes with score >= this (default {DEFAULT_SCORE}, chosen '
                             'with --calibrate)')
    parser.add_argument('--iou', type=float, default=NMS_IOU,
                        help=f'IoU of the class-wise NMS pooling, in (0, 1] (default {NMS_IOU})')
    parser.add_argument('--skip-labelled', action='store_true',
                        help="leave out stems with a human label file in the set's labels/")
    parser.add_argument('--overwrite', action='store_true',
                        help="replace an earlier run's outputs in --out (labels/, stems.txt, "
                             'scores.tsv, README.md) once every pair is labelled')
    parser.add_argument('--calibrate', action='store_true',
                        help='score pseudo-labels against human labels at several thresholds')
    parser.add_argument('--labels', default='labels',
                        help='human label sub-folder for --calibrate (default labels)')
    parser.add_argument('--thresholds', default=None,
                        help='comma-separated score thresholds in (0, 1] for --calibrate')
    parser.add_argument('--threads', type=int, default=1,
                        help='onnxruntime intra-op threads (default 1)')
    parser.add_argument('--max-pairs', type=int, default=None, help='only the first N pairs')
    parser.add_argument('--note', default=None, help='extra paragraph for the README')
    return parser


def _check_fraction(option, value):
    """Raise ``ValueError`` unless ``value`` is in (0, 1] (a score or an IoU)."""
    if not 0.0 < value <= 1.0:
        raise ValueError(f'{option} must be in (0, 1], got {value:g}')


def _parse_thresholds(text):
    """Return the ``--thresholds`` list (:data:`CALIBRATION_THRESHOLDS` when not given)."""
    if text is None:
        return CALIBRATION_THRESHOLDS
    thresholds = []
    for word in (w.strip() for w in text.split(',') if w.strip()):
        try:
            thresholds.append(float(word))
        except ValueError:
            raise ValueError(f'--thresholds {text!r}: {word!r} is not a number') from None
        _check_fraction('--thresholds', thresholds[-1])
    if not thresholds:
        raise ValueError(f'--thresholds {text!r} names no threshold; give comma-separated '
                         'scores such as 0.2,0.3,0.4')
    return thresholds


def main(argv=None):
    """Entry point of ``tarfuse-pseudo-label``; returns the exit status (130: stopped)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    # SIGTERM (timeout, kill, a job scheduler) stops it as Ctrl-C does, saying what is left (it
    # ended the process without a word).
    with terminate_as_interrupt():
        return _run(args, argv)


def _run(args, argv):
    """Do what the parsed ``args`` ask; return the exit status."""
    # A program may set process-wide thread counts; keep them small on a shared machine.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    splits = args.split or ['train']
    words = sys.argv[1:] if argv is None else list(argv)
    command = ' '.join(['tarfuse-pseudo-label'] + [shlex.quote(str(w)) for w in words])
    try:
        # Checked before the teachers load; a shared set name works as in tarfuse-eval/-train.
        if args.max_pairs is not None and args.max_pairs < 1:
            raise ValueError(f'--max-pairs must be >= 1, got {args.max_pairs}')
        if args.threads < 1:
            raise ValueError(f'--threads must be >= 1, got {args.threads}')
        thresholds = _parse_thresholds(args.thresholds)
        for option, value in (('--score', args.score), ('--iou', args.iou)):
            _check_fraction(option, value)
        # The labels go to --out/labels: a read-only labels/ (or a file of that name) too.
        folders = [args.out] + ([] if args.calibrate else [Path(args.out) / 'labels']) \
            if args.out else []
        problem = next(filter(None, (output_problem(f, folder=True) for f in folders)), None)
        if problem:
            raise ValueError(f'--out {args.out!r} cannot be written ({problem}); give a '
                             'folder you can write to (created if needed)')
        from tarfuse_ros.training.datasets import resolve_dataset_dir
        dataset_dir = resolve_dataset_dir(args.data)
        teachers = load_teachers(args.teacher, args.teachers_dir, args.threads)
        if args.calibrate:
            result = calibrate(teachers, dataset_dir, splits, args.labels, thresholds,
                               args.iou, max_pairs=args.max_pairs)
            title = (f'{Path(args.data).name} {"+".join(splits)}, teacher {args.teacher}, '
                     f'NMS IoU {args.iou:g}, match IoU {MATCH_IOU:g}')
            text = calibration_markdown(result, title)
            print(text)
            if args.out:  # both records or neither: a stop waits for them
                record = json.dumps({'command': command, 'teacher': args.teacher, **result})
                with interrupts_held([]):
                    _append_whole(Path(args.out) / 'calibration.md',
                                  f'Command: `{command}`\n\n{text}\n')
                    _append_whole(Path(args.out) / 'calibration.jsonl', record + '\n')
            return 0
        if not args.out:
            raise ValueError('--out is required (or pass --calibrate)')
        result = pseudo_label(teachers, dataset_dir, splits, args.out, args.score, args.iou,
                              args.skip_labelled, args.overwrite, command, args.max_pairs,
                              note=args.note)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f'tarfuse-pseudo-label: error: {exc}', file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk or a read-only stems.txt: one line
        where = f'{exc.filename}: ' if exc.filename else ''
        print(f'tarfuse-pseudo-label: error: {where}{exc.strerror or exc}', file=sys.stderr)
        return 1
    except InterruptedWhenComplete as stop:  # all outputs were put in place first
        print(_written(args.out, stop.result))
        print('tarfuse-pseudo-label: interrupted once the labelling was complete: wrote '
              f'{Path(args.out) / "labels"}, stems.txt, scores.tsv and README.md',
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say what is left, no traceback
        left = ('nothing was written' if args.calibrate else
                f'the labelling is incomplete: nothing written to {args.out} (an earlier '
                "run's labels/, stems.txt, scores.tsv and README.md are kept)")
        print(f'tarfuse-pseudo-label: interrupted: {left}', file=sys.stderr)
        return 130
    print(_written(args.out, result))
    return 0


def _append_whole(path, text):
    """Append ``text`` to the file ``path`` by replacing the file whole (``open('a')`` did not).

    A write killed half-way cut its record short, and the next one went on the same line (a
    JSON line that no reader takes, the two records lost); now the file is the old one or the
    new one. A cut last line an earlier version left is ended, so the new record is a line of
    its own.
    """
    old = path.read_text(encoding='utf-8') if path.is_file() else ''
    if old and not old.endswith('\n'):
        old += '\n'
    write_text_atomic(path, old + text)


def _written(out, result):
    """Return the line that says what a run wrote to ``out``."""
    return (f'wrote {result["pairs"]} label files to {Path(out) / "labels"} '
            f'(skipped {result["skipped"]} human-labelled); boxes: '
            + ', '.join(f'{n} {v}' for n, v in result['boxes'].items()))


if __name__ == '__main__':
    sys.exit(main())
