#!/usr/bin/env python3
"""Registration ablation: EPE of checkpoints and of their stages on ground-truth fields.

For each data set with ground-truth deformations (RoadScene test, msrs_det: the pairs with
``synthetic_misaligned/disp``), every frame is cut to a multiple of 32 (no padding, so the
figures differ slightly from ``tarfuse-eval``'s padded frames) and the registration is run on
the stored deformed IR. Printed per variant: mean EPE (px) against the inverse of the field,
and the zero-flow EPE. Variants: each ``--weights`` checkpoint as it is, and for a checkpoint
with a global stage (``--stages``) its global stage alone and its learnt levels alone.

    python benchmarks/registration_ablation.py --stages models/tarfuse_default.safetensors
        --weights old.safetensors --json models/eval/registration_ablation.json   (one line)
"""

import argparse
import json
from pathlib import Path

from bench_args import check_outputs
import numpy as np
from tarfuse_ros.core import data
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.evaluation import protocol
from tarfuse_ros.evaluation.options import EvalOptions
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch


def load_cases(name):
    """Return the cases of a data set's test pairs that have a ground-truth field."""
    folder = resolve_dataset_dir(name)
    with_field = set(data.misaligned_stems(folder))
    stems = [s for s in data.DataSource(folder, 'test').stems() if s in with_field]
    if not stems:
        raise ValueError(f'{name}: no test pair has a ground-truth field '
                         f'(synthetic_misaligned/disp): nothing to score')
    return [protocol.make_case(folder, s, 'dataset', EvalOptions(), True) for s in stems]


def _flow(model, case, mode):
    height, width = (side // 32 * 32 for side in case.size)
    ir = torch.from_numpy(case.deformed_unit[:height, :width]).float()[None, None]
    vi = torch.from_numpy(case.vi_y_unit[:height, :width]).float()[None, None]
    reg = model.registration
    with torch.no_grad():
        c_ir, c_vi = model.ir_common(ir), model.vi_common(vi)
        if mode == 'global only':
            return reg(c_ir, c_vi, return_levels=True, ir=ir, vi=vi)[1][0]
        if mode == 'levels only':
            matcher, estimator = reg.global_matcher, reg.global_estimator
            if estimator is not None:
                raise ValueError('levels only: a learnt global stage has its own level list')
            reg.global_matcher = None
            try:
                return reg(c_ir, c_vi, ir=ir, vi=vi)
            finally:
                reg.global_matcher = matcher
        return reg(c_ir, c_vi, ir=ir, vi=vi)


def score(model, cases, mode='full'):
    """Return ``(mean EPE, mean zero-flow EPE)`` in px over the cases."""
    errors, zeros = [], []
    for case in cases:
        flow = _flow(model, case, mode)
        height, width = flow.shape[2:]
        ref = torch.from_numpy(case.flow_ref[:height, :width]).permute(2, 0, 1)[None]
        errors.append(float(torch.linalg.vector_norm(flow - ref, dim=1).mean()))
        zeros.append(float(torch.linalg.vector_norm(ref, dim=1).mean()))
    return float(np.mean(errors)), float(np.mean(zeros))


def main(argv=None):
    """Print (and optionally write) the ablation table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', action='append', default=[], help='checkpoint, as it is')
    parser.add_argument('--stages', action='append', default=[],
                        help='checkpoint with a global stage: also global-only / levels-only')
    parser.add_argument('--sets', default='roadscene,msrs_det',
                        help='comma-separated data sets with synthetic_misaligned/disp '
                             '(default roadscene,msrs_det)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1)')
    parser.add_argument('--json', help='also write the figures here')
    args = parser.parse_args(argv)
    check_outputs(parser, json=args.json)
    if not args.weights and not args.stages:  # it printed nothing and exited 0
        parser.error('give at least one --weights or --stages checkpoint')
    if args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    torch.set_num_threads(args.threads)
    variants = [(path, 'full') for path in args.weights]
    for path in args.stages:
        variants += [(path, 'global only'), (path, 'levels only'), (path, 'full')]
    try:  # a data set without ground-truth fields, a checkpoint not found: one line
        cases = {name: load_cases(name) for name in args.sets.split(',')}
        models = {path: load_checkpoint(path) for path, _ in variants}
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    print('EPE in px of the stored frames cut to multiples of 32, mean over the pairs with a '
          'ground-truth field (' + ', '.join(f'{name} {len(items)}'
                                             for name, items in cases.items()) + ' pairs)')
    rows = {}
    for path, mode in variants:
        model = models[path]
        label = f'{Path(path).name} ({mode})'
        rows[label] = {}
        for name, items in cases.items():
            epe, zero = score(model, items, mode)
            rows[label][name] = round(epe, 2)
            rows[label][f'{name}_zero'] = round(zero, 2)
        print(f'{label}: ' + ', '.join(
            f'{name} EPE {rows[label][name]:.2f} px (zero flow {rows[label][f"{name}_zero"]:.2f}'
            f' px)' for name in cases), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
