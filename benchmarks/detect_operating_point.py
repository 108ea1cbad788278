#!/usr/bin/env python3
"""Precision, recall and F1 of the node's detections at its confidence threshold, and the best one.

Usage: python benchmarks/detect_operating_point.py [--weights FILE] [--threads 2]
[--out models/eval/detect_operating_point.json]

mAP summarises every threshold; a robot gets one: the node publishes the detections scoring at
least ``confidence_threshold`` after NMS at ``iou_threshold`` (``config/tarfuse.yaml``). This
script runs the engine as the node does on the aligned labelled pairs of each set
(``probe_detection.probe``: NMS at the node's IoU, confidence 0.001, then every threshold of
``--thresholds`` applied to those detections, which is what NMS at that threshold keeps) and
prints, per set and threshold, precision / recall / F1 per class and over all boxes
(:func:`tarfuse_ros.evaluation.detection.operating_points`: a detection is right with IoU >=
0.5 to an unclaimed ground-truth box of its class).

The threshold that maximises the mean F1 over the classes is chosen on the validation set
(``--select``, ``msrs_train`` val: pairs the shipped head did not train on); the test sets
(``--report``) are only scored, at the node's default and at that choice.
"""

import argparse
import json
from pathlib import Path
import sys

from bench_args import check_outputs, positive_int
import numpy as np
from probe_detection import probe, SETS
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.evaluation.detection import operating_points
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 15))  # 0.05 ... 0.70


def node_defaults(path=ROOT / 'config' / 'tarfuse.yaml'):
    """Return the node's default ``(confidence_threshold, iou_threshold)`` from its YAML."""
    params = yaml.safe_load(Path(path).read_text())['/**']['ros__parameters']
    return float(params['confidence_threshold']), float(params['iou_threshold'])


def score_set(set_name, weights, thresholds, nms_iou):
    """Return ``operating_points`` of one probe set, detections as the node's NMS keeps them."""
    _, per_stem, predictions, truths, names = probe(set_name, weights, conf=0.001,
                                                    iou=nms_iou, with_arrays=True)
    points = operating_points(predictions, truths, thresholds, names)
    return {'pairs': len(per_stem), 'points': points}


def _fmt(value):
    return ' n/a' if value is None or np.isnan(value) else f'{value:.2f}'


def describe(point):
    """One line: per class P/R/F1, then over all boxes."""
    parts = [f'{name} {_fmt(v["precision"])}/{_fmt(v["recall"])}/{_fmt(v["f1"])}'
             for name, v in point['per_class'].items()]
    return (f'conf {point["conf"]:.2f}: ' + ', '.join(parts) + f'; all boxes '
            f'{_fmt(point["precision"])}/{_fmt(point["recall"])}/{_fmt(point["f1"])}, '
            f'mean F1 {_fmt(point["mean_f1"])}')


def choose(points):
    """Return the point of the highest mean F1 (the lowest threshold of a tie)."""
    return max(points, key=lambda p: (p['mean_f1'], -p['conf']))


def main(argv=None):
    """Print the figures (and write them with ``--out``); return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', default=str(default_weights_path()))
    parser.add_argument('--select', default='msrs_val', choices=sorted(SETS),
                        help='probe set the threshold is chosen on (probe_detection.SETS)')
    parser.add_argument('--report', nargs='*', default=['msrs_det', 'rs_test'],
                        choices=sorted(SETS), help='probe sets only scored')
    parser.add_argument('--thresholds', type=float, nargs='+', default=list(THRESHOLDS),
                        help='confidence thresholds to score (the node default is added)')
    parser.add_argument('--threads', type=positive_int, default=1, help='torch CPU threads')
    parser.add_argument('--out', default=None, help='JSON file for every figure')
    args = parser.parse_args(argv)
    check_outputs(parser, out=args.out)
    if any(not 0.0 <= t <= 1.0 for t in args.thresholds):  # NaN too
        parser.error(f'--thresholds must be in [0, 1], got {args.thresholds}')
    torch.set_num_threads(args.threads)
    node_conf, nms_iou = node_defaults()
    thresholds = sorted(set(args.thresholds) | {node_conf})
    try:  # a checkpoint or shared data set not found: one line
        results = {name: score_set(name, args.weights, thresholds, nms_iou)
                   for name in [args.select] + [n for n in args.report if n != args.select]}
    except ValueError as exc:
        parser.error(str(exc))
    chosen = choose(results[args.select]['points'])['conf']
    print(f"{args.weights}: NMS IoU {nms_iou} (the node's), P/R/F1 at IoU 0.5; the node's "
          f'confidence_threshold {node_conf}; best mean F1 on {args.select}: conf {chosen}')
    for name, result in results.items():
        role = 'chosen on' if name == args.select else 'test'
        print(f'{name} ({result["pairs"]} pairs, {role}):')
        for point in result['points']:
            marks = ([' (node default)'] if point['conf'] == node_conf else []) + (
                [f' (best mean F1 on {args.select})'] if point['conf'] == chosen else [])
            if marks:
                print('  ' + describe(point) + ''.join(marks))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {'weights': args.weights, 'nms_iou': nms_iou, 'node_confidence': node_conf,
             'select': args.select, 'chosen_confidence': chosen, 'sets': results},
            indent=1, allow_nan=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
