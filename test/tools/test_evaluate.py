"""tarfuse-eval end to end on real pairs, and the classical baselines it reports.

The pairs come from ``test/data/datasets`` (small excerpts of the shared data sets, sources in
its README), so these tests run on a fresh clone.
"""

import json
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import baselines, data, metrics
from tarfuse_ros.core.deform import invert_flow
from tarfuse_ros.core.model.warp import warp
import torch

DATASETS = Path(__file__).resolve().parents[1] / 'data' / 'datasets'
# What the evaluation adds to the fusion metrics of a fused image.
CONTRAST_KEYS = {'target_contrast_ratio', 'target_contrast'}


def _textured(height=96, width=128, seed=0):
    """Smooth random texture with edges in every direction, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 3.0)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


# --- baselines ----------------------------------------------------------------------------

def test_naive_fusion_by_hand():
    a = np.array([[0, 255], [100, 50]], np.uint8)
    b = np.array([[255, 255], [0, 150]], np.uint8)
    np.testing.assert_allclose(baselines.average_fusion(a, b) * 255, [[127.5, 255], [50, 100]],
                               atol=1e-4)
    np.testing.assert_allclose(baselines.max_fusion(a, b) * 255, [[255, 255], [100, 150]],
                               atol=1e-4)
    with pytest.raises(ValueError, match='same shape'):
        baselines.average_fusion(a, b[:1])


def test_ecc_recovers_a_known_affine_motion_across_modalities():
    fixed = _textured()
    height, width = fixed.shape
    # The IR sees the scene through x_ir = M x_vi with inverted contrast (another modality);
    # it is black where it samples outside the scene, as synthetic deformations are.
    matrix = np.array([[1.02, 0.03, 4.0], [-0.02, 0.99, -3.0]], np.float32)
    moving = baselines.warp_with_matrix(1.0 - fixed, cv2.invertAffineTransform(matrix))
    result = baselines.ecc_register(moving, fixed, motion='affine')
    assert result.success
    truth = baselines.flow_from_matrix(matrix, height, width)
    inner = (slice(10, -10), slice(10, -10))
    assert metrics.epe(result.flow_px[inner], truth[inner]) < 0.3
    # The flow follows the core convention: warp(moving, flow) is the registered image.
    moving_t = torch.from_numpy(moving)[None, None]
    flow_t = torch.from_numpy(result.flow_px).permute(2, 0, 1)[None]
    rebuilt = warp(moving_t, flow_t)[0, 0].numpy()
    np.testing.assert_allclose(rebuilt[inner], result.registered[inner], atol=2e-3)


def test_ecc_falls_back_to_identity_without_structure():
    flat = np.full((64, 64), 0.5, np.float32)
    result = baselines.ecc_register(flat, _textured(64, 64))
    assert not result.success
    assert np.abs(result.flow_px).max() == 0.0
    np.testing.assert_array_equal(result.registered, flat)


# --- the tool -----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'random.safetensors'
    save_checkpoint(path, build_model(), provenance={'note': 'random init, test only'})
    return path


def _all_finite(value):
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def test_evaluate_roadscene_with_dataset_deformations(random_checkpoint, tmp_path):
    from tarfuse_ros.tools.evaluate import main
    roadscene = DATASETS / 'roadscene'
    # The first two test pairs with labels, so detection is evaluated too.
    labelled = set(data.read_split(roadscene, 'det_labelled'))
    stems = [s for s in data.read_split(roadscene, 'test') if s in labelled][:2]
    split_file = tmp_path / 'pairs.txt'
    split_file.write_text('\n'.join(stems) + '\n')
    out = tmp_path / 'eval'
    code = main(['--data', str(roadscene), '--split', str(split_file), '--weights',
                 str(random_checkpoint), '--out', str(out), '--max-side', '128',
                 '--no-progress', '--figures', '1', '--threads', '1'])
    assert code == 0
    result = json.loads((out / 'metrics.json').read_text())
    report = (out / 'report.md').read_text()
    assert '## Fusion' in report and '## Registration' in report and '## Detection' in report
    for stem in stems[:1]:
        for kind in ('grid', 'checkerboard'):
            image = cv2.imread(str(out / 'figures' / f'{stem}_{kind}.png'))
            assert image is not None and image.size > 0
    assert not (out / 'figures' / f'{stems[1]}_grid.png').exists()

    assert result['num_pairs'] == 2 and result['deformation_sources']['dataset'] == 2
    assert set(result['fusion']) == set(metrics.FUSION_METRICS) | CONTRAST_KEYS
    assert _all_finite(result['fusion']) and _all_finite(result['registration'])
    assert -1 <= result['fusion']['CC'] <= 1 and 0 <= result['fusion']['Qabf'] <= 1
    assert 0 <= result['fusion']['SSIM'] <= 1
    reg = result['registration']
    for values in (reg, reg['unregistered']):
        assert 0 <= values['MSE'] <= 1 and -1 <= values['NCC'] <= 1 and values['EPE'] >= 0
    # No fused image beats the CC bound of its sources.
    assert result['fusion']['CC'] <= result['fusion_bounds']['CC'] <= 1
    assert all(entry['fusion']['CC'] <= entry['cc_upper_bound'] + 1e-9
               for entry in result['per_pair'])
    assert 'The highest CC any fused image can reach' in report
    assert set(result['baselines']) == {'unregistered_average', 'unregistered_max',
                                        'ecc_average', 'model_zero_flow', 'visible_only',
                                        'ir_only'}
    for name in ('unregistered_average', 'unregistered_max', 'ecc_average', 'model_zero_flow'):
        assert set(result['baselines'][name]['fusion']) == set(metrics.FUSION_METRICS) \
            | CONTRAST_KEYS
    # RoadScene names say nothing of day or night: the target contrast is pooled in 'all'.
    contrast = result['fusion']['target_contrast']
    assert contrast['all']['pairs'] == 2 and contrast['night']['pairs'] == 0
    assert '## Target contrast' in report
    for name in ('model_zero_flow', 'visible_only', 'ir_only'):
        det = result['baselines'][name]['detection']
        assert 0 <= det['map50'] <= 1 and 0 <= det['map50_95'] <= det['map50'] + 1e-9
    det = result['detection']
    assert 0 <= det['map50'] <= 1 and det['num_gt'] > 0
    assert set(det['per_class']) <= {'person', 'bicycle', 'car'}
    assert result['speed']['ms_per_pair'] > 0 and result['speed']['device'] == 'cpu'

    # The unregistered EPE is the mean magnitude of the reference (inverse) field at the
    # evaluated size: rebuild that field independently from the stored disp.
    magnitudes = []
    for stem, entry in zip(stems, result['per_pair']):
        height, width = entry['size']
        disp = data.load_disp(roadscene, stem)
        full_h, full_w = disp.shape[:2]
        disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
        disp[..., 0] *= width / full_w
        disp[..., 1] *= height / full_h
        inverse = invert_flow(torch.from_numpy(disp).permute(2, 0, 1)[None], iterations=30)
        magnitude = float(inverse[0].norm(dim=0).mean())
        assert entry['unregistered']['EPE'] == pytest.approx(magnitude, rel=1e-4)
        magnitudes.append(magnitude)
    assert reg['unregistered']['EPE'] == pytest.approx(np.mean(magnitudes), rel=1e-4)
    assert result['baselines']['unregistered_average']['registration'] == reg['unregistered']

    # Ground-truth-free edge alignment sits beside the ground-truth figures.
    assert result['stored_ir'] == 'aligned'
    for values in (reg, reg['unregistered'], result['baselines']['ecc_average']['registration']):
        assert -1 <= values['edge_alignment'] <= 1
        assert values['landmark_error_px'] is None  # RoadScene has no landmarks
    assert reg['edge_alignment_better_than_unregistered_fraction'] in (0.0, 0.5, 1.0)
    assert 'edge alignment' in report and '## Goals' in report
    assert 'issue' not in report.lower()  # no tracker wording in a shipped report


def test_evaluate_synthetic_deformations_are_seeded(random_checkpoint, tmp_path):
    from tarfuse_ros.evaluation.protocol import evaluate
    kwargs = {'split': 'all', 'deform': 'synthetic', 'max_pairs': 1, 'max_side': 96,
              'figures': 0, 'progress': False, 'threads': 1}
    first = evaluate(DATASETS / 'tno', random_checkpoint, tmp_path / 'a', seed=5, **kwargs)
    again = evaluate(DATASETS / 'tno', random_checkpoint, tmp_path / 'b', seed=5, **kwargs)
    other = evaluate(DATASETS / 'tno', random_checkpoint, tmp_path / 'c', seed=6, **kwargs)
    assert first['deformation_sources'] == {'dataset': 0, 'synthetic': 1, 'none': 0}
    assert first['registration']['unregistered'] == again['registration']['unregistered']
    assert first['registration']['unregistered'] != other['registration']['unregistered']
    assert first['registration']['unregistered']['EPE'] > 0
    assert first['detection'] is None  # TNO has no labels
    none = evaluate(DATASETS / 'tno', random_checkpoint, tmp_path / 'd', deform='none',
                    split='all', max_pairs=1, max_side=96, figures=0, progress=False, threads=1)
    assert none['registration']['unregistered']['EPE'] == 0.0
    assert none['registration']['unregistered']['MSE'] == pytest.approx(0.0, abs=1e-12)


def test_an_evaluation_into_an_earlier_ones_folder_replaces_its_figures(random_checkpoint,
                                                                        tmp_path):
    # The earlier run's figures stayed beside the new report (of other pairs, or of none).
    from tarfuse_ros.evaluation.protocol import evaluate
    kwargs = {'split': 'all', 'max_side': 96, 'progress': False, 'threads': 1,
              'deform': 'synthetic'}
    out = tmp_path / 'eval'
    evaluate(DATASETS / 'tno', random_checkpoint, out, max_pairs=1, figures=1, **kwargs)
    assert len(list((out / 'figures').glob('*.png'))) == 2
    (out / 'figures' / 'notes.txt').write_text('kept')
    result = evaluate(DATASETS / 'tno', random_checkpoint, out, max_pairs=1, figures=0,
                      **kwargs)
    assert not list((out / 'figures').glob('*.png'))
    assert (out / 'figures' / 'notes.txt').is_file()
    assert json.loads((out / 'metrics.json').read_text())['pairs'] == result['pairs']


def test_a_killed_evaluations_figures_folder_goes_with_the_next_run(random_checkpoint, tmp_path):
    """A SIGKILLed run left its '.figures.*.tmp' folder in --out, and every rerun kept it.

    A run killed while it wrote metrics.json left its temporary file, kept by every rerun.

    The next run into that --out removes the folders of runs that are gone, and only those:
    one a running evaluation holds, and the user's own files, stay.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from tarfuse_ros.evaluation import protocol
    out = tmp_path / 'eval'
    args = ['--data', str(DATASETS / 'roadscene'), '--split', 'all', '--weights',
            str(random_checkpoint), '--out', str(out), '--max-side', '96', '--no-progress',
            '--figures', '5', '--threads', '1']
    process = subprocess.Popen([sys.executable, '-m', 'tarfuse_ros.tools.evaluate', *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob('.figures.*.tmp/*.png')) and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGSTOP)  # no further pair meanwhile
        assert list(out.glob('.figures.*.tmp/*.png')), 'no figure written in 120 s'
    finally:
        process.kill()
        process.wait()
    [left] = out.glob('.figures.*.tmp')
    # Killed while it wrote metrics.json: its metrics.json.<hex>.tmp stayed for good.
    killed = subprocess.run(
        [sys.executable, '-c',
         'import os, sys; from tarfuse_ros.core.files import atomic_output\n'
         'with atomic_output(sys.argv[1]) as temporary:\n'
         '    temporary.write_text("{")\n'
         '    os.kill(os.getpid(), 9)\n', str(out / 'metrics.json')])
    assert killed.returncode == -signal.SIGKILL and list(out.glob('metrics.json.*.tmp'))
    (out / '.figures.mine').mkdir()  # the user's: not of the pattern
    running, claim = protocol._new_figures_folder(out)  # another evaluation, still running
    try:
        from tarfuse_ros.tools.evaluate import main
        assert main(args) == 0
        assert not left.exists() and running.is_dir() and (out / '.figures.mine').is_dir()
        assert len(list((out / 'figures').glob('*.png'))) == 10
    finally:
        os.close(claim)
    # Once its process is gone, the next run removes that one too.
    assert main([*args[:-4], '--figures', '0', '--threads', '1']) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        '.figures.mine', 'figures', 'metrics.json', 'report.md']


