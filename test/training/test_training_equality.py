"""The training package trains exactly as the code before it, and resumes its states.

``fixtures/losses.json`` and ``fixtures/state_epoch1/`` were recorded by ``loss_fixture.py`` with
the code of commit 598e2b9 (``tarfuse_ros/tools/train.py`` before ``tarfuse_ros.training``).
Here the same seeded runs are replayed with the current code.

Tolerance: none on the machine that recorded the fixture (same torch, same CPU capability):
every loss part, learning rate and validation figure must be bit-identical. On another machine
float kernels may round differently, so the figures must agree to 1e-4 (relative).
"""

import json
import math
import shutil

import loss_fixture
import pytest
from tarfuse_ros.tools.train import main
from tarfuse_ros.training.logs import read_log
import torch

FIXTURE = json.loads(loss_fixture.LOSSES.read_text())
SAME_MACHINE = (FIXTURE['torch'] == torch.__version__
                and FIXTURE['cpu_capability'] == torch.backends.cpu.get_cpu_capability())
MACHINE_TOLERANCE = 0.0 if SAME_MACHINE else 1e-4
COLOUR_TOLERANCE = None  # the colour run is bit-identical until the luma rule changes


def _differences(new, old, path=''):
    """Yield ``(path, new, old, relative difference)`` of every number in two records."""
    if isinstance(old, dict):
        assert set(new) == set(old), (path, sorted(new), sorted(old))
        for key in old:
            yield from _differences(new[key], old[key], f'{path}.{key}')
    elif isinstance(old, float) or isinstance(new, float):
        scale = max(abs(old), abs(new), 1e-12)
        yield path, new, old, abs(new - old) / scale
    else:
        assert new == old, (path, new, old)


def _assert_close(new_records, old_records, tolerance):
    assert len(new_records) == len(old_records)
    worst = max((d for new, old in zip(new_records, old_records)
                 for d in _differences(new, old)), key=lambda d: d[3])
    assert worst[3] <= tolerance, f'largest difference {worst} > {tolerance}'


@pytest.fixture(scope='module')
def replayed(tmp_path_factory):
    """Return the fixture's runs, trained again with the current code."""
    return loss_fixture.run_all(tmp_path_factory.mktemp('replay'), names=('colour', 'grey'))


def test_grey_run_reproduces_the_recorded_losses(replayed):
    _assert_close(replayed['grey'], FIXTURE['runs']['grey'], MACHINE_TOLERANCE)


def test_colour_run_reproduces_the_recorded_losses(replayed):
    tolerance = MACHINE_TOLERANCE if COLOUR_TOLERANCE is None else COLOUR_TOLERANCE
    _assert_close(replayed['colour'], FIXTURE['runs']['colour'], tolerance)
    assert all(math.isfinite(r['train']['total']) for r in replayed['colour'])


def test_state_saved_by_the_old_code_resumes(tmp_path):
    """Resume the recorded one-epoch state: epoch 2 is the recorded uninterrupted epoch 2."""
    dataset = loss_fixture.make_dataset(tmp_path / 'data', grey=True)
    state = tmp_path / 'state'
    shutil.copytree(loss_fixture.STATE, state)  # resuming never writes into the fixture
    out = tmp_path / 'resumed'
    assert main(['--resume', str(state), '--data', f'{dataset}:train',
                 '--val-data', f'{dataset}:val', '--epochs', '2', '--out', str(out)]) == 0
    records = [{k: r[k] for k in ('epoch', 'step', 'lr', 'train', 'val')}
               for r in read_log(out / 'log.jsonl')]
    # The copied state carries no log: the resumed run logs epoch 2 only.
    assert [r['epoch'] for r in records] == [2]
    _assert_close(records, FIXTURE['runs']['grey'][1:], MACHINE_TOLERANCE)
