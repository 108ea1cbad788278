"""Detection AP of a checkpoint on the aligned pairs of a labelled split (a quick held-out probe).

Usage: python benchmarks/probe_detection.py --set rs_extra --weights FILE [--iou 0.6]
[--conf 0.001] [--threads 1] [--out FILE.json]

The defaults are ``tarfuse-eval``'s NMS settings; the selection rules of the detection runs
score with ``--iou 0.7``.

The selection rules of the detection runs (``training/det_v15cfg/SELECTION.md``) score candidate
heads on held-out pairs without the deformation ``tarfuse-eval`` applies: the stored IR is
aligned, the engine (:class:`~tarfuse_ros.core.engine.FusionEngine`, the checkpoint's own
inference settings) fuses it with the visible image, and its detections are scored against
the labels by the AP code of ``tarfuse-eval`` (:mod:`tarfuse_ros.evaluation.detection`,
ultralytics' validation code). Sets (``--set``): ``rs_extra`` (RoadScene ``extra`` with
labels: 24 pairs), ``rs_test`` (RoadScene ``test`` with labels: 10), ``msrs_val``
(``msrs_train`` val: 30), ``msrs_det`` (the MSRS detection test pairs: 35). Prints one line:
pairs, boxes, mAP@0.5 and AP@0.5 per class.
"""

import argparse
import json
import sys

from bench_args import check_outputs
import numpy as np
from tarfuse_ros.core import data
from tarfuse_ros.evaluation import inputs
from tarfuse_ros.evaluation.detection import detection_summary
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

SETS = {'rs_extra': ('roadscene', ('extra', 'det_labelled')),
        'rs_test': ('roadscene', ('test', 'det_labelled')),
        'msrs_val': ('msrs_train', ('val',)),
        'msrs_det': ('msrs_det', ('test',))}


def probe(set_name, weights, conf=0.001, iou=0.6, with_arrays=False):
    """Return ``(summary, detections)``: :func:`detection_summary` and the boxes per stem.

    With ``with_arrays``, also the per-image prediction and target arrays that
    :func:`detection_summary` scored and the model's class names: ``(summary, detections,
    predictions, targets, class_names)``.

    Raises:
        KeyError: ``set_name`` is not one of :data:`SETS`.

    """
    from tarfuse_ros.core.engine import FusionEngine
    dataset, splits = SETS[set_name]
    dataset_dir = resolve_dataset_dir(dataset)
    stems = data.DataSource(dataset_dir, splits[0]).stems()
    for split in splits[1:]:
        keep = set(data.DataSource(dataset_dir, split).stems())
        stems = [stem for stem in stems if stem in keep]
    engine = FusionEngine(weights, device='cpu', conf_threshold=conf, iou_threshold=iou,
                          max_detections=100)
    lookup = inputs.class_lookup(dataset_dir, list(engine.class_names))
    predictions, truths, per_stem = [], [], {}
    for stem in stems:
        labels = data.load_labels(dataset_dir, stem, 'labels')
        if labels is None:
            continue
        ir_raw, vi_raw = data.load_pair(dataset_dir, stem)
        pair = inputs.prepare(ir_raw, vi_raw, None, name=stem)
        height, width = pair.vi_y.shape
        truths.append(inputs.targets(labels, lookup, width, height)[0])
        found = engine.infer(pair.ir, pair.vi).detections
        rows = [[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in found]
        predictions.append(np.asarray(rows, np.float64).reshape(-1, 6))
        per_stem[stem] = rows
    names = list(engine.class_names)
    summary = detection_summary(predictions, truths, names)
    if with_arrays:
        return summary, per_stem, predictions, truths, names
    return summary, per_stem


def main(argv=None):
    """Print (and optionally write) the probe's figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--set', required=True, choices=sorted(SETS),
                        help='the labelled pairs scored (data set and splits: SETS)')
    parser.add_argument('--weights', required=True, help='checkpoint (.safetensors)')
    parser.add_argument('--conf', type=float, default=0.001, help='NMS confidence threshold')
    parser.add_argument('--iou', type=float, default=0.6, help='NMS IoU threshold')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--out', default=None, help='JSON file for the figures and boxes')
    args = parser.parse_args(argv)
    check_outputs(parser, out=args.out)
    for name, value in (('--conf', args.conf), ('--iou', args.iou)):
        if not 0.0 <= value <= 1.0:  # NaN too
            parser.error(f'{name} must be a number in [0, 1], got {value}')
    if args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    torch.set_num_threads(args.threads)
    try:  # a checkpoint or shared data set not found: one line
        summary, boxes = probe(args.set, args.weights, args.conf, args.iou)
    except ValueError as exc:
        parser.error(str(exc))
    per_class = ' '.join(f'{name} {values["ap50"]:.3f}'
                         for name, values in summary['per_class'].items())
    print(f'{args.set} {args.weights} (NMS IoU {args.iou}): {summary["num_images"]} pairs, '
          f'{summary["num_gt"]} boxes, mAP@0.5 {summary["map50"]:.3f} ({per_class})')
    if args.out:
        with open(args.out, 'w') as stream:
            json.dump({'set': args.set, 'weights': args.weights, 'iou': args.iou,
                       'summary': summary, 'detections': boxes}, stream, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