def test_an_interrupt_while_the_figures_move_in_leaves_all_of_one_evaluation(
        random_checkpoint, tmp_path, capsys):
    """SIGTERM while the new figures replaced the earlier ones left a mix of the two.

    Some earlier figures were deleted, some new ones moved in, the rest dropped, beside the
    earlier metrics.json. A real SIGTERM is sent as the second figure moves in: the results
    are now all of the new evaluation (exit status 130, saying so).
    """
    import shutil
    import signal
    import sys
    from tarfuse_ros.tools.evaluate import main
    out = tmp_path / 'out'
    args = ['--data', str(DATASETS / 'roadscene'), '--weights', str(random_checkpoint),
            '--no-progress', '--max-pairs', '2', '--max-side', '96', '--threads', '1',
            '--figures', '2', '--deform', 'synthetic', '--out', str(out)]
    assert main([*args, '--seed', '1']) == 0
    earlier = {path.name: path.read_bytes() for path in (out / 'figures').iterdir()}
    assert len(earlier) == 4
    moves = []

    def stop_at_the_second_move(frame, event, arg):
        if event == 'call' and frame.f_code is shutil.move.__code__:
            moves.append(frame)
            if len(moves) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    capsys.readouterr()
    sys.setprofile(stop_at_the_second_move)
    try:
        status = main([*args, '--seed', '2'])
    finally:
        sys.setprofile(None)
    err = capsys.readouterr().err
    assert len(moves) == 4 and status == 130, err
    assert ('tarfuse-eval: interrupted once the evaluation was complete: wrote '
            f"{out / 'metrics.json'}, report.md and the figures") in err, err
    after = {path.name: path.read_bytes() for path in (out / 'figures').iterdir()}
    assert sorted(after) == sorted(earlier)
    assert [name for name in after if after[name] == earlier[name]] == []
    assert json.loads((out / 'metrics.json').read_text())['seed'] == 2
    assert sorted(path.name for path in out.iterdir()) == ['figures', 'metrics.json',
                                                           'report.md']


