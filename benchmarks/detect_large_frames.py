#!/usr/bin/env python3
"""Detection mAP of a checkpoint on aligned labelled pairs resized to larger cameras.

For ``model.detect_max_long_side`` (docs/METHOD.md, large frames for the detector): each pair
of ``--split`` is resized to every ``--sizes`` entry (``benchmarks/resized_set.py``'s rule:
cubic when enlarging, area when shrinking), run through :class:`FusionEngine` on its aligned IR
(no deformation: detection only), and scored against its YOLO labels for every
``--max-long-side`` value (0: features never shrunk). The registration and fusion trunk runs
once per pair and size; only the detection neck and head run again per value, so the values
are compared on the same fused features. Confidence 0.001 and NMS IoU 0.6, and the AP of
``tarfuse-eval`` (ultralytics' validation code: ``AP_METHOD``), as ``tarfuse-eval``.

    python benchmarks/detect_large_frames.py --data msrs_train --split val --threads 2
        --sizes 1280x960,1920x1440 --max-long-side 0,640,800,960,1024,1280 --out val.json

Prints one line per size and value (mAP@0.5, mAP@0.5:0.95, AP@0.5 per class) and writes them
as JSON to ``--out``. The set's ``classes.txt`` must name the model's classes in its order.
A bad option, or a set, split or checkpoint it cannot use, is refused in one line with exit
status 2 before any pair runs; a pair that cannot be read or run ends it with status 1.
"""

import argparse
from dataclasses import replace
import json
from pathlib import Path
import sys
import time

from bench_args import check_outputs
import cv2
import numpy as np
from resized_set import parse_size, resize
from tarfuse_ros.core import data
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.evaluation.detection import AP_METHOD, detection_summary
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch


class _TrunkOnce:
    """Wrap a TarFuse's ``forward``: the trunk runs once per ``key``, the detector each call."""

    def __init__(self, model):
        self.model, self.forward, self.key, self.memo = model, model.forward, None, None

    def __call__(self, *args, **kwargs):
        if self.memo is None or self.memo[0] != self.key:
            self.memo = (self.key, self.forward(*args, **kwargs))
        out = dict(self.memo[1])
        parts = out['features']
        fused = torch.cat([parts[k] for k in ('c_ir_registered', 's_ir_registered', 'c_vi',
                                              's_vi')], dim=1)
        out['det'] = self.model._detect_resized(fused)  # by the config of this call
        return out


def score(dataset_dir, stems, engine, sizes, max_sides, classes):
    """Return ``{(size, value): detection_summary(...)}`` (see the module docstring).

    The AP of ``tarfuse-eval`` (:func:`~tarfuse_ros.evaluation.detection.detection_summary`,
    ultralytics' validation code), so that the figures compare with its reports.
    """
    return {key: detection_summary(predictions, targets, classes)
            for key, (predictions, targets) in
            detections(dataset_dir, stems, engine, sizes, max_sides, classes).items()}


def detections(dataset_dir, stems, engine, sizes, max_sides, classes):
    """Return ``{(size, value): (predictions, targets)}``: what :func:`score` scores."""
    model = engine.model
    base = model.config
    trunk = _TrunkOnce(model)
    model.forward = trunk
    results = {}
    try:
        for size in sizes:
            predictions = {value: [] for value in max_sides}
            targets = []
            for stem in stems:
                labels = data.load_labels(dataset_dir, stem, classes=classes)
                if labels is None:
                    continue
                ir, vi = (cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                          for path in data.pair_files(dataset_dir, stem))
                ir, vi = resize(ir, size), resize(vi, size)
                targets.append(data.yolo_to_xyxy(labels, size[0], size[1]))
                trunk.key = (stem, size)
                for value in max_sides:
                    model.config = replace(base, detect_max_long_side=value)
                    found = engine.infer(ir, vi).detections
                    predictions[value].append(np.array(
                        [[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in found],
                        np.float64).reshape(-1, 6))
            for value in max_sides:
                results[(size, value)] = (predictions[value], targets)
    finally:
        model.config = base
        del model.forward  # back to the class's method
    return results


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', required=True, help='labelled aligned set (name or folder)')
    parser.add_argument('--split', default='all', help="split name or list file (default 'all')")
    parser.add_argument('--sizes', required=True,
                        help='comma-separated WxH camera sizes, e.g. 1280x960,1920x1440')
    parser.add_argument('--max-long-side', default='0,800',
                        help='comma-separated detect_max_long_side values (0: never shrink)')
    parser.add_argument('--weights', default=None, help='checkpoint (default: the shipped one)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--max-pairs', type=int, default=None, help='only the first N pairs')
    parser.add_argument('--out', default=None, help='JSON file for the figures')
    args = parser.parse_args(argv)
    check_outputs(parser, out=args.out)
    try:
        for name, value in (('--threads', args.threads), ('--max-pairs', args.max_pairs)):
            if value is not None and value < 1:  # set_num_threads raised; [:-1] dropped one
                raise ValueError(f'{name} must be >= 1, got {value}')
        sizes = [parse_size(text) for text in args.sizes.split(',')]
        try:
            max_sides = [int(text) for text in args.max_long_side.split(',')]
        except ValueError:
            raise ValueError(f'--max-long-side takes comma-separated integers, got '
                             f'{args.max_long_side!r}') from None
        dataset_dir = resolve_dataset_dir(args.data)
        stems = data.read_split(dataset_dir, args.split)[:args.max_pairs]
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        engine = FusionEngine(args.weights, device='cpu', conf_threshold=0.001,
                              iou_threshold=0.6, max_detections=100)
        classes = list(engine.class_names)
        names = data.read_classes(dataset_dir)
        if names != classes:
            raise ValueError(f'{dataset_dir}: classes.txt names {names}, the model {classes}')
        for value in max_sides:  # refused values before any pair runs
            replace(engine.model.config, detect_max_long_side=value)
    except (argparse.ArgumentTypeError, OSError, ValueError) as exc:
        # Refused before any pair runs: a usage error, exit status 2 as the other benchmarks.
        print(f'detect_large_frames: {exc}', file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        results = score(dataset_dir, stems, engine, sizes, max_sides, classes)
    except (OSError, ValueError) as exc:  # a pair that cannot be read or run
        print(f'detect_large_frames: {exc}', file=sys.stderr)
        return 1
    rows = []
    for (size, value), m in results.items():
        per_class = ' '.join(f'{name} {c["ap50"]:.3f}' for name, c in m['per_class'].items())
        print(f'{args.data}:{args.split} {size[0]}x{size[1]} detect_max_long_side {value}: '
              f'mAP@0.5 {m["map50"]:.3f} mAP@0.5:0.95 {m["map50_95"]:.3f} ({per_class})')
        rows.append({'size': list(size), 'detect_max_long_side': value, 'ap': AP_METHOD, **m})
    print(f'{len(stems)} pairs, {time.monotonic() - start:.0f} s; AP: {AP_METHOD}')
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
