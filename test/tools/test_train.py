"""tarfuse-train end to end: real RoadScene pairs, a narrow real model, tiny crops, CPU.

The pairs come from ``test/data/datasets/roadscene`` (an excerpt of the shared RoadScene set,
sources in its README), so these tests run on a fresh clone.
"""

import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file
from tarfuse_ros.core.checkpoint import load_checkpoint, read_checkpoint_config
from tarfuse_ros.core.data import DataSource
from tarfuse_ros.core.paths import share_dir
from tarfuse_ros.tools import train as train_tool
from tarfuse_ros.training import logs, schedule, state
from tarfuse_ros.training.datasets import pinned_sources, resolve_sources
from tarfuse_ros.training.loop import CURVE_NAME, FINAL_NAME
from tarfuse_ros.training.state import STATE_DIR
import torch
import yaml

ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'

# A narrow network (same architecture, fewer channels) keeps each step well under a second.
NARROW = ('model={feature_channels: 4, cseb_channels: 8, pyramid_channels: [8, 8, 16], '
          'estimator_channels: [16, 8, 8], reconstruction_channels: [8, 4], '
          'neck_stem_channels: [8, 16], detect_channels: [16, 16, 16]}')


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
    """Four training pairs (three labelled, one not) and two validation pairs."""
    roadscene = ROADSCENE
    train = (roadscene / 'train.txt').read_text().split()
    labelled = set((roadscene / 'det_labelled.txt').read_text().split())
    stems = [s for s in train if s in labelled][:3] + [s for s in train if s not in labelled][:1]
    folder = tmp_path_factory.mktemp('splits')
    (folder / 'train4.txt').write_text('\n'.join(stems) + '\n')
    val = (roadscene / 'test.txt').read_text().split()[:2]
    (folder / 'val2.txt').write_text('\n'.join(val) + '\n')
    return {'train': folder / 'train4.txt', 'val': folder / 'val2.txt', 'stems': stems}


def _args(splits, out, *extra):
    return ['--data', f'{ROADSCENE}:{splits["train"]}',
            '--val-data', f'{ROADSCENE}:{splits["val"]}',
            '--crop', '64', '--batch', '2', '--workers', '0', '--device', 'cpu',
            '--val-every', '1', '--out', str(out), '--set', 'train.threads=1',
            # RoadScene frames are not multiples of 32: validate on centre crops.
            '--set', 'data.val_crop=64', '--set', NARROW, *extra]


def _log(out):
    return logs.read_log(out / logs.LOG_NAME)


@pytest.fixture(scope='module')
def runs(splits, tmp_path_factory):
    """Run A: 2 epochs straight. Run B: 1 epoch, then resumed to 2 epochs."""
    base = tmp_path_factory.mktemp('runs')
    out_a, out_b = base / 'a', base / 'b'
    assert train_tool.main(_args(splits, out_a, '--epochs', '2')) == 0
    assert train_tool.main(_args(splits, out_b, '--epochs', '1')) == 0
    after_one = {'log': _log(out_b),
                 'state': state.read_state_meta(out_b / STATE_DIR),
                 'weights': load_file(str(out_b / STATE_DIR / 'model.safetensors'))}
    assert train_tool.main(['--resume', str(out_b), '--epochs', '2']) == 0
    return {'a': out_a, 'b': out_b, 'b_after_one': after_one}


def test_one_epoch_writes_log_curve_state_and_checkpoint(runs, splits):
    first = runs['b_after_one']
    assert [r['epoch'] for r in first['log']] == [1]
    record = first['log'][0]
    for key in ('total', 'fusion', 'registration', 'consistency', 'complementary', 'detection'):
        assert np.isfinite(record['train'][key]), key
    assert record['train']['total'] > 0
    assert record['step'] == 2 and record['lr'] > 0 and record['epoch_time_s'] > 0
    # Validation: EPE of the predicted flow and of the do-nothing flow on the same deformations.
    assert record['val']['epe_zero_flow'] > 0.5
    assert np.isfinite(record['val']['epe'])
    assert first['state']['epoch'] == 1 and first['state']['global_step'] == 2
    assert (runs['b'] / CURVE_NAME).stat().st_size > 1000
    assert (runs['b'] / 'splits' / 'train').is_dir()


def test_the_weights_of_a_training_state_point_to_the_runs_checkpoint(runs, tmp_path, capsys):
    # <run>/state/model.safetensors (no network config) was 'not a TarFuse checkpoint; write
    # checkpoints with tarfuse_ros.core.checkpoint.save_checkpoint', an API hint to a user.
    from tarfuse_ros.tools import evaluate
    weights = runs['b'] / STATE_DIR / 'model.safetensors'
    expected = (f'{weights} holds the weights of a resumable training state, without the '
                f'network config: pass the checkpoint the run writes with it, '
                f'{runs["b"] / FINAL_NAME} (or continue the run with tarfuse-train --resume '
                f'{runs["b"]})\n')
    assert evaluate.main(['--data', str(ROADSCENE), '--weights', str(weights), '--out',
                          str(tmp_path / 'eval')]) == 2
    assert capsys.readouterr().err == f'tarfuse-eval: error: {expected}'
    assert train_tool.main(['--data', str(ROADSCENE), '--init', str(weights), '--out',
                            str(tmp_path / 'run')]) == 2
    assert capsys.readouterr().err == f'tarfuse-train: error: {expected}'
    assert not (tmp_path / 'eval').exists() and not (tmp_path / 'run').exists()


def test_what_a_run_writes_is_readable_as_files_written_by_open(splits, tmp_path):
    # The checkpoint and the state's weights were 0o600 (tempfile.mkstemp, then safetensors'
    # own private file): a node run as another user could not read them.
    out = tmp_path / 'modes'
    previous = os.umask(0o027)
    try:
        assert train_tool.main(_args(splits, out, '--epochs', '1', '--val-every', '0')) == 0
    finally:
        os.umask(previous)
    files = [path for path in out.rglob('*') if path.is_file()]
    assert out / FINAL_NAME in files and out / STATE_DIR / 'model.safetensors' in files
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {
        path.name: '0o640' for path in files}
    folders = [out] + [path for path in out.rglob('*') if path.is_dir()]
    assert {oct(path.stat().st_mode & 0o777) for path in folders} == {'0o750'}


def test_checkpoint_loads_with_provenance(runs):
    path = runs['b'] / FINAL_NAME
    model = load_checkpoint(path)
    assert model.config.class_names == ('person', 'bicycle', 'car')
    assert model.config.feature_channels == 4
    out = model.predict_raw(torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96))
    assert out['fused'].shape == (1, 1, 64, 96)
    provenance = read_checkpoint_config(path)['provenance']
    assert provenance['epochs'] == 2 and provenance['finished'] is True
    assert provenance['command'].startswith('tarfuse-train ')
    assert provenance['device'] == 'cpu'
    assert provenance['data'][0]['pairs'] == 4 and provenance['data'][0]['name'] == 'roadscene'
    assert 'commit' in provenance and provenance['train_seconds'] > 0
    assert provenance['labelled_pairs'] == 3


def test_resume_continues_exactly_like_an_uninterrupted_run(runs):
    log_a, log_b = _log(runs['a']), _log(runs['b'])
    assert [r['epoch'] for r in log_b] == [1, 2]
    assert log_b[1]['step'] == 4
    # Same seed: the first epoch is identical, and resuming restores weights, optimizer and
    # random streams, so the second epoch matches the uninterrupted run too.
    for key, value in log_a[0]['train'].items():
        assert log_b[0]['train'][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    for key, value in log_a[1]['train'].items():
        assert log_b[1]['train'][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    weights_a = load_file(str(runs['a'] / STATE_DIR / 'model.safetensors'))
    weights_b = load_file(str(runs['b'] / STATE_DIR / 'model.safetensors'))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-4, atol=1e-5)
    # ...and the resumed run really trained on from the saved weights.
    before = runs['b_after_one']['weights']
    changed = [k for k in before if before[k].is_floating_point()
               and not torch.equal(before[k], weights_b[k])]
    assert changed


def test_loader_workers_do_not_change_the_losses(runs, splits, tmp_path):
    # Crops/flips come from (seed, epoch, index), so persistent workers reproduce the
    # in-process run epoch by epoch.
    out = tmp_path / 'workers'
    assert train_tool.main(_args(splits, out, '--epochs', '2', '--val-every', '0')
                           + ['--workers', '2']) == 0
    for ours, reference in zip(_log(out), _log(runs['a'])):
        for key, value in reference['train'].items():
            assert ours['train'][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_resume_into_another_folder_keeps_the_history(runs, tmp_path):
    out = tmp_path / 'moved'
    assert train_tool.main(['--resume', str(runs['b'] / STATE_DIR), '--epochs', '3',
                            '--out', str(out), '--val-every', '0']) == 0
    assert [r['epoch'] for r in _log(out)] == [1, 2, 3]
    assert state.read_state_meta(out / STATE_DIR)['global_step'] == 6
    assert [r['epoch'] for r in _log(runs['b'])] == [1, 2]


def test_a_refused_resume_into_another_folder_leaves_nothing_there(runs, tmp_path, capsys):
    """The history was copied before the resume was refused; the fixed command was then refused.

    '--resume RUN --out NEW' of a finished run says to give --epochs; with it, NEW held the
    copied log.jsonl and the run was refused as one into a folder that holds another run.
    """
    out = tmp_path / 'moved'
    assert train_tool.main(['--resume', str(runs['b']), '--out', str(out)]) == 2
    assert 'the run has already trained 2 of 2 epochs' in capsys.readouterr().err
    assert not out.exists()
    assert train_tool.main(['--resume', str(runs['b']), '--out', str(out), '--epochs', '3',
                            '--val-every', '0']) == 0
    assert [r['epoch'] for r in _log(out)] == [1, 2, 3]


def test_other_seed_gives_other_losses(splits, tmp_path):
    out = tmp_path / 'seed1'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--seed', '1',
                                 '--max-steps', '1', '--val-every', '0')) == 0
    record = _log(out)[0]
    assert record['partial'] is True and record['step'] == 1
    assert 'val' not in record
    seed0 = train_tool.main(_args(splits, tmp_path / 'seed0', '--epochs', '1',
                                  '--max-steps', '1', '--val-every', '0'))
    assert seed0 == 0
    other = _log(tmp_path / 'seed0')[0]
    assert other['train']['registration'] != record['train']['registration']