def test_a_file_system_without_flock_is_evaluated_on_with_a_warning(tmp_path, caplog):
    """Where flock fails (some network and overlay mounts), --out was refused.

    The run's figures folder could not be claimed: 'error: --out ... cannot be created (None):
    give a folder', a folder that was there and writable. It now goes on unclaimed and says
    what that costs. A descriptor opened with O_PATH is one that flock refuses (EBADF), as
    such a file system does; one that another evaluation holds stays refused.
    """
    from tarfuse_ros.evaluation import protocol
    folder = tmp_path / '.figures.0123abcd.tmp'
    folder.mkdir()
    with caplog.at_level(logging.WARNING, logger='tarfuse-eval'):
        assert protocol._claim_figures(folder, os.open(folder, os.O_PATH)) is None
    assert (f'--out {tmp_path}: its file system cannot lock files (flock: Bad file descriptor); '
            f'the evaluation goes on without the lock, but folders .figures.*.tmp that killed '
            f'runs leave there are not removed: delete them when no evaluation runs into this '
            f'--out') in caplog.text, caplog.text
    claim = protocol._claim_figures(folder, os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
    try:
        with pytest.raises(BlockingIOError):
            protocol._claim_figures(folder, os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
    finally:
        os.close(claim)


def test_an_evaluation_never_replaces_a_report_or_metrics_it_did_not_write(
        random_checkpoint, tmp_path, capsys):
    """A report.md or metrics.json that no evaluation wrote is refused, not replaced.

    --out in a folder holding the user's own report.md (or metrics.json) deleted it without a
    word; a folder named report.md raised IsADirectoryError after the model had run.
    """
    from tarfuse_ros.tools.evaluate import main
    args = ['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
            str(random_checkpoint), '--no-progress', '--max-pairs', '1', '--max-side', '96',
            '--threads', '1', '--figures', '0']
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'report.md').write_text('# My notes\n')
    (mine / 'metrics.json').write_text('{"accuracy": 0.9}\n')
    assert main([*args, '--out', str(mine)]) == 2
    err = capsys.readouterr().err
    assert (f"tarfuse-eval: error: --out '{mine}' holds metrics.json and report.md, which no "
            f'evaluation wrote and this one would replace') in err, err
    assert (mine / 'report.md').read_text() == '# My notes\n'
    assert (mine / 'metrics.json').read_text() == '{"accuracy": 0.9}\n'
    assert sorted(path.name for path in mine.iterdir()) == ['metrics.json', 'report.md']
    folder = tmp_path / 'folder'
    (folder / 'report.md').mkdir(parents=True)
    assert main([*args, '--out', str(folder)]) == 2
    err = capsys.readouterr().err
    assert 'holds report.md, which no evaluation wrote' in err and 'Traceback' not in err, err
    # An earlier evaluation's own files are replaced, as before.
    ours = tmp_path / 'ours'
    assert main([*args, '--out', str(ours)]) == 0
    assert main([*args, '--out', str(ours)]) == 0
    assert (ours / 'report.md').read_text().startswith('# TarFuse evaluation\n')


def test_evaluate_rejects_bad_requests(random_checkpoint, tmp_path, capsys):
    from tarfuse_ros.tools.evaluate import main
    code = main(['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
                 str(random_checkpoint), '--out', str(tmp_path), '--deform', 'dataset',
                 '--no-progress'])
    assert code == 2
    assert 'ground-truth field' in capsys.readouterr().err
    code = main(['--data', str(tmp_path / 'missing'), '--weights', str(random_checkpoint),
                 '--out', str(tmp_path)])
    assert code == 2
    (tmp_path / 'file').write_text('not a folder')
    # A file, or a name found nowhere, said "not found ...; set data.root or TARFUSE_SHARED"
    # (data.root is a training setting; the file was there).
    for data_arg, words in ((tmp_path / 'file', 'is a file, not a data set folder: a data set '
                                                'folder holds ir/ and vi/'),
                            ('no_such_set', "data set 'no_such_set' not found")):
        code = main(['--data', str(data_arg), '--weights', str(random_checkpoint),
                     '--out', str(tmp_path / 'never')])
        err = capsys.readouterr().err
        assert code == 2 and words in err and 'data.root' not in err, err
    for out in (tmp_path / 'file', tmp_path / 'file' / 'eval'):
        code = main(['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
                     str(random_checkpoint), '--out', str(out), '--no-progress'])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--out '{out}'" in err and 'give a folder' in err and 'Traceback' not in err
    # A refused request leaves no (empty) output folder behind.
    for extra in (['--split', 'no_such_split'], ['--prior', str(tmp_path / 'file')]):
        code = main(['--data', str(DATASETS / 'tno'), '--weights', str(random_checkpoint),
                     '--out', str(tmp_path / 'never'), '--no-progress', *extra])
        assert code == 2 and not (tmp_path / 'never').exists(), extra
    # Nor does a prior for another aspect ratio (refused at the first pair, it left an empty
    # figures/ folder; now refused before the model loads).
    from tarfuse_ros.core.prior import make_prior, write_prior_yaml
    other_rig = tmp_path / 'other_rig.yaml'
    write_prior_yaml(other_rig, make_prior(np.eye(3), (320, 320), (320, 320)))
    code = main(['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
                 str(random_checkpoint), '--out', str(tmp_path / 'never'), '--no-progress',
                 '--max-pairs', '1', '--threads', '1', '--prior', str(other_rig)])
    err = capsys.readouterr().err
    assert code == 2 and (f'--prior {other_rig} was made for images of IR 320x320, visible '
                          '320x320, and 1 of the 1 pairs has another aspect ratio') in err, err
    assert not (tmp_path / 'never').exists()


def test_a_figures_file_in_the_out_folder_is_named(random_checkpoint, tmp_path, capsys):
    """A file or a dangling link named figures in --out is named before the model loads.

    It was '--out X cannot be created (File exists)', though --out was there.
    """
    from tarfuse_ros.tools.evaluate import main
    args = ['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
            str(random_checkpoint), '--no-progress', '--max-side', '96', '--figures', '0']
    (tmp_path / 'file_there').mkdir()
    (tmp_path / 'file_there' / 'figures').write_text('my figures are elsewhere')
    (tmp_path / 'link_there').mkdir()
    (tmp_path / 'link_there' / 'figures').symlink_to(tmp_path / 'unmounted')
    for name, kind in (('file_there', 'a file'), ('link_there', 'a link to nothing')):
        out = tmp_path / name
        assert main([*args, '--out', str(out)]) == 2
        assert capsys.readouterr().err == (
            f"tarfuse-eval: error: --out '{out}' holds {kind} named figures, where the "
            'evaluation writes its figures folder: move it, or give another --out\n')
        assert sorted(path.name for path in out.iterdir()) == ['figures']
    # A link to a folder is one (figures on another disk).
    (tmp_path / 'unmounted').mkdir()
    assert main([*args, '--out', str(tmp_path / 'link_there')]) == 0


def test_fine_passes_reach_the_engine_and_are_recorded(random_checkpoint, tmp_path, capsys):
    """--fine-passes 0: the global stage runs none; metrics.json and the report say so."""
    from tarfuse_ros.tools.evaluate import main
    args = ['--data', str(DATASETS / 'tno'), '--split', 'all', '--no-progress', '--max-pairs',
            '1', '--max-side', '96', '--threads', '1', '--figures', '0']
    out = tmp_path / 'none'
    assert main([*args, '--weights', str(_shipped_weights()), '--out', str(out),
                 '--fine-passes', '0']) == 0, capsys.readouterr().err
    metrics = json.loads((out / 'metrics.json').read_text())
    assert (metrics['fine_passes'], metrics['global_fine_passes']) == (0, 0)
    assert 'with 0 fine passes in the global stage (--fine-passes)' in (
        out / 'report.md').read_text()
    # Without the option: the checkpoint's own (4 in the shipped model), no word in the report.
    shipped = tmp_path / 'shipped'
    assert main([*args, '--weights', str(_shipped_weights()), '--out', str(shipped)]) == 0
    metrics = json.loads((shipped / 'metrics.json').read_text())
    assert (metrics['fine_passes'], metrics['global_fine_passes']) == (None, 4)
    assert 'fine passes' not in (shipped / 'report.md').read_text()
    capsys.readouterr()
    # Out of range, or passes for a checkpoint without a fine stage: refused, nothing written.
    for value, weights, words in (
            ('9', _shipped_weights(), '--fine-passes must be an integer in [0, 8]'),
            ('2', random_checkpoint, '2 fine passes asked for, but this checkpoint has no fine '
                                     'stage')):
        code = main([*args, '--weights', str(weights), '--out', str(tmp_path / 'never'),
                     '--fine-passes', value])
        err = capsys.readouterr().err
        assert code == 2 and words in err, err
        assert not (tmp_path / 'never').exists()


def test_fine_passes_without_a_global_stage_are_reported_as_without_effect(tmp_path, capsys):
    # The medical model has no orientation global stage: with --fine-passes 0 the report read
    # 'with 0 fine passes in the global stage', as if the option had acted.
    from tarfuse_ros.core.paths import share_dir
    from tarfuse_ros.tools.evaluate import main
    out = tmp_path / 'medical'
    assert main(['--data', str(DATASETS / 'tno'), '--split', 'all', '--no-progress',
                 '--max-pairs', '1', '--max-side', '96', '--threads', '1', '--figures', '0',
                 '--weights', str(share_dir() / 'models' / 'tarfuse_medical.safetensors'),
                 '--out', str(out), '--fine-passes', '0']) == 0, capsys.readouterr().err
    report = (out / 'report.md').read_text()
    assert ' (--fine-passes 0 had no effect: the model has no orientation global stage)' in (
        report), report
    assert 'fine passes in the global stage' not in report, report
    metrics = json.loads((out / 'metrics.json').read_text())
    assert (metrics['fine_passes'], metrics['global_fine_passes']) == (0, 0)
    assert metrics['orientation_global_stage'] is False


def test_evaluate_names_its_own_option_when_the_gpu_is_missing(random_checkpoint, tmp_path,
                                                               capsys):
    # --device cuda without a GPU ended "use device 'cpu' or allow the CPU fallback", an
    # option tarfuse-eval does not have.
    from tarfuse_ros.tools.evaluate import main
    code = main(['--data', str(DATASETS / 'tno'), '--split', 'all', '--weights',
                 str(random_checkpoint), '--out', str(tmp_path / 'never'), '--no-progress',
                 '--device', 'cuda:99'])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tarfuse-eval: error: device 'cuda:99' was requested")
    assert err.endswith('; use --device cpu\n') and 'fallback' not in err, err
    assert not (tmp_path / 'never').exists()


def test_evaluate_names_its_own_option_for_frames_above_4k(random_checkpoint, tmp_path,
                                                           capsys):
    # A pair the network would run above 3840x2160 was refused naming input_max_long_side,
    # the engine's argument, not tarfuse-eval's --input-max-long-side.
    from tarfuse_ros.tools.evaluate import main
    for name in ('ir', 'vi'):
        (tmp_path / 'large' / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / 'large' / name / 'a.png'), np.full((2160, 3848), 90, np.uint8))
    for flags, advice in (([], 'set --input-max-long-side (e.g. 1920)'),
                          (['--input-max-long-side', '4096'],
                           'lower --input-max-long-side (now 4096; e.g. 1920)')):
        code = main(['--data', str(tmp_path / 'large'), '--split', 'all', '--weights',
                     str(random_checkpoint), '--out', str(tmp_path / 'never'), '--no-progress',
                     '--deform', 'none', '--threads', '1', *flags])
        err = capsys.readouterr().err
        assert code == 2 and err == (
            f'tarfuse-eval: error: the visible frame 3848x2160 would run the network: 8,311,680 '
            f'pixels, more than the 8,294,400 (3840x2160) it runs at (4.8-5.9 GB of memory '
            f'there); {advice} to run large frames shrunk\n'), err
        assert not (tmp_path / 'never').exists()


