#!/usr/bin/env python3
"""Cost and separation of the registration-health score (``tarfuse_ros.core.health``).

For each pair of a data-set folder (``ir/``, ``vi/``; RoadScene, MSRS, ...) the engine runs once
on the aligned pair and once on the visible image with an *unrelated* IR (the IR of another
pair, the rotation ``--swap-offset`` along the sorted stems), as when a camera is swapped or its
stream stalls on old frames. Then:

- cost: :func:`~tarfuse_ros.core.health.score_frame` is timed ``--iters`` times per pair and
  ``--max-sides`` value (and at full resolution, ``0``), after the engine's outputs exist, so
  only the health computation is timed; prints the median and the minimum per frame (the
  minimum is the least disturbed by other load on a shared machine) and the median process CPU
  time (all threads), with the engine's own median time per pair for scale;
- separation: the per-pair alignment of aligned and swapped pairs (min/median/max), and, for
  thresholds and windows, how often a rolling window over the aligned pairs (in stem order,
  as a stream) would have warned (false alarms) and how often one over swapped pairs would
  not (misses).

Example::

    source tools/ros_env/env.sh
    python benchmarks/bench_health.py --pairs ../shared/datasets/msrs_det --limit 35
"""

import argparse
from pathlib import Path
import sys
import time

from bench_args import non_negative_int, positive_int
import cv2
import numpy as np
from resized_set import parse_size
import torch

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', type=Path, required=True, help='folder with ir/ and vi/')
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint (.safetensors); default: the shipped model')
    parser.add_argument('--limit', type=positive_int, default=20,
                        help='pairs used (default 20; at least 2)')
    parser.add_argument('--size', type=parse_size, default=None, metavar='WxH',
                        help='resize both images to WIDTHxHEIGHT first (default: as stored)')
    parser.add_argument('--threads', type=positive_int, default=1,
                        help='torch CPU threads (default 1)')
    parser.add_argument('--max-sides', type=non_negative_int, nargs='+', default=[0, 320, 160, 96],
                        help='scored plane sizes (longer side, px; 0 = full resolution)')
    parser.add_argument('--iters', type=positive_int, default=5,
                        help='timed calls per pair and size')
    parser.add_argument('--swap-offset', type=positive_int, default=7,
                        help='the unrelated IR is the one this many stems further (default 7)')
    parser.add_argument('--thresholds', type=float, nargs='+', default=[0.1, 0.15, 0.2, 0.25],
                        help='min_alignment values of the window verdicts')
    parser.add_argument('--windows', type=positive_int, nargs='+', default=[1, 5, 10],
                        help='sliding-window lengths (pairs) of the window verdicts')
    return parser


def _stems(folder, limit, swap_offset):
    missing = [sub for sub in ('ir', 'vi') if not (folder / sub).is_dir()]
    if missing:
        sys.exit(f'bench_health: error: --pairs {folder}: no {" and no ".join(missing)} folder '
                 f'(give a data set folder with ir/ and vi/)')
    vi = {p.stem: p for p in (folder / 'vi').iterdir() if p.is_file()}
    ir = {p.stem: p for p in (folder / 'ir').iterdir() if p.is_file()}
    stems = sorted(set(vi) & set(ir))[:limit]
    if len(stems) < 2:
        sys.exit(f'bench_health: error: {folder}: need at least 2 pairs with ir/ and vi/, found '
                 f'{len(stems)}')
    if swap_offset % len(stems) == 0:  # each pair would be "swapped" with its own IR
        sys.exit(f'bench_health: error: --swap-offset {swap_offset} with {len(stems)} pairs '
                 f'gives each pair its own IR as the unrelated one: pick an offset that is not '
                 f'a multiple of {len(stems)}')
    return stems, ir, vi


def _read(path, flags, size):
    img = cv2.imread(str(path), flags)
    if img is None:
        sys.exit(f'cannot read {path}')
    return img if size is None else cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _window_rates(scores, threshold, window):
    """Fraction of full windows (sliding over the stream) whose mean is below ``threshold``."""
    values = np.asarray(scores)
    if len(values) < window:
        return float('nan')
    means = np.convolve(values, np.ones(window) / window, mode='valid')
    return float((means < threshold).mean())


