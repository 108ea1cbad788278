#!/usr/bin/env python3
"""Benchmark the fusion node end to end over real DDS, against the bare engine, same run.

For each device (``cpu``, plus ``cuda`` when available) the script

1. times the bare :class:`FusionEngine` (``infer`` on a real 640x512 pair, numpy in/out) in this
   process: median and p90 per pair; its throughput bound is ``1000 / median`` pairs/s;
2. starts the node as its own process (``python -m tarfuse_ros.ros.fuse_node``, shipped
   ``config/tarfuse.yaml``, default outputs: fused, camera_info, detections, registered) and
   publishes IR (mono8) + visible (bgr8) pairs at each input rate (default 30 and 100 Hz, plus an
   "unloaded" rate of half the engine's throughput bound, capped at 10 Hz), each for
   ``--duration`` seconds; stamps are the publish time (system clock, same host);
3. measures per rate: input and output rates, pairs dropped (node diagnostics), end-to-end
   latency (input stamp -> receipt of the Detection2DArray, the node's last output of a pair:
   median, p90, max), the node's resident memory (start, end, max) and its engine time.

Node overhead = node time per output / bare engine time per pair, where the node time per
output is ``1 / output rate`` when the node is saturated (input faster than the engine) and the
end-to-end latency at the unloaded rate otherwise (both printed); also the unloaded latency
over the engine time the node itself measured in the same seconds (robust to other load).
Targets (issue 5): overhead <= 1.3x on CPU at 640x512; GPU end-to-end <= 10 ms median at
640x512, no backlog at 100 Hz, memory flat over 60 s.  Run with ``source tools/ros_env/env.sh``
first (malloc settings, DDS profile).

Example::

    python benchmarks/bench_node.py --duration 20 --json /tmp/bench_node.json
"""

import argparse
import json
import os
from pathlib import Path
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time

from bench_args import check_outputs, positive_int
import cv2
import numpy as np
from resized_set import parse_size
import torch

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
# Importing ultralytics sets OMP_NUM_THREADS=1 in this process: start the node with the
# environment as it was before, and set the threads of both sides explicitly (--threads).
_START_ENV = dict(os.environ)


def _size(text):
    """Return ``text`` when it is ``WIDTHxHEIGHT`` of at least 16x16 (argparse type)."""
    parse_size(text)
    return text