def test_distributed_path_with_one_gloo_process(splits, tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    for name, value in (('MASTER_ADDR', '127.0.0.1'), ('MASTER_PORT', str(port)),
                        ('RANK', '0'), ('LOCAL_RANK', '0'), ('WORLD_SIZE', '1')):
        monkeypatch.setenv(name, value)
    out = tmp_path / 'ddp'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--ddp', '--val-every', '0')) == 0
    assert not torch.distributed.is_initialized()
    record = _log(out)[0]
    assert record['step'] == 2 and np.isfinite(record['train']['total'])
    provenance = read_checkpoint_config(out / FINAL_NAME)['provenance']
    assert provenance['world_size'] == 1
    load_checkpoint(out / FINAL_NAME)


def test_time_budget_lowers_the_epoch_count(splits, tmp_path):
    out = tmp_path / 'budget'
    assert train_tool.main(_args(splits, out, '--epochs', '50', '--time-budget', '1',
                                 '--val-every', '0')) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['epochs'] < 50
    assert summary['time_budget']['epochs_configured'] == 50
    assert summary['time_budget']['epochs_chosen'] == summary['epochs']


def test_fit_epochs_fills_the_budget_and_respects_the_bounds():
    fit = schedule.fit_epochs
    # 300 s budget, 25 s reserve, 60 s used: 215 s left of 2 s epochs -> 107 more.
    assert fit(300, 60, 3, 2.0, 150, minimum=3) == 110
    assert fit(300, 60, 3, 0.1, 150, minimum=3) == 150
    assert fit(300, 299, 3, 2.0, 150, minimum=3) == 3
    assert fit(300, 299, 3, 2.0, 150, minimum=4) == 4


@pytest.mark.parametrize('extra, message', [
    (['--crop', '50'], 'multiple of 32'),
    (['--set', 'model.no_such_width=3'], 'no_such_width'),
    (['--set', 'deformation.bogus=1'], 'bogus'),
    (['--set', 'data.class_map={person: 0, car: 2}'], 'class_map'),
    (['--set', 'train.epochs=[1'], "--set 'train.epochs=[1': the value is not valid YAML"),
    (['--batch', '0'], 'train.batch'),
    (['--device', 'tpu'], 'cpu, cuda or cuda:N'),
])
def test_bad_settings_fail_with_a_clear_message(splits, tmp_path, capsys, extra, message):
    assert train_tool.main(_args(splits, tmp_path / 'bad', '--epochs', '1', *extra)) == 2
    assert message in capsys.readouterr().err


def test_a_data_path_that_is_a_file_or_nowhere_says_so(splits, tmp_path, capsys):
    # A file said "not found"; a name found nowhere says where to put it (data.root too).
    (tmp_path / 'file').write_text('not a folder')
    for data_arg, words in ((tmp_path / 'file', 'is a file, not a data set folder: a data set '
                                                'folder holds ir/ and vi/'),
                            ('no_such_set', 'or set data.root to the folder that holds it')):
        argv = _args(splits, tmp_path / 'out', '--epochs', '1')
        argv[argv.index('--data') + 1] = str(data_arg)
        assert train_tool.main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and 'Traceback' not in err, err
    assert not (tmp_path / 'out').exists()


def test_missing_resume_folder_and_unavailable_cuda(splits, tmp_path, capsys):
    assert train_tool.main(['--resume', str(tmp_path / 'nothing')]) == 2
    assert capsys.readouterr().err == (f"tarfuse-train: error: --resume '{tmp_path / 'nothing'}' "
                                       'does not exist: give the --out folder of a run\n')
    # A run stopped inside its first epoch saves no state: it was 'no training state found'.
    stopped = tmp_path / 'stopped'
    assert train_tool.main(_args(splits, stopped, '--epochs', '1', '--max-steps', '1')) == 0
    assert train_tool.main(['--resume', str(stopped)]) == 2
    assert capsys.readouterr().err.endswith(
        'in it or in its state/ folder); the run there saved none: it stopped before the end of '
        'its first epoch; start it again without --resume (another --out, or remove that '
        'folder)\n')
    if not torch.cuda.is_available():
        assert train_tool.main(_args(splits, tmp_path / 'cuda', '--device', 'cuda')) == 2
        assert 'CUDA is not available' in capsys.readouterr().err
    # It ended "use device 'cpu' or allow the CPU fallback", which tarfuse-train has not.
    assert train_tool.main(_args(splits, tmp_path / 'cuda', '--device', 'cuda:99')) == 2
    err = capsys.readouterr().err
    assert err.startswith("tarfuse-train: error: device 'cuda:99' was requested")
    assert err.endswith('; use --device cpu\n') and 'fallback' not in err, err


def test_optimizer_and_rng_state_round_trip():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01, betas=(0.8, 0.9))
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = state.optimizer_to_flat(optimizer)
    meta = json.loads(json.dumps(meta))  # what state.json stores
    fresh = torch.optim.Adam(layer.parameters(), lr=0.5)
    state.optimizer_from_flat(fresh, tensors, meta)
    assert fresh.param_groups[0]['lr'] == 0.01 and fresh.param_groups[0]['betas'] == (0.8, 0.9)
    for before, after in zip(optimizer.state.values(), fresh.state.values()):
        for key in before:
            torch.testing.assert_close(before[key], after[key])
    rng_tensors, rng_meta = state.rng_to_flat()
    expected = (torch.rand(3), np.random.rand(3))
    state.rng_from_flat(rng_tensors, json.loads(json.dumps(rng_meta)))
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_lr_schedule_warmup_and_cosine_ends():
    factor = schedule.lr_factor
    assert factor(0, 100, 10, 'cosine', 0.05) == pytest.approx(0.1)
    assert factor(10, 100, 10, 'cosine', 0.05) == pytest.approx(1.0)
    assert factor(100, 100, 10, 'cosine', 0.05) == pytest.approx(0.05)
    assert factor(55, 100, 10, 'cosine', 0.0) == pytest.approx(0.5)
    assert factor(99, 100, 0, 'constant', 0.05) == 1.0


def test_curve_fallback_draws_with_opencv(runs, tmp_path):
    records = _log(runs['b'])
    png = logs.plot_curves_cv2(records, ['total', 'fusion'], tmp_path / 'curve.png')
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (360, 640, 3)
    assert (image < 250).any()


def test_init_starts_from_a_checkpoints_weights(runs, splits, tmp_path):
    """--init loads a checkpoint's architecture and weights; a 1e-12 step leaves them in place."""
    source = runs['a'] / 'tarfuse.safetensors'
    out = tmp_path / 'init'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--max-steps', '1',
                                 '--init', str(source), '--set', 'train.lr=1e-12')) == 0
    before = load_checkpoint(source).state_dict()
    after = load_checkpoint(out / 'tarfuse.safetensors').state_dict()
    conv_weights = [k for k in before if k.endswith('.weight') and before[k].dim() == 4]
    assert conv_weights
    for key in conv_weights:
        assert torch.allclose(before[key], after[key], rtol=0, atol=1e-9), key
    config = read_checkpoint_config(out / 'tarfuse.safetensors')
    assert config['model'] == read_checkpoint_config(source)['model']


