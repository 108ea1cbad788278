"""Benchmarks given a bad argument fail with one line naming it, before any slow work.

Each case raised a Python traceback (a ValueError, KeyError or FileNotFoundError from deep
inside), or ran on: registration_ablation without a checkpoint printed nothing and exited 0,
time_offset with --seeds 0 printed an empty table.
"""

import argparse
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROADSCENE = ROOT / 'test' / 'data' / 'datasets' / 'roadscene'
TNO = ROOT / 'test' / 'data' / 'datasets' / 'tno'
WEIGHTS = ROOT / 'models' / 'tarfuse_default.safetensors'
# Each script's output option, and what else it needs to get as far as checking it.
OUTPUTS = [
    ('bench_contention', '--json', []), ('bench_node', '--json', []),
    ('capture_range', '--json', ['--data', str(ROADSCENE)]),
    ('dataset_alignment', '--json', ['--data', str(ROADSCENE)]),
    ('detect_large_frames', '--out', ['--data', str(ROADSCENE), '--sizes', '640x512']),
    ('detect_operating_point', '--out', []), ('eval_flow_regions', '--json', ['--data', 'x']),
    ('eval_fov', '--json', ['--data', str(TNO)]), ('eval_stream', '--json', ['--data', 'x']),
    ('eval_teachers', '--out', ['--data', str(ROADSCENE)]),
    ('probe_detection', '--out', ['--set', 'rs_test', '--weights', str(WEIGHTS)]),
    ('registration_ablation', '--json', ['--weights', str(WEIGHTS)]), ('time_offset', '--out', []),
]


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
    ('eval_flow_regions', ['--data', 'missing'], "error: data set 'missing' not found"),
    ('eval_flow_regions', ['--data', str(TNO), '--split', 'all', '--weights',
                           'missing.safetensors'],
     'error: checkpoint missing.safetensors does not exist'),
    ('eval_flow_regions', ['--data', str(TNO), '--split', 'all', '--threads', '0'],
     "argument --threads: must be an integer >= 1, got '0'"),
    ('eval_flow_regions', ['--data', str(TNO), '--split', 'all', '--deform', 'dataset'],
     'error: no ground-truth displacement'),
    ('eval_fov', ['--data', 'missing'], "error: data set 'missing' not found"),
    ('eval_fov', ['--data', str(TNO), '--split', 'all', '--weights', 'missing.safetensors'],
     'error: checkpoint missing.safetensors does not exist'),
    ('eval_stream', ['--data', 'missing'], "error: data set 'missing' not found"),
    # A traceback from the engine once the pairs were loaded.
    ('eval_stream', ['--settings', 'track10:0'],
     "error: 'track10:0': global_track=10 runs the fine passes alone on the tracked pairs, and "
     'fine_passes=0 turns them off'),
    ('eval_stream', ['--data', str(TNO), '--split', 'all', '--weights', 'missing.safetensors'],
     'error: checkpoint missing.safetensors does not exist'),
    ('dataset_alignment', ['--data', str(ROADSCENE), '--weights', 'missing.safetensors'],
     'error: checkpoint missing.safetensors does not exist'),
])
def test_a_bad_argument_is_named_in_one_line(script, args, message, tmp_path):
    """The script exits non-zero with the message on stderr, no traceback, nothing written."""
    _refused(script, args, message, tmp_path)


@pytest.mark.parametrize('args, message', [
    (['--pairs', 'missing'], "bench_refine: error: data set folder 'missing' does not exist"),
    (['--alphas', '0.1', '5'], 'bench_refine: error: alpha must be in (0, 1], got 5.0'),
    (['--min-alignment', '2'], 'bench_refine: error: min_alignment must be'),
    (['--offset', 'nan', '0'], 'bench_refine: error: --offset must be finite pixels, got'),
    (['--size', '12', '12'], 'bench_refine: error: --size is 12x12: both sides must be at '
                             'least 16 pixels')])
def test_bench_refine_checks_every_argument_before_its_first_figure(args, message, tmp_path):
    """Both parts (the default): a bad argument is refused before either prints or runs.

    A missing --pairs printed the calibration's header on stdout first; a bad refine argument
    (--alphas 5) was named after minutes of calibration.
    """
    done = _refused('bench_refine', args, message, tmp_path)
    assert done.stdout == '', done.stdout


@pytest.mark.parametrize('script, option, args', OUTPUTS)
def test_an_output_in_a_missing_folder_is_refused_first(script, option, args, tmp_path):
    """The figures were lost: open() raised FileNotFoundError once the run was done."""
    target = tmp_path / 'missing' / 'figures.json'
    _refused(script, [*args, option, str(target)],
             f'error: {option} {target}: folder {target.parent} does not exist', tmp_path)


def _refused(script, args, message, folder):
    """Run a benchmark in ``folder`` (empty, and it must stay so); check it refuses ``args``.

    Return the finished process (its ``stdout`` and ``stderr``).
    """
    path = os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])
    env = dict(os.environ, PYTHONPATH=path)  # this checkout's package
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / f'{script}.py'), *args],
                          capture_output=True, text=True, timeout=120, cwd=folder, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr
    assert list(folder.iterdir()) == []
    return done


def test_an_output_that_exists_in_a_folder_one_cannot_write_to_is_taken(tmp_path):
    """``--json /dev/fd/1`` (or /dev/stdout without root) was refused: its folder not writable.

    The scripts open the file as it is; only a new file needs a folder to create it in.
    """
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        from bench_args import check_outputs
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    parser = argparse.ArgumentParser()
    with open(tmp_path / 'figures.json', 'w') as handle:
        given = f'/proc/self/fd/{handle.fileno()}'  # /proc/self/fd: no file can be made there
        check_outputs(parser, json=given)
        with open(given, 'w') as again:  # as the scripts write it
            again.write('{}\n')
    assert (tmp_path / 'figures.json').read_text() == '{}\n'
    with pytest.raises(SystemExit):  # a new file where none can be made: refused
        check_outputs(parser, json='/proc/self/fd/figures.json')
