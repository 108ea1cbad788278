"""Benchmarks given a bad argument fail with one line naming it, before any slow work.

Each case raised a Python traceback (a ValueError, KeyError or FileNotFoundError from deep
inside), or ran on: registration_ablation without a checkpoint printed nothing and exited 0,
time_offset with --seeds 0 printed an empty table.
"""

import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROADSCENE = ROOT / 'test' / 'data' / 'datasets' / 'roadscene'
WEIGHTS = ROOT / 'models' / 'tarfuse_default.safetensors'


@pytest.mark.parametrize('script, args, message', [
    ('bench_refine', ['--pairs', 'missing', '--parts', 'refine'],
     "bench_refine: error: data set folder 'missing' does not exist"),
    ('bench_refine', ['--pairs', str(ROADSCENE), '--parts', 'refine', '--alphas', '5'],
     'bench_refine: error: alpha must be in (0, 1], got 5.0'),
    ('capture_range', ['--data', 'missing'], "error: data set 'missing' not found"),
    ('capture_range', ['--data', str(ROADSCENE), '--split', 'nosuch'],
     "error: split 'nosuch' not found in"),
    ('detect_operating_point', ['--select', 'nosuch'],
     "argument --select: invalid choice: 'nosuch'"),
    ('detect_operating_point', ['--weights', 'missing.safetensors', '--report'],
     'error: checkpoint missing.safetensors does not exist'),
    ('probe_detection', ['--set', 'rs_test', '--weights', 'missing.safetensors'],
     'error: checkpoint missing.safetensors does not exist'),
    ('probe_detection', ['--set', 'rs_test', '--weights', str(WEIGHTS), '--conf', '2'],
     'error: --conf must be a number in [0, 1], got 2.0'),
    ('readme_figure', ['--out', 'fig.png', '--pair', 'roadscene'],
     "argument --pair: give SET:STEM (e.g. roadscene:FLIR_00122), got 'roadscene'"),
    ('readme_figure', ['--out', 'fig.png', '--pair', f'{ROADSCENE}:NOSUCH'],
     "error: no ir/ image for stem 'NOSUCH'"),
    ('registration_ablation', [], 'error: give at least one --weights or --stages checkpoint'),
    ('registration_ablation', ['--weights', str(WEIGHTS), '--sets', 'missing'],
     "error: data set 'missing' not found"),
    ('time_offset', ['--pairs', 'NOSUCH'], 'error: pair NOSUCH not found in'),
    ('time_offset', ['--seeds', '0'], "argument --seeds: must be an integer >= 1, got '0'"),
])
def test_a_bad_argument_is_named_in_one_line(script, args, message, tmp_path):
    """The script exits non-zero with the message on stderr, no traceback, nothing written."""
    # Run from an empty folder (it must stay empty), with this checkout's package.
    path = os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / f'{script}.py'), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