def test_evaluate_refuses_a_missing_labels_folder(random_checkpoint, tmp_path, capsys):
    # It evaluated without detection metrics ("No labels in this split") and exited 0.
    from tarfuse_ros.tools.evaluate import main
    roadscene = DATASETS / 'roadscene'
    out = tmp_path / 'eval'
    for labels in ('labels_vii', str(tmp_path / 'no_labels')):
        code = main(['--data', str(roadscene), '--labels', labels, '--weights',
                     str(random_checkpoint), '--out', str(out), '--max-pairs', '1',
                     '--max-side', '96', '--figures', '0', '--no-progress', '--threads', '1'])
        captured = capsys.readouterr()
        assert code == 2, captured.err
        folder = roadscene / labels
        assert captured.err == (f"tarfuse-eval: error: --labels '{labels}': '{folder}' does not "
                                'exist; name a label folder of the data set (e.g. labels_vi) or '
                                'leave --labels out\n')
        assert not out.exists()


def test_evaluate_refuses_a_labels_folder_without_label_files(
        random_checkpoint, tmp_path, capsys):
    """--labels ir (an image folder of the set) or an empty folder: no detection metrics, exit 0.

    The evaluation ran and said nothing of the labels it had been asked to score against.
    """
    import shutil
    from tarfuse_ros.tools.evaluate import main
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(DATASETS / 'roadscene', roadscene)
    (roadscene / 'labels_empty').mkdir()
    (roadscene / 'labels_empty' / 'classes.txt').write_text('person\n')
    out = tmp_path / 'eval'
    for labels, held in (('ir', f"{len(list((roadscene / 'ir').iterdir()))} images and no"),
                         ('labels_empty', 'no')):
        code = main(['--data', str(roadscene), '--labels', labels, '--weights',
                     str(random_checkpoint), '--out', str(out), '--max-pairs', '1',
                     '--max-side', '96', '--figures', '0', '--no-progress', '--threads', '1'])
        captured = capsys.readouterr()
        assert code == 2, captured.err
        assert captured.err == (
            f"tarfuse-eval: error: --labels '{labels}': '{roadscene / labels}' holds {held} label "
            'file (<stem>.txt); name a label folder of the data set (e.g. labels_vi) or leave '
            '--labels out\n')
        assert not out.exists()