def main(args):
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.health import score_frame

    from tarfuse_ros.core.cpus import machine_facts

    torch.set_num_threads(args.threads)
    size = args.size
    stems, ir_paths, vi_paths = _stems(args.pairs, args.limit, args.swap_offset)
    try:
        engine = FusionEngine(args.weights, device='cpu')
    except ValueError as exc:  # a missing or foreign checkpoint
        sys.exit(f'bench_health: error: --weights: {exc}')
    costs = {side: [] for side in args.max_sides}
    scores = {'aligned': {side: [] for side in args.max_sides},
              'swapped': {side: [] for side in args.max_sides}}
    flows = {'aligned': [], 'swapped': []}
    engine_ms = []
    shape = None
    for index, stem in enumerate(stems):
        vi = _read(vi_paths[stem], cv2.IMREAD_COLOR, size)
        other = stems[(index + args.swap_offset) % len(stems)]
        for case, ir_stem in (('aligned', stem), ('swapped', other)):
            ir = _read(ir_paths[ir_stem], cv2.IMREAD_GRAYSCALE, size)
            start = time.perf_counter()
            result = engine.infer(ir, vi)
            engine_ms.append((time.perf_counter() - start) * 1e3)
            shape = vi.shape[:2]
            for side in args.max_sides:
                plane = side or max(shape)
                score = score_frame(result.registered_ir, vi, result.flow_px, plane)
                scores[case][side].append(score.alignment)
                if case == 'aligned':
                    for _ in range(args.iters):
                        start, cpu = time.perf_counter(), time.process_time()
                        score_frame(result.registered_ir, vi, result.flow_px, plane)
                        costs[side].append(((time.perf_counter() - start) * 1e3,
                                            (time.process_time() - cpu) * 1e3))
            flows[case].append(score.flow_px)
        print(f'{stem}: aligned {scores["aligned"][args.max_sides[-1]][-1]:.3f}, swapped '
              f'{scores["swapped"][args.max_sides[-1]][-1]:.3f} '
              f'(max side {args.max_sides[-1] or "full"})', flush=True)
    print(f'\n{len(stems)} pairs from {args.pairs}, {shape[1]}x{shape[0]}, torch threads '
          f'{args.threads}; engine median {np.median(engine_ms):.0f} ms per pair')
    print(f'machine: {machine_facts()}')
    print('\nhealth score cost per frame (score_frame: resize, luma, edge alignment, flow fit)')
    print('max side px | wall median ms | wall min ms | CPU median ms (all threads)')
    for side in args.max_sides:
        wall, cpu = np.asarray(costs[side]).T
        print(f'{side or "full":>11} | {np.median(wall):14.2f} | {np.min(wall):11.2f} | '
              f'{np.median(cpu):.2f}')
    print('\nalignment per pair (min / median / max)')
    print('max side px | aligned | swapped')
    for side in args.max_sides:
        cells = [' / '.join(f'{v:.3f}' for v in np.percentile(scores[c][side], [0, 50, 100]))
                 for c in ('aligned', 'swapped')]
        print(f'{side or "full":>11} | {cells[0]} | {cells[1]}')
    print(f'\nmean |flow| px: aligned {np.mean(flows["aligned"]):.2f}, swapped '
          f'{np.mean(flows["swapped"]):.2f}')
    side = args.max_sides[-1]
    print(f'\nwindow verdicts at max side {side or "full"} (fraction of sliding windows): '
          'false alarms on aligned / misses on swapped')
    for threshold in args.thresholds:
        cells = []
        for window in args.windows:
            if window > len(stems):
                cells.append(f'window {window}: n/a (longer than the {len(stems)} pairs)')
                continue
            false_alarm = _window_rates(scores['aligned'][side], threshold, window)
            miss = 1.0 - _window_rates(scores['swapped'][side], threshold, window)
            cells.append(f'window {window}: {false_alarm:.2f} / {miss:.2f}')
        print(f'min_alignment {threshold:.2f}: ' + ', '.join(cells))
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