def _positive_float(text):
    """Return ``text`` as a finite number > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'must be a number > 0, got {text!r}')
    return value


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint; default: the shipped model if present, else a '
                             'randomly initialised one (seed 0)')
    parser.add_argument('--devices', nargs='+', default=None,
                        help="default: cpu, plus cuda when available (e.g. 'cpu' 'cuda:0')")
    parser.add_argument('--size', default='640x512', type=_size,
                        help='WIDTHxHEIGHT (default 640x512)')
    parser.add_argument('--rates', nargs='+', type=_positive_float, default=[30.0, 100.0],
                        help='input rates in Hz (default 30 100)')
    parser.add_argument('--duration', type=_positive_float, default=15.0,
                        help='seconds of publishing per rate (default 15)')
    parser.add_argument('--no-unloaded', action='store_true',
                        help='skip the unloaded run (rate = half the engine throughput)')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='torch CPU threads of the bare engine and of the node (default 2)')
    parser.add_argument('--half', action='store_true', help='fp16 on CUDA')
    parser.add_argument('--json', type=Path, default=None, help='also write results here')
    return parser


def _sample_pair(width, height):
    """Return a real sample pair (IR uint8 HxW, visible uint8 HxWx3) resized to the size."""
    ir = cv2.imread(str(ROOT / 'samples' / 'ir' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(ROOT / 'samples' / 'vi' / 'FLIR_00122.jpg'), cv2.IMREAD_COLOR)
    if ir is None or vi is None:
        raise SystemExit('samples/ir|vi/FLIR_00122.jpg missing')
    return (cv2.resize(ir, (width, height), interpolation=cv2.INTER_LINEAR),
            cv2.resize(vi, (width, height), interpolation=cv2.INTER_LINEAR))


def _weights(path, tmp):
    from tarfuse_ros.core.paths import default_weights_path
    if path is not None:
        return Path(path), str(path)
    if default_weights_path().is_file():
        return default_weights_path(), 'shipped'
    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model
    torch.manual_seed(0)
    out = Path(tmp) / 'random.safetensors'
    save_checkpoint(out, build_model().eval(), provenance={'note': 'random init, bench'})
    return out, 'random init (no shipped weights)'


def bench_engine(weights, device, ir, vi, threads, half, iters=20, max_seconds=20.0):
    """Time ``FusionEngine.infer`` in a worker thread, as the node runs it; return ms figures.

    A worker thread, not the main one: with env.sh's glibc malloc settings, the main thread
    (main heap arena) ran the same engine several times slower than a worker thread here.
    """
    from tarfuse_ros.core.engine import FusionEngine
    if threads:
        torch.set_num_threads(threads)  # a program sets its thread count, not the engine
    engine = FusionEngine(weights, device=device, half=half)
    times = []

    def work():
        for _ in range(3):
            engine.infer(ir, vi)
        start = time.perf_counter()
        while len(times) < iters and (len(times) < 5 or
                                      time.perf_counter() - start < max_seconds):
            t0 = time.perf_counter()
            engine.infer(ir, vi)
            times.append((time.perf_counter() - t0) * 1e3)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    engine = None  # free the model before the next device
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
    return {'median_ms': float(np.median(times)), 'p90_ms': float(np.percentile(times, 90)),
            'iters': len(times)}


def _rss_mib(pid):
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


class NodeRun:
    """The node process plus this process's publisher/subscriber side."""

    def __init__(self, weights, device, threads, half, domain):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        env = dict(_START_ENV, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1')
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
        self.log = tempfile.NamedTemporaryFile(prefix='bench_node_', suffix='.log')
        command = [sys.executable, '-m', 'tarfuse_ros.ros.fuse_node', '--ros-args',
                   '--params-file', str(ROOT / 'config' / 'tarfuse.yaml'),
                   '-p', f'weights:={weights}', '-p', f'device:={device}',
                   '-p', f'cpu_threads:={threads}', '-p', f'half:={str(half).lower()}',
                   '-p', 'diagnostics.period:=0.5']
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('tarfuse_bench', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.ir_pub = self.node.create_publisher(Image, 'infrared/image_raw',
                                                 qos_profile_sensor_data)
        self.vi_pub = self.node.create_publisher(Image, 'visible/image_raw',
                                                 qos_profile_sensor_data)
        self.receipts = []  # (stamp_ns, receipt_ns)
        self.diagnostics = []
        self.node.create_subscription(Detection2DArray, 'detections', self._on_detections, 50)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self._image_type = Image

    def _on_detections(self, msg):
        self.receipts.append((msg.header.stamp.sec * NS + msg.header.stamp.nanosec,
                              time.time_ns()))

    def _on_diag(self, msg):
        for status in msg.status:
            if status.name.startswith('tarfuse:'):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def make_messages(self, ir, vi):
        from tarfuse_ros.ros.conversions import array_to_image_msg
        from std_msgs.msg import Header
        ir_msg = array_to_image_msg(ir, 'mono8', Header(frame_id='infrared_optical_frame'))
        vi_msg = array_to_image_msg(vi, 'bgr8', Header(frame_id='visible_optical_frame'))
        return ir_msg, vi_msg

    def publish(self, ir_msg, vi_msg):
        stamp = time.time_ns()
        for msg in (ir_msg, vi_msg):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
        self.ir_pub.publish(ir_msg)
        self.vi_pub.publish(vi_msg)
        return stamp

    def spin_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.01, end - time.monotonic())))

    def wait_ready(self, msgs, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit('node exited:\n' + self.log.read().decode(errors='replace'))
            self.publish(*msgs)
            self.spin_for(0.5)
            if self.receipts and self.diagnostics:
                return
        raise SystemExit('the node did not answer within the timeout')

    def run_rate(self, msgs, rate_hz, duration):
        """Publish at ``rate_hz`` for ``duration`` s; return the figures of this run."""
        self.spin_for(1.0)  # let the previous run drain
        first_diag = len(self.diagnostics)
        start_receipts = len(self.receipts)
        period = 1.0 / rate_hz
        sent = []
        rss = [_rss_mib(self.process.pid)]
        next_rss = time.monotonic() + 0.5
        t0 = time.monotonic()
        next_pub = t0
        while time.monotonic() - t0 < duration:
            now = time.monotonic()
            if now >= next_pub:
                sent.append(self.publish(*msgs))
                next_pub += period
                if next_pub < now - period:  # the publisher fell behind: do not burst
                    next_pub = now + period
            if now >= next_rss:
                rss.append(_rss_mib(self.process.pid))
                next_rss += 0.5
            self.executor.spin_once(timeout_sec=max(0.0, min(0.002, next_pub - now)))
        elapsed_in = time.monotonic() - t0
        self.spin_for(3.0)  # collect the last outputs and a diagnostics message
        rss.append(_rss_mib(self.process.pid))
        sent_set = set(sent)
        got = [(s, r) for s, r in self.receipts[start_receipts:] if s in sent_set]
        lat = np.array([(r - s) / 1e6 for s, r in got]) if got else np.array([np.nan])
        out_times = [r for _, r in got]
        out_span = (max(out_times) - min(out_times)) / 1e9 if len(out_times) > 1 else np.nan
        diags = self.diagnostics[first_diag:]
        before = self.diagnostics[first_diag - 1] if first_diag else {}
        last = diags[-1] if diags else {}

        engine_ms = [float(d['inference_ms_median']) for d in diags
                     if d.get('inference_ms_median', 'nan') != 'nan']

        def delta(key):
            return int(last.get(key, 0)) - int(before.get(key, 0))

        return {
            'rate_hz': rate_hz,
            'input_hz': len(sent) / elapsed_in,
            'pairs_sent': len(sent),
            'pairs_received_by_node': delta('pairs_received'),
            'outputs': len(got),
            'output_hz': (len(got) - 1) / out_span if out_span and out_span > 0 else np.nan,
            'dropped': delta('pairs_dropped'),
            'latency_ms_median': float(np.median(lat)),
            'latency_ms_p90': float(np.percentile(lat, 90)),
            'latency_ms_max': float(np.max(lat)),
            'node_engine_ms_median': float(np.nanmedian(engine_ms)) if engine_ms else np.nan,
            'rss_mib_start': rss[0], 'rss_mib_end': rss[-1], 'rss_mib_max': max(rss),
        }

    def close(self):
        import rclpy
        self.process.send_signal(2)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.log.close()
        return code


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, json=args.json)
    if args.weights is not None and not args.weights.is_file():
        parser.error(f'--weights {args.weights}: no such file (a .safetensors checkpoint)')
    width, height = parse_size(args.size)
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    ir, vi = _sample_pair(width, height)
    from tarfuse_ros.core.cpus import machine_facts
    machine = (f'{platform.node()}: {machine_facts()}' + (f', {torch.cuda.get_device_name(0)}'
                                                          if torch.cuda.is_available() else ''))
    results = {'machine': machine, 'size': args.size, 'devices': {}}
    print(f'# bench_node: {machine}; {args.size}; torch {torch.__version__}')
    with tempfile.TemporaryDirectory() as tmp:
        weights, weights_note = _weights(args.weights, tmp)
        results['weights'] = weights_note
        print(f'# weights: {weights_note}')
        for device in devices:
            half = args.half and device.startswith('cuda')
            run = NodeRun(weights, device, args.threads, half,
                          random.SystemRandom().randint(101, 215))
            runs = []
            try:
                msgs = run.make_messages(ir, vi)
                run.wait_ready(msgs)
                # The bare engine runs while the node process is up but idle (same machine
                # state), before and after the node runs.
                engine = bench_engine(weights, device, ir, vi, args.threads, half)
                print(f'\n## {device}{" fp16" if half else ""}, {args.threads} threads: bare '
                      f'engine infer {engine["median_ms"]:.1f} ms median, {engine["p90_ms"]:.1f}'
                      f' ms p90 ({engine["iters"]} iters) -> at most '
                      f'{1000 / engine["median_ms"]:.1f} pairs/s')
                rates = list(args.rates)
                unloaded = None
                if not args.no_unloaded:
                    unloaded = round(min(10.0, 500.0 / engine['median_ms']), 2)
                    rates = [unloaded] + rates
                print('| input Hz (sent) | output Hz | outputs/sent | dropped | latency ms '
                      'median / p90 / max | node engine ms | RSS MiB start -> end (max) |')
                print('|---|---|---|---|---|---|---|')
                for rate in rates:
                    r = run.run_rate(msgs, rate, args.duration)
                    runs.append(r)
                    print(f'| {r["rate_hz"]:g} ({r["input_hz"]:.1f}) | {r["output_hz"]:.1f} | '
                          f'{r["outputs"]}/{r["pairs_sent"]} | {r["dropped"]} | '
                          f'{r["latency_ms_median"]:.1f} / {r["latency_ms_p90"]:.1f} / '
                          f'{r["latency_ms_max"]:.1f} | {r["node_engine_ms_median"]:.1f} | '
                          f'{r["rss_mib_start"]:.0f} -> {r["rss_mib_end"]:.0f} '
                          f'({r["rss_mib_max"]:.0f}) |', flush=True)
                after = bench_engine(weights, device, ir, vi, args.threads, half)
                print(f'bare engine again after the node runs: {after["median_ms"]:.1f} ms median')
                engine['median_ms_after'] = after['median_ms']
            finally:
                code = run.close()
            overhead = {}
            reference_ms = (engine['median_ms'] + engine['median_ms_after']) / 2.0
            saturated = [r for r in runs if r['rate_hz'] * reference_ms > 1000.0]
            for r in saturated:
                if np.isfinite(r['output_hz']):
                    overhead[f'saturated at {r["rate_hz"]:g} Hz: time per output'] = (
                        1000.0 / r['output_hz'] / reference_ms)
            if unloaded is not None and runs:
                overhead['unloaded: end-to-end latency'] = (
                    runs[0]['latency_ms_median'] / reference_ms)
                # Against the engine time the node itself measured in the same seconds: the
                # least sensitive to other load on the machine.
                if np.isfinite(runs[0]['node_engine_ms_median']):
                    overhead['unloaded: end-to-end latency / in-node engine time'] = (
                        runs[0]['latency_ms_median'] / runs[0]['node_engine_ms_median'])
            for key, value in overhead.items():
                print(f'node overhead ({key}): {value:.2f}x'
                      + ('' if 'in-node' in key else
                         f' the bare engine ({reference_ms:.1f} ms, mean of before/after)'))
            print(f'node exit code after SIGINT: {code}')
            results['devices'][device] = {'engine': engine, 'runs': runs, 'overhead': overhead,
                                          'exit_code': code, 'half': half}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