def test_init_adds_neck_blocks_and_trains_only_unfrozen_parts(runs, splits, tmp_path):
    """--init with more neck blocks: old weights kept, new blocks added; frozen parts stay put."""
    source = runs['a'] / 'tarfuse.safetensors'
    out = tmp_path / 'deeper'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--max-steps', '2',
                                 '--init', str(source), '--set', 'model.neck_blocks=1',
                                 '--set', 'train.freeze=[registration, vi_common]',
                                 '--set', 'train.lr_mult={neck: 10}')) == 0
    before = load_checkpoint(source).state_dict()
    deeper = load_checkpoint(out / 'tarfuse.safetensors')
    after = deeper.state_dict()
    assert deeper.config.neck_blocks == 1
    new = sorted(set(after) - set(before))
    assert new and all(key.startswith('neck.levels.') and '.2.branch.' in key for key in new)
    frozen = [k for k in before if k.startswith(('registration.', 'vi_common.'))
              and before[k].is_floating_point()]
    assert any('running_mean' in key for key in frozen)  # vi_common's BatchNorm statistics
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    moved = [k for k in before if k.startswith('neck.stem.') and k.endswith('.weight')]
    assert any(not torch.equal(before[k], after[k]) for k in moved)
    train = read_checkpoint_config(out / 'tarfuse.safetensors')['provenance']['config']['train']
    assert train['lr_mult'] == {'neck': 10.0}
    assert train['freeze'] == ['registration', 'vi_common']


def test_init_model_switches_the_global_stage_and_keeps_the_other_weights(
        runs, splits, tmp_path, capsys):
    """train.init_model: the checkpoint's global stage dropped, every other tensor carried over."""
    source = runs['a'] / 'tarfuse.safetensors'
    assert load_checkpoint(source).config.global_stage
    out = tmp_path / 'no_global'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--max-steps', '1',
                                 '--init', str(source), '--set', 'train.lr=1e-12',
                                 '--set', 'train.init_model={global_stage: false}')) == 0
    before = load_checkpoint(source).state_dict()
    switched = load_checkpoint(out / 'tarfuse.safetensors')
    after = switched.state_dict()
    assert not switched.config.global_stage
    assert not any(key.startswith('registration.global_estimator.') for key in after)
    # Without the global stage the coarsest level gets its own (new) residual estimator.
    new = sorted(set(after) - set(before))
    assert new and all(key.startswith('registration.estimators.') for key in new)
    kept = [k for k in after if k in before and k.endswith('.weight') and after[k].dim() == 4]
    assert kept
    for key in kept:
        assert torch.allclose(before[key], after[key], rtol=0, atol=1e-9), key
    assert 'freshly initialised' in capsys.readouterr().out


def test_unknown_part_in_freeze_fails_at_start(splits, tmp_path, capsys):
    code = train_tool.main(_args(splits, tmp_path / 'bad', '--epochs', '1', '--max-steps', '1',
                                 '--set', 'train.freeze=[backbone]'))
    assert code != 0
    assert "unknown model part 'backbone'" in capsys.readouterr().err


def test_weight_average_is_validated_saved_and_resumed(splits, tmp_path):
    """train.ema: the checkpoint holds the average, the state both, and resuming is exact."""
    ema = ['--set', 'train.ema=0.5', '--set', 'train.ema_tau=2']
    straight, split = tmp_path / 'ema_a', tmp_path / 'ema_b'
    assert train_tool.main(_args(splits, straight, '--epochs', '2', *ema)) == 0
    assert train_tool.main(_args(splits, split, '--epochs', '1', *ema)) == 0
    assert state.read_state_meta(split / STATE_DIR)['ema_updates'] == 2
    assert train_tool.main(['--resume', str(split), '--epochs', '2']) == 0
    meta = state.read_state_meta(split / STATE_DIR)
    assert meta['ema_updates'] == 4 and meta['config']['train']['ema'] == 0.5
    averages = [load_file(str(out / STATE_DIR / state.EMA_FILE)) for out in (straight, split)]
    assert averages[0].keys() == averages[1].keys()
    for key in averages[0]:
        torch.testing.assert_close(averages[0][key], averages[1][key], rtol=1e-4, atol=1e-5)
    # The checkpoint is the average, not the last weights (which the state keeps as well).
    saved = load_checkpoint(split / FINAL_NAME).state_dict()
    last = load_file(str(split / STATE_DIR / 'model.safetensors'))
    average = {key[len('module.'):]: value for key, value in averages[1].items()
               if key.startswith('module.')}
    assert saved.keys() == average.keys() == last.keys()
    for key in saved:
        assert torch.equal(saved[key], average[key]), key
    assert any(not torch.equal(saved[key], last[key]) for key in saved
               if saved[key].is_floating_point())
    assert 'val' in _log(split)[-1]


def test_a_state_without_average_resumes_with_one(runs, tmp_path, capsys):
    """A run saved with train.ema off, resumed with it on: the average starts there."""
    out = tmp_path / 'late_ema'
    assert train_tool.main(['--resume', str(runs['a']), '--epochs', '3', '--out', str(out),
                            '--val-every', '0', '--set', 'train.ema=0.9']) == 0
    assert 'holds no weight average' in capsys.readouterr().out
    assert state.read_state_meta(out / STATE_DIR)['ema_updates'] == 2


def test_a_new_run_refuses_a_folder_that_holds_one(runs, splits, tmp_path, capsys):
    """A new run in a finished run's folder would replace its log, state and checkpoint."""
    before = (runs['a'] / logs.LOG_NAME).read_bytes()
    assert train_tool.main(_args(splits, runs['a'], '--epochs', '1')) == 2
    err = capsys.readouterr().err
    assert 'already holds a training run' in err and f"--resume '{runs['a']}'" in err
    assert (runs['a'] / logs.LOG_NAME).read_bytes() == before
    # Resuming into another run's folder is refused as well.
    assert train_tool.main(['--resume', str(runs['b']), '--out', str(runs['a'])]) == 2
    assert 'resume into the folder of that run' in capsys.readouterr().err