def test_evaluate_refuses_a_label_class_id_beyond_the_classes_before_any_pair(
        random_checkpoint, tmp_path, capsys):
    # A class id that classes.txt (without one: the model) does not name was an IndexError
    # traceback at that pair, after the pairs before it had run.
    import shutil
    from tarfuse_ros.tools.evaluate import main
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(DATASETS / 'roadscene', roadscene)
    stem = data.read_split(roadscene, 'test')[-1]
    with open(roadscene / 'labels' / f'{stem}.txt', 'a') as handle:
        handle.write('7 0.5 0.5 0.1 0.1\n')
    for classes_txt in (True, False):
        if not classes_txt:
            (roadscene / 'labels' / 'classes.txt').unlink()
        out = tmp_path / f'eval_{classes_txt}'
        code = main(['--data', str(roadscene), '--weights', str(random_checkpoint), '--out',
                     str(out), '--max-side', '96', '--figures', '0', '--no-progress',
                     '--threads', '1'])
        captured = capsys.readouterr()
        assert code == 2, captured.err
        assert captured.err == (
            f"tarfuse-eval: error: '{roadscene / 'labels' / stem}.txt' line "
            f"{len((roadscene / 'labels' / f'{stem}.txt').read_text().splitlines())} "
            "('7 0.5 0.5 0.1 0.1'): class id 7 is none of the 3 classes "
            "['person', 'bicycle', 'car']\n")
        assert not out.exists()


