#!/usr/bin/env python3
"""How well are a data set's "aligned" pairs aligned? Two estimators, one answer per pair.

The registration EPE of ``tarfuse-eval`` compares the model's flow with the ground-truth field
that deformed the aligned IR. That truth assumes the aligned IR sits exactly on the visible
image; where the pair itself is off by a pixel or two, a registration that puts the IR on the
visible image is charged with that offset, and the EPE has a floor no model can go below.

This script measures the offset on the aligned pairs themselves (no deformation), with two
estimators that share no code and optimise different things:

- the model's global stage (:class:`~tarfuse_ros.core.model.matching.OrientationMatcher`, the
  shipped settings: block-matched orientation histograms, a robust affine fit; no learnt
  parameter);
- OpenCV's ECC (Evangelidis and Psarakis, TPAMI 2008; :func:`~tarfuse_ros.core.baselines.
  ecc_register`, affine, on gradient magnitudes), the evaluation's own baseline.

Per pair: the mean length of each estimator's flow over the frame (px), the mean length of
their difference, and the offset they share: with ``g = c + e_g`` and ``e = c + e_e`` (a common
offset ``c`` plus errors independent of it and of each other), the mean over the frame of the
inner product ``g . e`` estimates ``|c|^2``; ``common_px`` is its root (0 where it is negative).
Where both find a flow of a few pixels and agree on it to a fraction of its length, the pair is
off by about that much; where they disagree, one of them failed. Frames are cut to multiples
of 32 (as ``benchmarks/registration_ablation.py``).

With ``--epe`` (test splits with ground-truth fields: RoadScene, msrs_det), the same pairs'
registration EPE on their fields (``benchmarks/registration_ablation.py``'s frames and flows:
the whole network and its global stage alone) is printed beside the offset, with their
correlation over the pairs and the mean EPE over the pairs whose two estimators agree within
``--agree-px``: how much of the EPE the pairs' own offset explains.

    python benchmarks/dataset_alignment.py --data roadscene --split test --epe \
        --json models/eval/dataset_alignment_roadscene_test.json
"""

import argparse
import json
import sys

import cv2
import numpy as np
from tarfuse_ros.core import baselines, data
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.model.matching import affine_flow
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

# A sibling script: importable when this one runs from benchmarks/ (or with it on sys.path).
import registration_ablation  # noqa: I100

DEFAULT_WEIGHTS = 'models/tarfuse_default.safetensors'