def test_an_out_folder_that_cannot_be_made_fails_before_any_work(splits, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    assert train_tool.main(_args(splits, a_file, '--epochs', '1')) == 2
    assert 'is a file, not a folder' in capsys.readouterr().err
    if Path('/proc/self').is_dir():
        assert train_tool.main(_args(splits, '/proc/tarfuse_run', '--epochs', '1')) == 2
        assert 'folder /proc is not writable' in capsys.readouterr().err


def test_resume_refuses_to_change_the_saved_network(runs, capsys):
    """The resumed network is the saved one: changed model, classes or init are refused."""
    for change, key in (('model.feature_channels=8', 'model.feature_channels'),
                        ('data.class_map={car: 0, person: 1, bicycle: 2}', 'data.class_map'),
                        (f'train.init_weights={runs["a"] / FINAL_NAME}', 'train.init_weights')):
        assert train_tool.main(['--resume', str(runs['b']), '--epochs', '3',
                                '--set', change]) == 2
        err = capsys.readouterr().err
        assert f'cannot change {key}' in err and '--init' in err
    # --init with --resume: the resumed weights would be the state's, not the file's.
    assert train_tool.main(['--resume', str(runs['b']), '--epochs', '3',
                            '--init', str(runs['a'] / FINAL_NAME)]) == 2
    assert 'cannot change train.init_weights (--init)' in capsys.readouterr().err
    assert [r['epoch'] for r in _log(runs['b'])] == [1, 2]


def test_resume_from_a_broken_state_is_one_clear_error(runs, tmp_path, capsys):
    broken = tmp_path / 'broken'
    shutil.copytree(runs['b'] / STATE_DIR, broken / STATE_DIR)
    (broken / STATE_DIR / 'state.json').write_text('{}')
    assert train_tool.main(['--resume', str(broken)]) == 2
    assert "is not a training state (no 'epoch')" in capsys.readouterr().err
    (broken / STATE_DIR / 'state.json').write_text('not json')
    assert train_tool.main(['--resume', str(broken)]) == 2
    assert 'cannot be read as a training state' in capsys.readouterr().err
    shutil.copy(runs['b'] / STATE_DIR / 'state.json', broken / STATE_DIR / 'state.json')
    (broken / STATE_DIR / 'model.safetensors').write_bytes(b'\x00' * 64)
    assert train_tool.main(['--resume', str(broken), '--epochs', '3']) == 2
    assert 'cannot be read' in capsys.readouterr().err


def _edit_state_json(folder, change):
    path = folder / STATE_DIR / 'state.json'
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize('damage, message', [
    # Each was a Python traceback (KeyError, RuntimeError with hundreds of lines, ...).
    (lambda folder: (folder / STATE_DIR / 'ema.safetensors').write_bytes(b'\x00' * 64),
     'cannot be read (ema.safetensors: '),
    (lambda folder: _edit_state_json(folder, lambda meta: meta.pop('optimizer')),
     "state.json' is damaged (no 'optimizer')"),
    (lambda folder: _edit_state_json(folder, lambda meta: meta.update(epoch='two')),
     "state.json' is damaged (epoch 'two' is not a count)"),
    (lambda folder: _edit_state_json(folder, lambda meta: meta.update(rng={'numpy': [1]})),
     "state.json' is damaged (random generator states: "),
    (lambda folder: shutil.copy(share_dir() / 'models' / 'tarfuse_default.safetensors',
                                folder / STATE_DIR / 'model.safetensors'),
     "model.safetensors' does not hold the saved network of this run ("),
])
def test_resume_from_a_damaged_state_names_the_file(runs, tmp_path, capsys, damage, message):
    broken = tmp_path / 'broken'
    shutil.copytree(runs['b'], broken)
    damage(broken)
    before = (broken / logs.LOG_NAME).read_bytes()
    # With train.ema the state's weight average is read too.
    assert train_tool.main(['--resume', str(broken), '--epochs', '3',
                            '--set', 'train.ema=0.9']) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err and len(err.splitlines()) == 1, err
    assert (broken / logs.LOG_NAME).read_bytes() == before


def test_resume_finds_the_state_a_run_killed_while_saving_left_aside(runs, tmp_path):
    """Killed between moving its state to state.old and the new one into place: no state/.

    --resume said 'no training state found' and told the user to start again.
    """
    out = tmp_path / 'killed'
    shutil.copytree(runs['b'], out)
    (out / STATE_DIR).rename(out / f'{STATE_DIR}.old')
    assert state.find_state_dir(out) == (out / f'{STATE_DIR}.old').resolve()
    assert train_tool.main(['--resume', str(out), '--epochs', '3']) == 0
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == 3
    assert not (out / f'{STATE_DIR}.old').exists()
    assert [r['epoch'] for r in _log(out)] == [1, 2, 3]


def test_a_state_half_written_by_a_killed_run_goes_with_the_next_run(runs, tmp_path):
    """Killed while it saved its state: the half-written folder stayed beside it for good.

    The next run into that folder removes it; one a live process still writes, and the user's
    own folders, stay.
    """
    from tarfuse_ros.core.files import atomic_output
    out = tmp_path / 'killed'
    shutil.copytree(runs['b'], out)
    killed = subprocess.run(
        [sys.executable, '-c',
         'import os, sys; from tarfuse_ros.core.files import atomic_output\n'
         'with atomic_output(sys.argv[1], folder=True) as folder:\n'
         '    (folder / "model.safetensors").write_bytes(bytes(1000))\n'
         '    os.kill(os.getpid(), 9)\n', str(out / STATE_DIR)])
    assert killed.returncode == -signal.SIGKILL
    [left] = out.glob(f'{STATE_DIR}.*.tmp')
    (out / f'{STATE_DIR}.mine.tmp').mkdir()  # not of the pattern: the user's
    with pytest.raises(RuntimeError, match='abandoned'):
        with atomic_output(out / STATE_DIR, folder=True) as live:  # a save under way
            assert train_tool.main(['--resume', str(out), '--epochs', '3']) == 0
            assert not left.exists() and live.is_dir()
            raise RuntimeError('abandoned')  # so that it does not replace the state
    assert sorted(path.name for path in out.iterdir() if STATE_DIR in path.name) == [
        STATE_DIR, f'{STATE_DIR}.mine.tmp']
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == 3


def test_a_checkpoint_half_written_by_a_killed_run_goes_with_the_next_run(runs, tmp_path):
    """Killed while it wrote its checkpoint (every epoch) or rewrote its log: a .tmp file.

    tarfuse.safetensors.<hex>.tmp (the size of a checkpoint) stayed in --out for good, one
    more for every such kill; only the state's folders were removed.
    """
    from tarfuse_ros.core.files import atomic_output
    out = tmp_path / 'killed'
    shutil.copytree(runs['b'], out)
    for name in (FINAL_NAME, logs.LOG_NAME):
        killed = subprocess.run(
            [sys.executable, '-c',
             'import os, sys; from tarfuse_ros.core.files import atomic_output\n'
             'with atomic_output(sys.argv[1]) as temporary:\n'
             '    temporary.write_bytes(bytes(1000))\n'
             '    os.kill(os.getpid(), 9)\n', str(out / name)])
        assert killed.returncode == -signal.SIGKILL
    left = sorted(out.glob('*.tmp'))
    assert [path.name.split('.')[0] for path in left] == ['log', 'tarfuse']
    with pytest.raises(RuntimeError, match='abandoned'):
        with atomic_output(out / FINAL_NAME) as live:  # a write under way
            assert train_tool.main(['--resume', str(out), '--epochs', '3']) == 0
            assert not any(path.exists() for path in left) and live.is_file()
            raise RuntimeError('abandoned')
    assert not list(out.glob('*.tmp')) and not list(out.glob('*.new'))
    assert [r['epoch'] for r in _log(out)] == [1, 2, 3]


def test_resume_after_a_kill_in_the_log_write(runs, tmp_path, capsys):
    """A run killed while it appended its epoch record left half a line in log.jsonl.

    --resume then failed with 'Unterminated string starting at: line 1 column 28', and so did
    every later try.
    """
    out = tmp_path / 'killed'
    shutil.copytree(runs['b'], out)
    with open(out / logs.LOG_NAME, 'a', encoding='utf-8') as stream:
        stream.write('{"epoch": 3, "epochs": 3, "ste')
    assert train_tool.main(['--resume', str(out), '--epochs', '3']) == 0
    assert [r['epoch'] for r in _log(out)] == [1, 2, 3]
    # A broken line within the log is named, not skipped (it is no cut-short write).
    lines = (out / logs.LOG_NAME).read_text().splitlines(keepends=True)
    (out / logs.LOG_NAME).write_text(lines[0] + 'garbage\n' + ''.join(lines[2:]))
    capsys.readouterr()
    assert train_tool.main(['--resume', str(out), '--epochs', '4']) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-train: error: training log '{out / logs.LOG_NAME}' line 2 is not a JSON "
        "record ('garbage'): repair or remove that line\n")


def test_the_files_a_run_writes_are_replaced_whole_never_rewritten_in_place(
        runs, splits, tmp_path):
    """config.yaml, summary.json, the curves and the split lists were rewritten in place.

    A run killed in such a write left the file truncated under its name (a config.yaml that
    the user's next --config, or a summary.json that a script, then choked on). Each is now
    written beside it and moved over it whole: the file is a new one (another inode), and a
    killed writer's half-written temporary goes with the next run.
    """
    out = tmp_path / 'resumed'
    shutil.copytree(runs['b'], out)
    split_list, = (out / 'splits' / 'train').iterdir()
    written = [out / 'config.yaml', out / 'summary.json', out / CURVE_NAME, split_list]
    before = {path: path.stat().st_ino for path in written}
    stale = [path.with_name(path.name + '.0123abcd.tmp') for path in written]
    for path in stale:
        path.write_text('half')
    assert train_tool.main(['--resume', str(out), '--epochs', '3']) == 0
    assert {path: path.stat().st_ino for path in written if path.stat().st_ino == before[path]
            } == {}
    assert [path for path in stale if path.exists()] == []
    assert yaml.safe_load((out / 'config.yaml').read_text())['train']['epochs'] == 3
    assert json.loads((out / 'summary.json').read_text())['epochs'] == 3
    assert cv2.imread(str(out / CURVE_NAME)) is not None
    assert split_list.read_text().split() == splits['stems']


def test_summary_names_the_checkpoint_by_an_absolute_path(splits, tmp_path, monkeypatch):
    """With a relative --out, summary.json's checkpoint was relative to where the run started.

    A script reading the summary from another directory (or the run folder itself) could not
    find the checkpoint; the path is now absolute.
    """
    started = tmp_path / 'started_here'
    started.mkdir()
    monkeypatch.chdir(started)
    assert train_tool.main(_args(splits, Path('..') / 'runs' / 'rel', '--epochs', '1',
                                 '--max-steps', '1', '--val-every', '0')) == 0
    out = tmp_path / 'runs' / 'rel'
    checkpoint = json.loads((out / 'summary.json').read_text())['checkpoint']
    assert checkpoint == str(out / FINAL_NAME)
    monkeypatch.chdir(out)
    assert Path(checkpoint).is_file()


def test_resume_with_another_batch_size_stays_on_the_learning_rate_curve(runs, tmp_path):
    """2 steps per epoch saved, 1 after the resume: the curve went by the saved step count.

    Epochs 3 and 4 of 4 then trained at the rate of the curve's end (5 % of the rate), as the
    saved 4 steps were past the 4 steps the curve then spanned.
    """
    out = tmp_path / 'batch4'
    shutil.copytree(runs['b'], out)
    assert train_tool.main(['--resume', str(out), '--epochs', '4', '--batch', '4']) == 0
    train = state.read_state_meta(out / STATE_DIR)['config']['train']
    records = _log(out)
    assert [r['step'] for r in records] == [2, 4, 5, 6]
    for record, step in zip(records[2:], (2, 3)):  # one step per epoch after the resume
        factor = schedule.lr_factor(step, 4, int(train['warmup_epochs']), train['schedule'],
                                    train['min_lr_ratio'])
        assert record['lr'] == pytest.approx(train['lr'] * factor)
    assert records[2]['lr'] > 2 * records[3]['lr']  # the middle of the curve, then its end