def test_evaluate_refuses_a_folder_where_a_label_file_or_class_list_would_be(
        random_checkpoint, tmp_path, capsys):
    """A folder named like a pair's label file (or classes.txt) was taken for no file.

    The pair was scored as unlabelled, its boxes left out of mAP without a word (and a
    classes.txt folder in the label folder: the ids read by the set's other list).
    """
    import shutil
    from tarfuse_ros.tools.evaluate import main
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(DATASETS / 'roadscene', roadscene)
    stem = data.read_split(roadscene, 'test')[0]
    labels = roadscene / 'labels'
    args = ['--data', str(roadscene), '--weights', str(random_checkpoint), '--max-side', '96',
            '--figures', '0', '--no-progress', '--threads', '1', '--out']
    for path, what in ((labels / f'{stem}.txt', f"label file of pair '{stem}'"),
                       (labels / 'classes.txt', 'class list (classes.txt)')):
        path.unlink()
        path.mkdir()
        assert main([*args, str(tmp_path / 'never')]) == 2
        assert capsys.readouterr().err == (
            f"tarfuse-eval: error: '{path}' is a folder, where the {what} would be: make it "
            f"that file, or move it out of '{labels}'\n")
        path.rmdir()
        assert not (tmp_path / 'never').exists()
    (roadscene / 'classes.txt').write_text('person\nbicycle\ncar\n')
    assert main([*args, str(tmp_path / 'out')]) == 0  # stem unlabelled: no label file at all


