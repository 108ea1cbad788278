#!/usr/bin/env python3
"""Benchmark the TarFuse network and FusionEngine: parameters, GFLOPs, latency per mode and size.

Prints (and with ``--json OUT`` also writes):

- parameters, in total and per part (``tarfuse_ros.core.model.tarfuse.parameter_counts``);
- GFLOPs of one ``predict_raw`` at 640x512, counted with ``torch.utils.flop_counter``'s
  ``FlopCounterMode``, which counts a multiply-add as 2 FLOPs (GMACs = GFLOPs / 2) and counts
  convolutions and matrix products only (activations, normalisation, grid sampling are not
  counted); GFLOPs = FLOPs / 1e9;
- latency median and p90 (ms, batch 1) per resolution and mode, for the bare network
  (:data:`NET_TIMING`: what ``FusionEngine.forward_tensors`` runs, on tensors already on the
  device, without its input checks: their range, read with ``torch.aminmax``, is a device
  sync per input; checked once before the timing) and for the full ``FusionEngine.infer``
  (numpy uint8 IR + BGR visible in, preprocessing, network, NMS and conversion back to numpy
  included).

Modes: ``cpu`` (fp32, ``--threads``), and when CUDA is available ``cuda-fp32``, ``cuda-fp16``
(autocast) and ``cuda-fp16-graph`` (autocast + CUDA-graph replay).
Targets (issue 3): CPU 2 threads 640x512 <= 250 ms, 320x256 <= 60 ms; GPU 640x512 fp16 + graph
<= 1.5 ms. Run with ``source tools/ros_env/env.sh`` first: its glibc malloc settings matter.

Example::

    python benchmarks/bench_model.py --threads 2 --json /tmp/bench.json
"""

import argparse
import json
import os
from pathlib import Path
import platform
import sys
import tempfile
import time

from bench_args import non_negative_int, positive_int
import cv2
import numpy as np
from resized_set import parse_size
import torch
from torch.utils.flop_counter import FlopCounterMode

RESOLUTIONS = ('320x256', '640x512', '1280x1024')
MODES = ('cpu', 'cuda-fp32', 'cuda-fp16', 'cuda-fp16-graph')
TARGETS_MS = {('cpu', '640x512'): 250.0, ('cpu', '320x256'): 60.0,
              ('cuda-fp16-graph', '640x512'): 1.5}
MALLOC_VARS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_')
# What the 'net' figures time (printed and recorded with them).
NET_TIMING = ('the network alone, as FusionEngine.forward_tensors runs it on tensors already '
              'on the device, without its input checks (checked once before the timing)')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint (.safetensors); default: the shipped model if present, '
                             'else a randomly initialised one (seed 0)')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='CPU threads (default 2)')
    parser.add_argument('--resolutions', nargs='+', type=_parse_size,
                        default=[_parse_size(text) for text in RESOLUTIONS], metavar='WxH',
                        help=f'WIDTHxHEIGHT sizes (default: {" ".join(RESOLUTIONS)})')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=None,
                        help='default: cpu, plus the CUDA modes when CUDA is available')
    parser.add_argument('--warmup', type=non_negative_int, default=3,
                        help='warm-up iterations (default 3)')
    parser.add_argument('--iters', type=positive_int, default=20,
                        help='timed iterations (default 20)')
    parser.add_argument('--max-seconds', type=float, default=15.0,
                        help='stop timing one case after this long (at least 5 iterations)')
    parser.add_argument('--no-engine', action='store_true', help='time the bare network only')
    parser.add_argument('--no-scale-search', dest='scale_search', action='store_false',
                        help="the global stage fits scale 1.0 only (the node's "
                             'registration.scale_search false)')
    parser.add_argument('--fine-passes', type=int, default=None, metavar='N',
                        help="the global stage's fine passes, 0-8 (default: the model's own; "
                             "the node's registration.fine_passes)")
    parser.add_argument('--json', type=Path, default=None, help='also write results here')
    return parser


def _parse_size(text):
    """Return ``(width, height)`` of ``'WIDTHxHEIGHT'`` (argparse type; at least 16x16)."""
    return parse_size(text)