def test_resume_takes_the_optimizer_settings_it_is_given(runs, tmp_path):
    """A resume that changed train.lr_mult, weight_decay or betas recorded them, unused.

    The optimizer's groups came back from the state with the old settings: the detection head
    trained at the old learning rate while config.yaml said twice that.
    """
    out = tmp_path / 'changed'
    shutil.copytree(runs['b'], out)
    assert train_tool.main(['--resume', str(out), '--epochs', '3',
                            '--set', 'train.lr_mult={detect: 2}',
                            '--set', 'train.weight_decay=0.01',
                            '--set', 'train.betas=[0.8, 0.99]']) == 0
    meta = state.read_state_meta(out / STATE_DIR)
    assert meta['config']['train']['lr_mult'] == {'detect': 2.0}
    groups = {group['part']: group for group in meta['optimizer']['param_groups']}
    assert groups['detect']['lr_mult'] == 2.0 and groups['neck']['lr_mult'] == 1.0
    assert groups['detect']['lr'] == pytest.approx(2 * groups['neck']['lr'])
    for group in groups.values():
        assert group['weight_decay'] == 0.01 and group['betas'] == [0.8, 0.99]
    # The weights of the state before go on from it: the step counts carry over.
    assert meta['global_step'] == 3 * runs['b_after_one']['state']['global_step']


def test_init_refuses_reordered_classes_and_model_fields_it_would_not_use(
        runs, splits, tmp_path, capsys):
    source = str(runs['a'] / FINAL_NAME)
    reordered = ['--set', 'data.class_map={car: 0, person: 1, bicycle: 2}']
    assert train_tool.main(_args(splits, tmp_path / 'i1', '--epochs', '1', '--init', source,
                                 *reordered)) == 2
    assert "orders the classes ['car', 'person', 'bicycle']" in capsys.readouterr().err
    wider = ['--set', 'model.feature_channels=16']  # the checkpoint has 4
    assert train_tool.main(_args(splits, tmp_path / 'i2', '--epochs', '1', '--init', source,
                                 *wider)) == 2
    assert 'model.feature_channels is 16 in the config' in capsys.readouterr().err
    assert not (tmp_path / 'i1').exists() and not (tmp_path / 'i2').exists()


def test_class_names_and_label_folders_that_match_nothing_are_refused(splits, tmp_path, capsys):
    typo = ['--set', 'data.class_map={pedestrian: 0, bicycle: 1, car: 2}']
    assert train_tool.main(_args(splits, tmp_path / 'c1', '--epochs', '1', *typo)) == 2
    assert 'data.class_map: pedestrian is in no classes.txt' in capsys.readouterr().err
    folder = ['--set', f'data.train=[{{path: {ROADSCENE}, split: {splits["train"]}, '
                       f'labels: label}}]']
    args = _args(splits, tmp_path / 'c2', '--epochs', '1', *folder)
    del args[args.index('--data'):args.index('--data') + 2]  # --data would replace data.train
    assert train_tool.main(args) == 2
    assert "labels folder 'label' not found" in capsys.readouterr().err
    # A folder without label files (the set's images, named by mistake): every pair was
    # trained as unlabelled, without a word.
    args[args.index(folder[1])] = folder[1].replace('labels: label}', 'labels: ir}')
    assert train_tool.main(args) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-train: error: data source '{ROADSCENE}' split '{splits['train']}': labels "
        f"folder 'ir' ('{ROADSCENE / 'ir'}') holds no label file (<stem>.txt): name the folder "
        'of its label files, or leave labels out\n')
    assert not (tmp_path / 'c2').exists()


def test_relative_list_files_and_label_folders_are_found_from_any_directory(
        tmp_path, monkeypatch):
    """config/train.yaml names data/... paths of this package; they resolve from elsewhere."""
    monkeypatch.chdir(tmp_path)
    listed = tmp_path / 'two.txt'
    listed.write_text('\n'.join((ROADSCENE / 'train.txt').read_text().split()[:2]) + '\n')
    source, = resolve_sources([{'path': str(ROADSCENE), 'split': 'two.txt',
                                'labels': 'data/pseudo_labels/roadscene/labels'}])
    assert source.labels == str(share_dir() / 'data' / 'pseudo_labels' / 'roadscene' / 'labels')
    assert source.split == str(listed)


def test_a_run_on_relative_paths_resumes_from_another_directory(splits, tmp_path, monkeypatch):
    """The saved config kept --data my_set:two.txt as given, relative to the working directory.

    A resume from another directory then found no such set (or a shared set of that name:
    other data, without a word).
    """
    own = tmp_path / 'work' / 'my_set'
    stems = splits['stems'][:2]
    for sub in ('ir', 'vi', 'labels'):
        (own / sub).mkdir(parents=True)
        for stem in stems:
            for found in (ROADSCENE / sub).glob(f'{stem}.*'):
                shutil.copy(found, own / sub)
    shutil.copy(ROADSCENE / 'labels' / 'classes.txt', own / 'labels')
    (tmp_path / 'work' / 'two.txt').write_text('\n'.join(stems) + '\n')
    monkeypatch.chdir(tmp_path / 'work')
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--val-data', 'none')
    args[args.index('--data') + 1] = 'my_set:two.txt'
    del args[args.index('--val-data'):args.index('--val-data') + 2]  # the first one
    assert train_tool.main(args) == 0
    monkeypatch.chdir(tmp_path)
    assert train_tool.main(['--resume', str(tmp_path / 'run'), '--epochs', '2']) == 0
    source, = state.read_state_meta(tmp_path / 'run' / STATE_DIR)['config']['data']['train']
    assert (source['path'], source['split']) == (str(own), str(tmp_path / 'work' / 'two.txt'))
    assert [r['epoch'] for r in _log(tmp_path / 'run')] == [1, 2]
    # A split of the set stays as named; the package's data/... is pinned (the next test).
    given = [{'path': str(ROADSCENE), 'split': 'train',
              'labels': 'data/pseudo_labels/roadscene/labels'}]
    resolved = resolve_sources(given)
    pinned, = pinned_sources(given, resolved)
    assert (pinned.split, pinned.labels) == (
        'train', str(share_dir() / 'data' / 'pseudo_labels' / 'roadscene' / 'labels'))


def test_a_run_on_the_packages_labels_resumed_beside_a_data_folder_keeps_its_labels(
        splits, tmp_path, monkeypatch):
    """The package's data/pseudo_labels/... (config/train.yaml's) was saved as given, relative.

    A resume from a directory holding a data/pseudo_labels/... of its own (another checkout,
    its labels empty here) trained on those labels, without a word: its pair unlabelled.
    """
    package_labels = 'data/pseudo_labels/roadscene/labels'
    (tmp_path / 'here').mkdir()
    (tmp_path / 'elsewhere' / package_labels).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / 'here')
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--val-data', 'none',
                 '--set', f'data.train=[{{path: {ROADSCENE}, split: {splits["train"]}, '
                          f'labels: {package_labels}}}]')
    del args[args.index('--data'):args.index('--data') + 2]  # --data would replace data.train
    del args[args.index('--val-data'):args.index('--val-data') + 2]  # the first one
    assert train_tool.main(args) == 0
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert train_tool.main(['--resume', str(tmp_path / 'run'), '--epochs', '2']) == 0
    provenance = read_checkpoint_config(tmp_path / 'run' / FINAL_NAME)['provenance']
    # One of the four pairs has a pseudo-label (the other three, human labels elsewhere).
    assert provenance['labelled_pairs'] == 1
    used = str(share_dir() / package_labels)
    assert provenance['data'][0]['labels_dir'] == used
    saved, = yaml.safe_load((tmp_path / 'run' / 'config.yaml').read_text())['data']['train']
    assert saved['labels'] == used


def _unlabelled_copy(splits, copy):
    """Copy the split's RoadScene images, without labels, to ``copy`` (ir/, vi/)."""
    for sub in ('ir', 'vi'):
        (copy / sub).mkdir(parents=True)
        for stem in splits['stems']:
            for found in (ROADSCENE / sub).glob(f'{stem}.*'):
                shutil.copy(found, copy / sub)


def _train_here_resume_elsewhere(splits, args, tmp_path, monkeypatch):
    """Train ``args`` on roadscene by name, resume from tmp_path/elsewhere: same set used."""
    args[args.index('--data') + 1] = f'roadscene:{splits["train"]}'
    del args[args.index('--val-data'):args.index('--val-data') + 2]  # the first one
    assert train_tool.main(args) == 0
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert train_tool.main(['--resume', str(tmp_path / 'run'), '--epochs', '2']) == 0
    provenance = read_checkpoint_config(tmp_path / 'run' / FINAL_NAME)['provenance']
    assert provenance['data'][0]['path'] == str(ROADSCENE.resolve())
    assert provenance['labelled_pairs'] == 3


def test_a_run_on_a_shared_set_resumed_beside_a_folder_of_its_name_trains_on_the_same_set(
        splits, tmp_path, monkeypatch):
    """--data roadscene (a shared set) was saved as given, looked up in the working folder first.

    A resume from a directory holding a folder named roadscene (the user's copy, unlabelled
    here) trained on that one without a word.
    """
    shared = tmp_path / 'shared' / 'datasets'
    shared.mkdir(parents=True)
    (shared / 'README.md').write_text('shared data sets\n')
    (shared / 'roadscene').symlink_to(ROADSCENE)
    monkeypatch.setenv('TARFUSE_SHARED', str(tmp_path / 'shared'))
    copy = tmp_path / 'elsewhere' / 'roadscene'
    _unlabelled_copy(splits, copy)
    (tmp_path / 'here').mkdir()
    monkeypatch.chdir(tmp_path / 'here')
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--val-data', 'none')
    _train_here_resume_elsewhere(splits, args, tmp_path, monkeypatch)