def grey_unit(image):
    """Return a 2-D float32 plane in [0, 1] of an 8-bit grey or BGR image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image.astype(np.float32) / 255.0


def pair_offsets(matcher, ir, vi):
    """Return the offsets the two estimators find on one aligned pair.

    Args:
        matcher: the global stage (``model.registration.global_matcher``).
        ir, vi: ``(H, W)`` float32 planes in [0, 1], H and W multiples of 32.

    Returns:
        ``(global_px, ecc_px, difference_px, common_px, ecc_success)``: mean flow lengths in
        pixels of the frame (the global stage's, ECC's (0 where ECC failed and fell back to the
        identity), their difference's) and the root of the mean inner product of the two flows
        (the offset they share, module docstring).

    """
    height, width = vi.shape
    with torch.no_grad():
        theta = matcher(torch.from_numpy(ir)[None, None], torch.from_numpy(vi)[None, None])
    flow_global = affine_flow(theta, height, width)[0].permute(1, 2, 0).numpy()
    ecc = baselines.ecc_register(ir, vi)
    flow_ecc = ecc.flow_px

    def mean_length(flow):
        return float(np.linalg.norm(flow, axis=2).mean())

    shared = float((flow_global * flow_ecc).sum(axis=2).mean())
    return (mean_length(flow_global), mean_length(flow_ecc),
            mean_length(flow_global - flow_ecc), float(np.sqrt(max(shared, 0.0))),
            bool(ecc.success))


def field_epe(model, case, mode):
    """Return the mean EPE (px) of ``model`` (``mode`` of registration_ablation) on a case."""
    height, width = (side // 32 * 32 for side in case.size)
    flow = registration_ablation._flow(model, case, mode)[0].permute(1, 2, 0).numpy()
    return float(np.linalg.norm(flow - case.flow_ref[:height, :width], axis=2).mean())


def epe_summary(rows, agree_px):
    """Return the EPE figures of ``--epe`` over ``rows`` (module docstring)."""
    epe = np.array([row['epe_full_px'] for row in rows])
    common = np.array([row['common_px'] for row in rows])
    trusted = np.array([row['difference_px'] < agree_px for row in rows])
    summary = {'epe_full_px': float(epe.mean()),
               'epe_global_px': float(np.mean([row['epe_global_px'] for row in rows])),
               'corr_epe_common': (float(np.corrcoef(epe, common)[0, 1]) if len(rows) > 1
                                   else float('nan')),
               'agree_px': agree_px, 'trusted_pairs': int(trusted.sum())}
    if trusted.any():
        summary['trusted_epe_full_px'] = float(epe[trusted].mean())
        summary['trusted_common_px'] = float(common[trusted].mean())
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, aligned) or a shared name (roadscene)')
    parser.add_argument('--split', default='test', help='split name or list file')
    parser.add_argument('--weights', default=DEFAULT_WEIGHTS,
                        help='checkpoint whose global stage is used (no learnt parameter)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads')
    parser.add_argument('--max-pairs', type=int, default=0, help='0 = all')
    parser.add_argument('--agree', type=float, default=0.5,
                        help='a pair counts as offset when both estimators find more than 1 px '
                             'and differ by less than this fraction of the smaller flow')
    parser.add_argument('--agree-px', type=float, default=1.0,
                        help='with --epe: pairs whose estimators differ by less than this (px) '
                             'are the ones whose offset is trusted')
    parser.add_argument('--epe', action='store_true',
                        help="also the EPE on the pairs' ground-truth fields (test split)")
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    if args.epe and args.split != 'test':
        parser.error('--epe needs --split test (the pairs with ground-truth fields)')
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.weights).eval()
    matcher = getattr(model.registration, 'global_matcher', None)
    if matcher is None:
        parser.error(f'{args.weights} has no orientation global stage '
                     '(model.registration: match with global_features: orientation)')
    dataset_dir = resolve_dataset_dir(args.data)
    stems = list(data.read_split(dataset_dir, args.split))
    if args.max_pairs:
        stems = stems[:args.max_pairs]
    cases = {}
    if args.epe:
        cases = {case.stem: case for case in registration_ablation.load_cases(args.data)}
        stems = [stem for stem in stems if stem in cases]
    rows = []
    for stem in stems:
        ir, vi = (grey_unit(image) for image in data.load_pair(dataset_dir, stem))
        height, width = vi.shape[0] // 32 * 32, vi.shape[1] // 32 * 32
        found, ecc, difference, common, ecc_ok = pair_offsets(
            matcher, np.ascontiguousarray(ir[:height, :width]),
            np.ascontiguousarray(vi[:height, :width]))
        offset = min(found, ecc) > 1.0 and difference < args.agree * min(found, ecc)
        rows.append({'stem': stem, 'global_stage_px': found, 'ecc_px': ecc,
                     'difference_px': difference, 'common_px': common, 'ecc_success': ecc_ok,
                     'offset': offset})
        mark = '  (offset)' if offset else ''
        if args.epe:
            rows[-1].update({f'epe_{mode.split()[0]}_px': field_epe(model, cases[stem], mode)
                             for mode in ('full', 'global only')})
            mark += ' | EPE on its field: network {epe_full_px:.2f}, global stage ' \
                '{epe_global_px:.2f} px'.format(**rows[-1])
        print(f'{stem}: global stage {found:.2f} px, ECC {ecc:.2f} px, they differ by '
              f'{difference:.2f} px, share {common:.2f} px{mark}', flush=True)
    agreeing = [r for r in rows if r['offset']]
    summary = {
        'data': args.data, 'split': args.split, 'pairs': len(rows),
        'global_stage_px': float(np.mean([r['global_stage_px'] for r in rows])),
        'ecc_px': float(np.mean([r['ecc_px'] for r in rows])),
        'difference_px': float(np.mean([r['difference_px'] for r in rows])),
        'common_px': float(np.mean([r['common_px'] for r in rows])),
        'ecc_failures': sum(not r['ecc_success'] for r in rows),
        'offset_pairs': len(agreeing),
        'offset_pairs_mean_px': (float(np.mean([(r['global_stage_px'] + r['ecc_px']) / 2
                                                for r in agreeing])) if agreeing else 0.0),
        'agree': args.agree, 'weights': args.weights}
    if args.epe:
        summary.update(epe_summary(rows, args.agree_px))
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'summary': summary, 'pairs': rows}, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
