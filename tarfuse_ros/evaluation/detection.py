"""Detection AP of an evaluation, computed by ultralytics' own validation code.

The figures are those ``yolo val`` reports, so they compare with published YOLO numbers and
with the teachers' measured accuracy:

- matching: ``ultralytics.engine.validator.BaseValidator.match_predictions`` (greedy, in
  falling score order, each detection takes the best still unclaimed ground-truth box of its
  class with IoU >= the threshold; IoU by ``ultralytics.utils.metrics.box_iou``), at the ten
  COCO thresholds 0.50:0.05:0.95;
- AP: ``ultralytics.utils.metrics.ap_per_class`` (precision envelope, 101-point
  interpolation integrated with the trapezoid rule, as COCO's 101 recall points; a class with
  ground truth and no detection has AP 0; classes without ground truth are not averaged).

Checked against ultralytics 8.4.190 (:data:`tarfuse_ros.core.model.yolo.ULTRALYTICS_VERSION`);
``test/tools/test_evaluate_targets.py`` pins the figures on hand-made cases.

Operating points (:func:`operating_points`): what a user of the node gets at one confidence
threshold, as precision, recall and F1 = 2PR / (P + R) per class and over all boxes, the
detections above the threshold matched to the ground truth at IoU 0.5 by the same
``match_predictions`` (run on those detections only: what the node publishes at that
threshold is scored as it stands).
"""

from types import SimpleNamespace

import numpy as np
import torch

__all__ = ['AP_METHOD', 'COCO_IOU_THRESHOLDS', 'detection_summary', 'operating_points']

# How :func:`detection_summary` computes AP, in one line (metrics.json, benchmark outputs).
AP_METHOD = ('AP by ultralytics (ap_per_class, match_predictions: 101-point interpolated AP, '
             'IoU 0.5 and 0.5:0.95), max 100 detections/image')

COCO_IOU_THRESHOLDS = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))


def _as_rows(array, columns):
    array = np.asarray(array, np.float64)
    return array.reshape(-1, columns) if array.size else np.zeros((0, columns))


def detection_summary(predictions, targets, class_names=None, max_detections=100):
    """Return the COCO-style detection figures of a set of images.

    Args:
        predictions: one array per image, (N, 6) ``[x1, y1, x2, y2, score, class_id]``, pixels.
        targets: one array per image, (M, 5) ``[x1, y1, x2, y2, class_id]`` (same pixels).
        class_names: optional sequence naming class ids (keys of ``per_class``).
        max_detections: per image, only the highest-scoring detections count (COCO: 100).

    Returns:
        dict ``map50``, ``map50_95`` (means over the classes with ground truth; NaN when there
        is none), ``per_class`` {name: {``ap50``, ``ap50_95``, ``num_gt``}}, ``num_images``,
        ``num_gt``, ``num_detections``.

    Raises:
        ValueError: not one prediction array per target array, or non-finite values.

    """
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou
    if len(predictions) != len(targets):
        raise ValueError(f'need one prediction array per target array, got '
                         f'{len(predictions)} and {len(targets)}')
    iouv = torch.tensor(COCO_IOU_THRESHOLDS)
    matcher = SimpleNamespace(iouv=iouv)  # match_predictions reads only self.iouv
    tps, confs, pred_cls, target_cls = [], [], [], []
    num_detections = 0
    for index, (pred, truth) in enumerate(zip(predictions, targets)):
        pred, truth = _as_rows(pred, 6), _as_rows(truth, 5)
        if not (np.isfinite(pred).all() and np.isfinite(truth).all()):
            raise ValueError(f'image {index}: detections or targets hold non-finite values')
        pred = pred[np.argsort(-pred[:, 4], kind='mergesort')][:max_detections]
        num_detections += len(pred)
        target_cls.append(truth[:, 4])
        if len(truth) and len(pred):
            iou = box_iou(torch.from_numpy(truth[:, :4]), torch.from_numpy(pred[:, :4]))
            correct = BaseValidator.match_predictions(
                matcher, torch.from_numpy(pred[:, 5]), torch.from_numpy(truth[:, 4]), iou)
            tps.append(correct.numpy().astype(bool))
        else:
            tps.append(np.zeros((len(pred), len(iouv)), bool))
        confs.append(pred[:, 4])
        pred_cls.append(pred[:, 5])
    target_cls = np.concatenate(target_cls) if target_cls else np.zeros(0)
    out = {'map50': float('nan'), 'map50_95': float('nan'), 'per_class': {},
           'num_images': len(targets), 'num_gt': int(len(target_cls)),
           'num_detections': int(num_detections)}
    if not len(target_cls):
        return out
    tp = np.concatenate(tps) if tps else np.zeros((0, len(iouv)), bool)
    conf = np.concatenate(confs) if confs else np.zeros(0)
    classes = np.concatenate(pred_cls) if pred_cls else np.zeros(0)
    result = ap_per_class(tp, conf, classes, target_cls)
    ap, unique_classes = result[5], result[6]
    counts = {int(c): int((target_cls == c).sum()) for c in unique_classes}
    for row, class_id in zip(ap, unique_classes):
        class_id = int(class_id)
        name = (class_names[class_id] if class_names is not None
                and 0 <= class_id < len(class_names) else str(class_id))
        out['per_class'][name] = {'ap50': float(row[0]), 'ap50_95': float(row.mean()),
                                  'num_gt': counts[class_id]}
    out['map50'] = float(ap[:, 0].mean())
    out['map50_95'] = float(ap.mean())
    return out