def test_a_folder_given_as_the_split_is_named_as_a_folder(tmp_path, capsys):
    """--split DIR (or a split name that is a folder of the set) said 'not found'.

    The folder was there: the message now says it is a folder where a list file is expected.
    """
    from tarfuse_ros.tools.evaluate import main
    roadscene = DATASETS / 'roadscene'
    for split, folder in ((str(roadscene / 'labels'), roadscene / 'labels'),
                          ('ir', roadscene / 'ir')):
        assert main(['--data', str(roadscene), '--split', split, '--out',
                     str(tmp_path / 'never')]) == 2
        assert capsys.readouterr().err == (
            f"tarfuse-eval: error: split '{split}': '{folder}' is a folder, not a list file: "
            f"give a list file (one stem a line) or a split of '{roadscene}': det_labelled, "
            'test, train, all, misaligned\n')
    assert not (tmp_path / 'never').exists()


# --- sets without an aligned IR (shipped weights) -----------------------------------------

def test_evaluate_real_unregistered_pairs_skips_aligned_ir_metrics(tmp_path, capsys):
    from tarfuse_ros.tools.evaluate import main
    out = tmp_path / 'cvc14'
    # --stored-ir auto takes the shared CVC-14 pairs as unregistered (it deformed their IR and
    # scored against it as if it were aligned).
    code = main(['--data', str(DATASETS / 'cvc14_misaligned'), '--split', 'all',
                 '--out', str(out), '--max-pairs', '2',
                 '--max-side', '160', '--no-progress', '--figures', '0', '--threads', '1'])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / 'metrics.json').read_text())
    report = (out / 'report.md').read_text()
    assert result['stored_ir'] == 'unregistered'
    assert result['deformation_sources'] == {'dataset': 0, 'synthetic': 0, 'none': 2}
    reg = result['registration']
    for values in (reg, reg['unregistered'], result['baselines']['ecc_average']['registration']):
        assert values['MSE'] is None and values['NCC'] is None and values['EPE'] is None
        assert -1 <= values['edge_alignment'] <= 1
    assert reg['epe_reduction'] is None
    assert reg['edge_alignment_better_than_unregistered_fraction'] in (0.0, 0.5, 1.0)
    assert reg['landmark_pairs'] == 0
    # Only the fusion metrics of the fused image alone are computed.
    assert {k for k, v in result['fusion'].items() if v is not None} == {'EN', 'SD', 'SF', 'AG'}
    assert 'NOT aligned' in report and '| TarFuse | n/a | n/a | n/a | ' in report
    assert 'targets' not in report
    # It said 'EPE reduction vs the unregistered input: n/a %.'
    assert '\nEPE reduction vs the unregistered input: n/a. Edge alignment above ' in report

    code = main(['--data', str(DATASETS / 'cvc14_misaligned'), '--split', 'all',
                 '--stored-ir', 'unregistered', '--deform', 'synthetic', '--out',
                 str(tmp_path / 'refused'), '--no-progress'])
    assert code == 2 and 'use --deform none' in capsys.readouterr().err


def test_evaluate_landmark_errors_follow_the_flow_convention(tmp_path):
    from tarfuse_ros.evaluation.inputs import load_landmarks
    from tarfuse_ros.evaluation.protocol import evaluate
    murf = DATASETS / 'murf_landmark_pairs'
    split_file = tmp_path / 'rgbir.txt'
    split_file.write_text('rgbir_FLIR_04215\n')
    result = evaluate(murf, _shipped_weights(), tmp_path / 'murf', split=str(split_file),
                      figures=0, progress=False, threads=1)
    assert result['stored_ir'] == 'unregistered'  # auto: the set has landmarks/
    reg = result['registration']
    assert reg['landmark_pairs'] == 1
    # Zero flow at native size: the mean distance of the stored landmark pairs.
    ir_points, vi_points = load_landmarks(murf, 'rgbir_FLIR_04215')
    before = float(np.linalg.norm(ir_points - vi_points, axis=1).mean())
    assert reg['unregistered']['landmark_error_px'] == pytest.approx(before, rel=1e-9)
    assert reg['landmark_error_px'] >= 0
    # ECC registers this RGB-IR pair well; with the flow read the wrong way round
    # (v - flow(v)) its error would grow instead.
    ecc = result['baselines']['ecc_average']['registration']
    assert ecc['landmark_error_px'] < 0.5 * before
    report = (tmp_path / 'murf' / 'report.md').read_text()
    assert 'landmark error (px)' in report

    # The same pair with the IR stored at a third of its size, evaluated at half the visible
    # size: IR landmarks follow the IR's resize to the visible frame, both the downscaling.
    small = tmp_path / 'small_ir'
    for folder in ('ir', 'vi', 'landmarks'):
        (small / folder).mkdir(parents=True)
    ir, vi = data.load_pair(murf, 'rgbir_FLIR_04215')
    factor = np.array([177 / ir.shape[1], 92 / ir.shape[0]])
    small_ir = cv2.resize(ir, (177, 92), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(small / 'ir' / 'p.png'), small_ir)
    cv2.imwrite(str(small / 'vi' / 'p.png'), vi)
    rows = np.hstack([(ir_points + 0.5) * factor - 0.5, vi_points])
    np.savetxt(small / 'landmarks' / 'p.txt', rows, header='x_ir y_ir x_vi y_vi')
    result = evaluate(small, _shipped_weights(), tmp_path / 'small_eval', split='all',
                      max_side=265, figures=0, progress=False, threads=1)
    height, width = result['per_pair'][0]['size']
    scale = np.array([width / vi.shape[1], height / vi.shape[0]])
    expected = float(np.linalg.norm((ir_points - vi_points) * scale, axis=1).mean())
    reg = result['registration']
    assert reg['unregistered']['landmark_error_px'] == pytest.approx(expected, rel=1e-9)
    assert result['baselines']['ecc_average']['registration']['landmark_error_px'] \
        < 0.5 * expected

    bad = tmp_path / 'bad'
    (bad / 'landmarks').mkdir(parents=True)
    (bad / 'landmarks' / 'x.txt').write_text('1 2 3\n')
    with pytest.raises(ValueError, match='x_ir y_ir x_vi y_vi'):
        load_landmarks(bad, 'x')
    assert load_landmarks(bad, 'missing') is None


