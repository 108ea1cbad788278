#!/usr/bin/env python3
"""Benchmark the onnxruntime backend against the torch engine, interleaved, on the CPU.

Exports the checkpoint (``tarfuse-export``) to a temporary file, then times
``FusionEngine.infer`` (torch) and ``OnnxFusionEngine.infer`` (onnxruntime) on a real sample pair
resized to each resolution, alternating the two call by call (A B B A ...) so that a machine
shared with other work slows both alike; prints the median and p90 per backend, the per-stage
medians (preprocess, model, postprocess), the median process CPU time per call (all threads; less
sensitive to other load than wall time, but it counts spin-waiting too) and the ratios
onnxruntime / torch. Target (issue 11):
onnxruntime within 10 % of torch at 640x512 on 2 threads. Run with
``source tools/ros_env/env.sh`` first (its malloc settings matter for torch).

Example::

    python benchmarks/bench_onnx.py --threads 2 --iters 30
"""

import argparse
from pathlib import Path
import sys
import tempfile
import time

from bench_args import non_negative_int, positive_int
import cv2
import numpy as np
from resized_set import parse_size
import torch

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint (.safetensors); default: the shipped model')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='CPU threads of both (default 2)')
    parser.add_argument('--resolutions', nargs='+', type=_resolution, default=['640x512'],
                        metavar='WxH', help='WIDTHxHEIGHT sizes (default: %(default)s)')
    parser.add_argument('--warmup', type=non_negative_int, default=3,
                        help='warm-up calls of each (default 3)')
    parser.add_argument('--iters', type=positive_int, default=20,
                        help='timed calls of each (default 20)')
    parser.add_argument('--no-scale-search', action='store_true',
                        help='export without the scale search (tarfuse-export --no-scale-search) '
                             'and run the torch engine with scale_search=False, as for a '
                             'calibrated rig; default: both with the search of the checkpoint '
                             '(the graph fits every scale candidate, the torch engine skips the '
                             'zoomed fits where the unzoomed one explains the pair)')
    return parser


def _resolution(text):
    """Return ``text`` when it is ``WIDTHxHEIGHT`` of at least 16x16 (argparse type)."""
    parse_size(text)
    return text


def _pair(width, height):
    stem = 'FLIR_00122'
    ir = cv2.imread(str(ROOT / 'samples' / 'synthetic_misaligned' / 'ir_warp' / f'{stem}.png'),
                    cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(ROOT / 'samples' / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    size = (width, height)
    return (cv2.resize(ir, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(vi, size, interpolation=cv2.INTER_LINEAR))


def _summary(samples):
    values = np.asarray(samples)
    return float(np.median(values)), float(np.percentile(values, 90))


def run(engines, pair, warmup, iters):
    """Time ``infer`` of each engine, interleaved: ``{name: (wall ms, CPU ms, stages)}``."""
    names = list(engines)
    for _ in range(warmup):
        for name in names:
            engines[name].infer(*pair)
    results = {name: ([], [], {'preprocess': [], 'model': [], 'postprocess': []})
               for name in names}
    for index in range(iters):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            out = engines[name].infer(*pair)
            results[name][0].append((time.perf_counter() - start) * 1e3)
            results[name][1].append((time.process_time() - cpu) * 1e3)
            for stage, values in results[name][2].items():
                values.append(out.timings_ms[stage])
    return results


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from tarfuse_ros.core.checkpoint import load_checkpoint
    from tarfuse_ros.core.cpus import machine_facts
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.export import export_onnx
    from tarfuse_ros.core.onnx_backend import OnnxFusionEngine
    from tarfuse_ros.core.paths import default_weights_path
    import onnxruntime

    weights = args.weights or default_weights_path()
    try:  # a missing or foreign file is refused now, not after minutes of export
        load_checkpoint(weights)
    except ValueError as exc:
        parser.error(f'--weights: {exc}')
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / 'model.onnx'
        search = not args.no_scale_search
        export_onnx(weights, onnx_path, verify=False, scale_search=search)
        engines = {'torch': FusionEngine(weights, device='cpu', scale_search=search),
                   'onnxruntime': OnnxFusionEngine(onnx_path, device='cpu',
                                                   threads=args.threads)}
        print(f'machine: {machine_facts()}')
        print(f'{weights.name}: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, '
              f'{args.threads} threads, {args.iters} interleaved calls each, scale search '
              f'{"on" if search else "off"}')
        for text in args.resolutions:
            width, height = parse_size(text)
            results = run(engines, _pair(width, height), args.warmup, args.iters)
            medians, cpu_medians = {}, {}
            for name, (totals, cpu, stages) in results.items():
                median, p90 = _summary(totals)
                medians[name], cpu_medians[name] = median, float(np.median(cpu))
                parts = ', '.join(f'{stage} {np.median(values):.1f}'
                                  for stage, values in stages.items())
                print(f'{text} {name:12s} infer median {median:7.1f} ms, p90 {p90:7.1f} ms '
                      f'({parts}); CPU time median {cpu_medians[name]:7.1f} ms')
            print(f'{text} ratio onnxruntime / torch (medians): wall '
                  f'{medians["onnxruntime"] / medians["torch"]:.3f}, CPU time '
                  f'{cpu_medians["onnxruntime"] / cpu_medians["torch"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