def test_a_run_with_a_relative_data_root_resumed_elsewhere_trains_on_the_same_set(
        splits, tmp_path, monkeypatch):
    """data.root=sets was saved as given: a resume from another directory with a sets/ folder.

    It trained on that directory's sets/roadscene (the user's unlabelled copy) without a word.
    """
    (tmp_path / 'here' / 'sets').mkdir(parents=True)
    (tmp_path / 'here' / 'sets' / 'roadscene').symlink_to(ROADSCENE)
    copy = tmp_path / 'elsewhere' / 'sets' / 'roadscene'
    _unlabelled_copy(splits, copy)
    monkeypatch.chdir(tmp_path / 'here')
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--val-data', 'none',
                 '--set', 'data.root=sets')
    _train_here_resume_elsewhere(splits, args, tmp_path, monkeypatch)


def test_two_runs_started_at_once_into_one_folder_are_not_both_trained(splits, tmp_path):
    """Both passed the check of --out (nothing there yet) and trained into one folder.

    log.jsonl then held every epoch twice, and the state and checkpoint were whichever run
    saved last.
    """
    out = tmp_path / 'shared_out'
    command = [sys.executable, '-m', 'tarfuse_ros.tools.train',
               *_args(splits, out, '--epochs', '2')]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=Path(__file__).resolve().parents[2])
                 for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=170)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    codes = [process.returncode for process in processes]
    assert sorted(codes) == [0, 2], outputs
    refused = outputs[codes.index(2)]
    assert 'tarfuse-train: error: --out' in refused and 'Traceback' not in refused, refused
    assert [r['epoch'] for r in _log(out)] == [1, 2]
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == 2


def test_an_out_folder_that_cannot_be_locked_is_trained_into_with_a_warning(tmp_path, capsys):
    """On a file system without flock the run went on unlocked without a word.

    Nothing then kept a second run out of the folder (its log written twice, the state and
    checkpoint the last run's), and the user was not told. A descriptor opened with O_PATH is
    one that flock refuses (EBADF), as such a file system does; one another run holds stays
    refused.
    """
    out = tmp_path / 'out'
    out.mkdir()
    assert train_tool._lock_out(out, os.open(out, os.O_PATH)) is None
    assert capsys.readouterr().err == (
        f"tarfuse-train: warning: --out '{out}': its file system cannot lock files (flock: Bad "
        'file descriptor); the run goes on, but nothing keeps a second run out of this folder '
        'meanwhile: start no other run into it\n')
    claim = train_tool._lock_out(out, os.open(out, os.O_RDONLY | os.O_DIRECTORY))
    try:
        with pytest.raises(ValueError, match='is in use by another tarfuse-train run'):
            train_tool._lock_out(out, os.open(out, os.O_RDONLY | os.O_DIRECTORY))
    finally:
        os.close(claim)


def test_a_run_killed_outright_resumes_at_once_although_its_loader_workers_linger(
        splits, tmp_path):
    """A DataLoader worker outlives a SIGKILLed run by seconds; it held the run's --out lock.

    The resume right after the kill was refused: '--out ... is in use by another tarfuse-train
    run, still running'.
    """
    out = tmp_path / 'killed'
    command = [sys.executable, '-m', 'tarfuse_ros.tools.train',
               *_args(splits, out, '--epochs', '500', '--val-every', '0', '--workers', '1')]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_DIR / 'state.json').is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / STATE_DIR / 'state.json').is_file(), 'no epoch finished in 120 s'
    finally:
        process.kill()
        process.wait()
    epoch = state.read_state_meta(out / STATE_DIR)['epoch']
    assert train_tool.main(['--resume', str(out), '--epochs', str(epoch + 1)]) == 0
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == epoch + 1


def test_a_stop_once_the_new_state_is_in_place_counts_its_epoch(splits, tmp_path):
    """Ctrl-C while the save removed the state before (state.old), the new one in place.

    The run said 'the last resumable state is from epoch 1' and its summary counted 1 epoch,
    while state/ held epoch 2 (which --resume then continued from).
    """
    out = tmp_path / 'stopped'
    script = (
        'import os, signal, sys\nfrom pathlib import Path\n'
        'from tarfuse_ros.core import files\nfrom tarfuse_ros.tools import train\n'
        'removed = []\n'
        'def stop_in_the_third_removal_of_an_old_state(frame, event, arg):\n'
        '    if event == "return" and frame.f_code is files._remove.__code__ and \\\n'
        '            Path(frame.f_locals["path"]).name == "state.old":\n'
        '        removed.append(1)\n'
        '        if len(removed) == 3:  # epoch 2: the one before it, then its own\n'
        '            os.kill(os.getpid(), signal.SIGINT)\n'
        'sys.setprofile(stop_in_the_third_removal_of_an_old_state)\n'
        'sys.exit(train.main(sys.argv[1:]))\n')
    stopped = subprocess.run(
        [sys.executable, '-c', script, *_args(splits, out, '--epochs', '3', '--val-every', '0')],
        capture_output=True, text=True, timeout=170)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == 2
    assert 'the last resumable state is from epoch 2' in stopped.stdout, stopped.stdout
    assert json.loads((out / 'summary.json').read_text())['epochs'] == 2


def test_sigterm_stops_the_run_like_ctrl_c(splits, tmp_path):
    out = tmp_path / 'term'
    command = [sys.executable, '-m', 'tarfuse_ros.tools.train',
               *_args(splits, out, '--epochs', '500', '--val-every', '0')]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_DIR / 'state.json').is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / STATE_DIR / 'state.json').is_file(), 'no epoch finished in 120 s'
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert 'interrupted in epoch' in output and 'the last resumable state is from epoch' in output
    assert 'Traceback' not in output
    assert json.loads((out / 'summary.json').read_text())['interrupted'] is True


def test_a_second_ctrl_c_does_not_cut_the_stop_short(splits, tmp_path):
    """A second SIGINT (terminals and ros2 launch send several) while the stop saved its work.

    It interrupted the save: no summary.json and 'interrupted while starting; no training was
    done' after epochs of training.
    """
    out = tmp_path / 'twice'
    command = [sys.executable, '-u', '-m', 'tarfuse_ros.tools.train',
               *_args(splits, out, '--epochs', '500', '--val-every', '0')]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=Path(__file__).resolve().parents[2])
    lines = []
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_DIR / 'state.json').is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / STATE_DIR / 'state.json').is_file(), 'no epoch finished in 120 s'
        process.send_signal(signal.SIGINT)
        for line in process.stdout:  # the stop is saving the weights now
            lines.append(line)
            if 'interrupted in epoch' in line:
                process.send_signal(signal.SIGINT)
                break
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    output = ''.join(lines) + output
    assert process.returncode == 130, output
    assert 'no training was done' not in output and 'Traceback' not in output, output
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['interrupted'] is True and summary['epochs'] >= 1
    assert summary['epochs'] == state.read_state_meta(out / STATE_DIR)['epoch']


def test_a_second_signal_while_a_stopped_run_ends_does_not_kill_it(splits, tmp_path):
    """Stopped by SIGINT and saved, the console script ends; ros2 launch's SIGTERM comes then.

    The handlers were back to the defaults once the run had returned: the process was killed
    by that SIGTERM (status -15, not 130) as it ended.
    """
    out = tmp_path / 'ending'
    script = (
        'import os, signal, sys, threading, time\n'
        'from tarfuse_ros.console import train\n'
        'saved = sys.argv.pop(1)\n'
        'def stop_once_saved():\n'
        '    while not os.path.isfile(saved):\n'
        '        time.sleep(0.05)\n'
        '    os.kill(os.getpid(), signal.SIGINT)\n'
        'threading.Thread(target=stop_once_saved, daemon=True).start()\n'
        'status = train()\n'
        'os.kill(os.getpid(), signal.SIGTERM)  # as the process ends\n'
        'time.sleep(0.5)\n'
        'sys.exit(status)\n')
    ended = subprocess.run(
        [sys.executable, '-c', script, str(out / STATE_DIR / 'state.json'),
         *_args(splits, out, '--epochs', '500', '--val-every', '0')],
        capture_output=True, text=True, timeout=170)
    assert ended.returncode == 130, ended.stdout + ended.stderr
    assert 'Traceback' not in ended.stderr, ended.stderr
    assert json.loads((out / 'summary.json').read_text())['interrupted'] is True


def test_sigterm_to_the_process_group_stops_a_run_with_loader_workers(splits, tmp_path):
    """SIGTERM to the whole group (systemctl stop, timeout) killed the DataLoader workers too.

    PyTorch's SIGCHLD handler then raised 'DataLoader worker ... is killed by signal:
    Terminated' while the stopped run was being saved: a traceback, exit status 1, neither the
    checkpoint nor summary.json written.
    """
    out = tmp_path / 'group'
    command = [sys.executable, '-m', 'tarfuse_ros.tools.train',
               *_args(splits, out, '--epochs', '500', '--val-every', '0', '--workers', '1')]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=Path(__file__).resolve().parents[2],
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_DIR / 'state.json').is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / STATE_DIR / 'state.json').is_file(), 'no epoch finished in 120 s'
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 130, output
    assert 'Traceback' not in output and 'killed by signal' not in output, output
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['interrupted'] is True and summary['checkpoint'] == str(out / FINAL_NAME)
    assert (out / FINAL_NAME).is_file()


