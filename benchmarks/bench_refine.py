#!/usr/bin/env python3
"""Rig calibration figures: ``tarfuse-calibrate`` end to end and the online refinement.

Real pairs of a data-set folder (``ir/``, ``vi/``; default the RoadScene pairs under
``test/data``) are seen through a known rig homography (``ir_cam(u) = ir(H u)``: 5 % wider
field of view, 1.5 deg roll, an offset and a tilt), then:

- ``calibrate``: ``tarfuse-calibrate --pairs`` (the command's ``main``) on the pairs at
  640x512, ``--iterations 1`` and ``2``, at native size and with ``--max-side 320``; prints
  the corner error of the written prior against the true homography at 640x512 (largest
  distance over the four IR corners, ``core.prior.corner_error_px``);
- ``refine``: :class:`~tarfuse_ros.core.refine.OnlinePriorRefiner` fed by the engine (the
  engine takes the estimate after each accepted frame, as the node does) over ``--cycles``
  passes through the pairs at ``--size``, starting from the true homography shifted by
  ``--offset`` px; prints the corner error after every frame, its mean over the last pass (the
  level it settles at: the network's per-frame fits scatter around the truth), the first frame
  within 1 px of that level, and the final error, for each ``--alphas`` value.

Example (a 2-core CPU shared with other work: give it 1 thread, nice it)::

    source tools/ros_env/env.sh
    nice -n 15 python benchmarks/bench_refine.py --threads 1
"""

import argparse
from pathlib import Path
import sys
import tempfile

from bench_args import positive_int
import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', type=Path,
                        default=ROOT / 'test' / 'data' / 'datasets' / 'roadscene',
                        help='folder with ir/ and vi/ (default: the RoadScene test excerpt)')
    parser.add_argument('--limit', type=positive_int, default=6, help='pairs used (default 6)')
    parser.add_argument('--parts', nargs='+', choices=('calibrate', 'refine'),
                        default=['calibrate', 'refine'])
    parser.add_argument('--size', type=positive_int, nargs=2, default=(320, 256),
                        help='refine: image size (default 320 256)')
    parser.add_argument('--offset', type=float, nargs=2, default=(6.0, -4.0),
                        help='refine: shift (px) of the starting prior from the truth')
    parser.add_argument('--alphas', type=float, nargs='+', default=(0.1, 0.3),
                        help='refine: smoothing factors of the refiner (default 0.1 0.3)')
    parser.add_argument('--cycles', type=positive_int, default=3,
                        help='refine: passes over the pairs')
    parser.add_argument('--min-alignment', type=float, default=0.2,
                        help="refine: the refiner's min_alignment (default 0.2)")
    parser.add_argument('--threads', type=positive_int, default=1,
                        help='torch and OpenCV CPU threads (default 1)')
    return parser


def check_args(args):
    """Raise ``ValueError`` naming a bad argument, before either part prints or runs."""
    from tarfuse_ros.core import data
    from tarfuse_ros.core.images import check_frame_size
    from tarfuse_ros.core.refine import RefinementSettings
    data.read_split(args.pairs)  # a missing folder, or one without ir/ and vi/
    if 'refine' not in args.parts:
        return
    for alpha in args.alphas:
        RefinementSettings(alpha=alpha, min_alignment=args.min_alignment)
    if not np.isfinite(args.offset).all():
        raise ValueError(f'--offset must be finite pixels, got {list(args.offset)}')
    width, height = args.size
    check_frame_size(np.empty((height, width), np.uint8), '--size')


def rig_homography(width, height):
    """Return the rig at ``width x height``: 640x512 with 5 % wider FOV, roll, offset, tilt."""
    c, s = np.cos(np.radians(1.5)), np.sin(np.radians(1.5))
    at_640 = np.array([[1.05 * c, -1.05 * s, 18.0], [1.05 * s, 1.05 * c, -10.0],
                       [2e-5, -1e-5, 1.0]])
    from tarfuse_ros.core.prior import resize_matrix
    scale = resize_matrix((640, 512), (width, height))
    return scale @ at_640 @ np.linalg.inv(scale)


