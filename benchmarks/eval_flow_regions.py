#!/usr/bin/env python3
"""Where the registration error is: EPE inside the imaged content vs over the empty background.

Medical slices (and any pair with a black surround) hold their content in part of the frame; the
flow over the empty background cannot be observed and is an extrapolation. This benchmark runs
the same protocol as ``tarfuse-eval`` (:func:`tarfuse_ros.evaluation.protocol.make_case`: the
pair prepared and deformed with the same seeded field) and splits the end-point error (px) of
the model's flow, and of the zero flow (the unregistered input), into

- ``content``: pixels where the visible image, smoothed by a Gaussian of sigma 3 px, is above
  ``--threshold`` grey levels (the head in an MRI slice);
- ``background``: the other pixels.

``whole`` is the mean over all pixels (``tarfuse-eval``'s ``EPE``). Printed per data set and
pooled over pairs; ``--json`` writes the same figures.

    python benchmarks/eval_flow_regions.py --weights models/tarfuse_medical.safetensors \
        --data harvard_mri_pet --split data/splits/harvard_mri_pet/test.txt --deform synthetic
"""

import argparse
import json
import sys

from bench_args import check_outputs, positive_int
import cv2
import numpy as np
from tarfuse_ros.core import data
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.evaluation.options import EvalOptions
from tarfuse_ros.evaluation.protocol import make_case
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

REGIONS = ('whole', 'content', 'background')


def content_mask(vi_y, threshold):
    """Return the bool ``HxW`` mask of pixels whose smoothed visible luma exceeds ``threshold``."""
    smooth = cv2.GaussianBlur(vi_y.astype(np.float32), (0, 0), 3.0)
    return smooth > float(threshold)


def region_errors(flow_px, flow_ref, mask):
    """Return ``{region: mean EPE px}`` (NaN for an empty region)."""
    error = np.linalg.norm(np.asarray(flow_px, np.float64) - flow_ref, axis=2)
    out = {'whole': float(error.mean())}
    for name, pixels in (('content', mask), ('background', ~mask)):
        out[name] = float(error[pixels].mean()) if pixels.any() else float('nan')
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, nargs='+',
                        help='data set folders (aligned pairs) or shared names')
    parser.add_argument('--split', nargs='+', default=['test'],
                        help='split name or list file, one per --data (or one for all)')
    parser.add_argument('--deform', default='synthetic', choices=('synthetic', 'dataset'))
    parser.add_argument('--seed', type=int, default=0, help='base seed of synthetic fields')
    parser.add_argument('--weights', default=None, help='checkpoint (default: shipped)')
    parser.add_argument('--threshold', type=float, default=10.0,
                        help='content: smoothed visible luma above this (grey levels)')
    parser.add_argument('--threads', type=positive_int, default=1, help='CPU threads')
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    if len(args.split) not in (1, len(args.data)):
        parser.error('give one --split, or one per --data')
    check_outputs(parser, json=args.json)
    torch.set_num_threads(args.threads)
    splits = args.split * len(args.data) if len(args.split) == 1 else args.split
    try:  # every set, split and the checkpoint found before the first pair runs
        sets = [(name, split, resolve_dataset_dir(name)) for name, split in zip(args.data, splits)]
        sets = [(name, split, folder, data.DataSource(folder, split).stems())
                for name, split, folder in sets]
        engine = FusionEngine(args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    try:  # a pair without a ground-truth field (--deform dataset), an unreadable image
        report = _score(engine, sets, args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'weights': args.weights, 'deform': args.deform, 'seed': args.seed,
                       'threshold': args.threshold, 'sets': report}, handle, indent=2)
    return 0


def _score(engine, sets, args):
    """Print and return the figures of each set (and pooled over several)."""
    report, pooled = {}, {'model': [], 'unregistered': [], 'content_fraction': []}
    for name, split, dataset_dir, stems in sets:
        options = EvalOptions(split=split, deform=args.deform, seed=args.seed)
        rows = {'model': [], 'unregistered': [], 'content_fraction': []}
        for stem in stems:
            case = make_case(dataset_dir, stem, args.deform, options, True)
            mask = content_mask(case.vi_y, args.threshold)
            flow = engine.infer(case.deformed, case.vi).flow_px
            rows['model'].append(region_errors(flow, case.flow_ref, mask))
            rows['unregistered'].append(
                region_errors(np.zeros_like(flow), case.flow_ref, mask))
            rows['content_fraction'].append(float(mask.mean()))
        for key in pooled:
            pooled[key] += rows[key]
        report[str(name)] = _summary(rows)
        _print(str(name), report[str(name)])
    if len(args.data) > 1:
        report['pooled'] = _summary(pooled)
        _print('pooled', report['pooled'])
    return report


def _summary(rows):
    out = {'pairs': len(rows['model']),
           'content_fraction': float(np.mean(rows['content_fraction']))}
    for method in ('model', 'unregistered'):
        out[method] = {region: float(np.nanmean([r[region] for r in rows[method]]))
                       for region in REGIONS}
    out['cut_percent'] = {
        region: 100.0 * (1.0 - out['model'][region] / out['unregistered'][region])
        for region in REGIONS}
    return out


def _print(name, summary):
    print(f'{name}: {summary["pairs"]} pairs, content {100 * summary["content_fraction"]:.0f} %'
          ' of the frame')
    for region in REGIONS:
        model, zero = summary['model'][region], summary['unregistered'][region]
        print(f'  {region:10s} EPE model {model:6.2f} px, unregistered {zero:6.2f} px, '
              f'cut {summary["cut_percent"][region]:5.1f} %')


if __name__ == '__main__':
    sys.exit(main())
