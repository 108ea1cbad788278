"""The timing benchmarks (bench_model, bench_onnx, bench_health): machine facts, bad arguments.

Each is run as a user runs it (``python benchmarks/NAME.py ...``) on real pairs.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys

import cv2
import pytest
import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
ROADSCENE = ROOT / 'test' / 'data' / 'datasets' / 'roadscene'


def _run(script, *args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / 'benchmarks' / f'{script}.py'), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_machine_facts_name_the_processor(tmp_path):
    """The processor's model from /proc/cpuinfo, not only the architecture.

    bench_model recorded platform.processor() or platform.machine(): 'x86_64' on Linux, where
    platform.processor() is empty; bench_onnx and bench_health named no machine at all.
    """
    from tarfuse_ros.core.cpus import cpu_model, machine_facts, usable_cpus
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7763 '
                    '64-Core Processor\n\nprocessor\t: 1\nmodel name\t: other\n')
    assert cpu_model(info) == 'AMD EPYC 7763 64-Core Processor'
    info.write_text('processor\t: 0\nBogoMIPS\t: 48.00\n\nHardware\t: BCM2835\nModel\t: '
                    'Raspberry Pi 4 Model B Rev 1.4\n')
    assert cpu_model(info) == 'BCM2835'
    assert cpu_model(tmp_path / 'missing') != ''
    assert f'{usable_cpus()} usable of ' in machine_facts()


def test_bench_model_names_the_machine_in_its_figures(tmp_path):
    """A real smallest run prints and records the machine beside its latencies."""
    out = tmp_path / 'bench.json'
    done = _run('bench_model', '--resolutions', '64x64', '--iters', '1', '--warmup', '0',
                '--modes', 'cpu', '--threads', '1', '--no-engine', '--json', str(out),
                timeout=300)
    assert done.returncode == 0, done.stderr
    from tarfuse_ros.core.cpus import cpu_model, machine_facts
    assert f'machine: {machine_facts()}; GPU: None' in done.stdout
    result = json.loads(out.read_text())
    assert result['cpu'] == cpu_model() and result['machine'] == machine_facts()
    assert [row['resolution'] for row in result['latency']] == ['64x64']


@pytest.mark.parametrize('script, args, message', [
    ('bench_model', ['--threads', '0'], 'argument --threads: must be an integer >= 1'),
    ('bench_model', ['--resolutions', '640'], 'argument --resolutions: size must be WxH'),
    ('bench_model', ['--iters', '0'], 'argument --iters: must be an integer >= 1'),
    ('bench_model', ['--weights', 'missing.safetensors', '--modes', 'cpu'],
     '--weights: checkpoint missing.safetensors does not exist'),
    # These came after minutes of export (or never: a ValueError traceback at the end).
    ('bench_onnx', ['--resolutions', '64'], 'argument --resolutions: size must be WxH'),
    ('bench_onnx', ['--threads', '0'], 'argument --threads: must be an integer >= 1'),
    ('bench_onnx', ['--weights', 'missing.safetensors'],
     '--weights: checkpoint missing.safetensors does not exist'),
    ('bench_health', ['--pairs', 'missing'],
     '--pairs missing: no ir and no vi folder (give a data set folder with ir/ and vi/)'),
    ('bench_health', ['--pairs', str(ROADSCENE), '--size', '100'],
     'argument --size: size must be WxH'),
    ('bench_health', ['--pairs', str(ROADSCENE), '--limit', '2', '--weights', 'missing.pt'],
     '--weights: checkpoint missing.pt does not exist'),
    # The "swapped" IR of every pair was its own: the misses were measured on aligned pairs.
    ('bench_health', ['--pairs', str(ROADSCENE), '--limit', '3', '--swap-offset', '6'],
     '--swap-offset 6 with 3 pairs gives each pair its own IR as the unrelated one'),
    # A bad --size raised a ValueError traceback; --rates 0 a ZeroDivisionError; a missing
    # checkpoint was named by the node as its parameter after the bare engine had run.
    ('bench_node', ['--size', '640'], 'argument --size: size must be WxH'),
    ('bench_node', ['--rates', '30', '0'], "argument --rates: must be a number > 0, got '0'"),
    ('bench_node', ['--weights', 'missing.safetensors'],
     '--weights missing.safetensors: no such file'),
])
def test_bad_arguments_are_refused_in_one_line(script, args, message):
    """A bad argument is named in one line, no traceback, before any slow work."""
    done = _run(script, *args, timeout=60)
    assert done.returncode in (1, 2), (done.stdout, done.stderr)
    assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr


def test_bench_health_says_which_windows_are_longer_than_the_stream():
    """Windows longer than the pairs were printed as 'nan / nan'."""
    done = _run('bench_health', '--pairs', str(ROADSCENE), '--limit', '2', '--iters', '1',
                '--max-sides', '96', '--windows', '1', '5', '--thresholds', '0.2', timeout=300)
    assert done.returncode == 0, done.stderr
    from tarfuse_ros.core.cpus import machine_facts
    assert f'machine: {machine_facts()}' in done.stdout
    line = next(text for text in done.stdout.splitlines() if text.startswith('min_alignment'))
    assert line.endswith('window 5: n/a (longer than the 2 pairs)') and 'nan' not in line, line


def test_bench_contention_names_the_machine():
    """It said 'cores 2' only: not which processor its latencies were measured on."""
    done = _run('bench_contention', '--processes', '1', '--threads', '1', '--wait-policy',
                'default', '--pairs', '1', '--size', '160x128', '--data', str(ROADSCENE),
                timeout=300)
    assert done.returncode == 0, done.stderr
    from tarfuse_ros.core.cpus import machine_facts
    assert done.stdout.splitlines()[0] == f'machine: {machine_facts()}'


def test_bench_model_times_the_network_without_its_input_checks(pair_for_bench):
    """The 'net' figures time the network, not forward_tensors' reading of its inputs' range.

    Each timed call read both inputs' range (torch.aminmax, a device sync per input) before the
    network: now they are checked once, before the timing, and the output says what is timed.
    """
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        import bench_model
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.paths import default_weights_path
    engine = FusionEngine(default_weights_path(), device='cpu', scale_search=False)
    args = argparse.Namespace(warmup=1, iters=3, max_seconds=60.0, no_engine=True)
    with _Calls(torch.aminmax) as calls:
        row = bench_model.run_case(engine, 'cpu', 96, 64, pair_for_bench, args)
    assert row['model']['n'] == 3
    assert len(calls) == 2, f'{len(calls)} range reads for 1 warm-up and 3 timed runs'
    done = _run('bench_model', '--resolutions', '64x64', '--iters', '1', '--warmup', '0',
                '--modes', 'cpu', '--threads', '1', '--no-engine', timeout=300)
    assert done.returncode == 0, done.stderr
    assert f'net: {bench_model.NET_TIMING}' in done.stdout, done.stdout


class _Calls(TorchFunctionMode):
    """Record the calls of one torch function made inside the ``with`` block."""

    def __init__(self, function):
        super().__init__()
        self._function, self._calls = function, []

    def __enter__(self):
        super().__enter__()
        return self._calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is self._function:
            self._calls.append(args)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def pair_for_bench():
    """Return a real RoadScene pair as bench_model reads it: ``(ir, vi, name)``."""
    stem = (ROADSCENE / 'test.txt').read_text().split()[0]
    ir = cv2.imread(str(ROADSCENE / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(ROADSCENE / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    return ir, vi, f'roadscene/{stem}'