def test_max_steps_inside_an_epoch_leaves_no_state_that_skips_its_rest(
        splits, tmp_path, capsys):
    """--max-steps 1 of 2 steps: the epoch is not done, so no state says it is."""
    out = tmp_path / 'partial'
    assert train_tool.main(_args(splits, out, '--epochs', '2', '--max-steps', '1',
                                 '--val-every', '0')) == 0
    assert 'no resumable state is written for a partial epoch' in capsys.readouterr().out
    assert not (out / STATE_DIR).exists() and (out / FINAL_NAME).is_file()
    assert _log(out)[0]['partial'] is True


def test_resume_with_nothing_left_to_train_says_so(runs, capsys):
    assert train_tool.main(['--resume', str(runs['b']), '--epochs', '2']) == 2
    assert 'has already trained 2 of 2 epochs; give --epochs N with N > 2' in \
        capsys.readouterr().err


def test_an_interrupt_before_the_first_step_writes_no_checkpoint(
        splits, tmp_path, monkeypatch):
    """Ctrl-C while the first batch loads: no weights were trained, none are saved."""
    from tarfuse_ros.training.loop import Trainer

    def interrupted(self, epoch, progress=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, 'train_epoch', interrupted)
    out = tmp_path / 'early'
    assert train_tool.main(_args(splits, out, '--epochs', '1')) == 130
    assert not (out / FINAL_NAME).exists() and not (out / STATE_DIR).exists()
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['interrupted'] is True and summary['checkpoint'] is None
    # Nothing was trained there: the same command starts the run again.
    monkeypatch.undo()
    assert train_tool.main(_args(splits, out, '--epochs', '1')) == 0


def test_the_same_command_runs_again_after_a_run_that_trained_nothing(splits, tmp_path, capsys):
    """A run that failed in its first epoch (an unreadable image) leaves an empty log only."""
    data = tmp_path / 'roadscene'
    shutil.copytree(ROADSCENE, data)
    image = next((data / 'vi').glob(f'{splits["stems"][0]}.*'))
    intact = image.read_bytes()
    image.write_bytes(intact[:300])
    args = _args(splits, tmp_path / 'run', '--epochs', '1')
    args[1] = f'{data}:{splits["train"]}'
    assert train_tool.main(args) == 2
    assert 'cannot read image' in capsys.readouterr().err
    image.write_bytes(intact)
    assert train_tool.main(args) == 0
    assert (tmp_path / 'run' / FINAL_NAME).is_file()


@pytest.mark.parametrize('break_labels, message', [
    (lambda data, stem: (data / 'labels' / f'{stem}.txt').write_text('0 0.5 0.5 0.1\n'),
     'expected 5 columns'),
    (lambda data, stem: (data / 'labels' / 'classes.txt').unlink(),
     'has boxes but no classes.txt names their class ids'),
    # A folder named like the pair's label file: the pair was trained as unlabelled.
    (lambda data, stem: ((data / 'labels' / f'{stem}.txt').unlink(),
                         (data / 'labels' / f'{stem}.txt').mkdir()),
     "'{data}/labels/{stem}.txt' is a folder, where the label file of pair '{stem}' would "
     "be: make it that file, or move it out of '{data}/labels'"),
], ids=['malformed line', 'no classes.txt', 'a folder as a label file'])
def test_a_bad_label_file_fails_before_training(
        splits, tmp_path, capsys, break_labels, message):
    """Not when a loader worker reaches the pair in the first epoch, after the outputs began."""
    data = tmp_path / 'roadscene'
    shutil.copytree(ROADSCENE, data)
    break_labels(data, splits['stems'][-2])
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--workers', '1')
    args[1] = f'{data}:{splits["train"]}'
    assert train_tool.main(args) == 2
    err = capsys.readouterr().err
    assert message.format(data=data, stem=splits['stems'][-2]) in err and 'Traceback' not in err
    assert not (tmp_path / 'run').exists()


def test_boxes_of_classes_outside_the_class_map_are_counted_at_start(splits, tmp_path, capsys):
    """They were left out of training without a word (tarfuse-eval names them)."""
    data = tmp_path / 'roadscene'
    shutil.copytree(ROADSCENE, data)
    with open(data / 'labels' / 'classes.txt', 'a') as handle:
        handle.write('truck\ntraffic sign\n')
    for stem, extra in zip(splits['stems'], ('3 0.5 0.5 0.2 0.2\n4 0.1 0.1 0.05 0.05\n',
                                             '3 0.4 0.6 0.1 0.1\n')):
        with open(data / 'labels' / f'{stem}.txt', 'a') as handle:
            handle.write(extra)
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--max-steps', '1')
    args[1] = f'{data}:{splits["train"]}'
    assert train_tool.main(args) == 0
    out = capsys.readouterr().out
    assert ('[tarfuse-train] data.class_map has no class truck (2 boxes), traffic sign (1 box): '
            '3 training boxes left out (background for the detector; its classes: person, '
            'bicycle, car)\n') in out
    assert 'validation boxes' not in out  # the validation pairs come from the intact set


@pytest.mark.parametrize('where, saved', [
    ('validation', 1), ('state write', 1), ('checkpoint write', 2)])
def test_ctrl_c_at_the_end_of_an_epoch_names_the_epoch_saved(
        splits, tmp_path, monkeypatch, capsys, where, saved):
    """A real SIGINT while epoch 2 ends: the summary counts the epochs the resume hint does.

    In its validation, or inside the write of its state, no state of epoch 2 is saved (the run
    resumes from epoch 1); once it is, while its checkpoint is written, the run resumes from 2.
    """
    from tarfuse_ros.training.loop import Trainer
    validate, provenance, rng_to_flat = Trainer.validate, Trainer.provenance, state.rng_to_flat
    sent, states = [], []

    def ctrl_c_in(stage):
        if where == stage and not sent:
            sent.append(stage)
            signal.raise_signal(signal.SIGINT)  # Python turns it into KeyboardInterrupt here

    def validate_epoch(self):
        if self.global_step == 4:
            ctrl_c_in('validation')
        return validate(self)

    def rng_of_state():  # called inside the state's atomic write, after its weights
        states.append(1)
        if len(states) == 2:
            ctrl_c_in('state write')
        return rng_to_flat()

    def provenance_of(self, epochs_done, finished):
        if epochs_done == 2:
            ctrl_c_in('checkpoint write')
        return provenance(self, epochs_done, finished)

    monkeypatch.setattr(Trainer, 'validate', validate_epoch)
    monkeypatch.setattr(state, 'rng_to_flat', rng_of_state)
    monkeypatch.setattr(Trainer, 'provenance', provenance_of)
    out = tmp_path / 'run'
    assert train_tool.main(_args(splits, out, '--epochs', '2')) == 130
    assert sent == [where]
    printed = capsys.readouterr().out
    assert f'interrupted in epoch 2: saving the current weights to {FINAL_NAME}; the last ' \
           f'resumable state is from epoch {saved}' in printed
    assert state.read_state_meta(out / STATE_DIR)['epoch'] == saved
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['interrupted'] is True and summary['epochs'] == saved
    assert f'summary {{"epochs": {saved},' in printed
    provenance = read_checkpoint_config(out / FINAL_NAME)['provenance']
    assert provenance['epochs'] == saved and provenance['finished'] is False


@pytest.mark.parametrize('given, val_crop', [
    (['--crop', '64', '--set', 'data.val_crop=128'], 128),
    (['--set', 'data.val_crop=128', '--crop', '64'], 128),
    (['--crop', '64'], 64),
], ids=['--set after --crop', '--set before --crop', 'config value'])
def test_set_val_crop_wins_over_the_one_crop_carries_over(tmp_path, given, val_crop):
    """--crop moves a fixed validation crop of the config, not one --set gives beside it."""
    import yaml
    from tarfuse_ros.training.config import load_config
    raw = load_config(None)
    raw['data']['val_crop'] = 96  # the config's fixed validation crop
    config_file = tmp_path / 'train.yaml'
    config_file.write_text(yaml.safe_dump(raw))
    args = train_tool.build_parser().parse_args(['--config', str(config_file), *given])
    config = train_tool.build_config(args)
    assert config.data.crop == 64 and config.data.val_crop == val_crop
    shown = ' '.join(train_tool.build_parser().format_help().split())
    assert 'unless --set data.val_crop=N gives one (the explicit key wins)' in shown


@pytest.mark.parametrize('which, again', [('train', '{stem}'), ('val', '{stem}.jpg')],
                         ids=['train list', 'val list, as a file name'])