def _sample_pair():
    """Return a real RoadScene pair when the shared data sets are present, else a synthetic one."""
    from tarfuse_ros.core.paths import shared_datasets_dir
    datasets = shared_datasets_dir()
    if datasets is not None:
        root = datasets / 'roadscene'
        stem = (root / 'test.txt').read_text().split()[0]
        ir = cv2.imread(str(root / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(root / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
        if ir is not None and vi is not None:
            return ir, vi, f'roadscene/{stem}'
    rng = np.random.default_rng(0)
    vi = cv2.GaussianBlur(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8), (9, 9), 3)
    ir = cv2.GaussianBlur(rng.integers(0, 256, (256, 320), dtype=np.uint8), (9, 9), 3)
    return ir, vi, 'synthetic'


def _resolve_weights(path, tmpdir):
    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model
    from tarfuse_ros.core.paths import default_weights_path
    if path is not None:
        return path, str(path)
    shipped = default_weights_path()
    if shipped.is_file():
        return shipped, f'{shipped} (shipped)'
    torch.manual_seed(0)
    random_path = Path(tmpdir) / 'random_init.safetensors'
    save_checkpoint(random_path, build_model(), provenance={'note': 'benchmark random init'})
    return random_path, 'random init (seed 0; no shipped model found)'


def _stats(samples_ms):
    values = np.asarray(samples_ms, dtype=np.float64)
    return {'median_ms': float(np.median(values)), 'p90_ms': float(np.percentile(values, 90)),
            'n': int(values.size)}


def _time(fn, sync, warmup, iters, max_seconds):
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    deadline = time.perf_counter() + max_seconds
    for i in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return samples


def count_flops(model, width, height):
    """Count the FLOPs (multiply-add = 2) of one ``predict_raw`` at ``width x height`` (CPU)."""
    ir = torch.rand(1, 1, height, width)
    vi = torch.rand(1, 1, height, width)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.predict_raw(ir, vi)
    return counter.get_total_flops()


def _parameters(model):
    from tarfuse_ros.core.model import tarfuse
    info = {'total': sum(p.numel() for p in model.parameters())}
    counts = getattr(tarfuse, 'parameter_counts', None)
    if callable(counts):
        info['parts'] = {str(k): int(v) for k, v in counts(model).items() if k != 'total'}
    return info


def _make_engine(weights, mode, scale_search=True, fine_passes=None):
    from tarfuse_ros.core.engine import FusionEngine
    if mode == 'cpu':  # the thread count is set by main()
        return FusionEngine(weights, device='cpu', scale_search=scale_search,
                            fine_passes=fine_passes)
    return FusionEngine(weights, device='cuda', half=mode != 'cuda-fp32',
                        cuda_graph='on' if mode == 'cuda-fp16-graph' else 'off',
                        scale_search=scale_search, fine_passes=fine_passes)


def run_case(engine, mode, width, height, pair, args):
    from tarfuse_ros.core import images
    ir, vi = (cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
              for img in pair[:2])
    device = torch.device(engine.device)
    y, _ = images.to_unit_visible(vi)
    ir_t = torch.from_numpy(images.to_unit_gray(ir))[None, None].to(device)
    vi_t = torch.from_numpy(y)[None, None].to(device)
    ir_t, _ = images.pad_to_multiple(ir_t)
    vi_t, _ = images.pad_to_multiple(vi_t)
    if device.type == 'cuda':
        def sync():
            torch.cuda.synchronize(device)
    else:
        def sync():
            pass
    row = {'mode': mode, 'resolution': f'{width}x{height}'}
    engine.forward_tensors(ir_t, vi_t)  # checks the inputs, once: not part of the timing
    row['model'] = _stats(_time(lambda: engine._run_model(ir_t, vi_t), sync,
                                args.warmup, args.iters, args.max_seconds))
    if not args.no_engine:
        parts = []

        def infer():
            parts.append(engine.infer(ir, vi).timings_ms)

        row['engine'] = _stats(_time(infer, sync, args.warmup, args.iters, args.max_seconds))
        timed = parts[args.warmup:]
        row['engine_parts_median_ms'] = {
            key: float(np.median([p[key] for p in timed]))
            for key in ('preprocess', 'model', 'postprocess')}
    target = TARGETS_MS.get((mode, row['resolution']))
    if target is not None:
        row['target_ms'] = target
    return row


def _format_row(row):
    model = row['model']
    engine = row.get('engine')
    parts = row.get('engine_parts_median_ms')
    cells = [f"{row['mode']:<16}", f"{row['resolution']:>9}",
             f"{model['median_ms']:9.2f}", f"{model['p90_ms']:9.2f}"]
    if engine:
        cells += [f"{engine['median_ms']:9.2f}", f"{engine['p90_ms']:9.2f}",
                  f"{parts['preprocess']:7.2f} / {parts['model']:7.2f} / "
                  f"{parts['postprocess']:6.2f}"]
    else:
        cells += [f"{'-':>9}", f"{'-':>9}", f"{'-':>27}"]
    target = row.get('target_ms')
    if target is not None:
        met = (engine or model)['median_ms'] <= target
        cells.append(f"<= {target:g} ms: {'met' if met else 'MISSED'}")
    return ' | '.join(cells)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        from tarfuse_ros.core.fine_passes import check_fine_passes
        check_fine_passes(args.fine_passes, '--fine-passes')
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault('YOLO_OFFLINE', '1')
    sizes = args.resolutions
    cuda = torch.cuda.is_available()
    modes = args.modes or (list(MODES) if cuda else ['cpu'])
    if any(m.startswith('cuda') for m in modes) and not cuda:
        parser.error('CUDA modes asked for but CUDA is not available')
    from tarfuse_ros.core.cpus import cpu_model, machine_facts
    torch.set_num_threads(args.threads)
    results = {
        'torch': torch.__version__, 'python': platform.python_version(),
        'cpu': cpu_model(), 'machine': machine_facts(), 'threads': args.threads,
        'gpu': torch.cuda.get_device_name(0) if cuda else None,
        'malloc_tunables': {k: os.environ.get(k) for k in MALLOC_VARS},
        'warmup': args.warmup, 'iters': args.iters, 'net_timing': NET_TIMING,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        weights, described = _resolve_weights(args.weights, tmpdir)
        from tarfuse_ros.core.checkpoint import load_checkpoint
        try:
            model = load_checkpoint(weights).eval()
        except ValueError as exc:  # missing, unreadable, another format: before any timing
            parser.error(f'--weights: {exc}')
        results['weights'] = described
        results['scale_search'] = args.scale_search
        results['fine_passes'] = args.fine_passes
        results['parameters'] = _parameters(model)
        flops = count_flops(model, 640, 512)
        results['gflops_640x512'] = flops / 1e9
        results['gflops_convention'] = ('FlopCounterMode: multiply-add = 2 FLOPs, conv/matmul '
                                        'only; GFLOPs = FLOPs / 1e9, one pair at 640x512')
        del model
        pair = _sample_pair()
        results['input'] = pair[2]
        print(f'weights: {described}' + ('' if args.scale_search else ' (scale search off)')
              + ('' if args.fine_passes is None else f' ({args.fine_passes} fine passes)'))
        print(f"machine: {results['machine']}; GPU: {results['gpu']}")
        print(f'torch {torch.__version__}, {args.threads} CPU threads, input: {pair[2]}')
        if not all(results['malloc_tunables'].values()):
            print('note: glibc malloc tunables not set (source tools/ros_env/env.sh): CPU '
                  'figures will be slower')
        params = results['parameters']
        print(f"parameters: {params['total']:,}")
        for name, count in params.get('parts', {}).items():
            print(f'  {name:<24} {count:>10,}')
        print(f"GFLOPs at 640x512: {results['gflops_640x512']:.3f} "
              f"(GMACs {results['gflops_640x512'] / 2:.3f}; {results['gflops_convention']})")
        print(f'latency, batch 1, warm-up {args.warmup}, up to {args.iters} timed iterations '
              f'(ms); net: {NET_TIMING}; infer: FusionEngine.infer, all included:')
        print(' | '.join([f"{'mode':<16}", f"{'size':>9}", f"{'net med':>9}", f"{'net p90':>9}",
                          f"{'infer med':>9}", f"{'infer p90':>9}",
                          f"{'infer pre / model / post':>27}", 'target']))
        rows = []
        for mode in modes:
            engine = _make_engine(weights, mode, args.scale_search, args.fine_passes)
            for width, height in sizes:
                row = run_case(engine, mode, width, height, pair, args)
                rows.append(row)
                print(_format_row(row), flush=True)
            del engine
            if cuda:
                torch.cuda.empty_cache()
        results['latency'] = rows
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + '\n')
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
