#!/usr/bin/env python3
"""How well are a data set's "aligned" pairs aligned? Two estimators, one answer per pair.

The registration EPE of ``tarfuse-eval`` compares the model's flow with the ground-truth field
that deformed the aligned IR. That truth assumes the aligned IR sits exactly on the visible
image; where the pair itself is off by a pixel or two, a registration that puts the IR on the
visible image is charged with that offset, and the EPE has a floor no model can go below.

This script measures the offset on the aligned pairs themselves (no deformation), with two
estimators that share no code and optimise different things:

- the model's global stage (:class:`~tarfuse_ros.core.model.matching.OrientationMatcher`, the
  checkpoint's settings: block-matched orientation histograms, a robust affine fit; no learnt
  parameter);
- OpenCV's ECC (Evangelidis and Psarakis, TPAMI 2008; :func:`~tarfuse_ros.core.baselines.
  ecc_register`, affine, on gradient magnitudes), the evaluation's own baseline.

Per pair, all in pixels of the frame and all mean lengths over it (the EPE's kind of figure):
each estimator's flow ``g`` and ``e``, their difference ``g - e``, and the offset both find,
``(g + e) / 2``. Where the two agree (difference below ``--agree-px``) the pair is off by
about that offset; where they disagree, one of them failed (ECC often does on dark night
images) and the pair says nothing. Frames are cut to multiples of 32 (as
``benchmarks/registration_ablation.py``).

With ``--epe`` (pairs with a ground-truth field, ``synthetic_misaligned/disp``: the RoadScene
and msrs_det test pairs), each pair's registration EPE on its field is printed beside (the
whole network and its global stage alone, ``benchmarks/registration_ablation.py``'s frames and
flows), and the network's EPE against the field corrected by ECC's offset: the stored IR is
``ir(x + d(x))`` and the reference flow ``r`` undoes ``d``; if the aligned IR matches the
visible image at ``x + o(x)`` (``o``: ECC's flow on the aligned pair), the flow that puts the
stored IR on the visible image is ``o(x) + r(x + o(x))``. That figure still holds ECC's own
error; over the agreeing pairs it says how far the network is from the visible scene rather
than from the data set's alignment.

    python benchmarks/dataset_alignment.py --data roadscene --split test --epe --json OUT.json
"""

import argparse
import json
import sys

from bench_args import check_outputs
import cv2
import numpy as np
from tarfuse_ros.core import baselines, data
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.model.matching import affine_flow
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.evaluation import protocol
from tarfuse_ros.evaluation.options import EvalOptions
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

# A sibling script: importable when this one runs from benchmarks/ (or with it on sys.path).
import registration_ablation  # noqa: I100


