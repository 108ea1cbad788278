#!/usr/bin/env python3
"""Latency of FusionEngine when other processes want the same CPU cores.

A robot runs the node beside other CPU work (a navigation stack, another network, a second
tarfuse node for a second rig). PyTorch's CPU kernels run on OpenMP threads, and the GNU OpenMP
runtime lets a thread that waits at the end of a parallel region spin on its core for a while
before it sleeps (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``). With more runnable threads than
cores, a spinning thread holds a core that the thread it waits for needs, and the global
stage's thousands of small tensor operations each pay that.

This script starts ``--processes`` copies of one engine run at once (each its own Python
process: the OpenMP settings are read when the process starts) and prints each copy's median
and p90 ``FusionEngine.infer`` latency (ms) on ``--pairs`` msrs_det test pairs resized to
``--size``, for every combination of ``--threads`` and ``--wait-policy`` asked for
(``default``: the environment as it is; ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, waiting
threads sleep at once; ``active``: they spin).

Example (an otherwise idle machine; run ``source tools/ros_env/env.sh`` first)::

    python benchmarks/bench_contention.py --processes 1 2 --threads 1 2
"""

import argparse
import itertools
import json
import os
from pathlib import Path
import subprocess
import sys

from bench_args import check_outputs, positive_int


def frame_size(text):
    """Return ``'WIDTHxHEIGHT'`` as it is when both sides are integers >= 1 (argparse type)."""
    sides = text.split('x')
    if len(sides) != 2 or not all(side.isdigit() and int(side) > 0 for side in sides):
        raise argparse.ArgumentTypeError(f'must be WIDTHxHEIGHT in pixels (e.g. 640x512), got '
                                         f'{text!r}')
    return text


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--processes', type=positive_int, nargs='+', default=[1, 2],
                        help='engine processes run at once (default: 1 2)')
    parser.add_argument('--threads', type=positive_int, nargs='+', default=[1, 2],
                        help='torch threads per process (default: 1 2)')
    parser.add_argument('--wait-policy', nargs='+', default=['default', 'passive'],
                        choices=('default', 'passive', 'active'),
                        help='OMP_WAIT_POLICY per process (default: default passive)')
    parser.add_argument('--pairs', type=positive_int, default=6, help='timed pairs (default 6)')
    parser.add_argument('--size', type=frame_size, default='640x512',
                        help='WIDTHxHEIGHT (default 640x512)')
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint (default: the shipped model)')
    parser.add_argument('--data', type=Path, default=None,
                        help='msrs_det folder (default: $TARFUSE_SHARED/datasets/msrs_det)')
    parser.add_argument('--json', type=Path, default=None, help='also write the rows here')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    return parser


def data_folder(args):
    """Return ``--data``, else msrs_det of the shared data sets (``ValueError``: none found)."""
    if args.data is not None:
        return args.data
    from tarfuse_ros.core.paths import shared_datasets_dir
    shared = shared_datasets_dir()
    if shared is None:
        raise ValueError('no shared data sets found ($TARFUSE_SHARED, or ../shared beside the '
                         'checkout)')
    return shared / 'msrs_det'


def worker(args):
    """Time the engine in this process; print one JSON line ``{median_ms, p90_ms}``."""
    import time

    import cv2
    import numpy as np
    import torch
    from tarfuse_ros.core import data
    from tarfuse_ros.core.engine import FusionEngine

    torch.set_num_threads(args.threads[0])
    width, height = (int(side) for side in args.size.split('x'))
    pairs = []
    for stem in data.read_split(args.data, 'test')[:args.pairs + 1]:
        ir, vi = data.load_pair(args.data, stem)
        pairs.append((cv2.resize(ir, (width, height)), cv2.resize(vi, (width, height))))
    engine = FusionEngine(args.weights, device='cpu')
    engine.infer(*pairs[0])  # warm-up
    times = []
    for ir, vi in pairs[1:]:
        start = time.perf_counter()
        engine.infer(ir, vi)
        times.append(1000.0 * (time.perf_counter() - start))
    print(json.dumps({'median_ms': float(np.median(times)),
                      'p90_ms': float(np.percentile(times, 90))}), flush=True)


def run_case(args, processes, threads, policy):
    """Start ``processes`` workers at once; return their ``{median_ms, p90_ms}`` rows."""
    env = dict(os.environ)
    if policy != 'default':
        env['OMP_WAIT_POLICY'] = policy.upper()
    command = [sys.executable, __file__, '--worker', '--threads', str(threads),
               '--pairs', str(args.pairs), '--size', args.size, '--data', str(args.data)]
    if args.weights is not None:
        command += ['--weights', str(args.weights)]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    return collect(workers)


def collect(workers):
    """Return the JSON rows the ``workers`` print last; a failed one stops those still running.

    Raises SystemExit naming the worker and its exit status (its error is on stderr above); the
    other workers are killed and waited for, so that none outlives the benchmark.
    """
    rows = []
    try:
        for index, process in enumerate(workers, 1):
            out, _ = process.communicate()
            if process.returncode != 0:
                status = (f'killed by signal {-process.returncode}' if process.returncode < 0
                          else f'exit status {process.returncode}')
                raise SystemExit(f'bench_contention: worker {index} of {len(workers)} failed '
                                 f'({status}; its error, if any, is above); the others were '
                                 f'stopped')
            rows.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    return rows


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, json=args.json)
    if args.worker:
        worker(args)
        return 0
    # Checked here, before any worker loads torch (each would print the same traceback).
    from tarfuse_ros.core.layout import read_split
    try:
        args.data = data_folder(args)  # the workers are given it
        stems = read_split(args.data, 'test')
    except ValueError as error:
        parser.error(f'{error} (--data: an msrs_det folder with a test split; default '
                     f'$TARFUSE_SHARED/datasets/msrs_det)')
    if len(stems) < args.pairs + 1:
        parser.error(f'--pairs {args.pairs} needs {args.pairs + 1} test pairs (one warms up), '
                     f'{str(args.data)!r} has {len(stems)}')
    from tarfuse_ros.core.cpus import machine_facts
    print(f'machine: {machine_facts()}')
    print(f'cores {os.cpu_count()}, {args.pairs} pairs at {args.size}, '
          f'OMP_WAIT_POLICY in the environment: {os.environ.get("OMP_WAIT_POLICY", "unset")}')
    results = []
    for processes, threads, policy in itertools.product(args.processes, args.threads,
                                                        args.wait_policy):
        rows = run_case(args, processes, threads, policy)
        medians = ', '.join(f'{row["median_ms"]:.0f}' for row in rows)
        p90s = ', '.join(f'{row["p90_ms"]:.0f}' for row in rows)
        print(f'processes {processes}  threads {threads}  wait policy {policy:8s}  '
              f'median ms {medians}  p90 ms {p90s}', flush=True)
        results.append({'processes': processes, 'threads': threads, 'wait_policy': policy,
                        'workers': rows})
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