def _shipped_weights():
    from tarfuse_ros.core.paths import default_weights_path
    return default_weights_path()


def test_options_are_checked_before_anything_runs():
    from tarfuse_ros.evaluation.options import EvalOptions
    assert EvalOptions().split == 'test' and EvalOptions(max_side=64).max_side == 64
    for bad, message in (({'deform': 'rigid'}, '--deform'), ({'stored_ir': 'x'}, '--stored-ir'),
                         ({'max_pairs': 0}, '--max-pairs'), ({'max_side': 16}, '--max-side'),
                         ({'threads': 0}, '--threads'), ({'figures': -1}, '--figures'),
                         # named as options (the engine's error named its own arguments)
                         ({'conf': 2.0}, r'--conf must be a number in \[0, 1\], got 2.0'),
                         ({'iou': float('nan')}, '--iou must be'),
                         ({'fine_passes': 9}, '--fine-passes must be'),
                         ({'fine_passes': True}, '--fine-passes must be'),
                         ({'fine_passes': -2}, '--fine-passes must be')):
        with pytest.raises(ValueError, match=message):
            EvalOptions(**bad)


def test_fine_passes_minus_one_or_left_out_is_the_models_own_on_every_tool(tmp_path, capsys):
    """--fine-passes 9 was refused with '(0: no fine pass; unset: the checkpoint's own)'.

    'unset' where the user had typed a value, on tarfuse-fuse, tarfuse-eval and
    tarfuse-export; -1, the node's registration.fine_passes for the model's own count, was
    refused with the same words. -1 now asks for the model's own count, as no option does.
    """
    from tarfuse_ros.evaluation.options import EvalOptions
    from tarfuse_ros.tools import evaluate, export, fuse
    ir, vi = sorted((DATASETS / 'roadscene' / 'ir').iterdir())[0], \
        sorted((DATASETS / 'roadscene' / 'vi').iterdir())[0]
    tools = ((evaluate, ['--data', str(DATASETS / 'roadscene'), '--out', str(tmp_path / 'e')]),
             (export, [str(_shipped_weights()), '--out', str(tmp_path / 'x.onnx')]),
             (fuse, ['--ir', str(ir), '--visible', str(vi), '--out', str(tmp_path / 'f')]))
    for tool, required in tools:
        parser = tool.build_parser()
        assert parser.parse_args(required).fine_passes is None
        assert parser.parse_args([*required, '--fine-passes', '-1']).fine_passes is None
        assert parser.parse_args([*required, '--fine-passes', '2']).fine_passes == 2
        helped = ' '.join(parser.format_help().split())
        assert '-1 or left out: the' in helped and 'unset' not in helped, helped
        assert tool.main([*required, '--fine-passes', '9']) == 2
        err = capsys.readouterr().err
        assert ('--fine-passes must be an integer in [0, 8] (0: no fine pass; -1, as leaving '
                "the option out: the model's own count), got 9") in err, err
        with pytest.raises(SystemExit):
            parser.parse_args([*required, '--fine-passes', 'all'])
        assert ('argument --fine-passes: an integer in [0, 8] (0: no fine pass; -1, as leaving '
                "the option out: the model's own count), got 'all'") in capsys.readouterr().err
    assert EvalOptions(fine_passes=-1).fine_passes is None
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('size, max_side, expected', [
    ((480, 640), 320, (240, 320)),    # the longer side at max_side, aspect kept
    ((480, 640), 1024, (480, 640)),   # never enlarged
    ((32, 256), 64, (16, 128)),       # a strip stops at the engine's 16 px shorter side
    ((256, 48), 32, (85, 16)),        # (the old 32 px clamp gave 32x64 and 32x32)
])
def test_max_side_keeps_the_aspect_ratio(size, max_side, expected):
    from tarfuse_ros.evaluation.inputs import prepare
    height, width = size
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (height, width), np.uint8)
    vi = rng.integers(0, 256, (height, width, 3), np.uint8)
    pair = prepare(ir, vi, max_side=max_side)
    assert pair.vi.shape[:2] == expected and pair.ir.shape == expected
    assert pair.scale == pytest.approx((expected[1] / width, expected[0] / height))
    assert pair.scale[0] == pytest.approx(pair.scale[1], rel=0.04)
