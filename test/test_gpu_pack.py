"""The GPU lease's packing (benchmarks/gpu_pack.sh) and job (benchmarks/gpu_joint.sh).

training/README.md, "A GPU lease": two device calls carry the data in two ignored folders
(.gpu_a, .gpu_b) beside a working tree slimmed of what the job does not read. The lease is 15
minutes of device time in all: a packing that leaves out what the job reads, or a job that
reads other data than the packed ones, spends it on an error.
"""

import os
from pathlib import Path
import subprocess
import sys

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / 'benchmarks' / 'gpu_pack.sh'
JOB = REPO / 'benchmarks' / 'gpu_joint.sh'
# Read by benchmarks/gpu_joint.sh itself.
JOB_FILES = ['training/joint_v1.yaml', 'training/fuse_v1/roadscene_holdout.txt',
             'benchmarks/gpu_joint.sh', 'benchmarks/swap_parts.py',
             'models/tarfuse_default.safetensors']


def _job_inputs():
    """Return the repository paths the job reads: its own and joint_v1.yaml's."""
    config = yaml.safe_load((REPO / 'training' / 'joint_v1.yaml').read_text())
    paths = list(JOB_FILES) + [config['train']['init_weights']]
    for source in config['data']['train'] + config['data']['val']:
        for value in [source['split'], source['labels'], *source['exclude']]:
            if '/' in value:  # a path in the repository (a bare name is the data set's)
                paths.append(value)
    return paths


def test_slim_keeps_every_file_the_job_reads():
    """`--slim` deletes none of the job's inputs, the package nor its configuration.

    It deletes the tests, docs and training runs' logs for the device calls (the tree was
    26 MB and .gpu_a came within 1.3 MB of the 64 MiB a call takes); joint_v1.yaml's lists and
    labels, the held-out list and the package must stay.
    """
    listed = subprocess.run(['bash', str(PACK), '--list-slim'], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True).stdout.splitlines()
    assert 'models/tarfuse_medical.safetensors' in listed
    assert any(path.startswith('test/') for path in listed)
    kept = [path for path in _job_inputs() if (REPO / path).exists()]
    assert 'data/pseudo_labels/roadscene/labels' in kept
    for path in listed:
        assert not path.startswith(('tarfuse_ros/', 'config/', 'benchmarks/', 'data/')), path
        for needed in kept:
            assert path != needed and not path.startswith(needed.rstrip('/') + '/'), path


def test_packed_parts_are_ignored_by_the_tracked_gitignore():
    """.gitignore ignores .gpu_a and .gpu_b, in any clone of the repository.

    gpu_pack.sh appended them to .git/info/exclude, which every worktree of a checkout shares
    (a helper's pack wrote into the main checkout's .git); unignored, the parts would travel
    with the tree as well as carried.
    """
    lines = (REPO / '.gitignore').read_text().splitlines()
    assert '/.gpu_a/' in lines and '/.gpu_b/' in lines
    assert 'info/exclude' not in PACK.read_text().replace(
        'nothing is written to .git/info/exclude', '')


def _run_job(tmp_path, stage):
    env = dict(os.environ, OUT=str(tmp_path / 'out'), SITE=str(tmp_path / 'site'),
               STAGE=str(stage), DEVICE='cpu',
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ['PATH'])
    return subprocess.run(['bash', str(JOB), 'run', '1'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.skipif((REPO / '.gpu_a').exists() or (REPO / '.gpu_b').exists(),
                    reason='packed parts in this checkout would be taken')
def test_job_without_call_one_data_stops_at_once(tmp_path):
    """The run (call 2) without call 1's part says to run both calls again, exit 3."""
    result = _run_job(tmp_path, tmp_path / 'no_stage')
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'run both calls again' in result.stderr
    assert 'run both calls again' in (tmp_path / 'out' / 'summary.txt').read_text()


@pytest.mark.skipif((REPO / '.gpu_a').exists() or (REPO / '.gpu_b').exists(),
                    reason='packed parts in this checkout would be taken')
def test_job_refuses_packed_data_the_tools_do_not_take(tmp_path):
    """Packed data without datasets/README.md: exit 3 before training, not other data.

    tarfuse_ros.core.paths takes a shared data folder only with its README.md; gpu_pack.sh
    did not pack it, so the tools fell back to a shared/ beside the checkout (the CPU
    rehearsal read /work/shared and passed) or, on the device machine, found no data set.
    """
    stage = tmp_path / 'stage'
    for name in ('msrs_train', 'roadscene'):
        (stage / 'datasets' / name / 'ir').mkdir(parents=True)
        (stage / 'datasets' / name / 'vi').mkdir(parents=True)
    result = _run_job(tmp_path, stage)
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'do not take the packed data' in result.stderr
    assert not (tmp_path / 'out' / 'train.log').exists()