def rig_pairs(folder, limit, size):
    """Return ``[(stem, IR seen through the rig, visible)]`` at ``size``."""
    from tarfuse_ros.core import data
    truth = rig_homography(*size)
    pairs = []
    for stem in data.read_split(folder)[:limit]:
        ir, vi = data.load_pair(folder, stem)
        ir, vi = cv2.resize(ir, size), cv2.resize(vi, size)
        pairs.append((stem, cv2.warpPerspective(ir, truth, size,
                                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP),
                      vi))
    return pairs


def calibrate_figures(args):
    from tarfuse_ros.core.prior import corner_error_px, load_prior_yaml
    from tarfuse_ros.tools import calibrate
    size = (640, 512)
    truth = rig_homography(*size)
    print(f'tarfuse-calibrate, shipped model, {args.limit} pairs at 640x512 seen through the '
          f'rig (no prior: {corner_error_px(np.eye(3), truth, size):.1f} px corner error)')
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'rig'
        (folder / 'ir').mkdir(parents=True)
        (folder / 'vi').mkdir()
        for stem, ir, vi in rig_pairs(args.pairs, args.limit, size):
            cv2.imwrite(str(folder / 'ir' / f'{stem}.png'), ir)
            cv2.imwrite(str(folder / 'vi' / f'{stem}.png'), vi)
        for extra in ([], ['--max-side', '320']):
            previous = None
            for iteration in (1, 2):  # the second starts from the first: --iterations 2
                out = Path(tmp) / f'prior_{iteration}_{len(extra)}.yaml'
                command = ['--pairs', str(folder), '--out', str(out), '--pairs-count',
                           str(args.limit), '--iterations', '1', '--threads',
                           str(args.threads), *extra]
                if previous is not None:
                    command += ['--initial-prior', str(previous)]
                if calibrate.main(command) != 0:
                    print('  tarfuse-calibrate failed')
                    break
                error = corner_error_px(load_prior_yaml(out).homography, truth, size)
                print(f'  {" ".join(extra) or "native size"}, after {iteration} '
                      f'iteration(s): corner error {error:.2f} px', flush=True)
                previous = out


def refine_figures(args):
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.prior import corner_error_px, make_prior
    from tarfuse_ros.core.refine import OnlinePriorRefiner, RefinementSettings
    size = tuple(args.size)
    truth = rig_homography(*size)
    start = np.array([[1.0, 0.0, args.offset[0]], [0.0, 1.0, args.offset[1]],
                      [0.0, 0.0, 1.0]]) @ truth
    pairs = rig_pairs(args.pairs, args.limit, size)
    frames = pairs * args.cycles
    engine = FusionEngine(cuda_graph='off')
    for alpha in args.alphas:
        refiner = OnlinePriorRefiner(
            RefinementSettings(alpha=alpha, min_alignment=args.min_alignment),
            make_prior(start, size, size))
        engine.set_registration_prior(refiner.prior)
        errors = []
        for stem, ir, vi in frames:
            result = engine.infer(ir, vi)
            update = refiner.observe(result.flow_px, result.registered_ir, vi, size)
            if update.accepted:
                engine.set_registration_prior(refiner.prior)
            errors.append(corner_error_px(refiner.prior.homography, truth, size))
        last_cycle = errors[-len(pairs):]
        level = float(np.mean(last_cycle))
        reached = next((i + 1 for i, e in enumerate(errors) if e <= level + 1.0), None)
        summary = refiner.summary()
        print(f'online refinement, {size[0]}x{size[1]}, alpha {alpha}, min_alignment '
              f'{args.min_alignment}, prior off by {corner_error_px(start, truth, size):.2f} px: '
              f'{len(frames)} frames ({summary.accepted} accepted, '
              f'{sum(summary.rejected.values())} rejected {summary.rejected}); corner error '
              f'per frame {[round(e, 2) for e in errors]}; last pass mean {level:.2f} px '
              f'(min {min(last_cycle):.2f}, max {max(last_cycle):.2f}), first within 1 px of it '
              f'at frame {reached}; final {errors[-1]:.2f} px', flush=True)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:
        check_args(args)  # each part prints as it goes: a later part's error came after
        if 'calibrate' in args.parts:
            calibrate_figures(args)
        if 'refine' in args.parts:
            refine_figures(args)
    except ValueError as exc:  # a bad --pairs folder, refiner setting...: one line
        print(f'bench_refine: error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