def test_a_stem_listed_twice_in_a_split_file_fails_before_training(
        splits, tmp_path, capsys, which, again):
    """Not trained (or validated) twice per epoch without a word."""
    listed = splits[which].read_text().split()
    split_file = tmp_path / f'{which}_twice.txt'
    split_file.write_text('\n'.join(listed + ['# listed again:', again.format(stem=listed[1])])
                          + '\n')
    args = _args(splits, tmp_path / 'run', '--epochs', '1')
    args[args.index('--data' if which == 'train' else '--val-data') + 1] = \
        f'{ROADSCENE}:{split_file}'
    assert train_tool.main(args) == 2
    err = capsys.readouterr().err
    assert f"split file '{split_file}' lists '{listed[1]}' twice (lines 2 and " \
           f'{len(listed) + 2})' in err
    assert 'Traceback' not in err and not (tmp_path / 'run').exists()


def test_split_all_names_the_images_without_a_partner(splits, tmp_path, capsys):
    # --data FOLDER:all trained on the stems with both images and left an IR image without its
    # visible image (or the reverse) out without a word; tarfuse-eval and tarfuse-calibrate
    # name them.
    own = tmp_path / 'own'
    for sub in ('ir', 'vi'):
        (own / sub).mkdir(parents=True)
        for stem in splits['stems'][:2]:
            shutil.copy(ROADSCENE / sub / f'{stem}.jpg', own / sub)
    shutil.copy(ROADSCENE / 'ir' / f'{splits["stems"][2]}.jpg', own / 'ir')
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--max-steps', '1')
    args[1] = f'{own}:all'
    assert train_tool.main(args) == 0
    out = capsys.readouterr().out
    assert (f"[tarfuse-train] data source '{own}' split all: left out 1 IR image without a "
            f'visible image of the same stem: {splits["stems"][2]}\n') in out, out
    assert 'visible image without' not in out and '2 training pairs' in out


def test_a_new_run_refuses_to_write_over_its_own_config_file(splits, tmp_path, capsys):
    # --config runs/rig/config.yaml --out runs/rig: the run wrote its parsed config over the
    # user's file (comments and all) without a word.
    out = tmp_path / 'rig'
    out.mkdir()
    shipped = Path(__file__).resolve().parents[2] / 'config' / 'train.yaml'
    mine = '# my rig: 640x512 thermal beside a 640x480 colour camera\n' + shipped.read_text()
    (out / 'config.yaml').write_text(mine)
    assert train_tool.main(_args(splits, out, '--config', str(out / 'config.yaml'),
                                 '--epochs', '1', '--max-steps', '1')) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-train: error: --config '{out / 'config.yaml'}' is the file the run writes "
        f'its parsed config to in --out: keep your config outside the run folder\n')
    assert (out / 'config.yaml').read_text() == mine and os.listdir(out) == ['config.yaml']


def test_a_new_run_refuses_a_folder_whose_config_yaml_no_run_wrote(splits, tmp_path, capsys):
    """--out ~/rig holding the rig's own config.yaml (not the --config): written over silently."""
    out = tmp_path / 'rig'
    out.mkdir()
    (out / 'config.yaml').write_text('# the ROS parameters of my rig\n')
    (out / 'summary.json').write_text('{"mine": 1}\n')
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--max-steps', '1')) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-train: error: --out '{out}' holds config.yaml, summary.json, which no "
        f'training run wrote there (no log.jsonl) and the run would write over: choose '
        f'another --out\n')
    assert (out / 'config.yaml').read_text() == '# the ROS parameters of my rig\n'
    assert sorted(os.listdir(out)) == ['config.yaml', 'summary.json']


@pytest.mark.parametrize('given, message', [
    (['--epochs', '3', '--set', 'train.epochs=5'],
     "--epochs 3 and --set 'train.epochs=5' give train.epochs two different values"),
    (['--set', 'train={batch: 4, seed: 1}', '--batch', '2'],
     "--batch 2 and --set 'train={batch: 4, seed: 1}' give train.batch two different values"),
    (['--device', 'cpu', '--set', 'train.device=cuda'],
     "--device cpu and --set 'train.device=cuda' give train.device two different values"),
    (['--no-amp', '--set', 'train.amp=true'],
     "--no-amp and --set 'train.amp=true' give train.amp two different values"),
    (['--data', 'roadscene:train', '--set', 'data.train=[tno]'],
     "--data roadscene:train and --set 'data.train=[tno]' give data.train two different "
     'values'),
    (['--crop', '64', '--set', 'data.crop=128'],
     "--crop 64 and --set 'data.crop=128' give data.crop two different values"),
], ids=['epochs', 'a section', 'device', 'amp', 'data', 'crop'])
def test_an_option_and_set_giving_one_key_two_values_is_refused(given, message):
    """--epochs 3 --set train.epochs=5 trained 3 epochs without a word (the option won)."""
    args = train_tool.build_parser().parse_args(given)
    with pytest.raises(ValueError) as raised:
        train_tool.build_config(args)
    assert str(raised.value) == f'{message}: give it once'


def test_an_option_and_set_giving_one_key_the_same_value_agree(splits, tmp_path, capsys):
    args = train_tool.build_parser().parse_args(
        ['--epochs', '3', '--set', 'train.epochs=3', '--amp', '--set', 'train.amp=true',
         '--time-budget', '60', '--set', 'train.time_budget_s=60', '--set', 'train.epochs=3'])
    config = train_tool.build_config(args)
    assert (config.train.epochs, config.train.amp, config.train.time_budget_s) == (3, True, 60)
    # The command line says so before any work: exit status 2, nothing written.
    out = tmp_path / 'run'
    assert train_tool.main(_args(splits, out, '--epochs', '1', '--max-steps', '1',
                                 '--set', 'train.epochs=2')) == 2
    assert capsys.readouterr().err == (
        "tarfuse-train: error: --epochs 1 and --set 'train.epochs=2' give train.epochs two "
        'different values: give it once\n')
    assert not out.exists()


@pytest.mark.parametrize('given', [
    ['--data', 'roadscene', '--set', 'data.train=[roadscene:train]'],
    ['--data', 'roadscene:train', '--set', 'data.train=[roadscene]'],
    ['--data', 'roadscene', '--set', 'data.train=[{path: roadscene, split: train}]'],
    ['--data', 'roadscene', '--set', 'data={train: [roadscene:train]}', '--set',
     'data.crop=64', '--set', 'data.class_map={person: 0}'],
    ['--val-data', 'tno:test', '--data', 'roadscene', '--set', 'data.val=[{path: tno, '
     'split: test}]'],
], ids=['split given', 'split left out', 'mapping', 'a section', 'val'])
def test_an_option_and_set_giving_one_data_source_in_two_spellings_agree(given):
    """--data roadscene --set data.train=[roadscene:train] was refused as two values."""
    config = train_tool.build_config(train_tool.build_parser().parse_args(given))
    assert [(source.path, source.split) for source in config.data.train] == [
        ('roadscene', 'train')]


def test_a_pair_whose_ir_has_another_aspect_ratio_fails_before_training(
        splits, tmp_path, capsys):
    """It was stretched to the visible frame and trained on as an aligned pair."""
    data = tmp_path / 'roadscene'
    shutil.copytree(ROADSCENE, data)
    stem = splits['stems'][1]
    ir = cv2.imread(str(data / 'ir' / f'{stem}.jpg'), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(data / 'ir' / f'{stem}.jpg'), ir[:, :ir.shape[1] * 3 // 4])
    height, width = cv2.imread(str(data / 'vi' / f'{stem}.jpg')).shape[:2]
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--workers', '1')
    args[1] = f'{data}:{splits["train"]}'
    assert train_tool.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f'tarfuse-train: error: 1 of the 4 pairs have an IR image of another aspect ratio than '
        f'their visible image: roadscene/{stem} (IR {ir.shape[1] * 3 // 4}x{ir.shape[0]}, '
        f'visible {width}x{height}); training pairs are aligned'), err
    assert 'Traceback' not in err and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('split, exclude', [('test', ''), ('all', ''), ('det_labelled', ''),
                                            ('all', 'exclude: [test]')])
def test_a_training_source_that_holds_test_pairs_is_refused(
        splits, tmp_path, capsys, split, exclude):
    """--data roadscene:test (or :all) trained on the test pairs without a word."""
    args = _args(splits, tmp_path / 'run', '--epochs', '1', '--max-steps', '1')
    del args[args.index('--data'):args.index('--data') + 2]
    args += ['--set', f'data.train=[{{path: {ROADSCENE}, split: {split}, {exclude}}}]']
    test = (ROADSCENE / 'test.txt').read_text().split()
    if exclude:
        assert train_tool.main(args) == 0
        return
    assert train_tool.main(args) == 2
    err = capsys.readouterr().err
    held = [stem for stem in DataSource(ROADSCENE, split).stems() if stem in test]
    assert err == (f"tarfuse-train: error: data source '{ROADSCENE}' split '{split}' holds "
                   f"{len(held)} test pairs of '{ROADSCENE / 'test.txt'}' (e.g. {held[0]}): the "
                   f'test sets are never trained on; add exclude: [test] to the source or '
                   f'choose another split\n')
    assert not (tmp_path / 'run').exists()
