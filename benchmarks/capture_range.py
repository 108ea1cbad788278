#!/usr/bin/env python3
"""Capture range: how large a translation, rotation or scale change the registration undoes.

Aligned pairs are misaligned by one known affine map at a time, and the whole network
(:class:`~tarfuse_ros.core.engine.FusionEngine`, shipped settings) registers them. For a map
``M`` (2x3, pixels) the IR shown to the model is ``deformed(q) = aligned_ir(M [q; 1])``
(``cv2.warpAffine`` with ``WARP_INVERSE_MAP``), so the field that brings it back onto the
visible frame is ``f(p) = M^-1 [p; 1] - p`` (the engine's convention: ``registered(p) =
deformed(p + f(p))``). Scored over the visible pixels the deformed IR still sees (``p + f(p)``
inside the frame): the mean end-point error (EPE, px) of the predicted field, that of doing
nothing (the unregistered EPE, the mean length of ``f``), and the share of pairs registered to
within ``--success-px`` (default 3 px).

The maps, one factor at a time about the frame centre: translations of ``--shifts`` percent of
the frame width (along a direction 30 degrees below the x axis), rotations of ``--angles``
degrees, isotropic scales ``--scales`` (the IR camera's view that many times the visible one's:
< 1 a narrower thermal view). Every frame is resized to ``--size`` first (default 640x512), so
pixels are comparable across sets.

    python benchmarks/capture_range.py --data msrs_train --split val --max-pairs 8 \
        --json models/eval/capture_range_msrs_train_val.json
"""

import argparse
import json
import math
import sys

from bench_args import check_outputs
import cv2
import numpy as np
from tarfuse_ros.core import data
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch


def affine_about_centre(width, height, shift=(0.0, 0.0), angle_deg=0.0, scale=1.0):
    """Return the 2x3 map ``M`` (pixels) ``q -> p``: a similarity about the frame centre.

    ``deformed(q) = aligned(M [q; 1])``: content at ``p`` of the aligned IR shows at ``q`` of
    the deformed one; ``scale`` < 1 makes the deformed IR see a narrower view (its content
    looks larger), ``shift`` moves it by ``(dx, dy)`` pixels, ``angle_deg`` rotates it
    (counter-clockwise in the image as displayed).
    """
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    angle = math.radians(angle_deg)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)],
                                 [math.sin(angle), math.cos(angle)]])
    # p = R (q - c) + c - shift: the deformed content moves by +shift.
    offset = centre - rotation @ centre - np.asarray(shift, dtype=np.float64)
    return np.hstack([rotation, offset[:, None]])


def reference_flow(matrix, width, height):
    """Return the field that undoes ``matrix`` and where the deformed IR sees the scene.

    ``(flow HxWx2 float32, seen HxW bool)``: ``f(p) = M^-1 [p; 1] - p``, and whether
    ``p + f(p)`` lies inside the ``width x height`` deformed frame.
    """
    inverse = cv2.invertAffineTransform(matrix)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    qx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    qy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    flow = np.stack([qx - xs, qy - ys], axis=-1).astype(np.float32)
    seen = (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
    return flow, seen


def settings(shifts, angles, scales):
    """Return ``[(family, value, kwargs of affine_about_centre as a function of width)]``."""
    direction = (math.cos(math.radians(30.0)), math.sin(math.radians(30.0)))
    rows = [('none', 0.0, lambda w: {})]
    rows += [('shift_pct', s, lambda w, s=s: {'shift': (s / 100.0 * w * direction[0],
                                                        s / 100.0 * w * direction[1])})
             for s in shifts]
    rows += [('rotation_deg', a, lambda w, a=a: {'angle_deg': a}) for a in angles]
    rows += [('scale', s, lambda w, s=s: {'scale': s}) for s in scales]
    return rows


def _numbers(text):
    return [float(v) for v in text.split(',') if v.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='aligned data set folder or shared name')
    parser.add_argument('--split', default='val', help='split name or list file')
    parser.add_argument('--weights', default=None, help='checkpoint (default: shipped)')
    parser.add_argument('--size', default='640x512', help='WIDTHxHEIGHT of both cameras')
    parser.add_argument('--shifts', default='2.5,5,7.5,10,12.5,15,20',
                        help='translations, percent of the frame width')
    parser.add_argument('--angles', default='5,10,15,20', help='rotations, degrees')
    parser.add_argument('--scales', default='0.7,0.8,1.25,1.4', help='IR view / visible view')
    parser.add_argument('--success-px', type=float, default=3.0, help='EPE counted a success')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads')
    parser.add_argument('--max-pairs', type=int, default=0, help='0 = all')
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    check_outputs(parser, json=args.json)
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
        grid = settings(_numbers(args.shifts), _numbers(args.angles), _numbers(args.scales))
    except ValueError:
        parser.error('--size must be WIDTHxHEIGHT and --shifts/--angles/--scales '
                     'comma-separated numbers')
    if min(width, height) < 64 or args.threads < 1 or args.max_pairs < 0:
        parser.error('need --size of at least 64x64, --threads >= 1 and --max-pairs >= 0')
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:  # a data set, split or checkpoint not found, an unreadable pair: one line
        engine = FusionEngine(args.weights, device='cpu')
        dataset_dir = resolve_dataset_dir(args.data)
        stems = list(data.read_split(dataset_dir, args.split))
        if args.max_pairs:
            stems = stems[:args.max_pairs]
        pairs = []
        for stem in stems:
            ir, vi = data.load_pair(dataset_dir, stem)
            ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY) if ir.ndim == 3 else ir
            pairs.append((stem, cv2.resize(ir, (width, height), interpolation=cv2.INTER_AREA),
                          cv2.resize(vi, (width, height), interpolation=cv2.INTER_AREA)))
    except ValueError as exc:
        parser.error(str(exc))
    print(f'{args.data} {args.split}: {len(pairs)} pairs at {width}x{height}; EPE in px of that '
          f'size over the visible pixels the deformed IR still sees', flush=True)
    rows = []
    for family, value, kwargs in grid:
        matrix = affine_about_centre(width, height, **kwargs(width))
        truth, seen = reference_flow(matrix, width, height)
        epes, unregistered = [], float(np.linalg.norm(truth[seen], axis=-1).mean())
        for stem, ir, vi in pairs:
            deformed = cv2.warpAffine(ir, matrix, (width, height),
                                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            flow = engine.infer(deformed, vi).flow_px
            epes.append(float(np.linalg.norm(flow[seen] - truth[seen], axis=-1).mean()))
        row = {'family': family, 'value': value, 'unregistered_epe': unregistered,
               'epe_mean': float(np.mean(epes)), 'epe_median': float(np.median(epes)),
               'success': float(np.mean([e <= args.success_px for e in epes])),
               'per_pair': dict(zip([p[0] for p in pairs], epes))}
        rows.append(row)
        print(f'{family:13s} {value:6g}: unregistered {unregistered:6.1f} px  EPE mean '
              f'{row["epe_mean"]:6.2f} median {row["epe_median"]:6.2f} px  within '
              f'{args.success_px:g} px {row["success"]:.0%}', flush=True)
    if args.json:
        summary = {'data': str(args.data), 'split': args.split, 'pairs': len(pairs),
                   'size': [width, height], 'success_px': args.success_px,
                   'weights': args.weights or 'shipped default', 'rows': rows}
        with open(args.json, 'w') as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