def grey_unit(image):
    """Return a 2-D float32 plane in [0, 1] of an 8- or 16-bit grey or BGR image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in 'ui' else 1.0
    return image.astype(np.float32) / top


def mean_length(flow):
    """Return the mean length (px) of an ``(H, W, 2)`` flow."""
    return float(np.linalg.norm(flow, axis=2).mean())


def global_stage_flow(matcher, ir, vi):
    """Return the global stage's ``(1, 2, H, W)`` flow (px, ``warp`` convention) of a pair.

    ``ir``, ``vi``: ``(H, W)`` float32 planes in [0, 1] (``matcher``: as
    :func:`estimate_flows`).
    """
    height, width = vi.shape
    with torch.no_grad():
        theta = matcher(torch.from_numpy(ir)[None, None], torch.from_numpy(vi)[None, None])
    return affine_flow(theta, height, width)


def save_figures(summary, rows, path):
    """Print ``summary`` as JSON and, with a ``path``, write ``{summary, pairs: rows}`` there."""
    print(json.dumps(summary, indent=1))
    if path:
        with open(path, 'w') as handle:
            json.dump({'summary': summary, 'pairs': rows}, handle, indent=1)


def estimate_flows(matcher, ir, vi):
    """Return the two estimators' flows from ``ir`` to ``vi`` on one aligned pair.

    Args:
        matcher: the global stage (``model.registration.global_matcher``).
        ir, vi: ``(H, W)`` float32 planes in [0, 1], H and W multiples of 32.

    Returns:
        ``(flow_global, ecc)``: the global stage's ``(H, W, 2)`` flow in pixels (``warp``
        convention: the IR sampled at ``x + flow`` lies on the visible image at ``x``) and
        the :class:`~tarfuse_ros.core.baselines.EccResult` (its ``flow_px`` in the same
        convention; the identity where ECC failed, ``success`` False).

    """
    flow_global = global_stage_flow(matcher, ir, vi)[0].permute(1, 2, 0).numpy()
    return flow_global, baselines.ecc_register(ir, vi)


OFFSETS = ('global_stage_px', 'ecc_px', 'difference_px', 'both_px')


def offset_figures(flow_global, ecc):
    """Return one pair's figures from :func:`estimate_flows`' output (module docstring).

    ``{name: px}`` for :data:`OFFSETS`: mean lengths of the global stage's flow, ECC's flow,
    their difference and their average (the offset both find); and ``ecc_fell_back``.
    """
    values = (flow_global, ecc.flow_px, flow_global - ecc.flow_px,
              (flow_global + ecc.flow_px) / 2.0)
    figures = {name: mean_length(flow) for name, flow in zip(OFFSETS, values)}
    figures['ecc_fell_back'] = not ecc.success
    return figures


def pair_offsets(matcher, ir, vi):
    """Return ``(global_px, ecc_px, difference_px, both_px)`` for one aligned pair.

    Arguments as :func:`estimate_flows`; figures as :func:`offset_figures`.
    """
    figures = offset_figures(*estimate_flows(matcher, ir, vi))
    return tuple(figures[name] for name in OFFSETS)


def corrected_reference(flow_ref, offset):
    """Return the flow putting the stored IR on the visible image, given the pair's offset.

    Args:
        flow_ref: ``(H, W, 2)`` reference flow undoing the ground-truth field (px).
        offset: ``(H, W, 2)`` flow from the aligned IR to the visible image (px).

    Returns:
        ``offset(x) + flow_ref(x + offset(x))`` (bilinear, edges repeated), ``(H, W, 2)``.

    """
    height, width = flow_ref.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + offset[..., 0], ys + offset[..., 1]
    moved = [cv2.remap(np.ascontiguousarray(flow_ref[..., k], dtype=np.float32), map_x, map_y,
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for k in (0, 1)]
    return offset + np.stack(moved, axis=2)


def field_epes(model, case, ecc_offset):
    """Return ``--epe``'s figures for one case (module docstring), in px."""
    height, width = (side // 32 * 32 for side in case.size)
    reference = case.flow_ref[:height, :width]
    flows = {mode: registration_ablation._flow(model, case, mode)[0].permute(1, 2, 0).numpy()
             for mode in ('full', 'global only')}
    return {'epe_network_px': mean_length(flows['full'] - reference),
            'epe_global_stage_px': mean_length(flows['global only'] - reference),
            'epe_network_vs_ecc_corrected_px': mean_length(
                flows['full'] - corrected_reference(reference, ecc_offset))}


def summarise(rows, agree_px, with_epe):
    """Return the summary figures over ``rows`` (means; the agreeing pairs apart)."""
    def mean(key, subset):
        return float(np.mean([row[key] for row in subset])) if subset else None

    agreeing = [row for row in rows if row['estimators_agree']]
    keys = list(OFFSETS)
    if with_epe:
        keys += ['epe_network_px', 'epe_global_stage_px', 'epe_network_vs_ecc_corrected_px']
    summary = {key: mean(key, rows) for key in keys}
    summary.update({'pairs': len(rows), 'agree_px': agree_px, 'agreeing_pairs': len(agreeing),
                    'ecc_fallbacks': sum(row['ecc_fell_back'] for row in rows)})
    summary.update({f'agreeing_{key}': mean(key, agreeing) for key in keys})
    if with_epe and len(rows) > 1:
        summary['corr_epe_network_both'] = float(np.corrcoef(
            [row['epe_network_px'] for row in rows], [row['both_px'] for row in rows])[0, 1])
    return summary


def field_cases(dataset_dir, stems):
    """Return ``({stem: case}, skipped)``: the stems that have a ground-truth field."""
    folder = dataset_dir / 'synthetic_misaligned' / 'disp'
    with_field = {path.stem for path in folder.glob('*.npz')} if folder.is_dir() else set()
    cases = {stem: protocol.make_case(dataset_dir, stem, 'dataset', EvalOptions(), True)
             for stem in stems if stem in with_field}
    return cases, [stem for stem in stems if stem not in with_field]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, aligned) or a shared name (roadscene)')
    parser.add_argument('--split', default='test', help='split name or list file')
    parser.add_argument('--weights', default=None,
                        help='checkpoint: its global stage estimates the offsets, and with --epe '
                             'the whole network is scored (default: the shipped model)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch, OpenCV)')
    parser.add_argument('--max-pairs', type=int, default=0, help='first N pairs; 0 = all')
    parser.add_argument('--agree-px', type=float, default=1.0,
                        help='the estimators agree on a pair when their flows differ by less '
                             'than this (mean px)')
    parser.add_argument('--epe', action='store_true',
                        help="also the EPE on the pairs' ground-truth fields (pairs without "
                             'one are skipped)')
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    if args.threads < 1 or args.max_pairs < 0 or args.agree_px <= 0:
        parser.error('need --threads >= 1, --max-pairs >= 0 and --agree-px > 0')
    check_outputs(parser, json=args.json)
    try:
        dataset_dir = resolve_dataset_dir(args.data)
        stems = list(data.read_split(dataset_dir, args.split))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.max_pairs:
        stems = stems[:args.max_pairs]
    cases = {}
    if args.epe:
        cases, without = field_cases(dataset_dir, stems)
        if without:
            print(f'--epe: {len(without)} of {len(stems)} pairs have no ground-truth field '
                  f'(skipped): {" ".join(without[:10])}{" ..." if len(without) > 10 else ""}')
        stems = [stem for stem in stems if stem in cases]
    if not stems:
        parser.error(f'no pairs to measure in {args.data} / {args.split}')
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    weights = args.weights or str(default_weights_path())
    try:
        model = load_checkpoint(weights).eval()
    except ValueError as exc:  # not found, not a checkpoint: one line
        parser.error(str(exc))
    matcher = getattr(model.registration, 'global_matcher', None)
    if matcher is None:
        parser.error(f'{weights} has no orientation global stage '
                     '(model.registration: match with global_features: orientation)')
    rows = []
    for stem in stems:
        ir, vi = (grey_unit(image) for image in data.load_pair(dataset_dir, stem))
        height, width = vi.shape[0] // 32 * 32, vi.shape[1] // 32 * 32
        if ir.shape != vi.shape or min(height, width) < 32:
            print(f'{stem}: skipped (IR {ir.shape}, visible {vi.shape}: need one size of at '
                  'least 32 x 32 px)', flush=True)
            continue
        flow_global, ecc = estimate_flows(matcher, np.ascontiguousarray(ir[:height, :width]),
                                          np.ascontiguousarray(vi[:height, :width]))
        row = {'stem': stem, **offset_figures(flow_global, ecc)}
        row['estimators_agree'] = row['difference_px'] < args.agree_px
        line = (f'{stem}: global stage {row["global_stage_px"]:.2f} px, ECC '
                f'{row["ecc_px"]:.2f} px, they differ by {row["difference_px"]:.2f} px, '
                f'both {row["both_px"]:.2f} px{" (agree)" if row["estimators_agree"] else ""}')
        if args.epe:
            row.update(field_epes(model, cases[stem], ecc.flow_px))
            line += (f' | EPE on its field: network {row["epe_network_px"]:.2f}, global stage '
                     f'{row["epe_global_stage_px"]:.2f}, network vs the field corrected by '
                     f'ECC {row["epe_network_vs_ecc_corrected_px"]:.2f} px')
        rows.append(row)
        print(line, flush=True)
    if not rows:
        parser.error('every pair was skipped')
    summary = {'data': args.data, 'split': args.split,
               'weights': args.weights or 'shipped default'}
    summary.update(summarise(rows, args.agree_px, args.epe))
    save_figures(summary, rows, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