def _ratio(num, den):
    return float(num) / float(den) if den else float('nan')


def _f1(precision, recall):
    if not (precision + recall > 0):  # both 0, or NaN
        return 0.0 if precision == 0 or recall == 0 else float('nan')
    return 2.0 * precision * recall / (precision + recall)


def operating_points(predictions, targets, thresholds, class_names=None, iou=0.5,
                     max_detections=100):
    """Return precision, recall and F1 at each confidence threshold (module docstring).

    Args:
        predictions: one array per image, (N, 6) ``[x1, y1, x2, y2, score, class_id]``, pixels
            (detections of a low NMS confidence threshold, e.g. 0.001, so that every threshold
            of ``thresholds`` above it sees the detections the node would publish).
        targets: one array per image, (M, 5) ``[x1, y1, x2, y2, class_id]`` (same pixels).
        thresholds: confidence thresholds in [0, 1]; a detection counts at ``t`` when its score
            is >= ``t``.
        class_names: optional sequence naming class ids (keys of ``per_class``).
        iou: IoU a detection needs with a ground-truth box of its class to be a true positive.
        max_detections: per image, only the highest-scoring detections count.

    Returns:
        list, one dict per threshold: ``conf``; ``per_class`` {name: {``precision``,
        ``recall``, ``f1``, ``tp``, ``fp``, ``num_gt``}} for the classes with ground truth
        (precision NaN where a class has no detection: F1 0 then); ``precision``, ``recall``,
        ``f1`` over all boxes; ``mean_f1`` over the classes with ground truth.

    Raises:
        ValueError: not one prediction array per target array, non-finite values, or a
            threshold outside [0, 1].

    """
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou
    if len(predictions) != len(targets):
        raise ValueError(f'need one prediction array per target array, got '
                         f'{len(predictions)} and {len(targets)}')
    thresholds = [float(t) for t in thresholds]
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f'confidence thresholds must be in [0, 1], got {thresholds}')
    matcher = SimpleNamespace(iouv=torch.tensor([float(iou)]))
    images = []
    for index, (pred, truth) in enumerate(zip(predictions, targets)):
        pred, truth = _as_rows(pred, 6), _as_rows(truth, 5)
        if not (np.isfinite(pred).all() and np.isfinite(truth).all()):
            raise ValueError(f'image {index}: detections or targets hold non-finite values')
        pred = pred[np.argsort(-pred[:, 4], kind='mergesort')][:max_detections]
        images.append((pred, truth))
    gt_classes = sorted({int(c) for _, truth in images for c in truth[:, 4]})

    def name(class_id):
        return (class_names[class_id] if class_names is not None
                and 0 <= class_id < len(class_names) else str(class_id))

    out = []
    for threshold in thresholds:
        tp = dict.fromkeys(gt_classes, 0)
        fp = dict.fromkeys(gt_classes, 0)
        extra_fp = 0  # detections of classes without ground truth
        for pred, truth in images:
            kept = pred[pred[:, 4] >= threshold]
            if not len(kept):
                continue
            if len(truth):
                overlap = box_iou(torch.from_numpy(truth[:, :4]), torch.from_numpy(kept[:, :4]))
                correct = BaseValidator.match_predictions(
                    matcher, torch.from_numpy(kept[:, 5]), torch.from_numpy(truth[:, 4]),
                    overlap).numpy()[:, 0]
            else:
                correct = np.zeros(len(kept), bool)
            for class_id, hit in zip(kept[:, 5].astype(int), correct):
                if class_id not in tp:
                    extra_fp += 1
                elif hit:
                    tp[class_id] += 1
                else:
                    fp[class_id] += 1
        per_class = {}
        for class_id in gt_classes:
            num_gt = int(sum((truth[:, 4] == class_id).sum() for _, truth in images))
            precision = _ratio(tp[class_id], tp[class_id] + fp[class_id])
            recall = _ratio(tp[class_id], num_gt)
            per_class[name(class_id)] = {
                'precision': precision, 'recall': recall,
                'f1': _f1(0.0 if np.isnan(precision) else precision, recall),
                'tp': tp[class_id], 'fp': fp[class_id], 'num_gt': num_gt}
        all_tp, all_gt = sum(tp.values()), sum(v['num_gt'] for v in per_class.values())
        precision = _ratio(all_tp, all_tp + sum(fp.values()) + extra_fp)
        recall = _ratio(all_tp, all_gt)
        out.append({'conf': threshold, 'per_class': per_class, 'precision': precision,
                    'recall': recall,
                    'f1': _f1(0.0 if np.isnan(precision) else precision, recall),
                    'mean_f1': (float(np.mean([v['f1'] for v in per_class.values()]))
                                if per_class else float('nan'))})
    return out
