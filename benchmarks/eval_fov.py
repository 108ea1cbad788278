#!/usr/bin/env python3
"""Narrower thermal field of view: registration should bring a zoomed IR back onto the scene.

A rig whose thermal camera sees only the central ``--fov`` (default 80 %) of the visible
camera's view, at the same resolution, is emulated from aligned pairs: the visible image is
resized to ``--size`` (default 640x512); the IR shown to the model is the central ``fov`` part of
the aligned IR, resized to the same size (so everything in it looks ``1 / fov`` times larger and
sits off its true place except at the centre). The truth is the aligned IR at ``--size``. Printed
per pair and on average: NCC (Pearson, [0, 1] images) between the true aligned IR and the IR the
model registered, and the same for the unregistered (zoomed) IR, both over the central ``fov``
region (outside it the thermal camera saw nothing). Target of the registration work: >= 0.9.

The truth assumes the aligned pair is exact. With ``--own-offset`` the script also estimates
how far it is not: the global stage of ``--weights`` (no learnt parameter) registers the
aligned IR onto the visible image (both resized to ``--size``: the offset is in pixels of that
frame), and the NCC of the truth with itself moved by that offset is printed per pair
(``ncc_truth_moved_by_own_offset``): what a registration that put the IR exactly where the
global stage sees the visible scene would score. One estimator (OpenCV's ECC
fails on most MSRS night pairs, ``benchmarks/dataset_alignment.py``), so an estimate only.

    python benchmarks/eval_fov.py --data ../shared/datasets/msrs_det --split test \
        --weights models/tarfuse_default.safetensors
"""

import argparse
import sys

from bench_args import check_outputs
import cv2
import numpy as np
from tarfuse_ros.core import data, metrics
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

# A sibling script: importable when this one runs from benchmarks/ (or with it on sys.path).
from dataset_alignment import global_stage_flow, save_figures  # noqa: I100


def narrow_ir(ir_aligned, fov):
    """Return the central ``fov`` part of ``ir_aligned`` resized back to its full size."""
    height, width = ir_aligned.shape[:2]
    crop_h, crop_w = int(round(height * fov)), int(round(width * fov))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    centre = ir_aligned[top:top + crop_h, left:left + crop_w]
    zoomed = cv2.resize(centre, (width, height), interpolation=cv2.INTER_LINEAR)
    return zoomed, (top, left, crop_h, crop_w)


def evaluate_pair(engine, ir_aligned, vi, fov):
    """Return ``(ncc_registered, ncc_unregistered)`` over the region the thermal camera saw."""
    narrow, (top, left, crop_h, crop_w) = narrow_ir(ir_aligned, fov)
    result = engine.infer(narrow, vi)
    region = (slice(top, top + crop_h), slice(left, left + crop_w))
    truth = ir_aligned[region]
    return (metrics.ncc(result.registered_ir[region], truth),
            metrics.ncc(narrow[region], truth))


def own_offset_ncc(matcher, ir_aligned, vi, fov):
    """Return ``(offset_px, ncc)``: the aligned pair's own offset and the truth moved by it.

    ``matcher``: a global stage (``model.registration.global_matcher``); ``ir_aligned`` and
    ``vi``: 2-D uint8 planes of one size. ``offset_px``: the mean length (px) of the flow the
    stage finds from the aligned IR to the visible image; ``ncc``: NCC of the aligned IR with
    itself warped by that flow, over the region of :func:`evaluate_pair`.
    """
    ir, visible = (plane.astype(np.float32) / 255.0 for plane in (ir_aligned, vi))
    flow = global_stage_flow(matcher, ir, visible)
    moved = warp(torch.from_numpy(ir)[None, None], flow)[0, 0].numpy()
    _, (top, left, crop_h, crop_w) = narrow_ir(ir_aligned, fov)
    region = (slice(top, top + crop_h), slice(left, left + crop_w))
    return float(flow[0].norm(dim=0).mean()), metrics.ncc(moved[region], ir[region])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, aligned) or a shared name (msrs_det)')
    parser.add_argument('--split', default='test', help='split name or list file')
    parser.add_argument('--weights', default=None, help='checkpoint (default: shipped)')
    parser.add_argument('--fov', type=float, default=0.8, help='IR field of view fraction')
    parser.add_argument('--size', default='640x512', help='WIDTHxHEIGHT of both cameras')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads')
    parser.add_argument('--max-pairs', type=int, default=0, help='0 = all')
    parser.add_argument('--own-offset', action='store_true',
                        help='also the NCC a registration onto the visible image would score '
                             "given the aligned pair's own offset (module docstring)")
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    if not 0.3 <= args.fov <= 1.0:
        parser.error(f'--fov must be in [0.3, 1], got {args.fov}')
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        parser.error(f'--size must be WIDTHxHEIGHT, e.g. 640x512, got {args.size!r}')
    if min(width, height) < 64 or args.threads < 1 or args.max_pairs < 0:
        parser.error('need --size of at least 64x64, --threads >= 1 and --max-pairs >= 0')
    check_outputs(parser, json=args.json)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:  # a checkpoint, data set or split not found: one line
        engine = FusionEngine(args.weights, device='cpu')
        matcher = None
        if args.own_offset:
            model = load_checkpoint(args.weights or str(default_weights_path())).eval()
            matcher = getattr(model.registration, 'global_matcher', None)
            if matcher is None:
                parser.error('--own-offset needs a checkpoint with the orientation global stage')
        dataset_dir = resolve_dataset_dir(args.data)
        stems = list(data.read_split(dataset_dir, args.split))
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_pairs:
        stems = stems[:args.max_pairs]
    rows = []
    for stem in stems:
        ir, vi = data.load_pair(dataset_dir, stem)
        ir = cv2.resize(ir, (width, height), interpolation=cv2.INTER_AREA)
        vi = cv2.resize(vi, (width, height), interpolation=cv2.INTER_AREA)
        if ir.ndim == 3:
            ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
        registered, unregistered = evaluate_pair(engine, ir, vi, args.fov)
        rows.append({'stem': stem, 'ncc_registered': registered,
                     'ncc_unregistered': unregistered})
        line = f'{stem}: NCC registered {registered:.4f}, unregistered {unregistered:.4f}'
        if matcher is not None:
            grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY) if vi.ndim == 3 else vi
            offset, moved = own_offset_ncc(matcher, ir, grey, args.fov)
            rows[-1].update({'own_offset_px': offset, 'ncc_truth_moved_by_own_offset': moved})
            line += f'; own offset {offset:.2f} px, truth moved by it {moved:.4f}'
        print(line, flush=True)
    summary = {'pairs': len(rows), 'fov': args.fov, 'size': [width, height],
               'ncc_registered': float(np.mean([r['ncc_registered'] for r in rows])),
               'ncc_unregistered': float(np.mean([r['ncc_unregistered'] for r in rows])),
               'weights': args.weights or 'shipped default'}
    if matcher is not None:
        for key in ('own_offset_px', 'ncc_truth_moved_by_own_offset'):
            summary[key] = float(np.mean([r[key] for r in rows]))
    save_figures(summary, rows, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
