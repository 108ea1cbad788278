"""tarfuse-fuse on image files, folders, two videos of different frame rates and bad inputs."""

import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.paths import default_weights_path, share_dir
from tarfuse_ros.tools import fuse
import torch

SAMPLES = share_dir() / 'samples'
STEMS = ('FLIR_00122', 'FLIR_00993', 'FLIR_04229', 'FLIR_04968', 'FLIR_05016')
WEIGHTS = default_weights_path()
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f'no shipped weights at {WEIGHTS}')


@pytest.fixture(scope='module', autouse=True)
def restore_thread_counts():
    """Give the test run back the process-wide thread counts that the tool (a program) sets."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


@pytest.fixture(scope='module')
def engine():
    """Load the shipped model as tarfuse-fuse does by default."""
    torch.set_num_threads(1)  # as tarfuse-fuse --threads 1 does
    return FusionEngine(WEIGHTS, device='cpu')


def _run(capsys, *args):
    """Run ``tarfuse-fuse ARGS --threads 1`` in this process: (exit status, stdout, stderr)."""
    status = fuse.main([str(a) for a in args] + ['--threads', '1'])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _max_diff(a, b):
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_usage_errors_exit_2_and_say_why(tmp_path, capsys):
    vi = SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    status, _, err = _run(capsys, '--ir', tmp_path / 'missing.png', '--visible', vi,
                          '--out', tmp_path / 'out')
    assert status == 2 and 'missing.png' in err and 'does not exist' in err
    status, _, err = _run(capsys, '--ir', SAMPLES / 'ir', '--visible', vi, '--out', tmp_path)
    assert status == 2 and 'a folder' in err and 'an image file' in err
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    shutil.copy(vi, tmp_path / 'a' / 'one.jpg')
    shutil.copy(vi, tmp_path / 'b' / 'two.jpg')
    status, _, err = _run(capsys, '--ir', tmp_path / 'a', '--visible', tmp_path / 'b',
                          '--out', tmp_path / 'out')
    assert status == 2 and 'no image stem' in err
    # The same input twice fused each image with itself (exit 0).
    for same in (vi, tmp_path / 'a'):
        status, _, err = _run(capsys, '--ir', same, '--visible', same, '--out', tmp_path / 'out')
        assert status == 2 and '--ir and --visible are the same' in err, err
    ir = SAMPLES / 'ir' / f'{STEMS[0]}.jpg'
    status, _, err = _run(capsys, '--ir', ir, '--visible', vi, '--out', tmp_path / 'out',
                          '--weights', tmp_path / 'none.safetensors')
    assert status == 2 and 'none.safetensors' in err
    assert not (tmp_path / 'out').exists()
    (tmp_path / 'file').write_text('not a folder')
    status, _, err = _run(capsys, '--ir', ir, '--visible', vi, '--out', tmp_path / 'file')
    assert status == 2 and "--out '" in err and 'is a file; give a folder' in err
    assert 'Traceback' not in err
    status, _, err = _run(capsys, '--ir', ir, '--visible', vi, '--out', tmp_path / 'out',
                          '--weights', tmp_path / 'model.onnx')
    assert status == 2 and 'an ONNX file' in err and '.safetensors' in err
    assert not (tmp_path / 'out').exists()


def test_ir_offset_for_images_or_folders_is_a_usage_error(tmp_path, capsys):
    """It pairs videos by time; images and folders, paired by name, ran without it, exit 0."""
    ir, vi = SAMPLES / 'ir' / f'{STEMS[0]}.jpg', SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    for inputs in ((ir, vi), (SAMPLES / 'ir', SAMPLES / 'vi')):
        status, _, err = _run(capsys, '--ir', inputs[0], '--visible', inputs[1],
                              '--out', tmp_path / 'out', '--ir-offset-ms', '250')
        assert status == 2 and '--ir-offset-ms places the IR video' in err, err
    assert not (tmp_path / 'out').exists()


def test_a_missing_gpu_names_the_option_to_use_instead(tmp_path, capsys):
    # --device cuda without a GPU ended "use device 'cpu' or allow the CPU fallback", an
    # option tarfuse-fuse does not have.
    ir, vi = (SAMPLES / folder / f'{STEMS[0]}.jpg' for folder in ('ir', 'vi'))
    status, _, err = _run(capsys, '--ir', ir, '--visible', vi, '--out', tmp_path / 'out',
                          '--device', 'cuda:99')
    assert status == 2 and err.startswith("tarfuse-fuse: error: device 'cuda:99' was requested")
    assert err.endswith('; use --device cpu\n') and 'fallback' not in err, err
    assert not (tmp_path / 'out').exists()


def test_detections_from_a_model_without_detection_head_are_refused(tmp_path, capsys):
    # Empty detection files from a head-less model would read as "nothing found".
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    ir, vi = (SAMPLES / folder / f'{STEMS[0]}.jpg' for folder in ('ir', 'vi'))
    status, _, err = _run(capsys, '--ir', ir, '--visible', vi, '--out', tmp_path / 'out',
                          '--weights', medical, '--detections')
    assert status == 2, err
    assert '--detections' in err and 'no detection head' in err and 'Traceback' not in err
    assert not (tmp_path / 'out').exists()


def test_detections_never_overwrite_label_files_it_did_not_write(tmp_path, capsys):
    # --out a data set folder: its human labels/<stem>.txt (and classes.txt) were replaced by
    # the model's detections without a word (exit 0).
    out = tmp_path / 'dataset'
    (out / 'labels').mkdir(parents=True)
    human = out / 'labels' / f'{STEMS[0]}.txt'
    human.write_text('0 0.5 0.5 0.1 0.2\n')
    (out / 'labels' / 'classes.txt').write_text('people\n')
    status, stdout, err = _run(capsys, '--ir', SAMPLES / 'ir' / f'{STEMS[0]}.jpg', '--visible',
                               SAMPLES / 'vi' / f'{STEMS[0]}.jpg', '--out', out, '--detections')
    assert status == 2 and not stdout, err
    assert err == (f"tarfuse-fuse: error: --detections would write into '{out / 'labels'}', "
                   f'which holds 1 label file(s) tarfuse-fuse did not write ({STEMS[0]}.txt; '
                   'e.g. human labels); give another --out\n')
    assert human.read_text() == '0 0.5 0.5 0.1 0.2\n'
    assert (out / 'labels' / 'classes.txt').read_text() == 'people\n'
    assert sorted(p.name for p in out.iterdir()) == ['labels']


def test_single_pair_outputs_equal_the_engine(tmp_path, capsys, engine):
    ir_path = SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{STEMS[0]}.png'
    vi_path = SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    out = tmp_path / 'out'
    status, stdout, _ = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                             '--registered', '--flow', '--detections')
    assert status == 0, stdout
    assert '1 pair(s) in, 1 fused out, 0 failed' in stdout
    expected = engine.infer(_read(ir_path), _read(vi_path))
    fused = _read(out / 'fused' / f'{STEMS[0]}.png')
    assert fused.shape == _read(vi_path).shape
    assert _max_diff(fused, expected.fused) <= 1
    assert _max_diff(_read(out / 'registered' / f'{STEMS[0]}.png'), expected.registered_ir) <= 1
    flow = np.load(out / 'flow' / f'{STEMS[0]}.npy')
    assert flow.dtype == np.float32 and flow.shape == fused.shape[:2] + (2,)
    np.testing.assert_allclose(flow, expected.flow_px, atol=0.02)
    assert _read(out / 'flow' / f'{STEMS[0]}.png').shape == fused.shape
    record = json.loads((out / 'detections' / f'{STEMS[0]}.json').read_text())
    assert (record['width'], record['height']) == (fused.shape[1], fused.shape[0])
    assert [d['class_name'] for d in record['detections']] == [
        d.class_name for d in expected.detections]
    assert [d['score'] for d in record['detections']] == pytest.approx(
        [d.score for d in expected.detections], abs=1e-3)
    for got, det in zip(record['detections'], expected.detections):
        assert got['xyxy'] == pytest.approx([det.x1, det.y1, det.x2, det.y2], abs=0.05)
    lines = (out / 'labels' / f'{STEMS[0]}.txt').read_text().splitlines()
    assert len(lines) == len(expected.detections)
    for line, det in zip(lines, expected.detections):
        cls, cx, cy, w, h = line.split()
        height, width = fused.shape[:2]
        assert int(cls) == det.class_id
        assert float(cx) * width == pytest.approx((det.x1 + det.x2) / 2, abs=0.01)
        assert float(h) * height == pytest.approx(det.y2 - det.y1, abs=0.01)
    assert (out / 'labels' / 'classes.txt').read_text().split() == list(engine.class_names)


def test_no_scale_search_runs_the_single_scale_engine(tmp_path, capsys):
    ir_path = SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{STEMS[1]}.png'
    vi_path = SAMPLES / 'vi' / f'{STEMS[1]}.jpg'
    out = tmp_path / 'out'
    status, stdout, _ = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                             '--flow', '--no-scale-search')
    assert status == 0, stdout
    single = FusionEngine(WEIGHTS, device='cpu', scale_search=False)
    assert single.config.global_scale_candidates == (1.0,)
    expected = single.infer(_read(ir_path), _read(vi_path))
    np.testing.assert_allclose(np.load(out / 'flow' / f'{STEMS[1]}.npy'), expected.flow_px,
                               atol=0.02)


def test_fine_passes_reach_the_engine_and_out_of_range_is_a_usage_error(tmp_path, capsys):
    ir_path = SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{STEMS[1]}.png'
    vi_path = SAMPLES / 'vi' / f'{STEMS[1]}.jpg'
    out = tmp_path / 'out'
    status, stdout, _ = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                             '--flow', '--fine-passes', '0')
    assert status == 0, stdout
    pair = _read(ir_path), _read(vi_path)
    without = FusionEngine(WEIGHTS, device='cpu', fine_passes=0)
    assert without.fine_passes == 0
    flow = np.load(out / 'flow' / f'{STEMS[1]}.npy')
    np.testing.assert_allclose(flow, without.infer(*pair).flow_px, atol=0.02)
    shipped = FusionEngine(WEIGHTS, device='cpu').infer(*pair).flow_px
    assert np.abs(flow - shipped).mean() > 0.05, np.abs(flow - shipped).mean()
    for value in ('9', '-2'):
        status, stdout, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out',
                                   tmp_path / 'refused', '--fine-passes', value)
        assert status == 2 and not stdout, err
        assert ('--fine-passes must be an integer in [0, 8] (0: no fine pass; -1, as leaving '
                f"the option out: the model's own count), got {value}") in err, err
    assert not (tmp_path / 'refused').exists()
    # A model whose global stage has no fine stage (the medical one: no orientation stage).
    status, _, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out',
                          tmp_path / 'medical', '--fine-passes', '2', '--weights',
                          share_dir() / 'models' / 'tarfuse_medical.safetensors')
    assert status == 2, err
    assert 'cannot start the model with these options: 2 fine passes asked for, but this ' \
        'checkpoint has no fine stage' in err, err
    # 0 passes and no scale search run on it, and say they change nothing (they did not).
    status, _, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out',
                          tmp_path / 'medical0', '--fine-passes', '0', '--no-scale-search',
                          '--weights', share_dir() / 'models' / 'tarfuse_medical.safetensors')
    assert status == 0, err
    assert ('tarfuse-fuse: note: --no-scale-search and --fine-passes had no effect: the model '
            'has no orientation global stage') in err, err


def _one_rig_folder(tmp_path):
    """Write two sample pairs at one frame size (one rig's stream) as PNG folders.

    Returns ``(ir_dir, vi_dir, out, pairs)``: the folders, an output folder not yet made, and
    the pairs as read back (IR, visible).
    """
    ir_dir, vi_dir, out = tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'out'
    ir_dir.mkdir()
    vi_dir.mkdir()
    pairs = []
    for index, stem in enumerate(STEMS[:2]):
        ir = cv2.resize(_read(SAMPLES / 'ir' / f'{stem}.jpg'), (320, 256))
        vi = cv2.resize(_read(SAMPLES / 'vi' / f'{stem}.jpg'), (320, 256))
        cv2.imwrite(str(ir_dir / f'{index:04d}.png'), ir)
        cv2.imwrite(str(vi_dir / f'{index:04d}.png'), vi)
        pairs.append((_read(ir_dir / f'{index:04d}.png'), _read(vi_dir / f'{index:04d}.png')))
    return ir_dir, vi_dir, out, pairs


def test_global_every_keeps_the_first_fit_over_a_folder_of_one_rig(tmp_path, capsys):
    ir_dir, vi_dir, out, pairs = _one_rig_folder(tmp_path)
    status, stdout, _ = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                             '--flow', '--global-every', '1000')
    assert status == 0, stdout
    stream = FusionEngine(WEIGHTS, device='cpu', global_every=1000)
    expected = [stream.infer(*pair).flow_px for pair in pairs]
    alone = FusionEngine(WEIGHTS, device='cpu').infer(*pairs[1]).flow_px
    second = np.load(out / 'flow' / '0001.npy')
    np.testing.assert_allclose(second, expected[1], atol=0.02)
    assert np.abs(second - alone).mean() > 0.1  # the first pair's fit, not its own
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-window', '0')
    assert status == 2 and '--global-window must be an integer in [1, 1000], got 0' in err, err
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-every', '20000')  # said the engine's 'global_every'
    assert status == 2 and '--global-every must be an integer in [1, 10000], got 20000' in err, err
    # A model without the orientation global stage (the medical one) says why it refuses.
    medical = WEIGHTS.parent / 'tarfuse_medical.safetensors'
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--weights', medical, '--global-every', '5')
    assert status == 2 and 'cannot start the model with these options' in err, err
    assert 'global_stage False' in err and 'on device' not in err, err
    # Named as the options were given (it said 'global_every / global_window above 1 ...: leave
    # both at 1', and for --global-track 'leave global_track at 0').
    assert ('--global-every / --global-window above 1 need a checkpoint with the orientation '
            'global stage') in err and 'leave out --global-every and --global-window' in err, err
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--weights', medical, '--global-track', '5')
    assert status == 2 and ('--global-track needs a checkpoint with the orientation global '
                            'stage') in err and 'leave out --global-track' in err, err
    assert 'global_track' not in err, err


def test_global_track_refines_the_previous_map_over_a_folder_of_one_rig(tmp_path, capsys):
    ir_dir, vi_dir, out, pairs = _one_rig_folder(tmp_path)
    status, stdout, _ = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                             '--flow', '--global-track', '1000')
    assert status == 0, stdout
    assert ('global map tracked (--global-track 1000): 1 pair(s) tracked, 1 fitted in full (0 '
            'of which replaced the tracked map), 0 held (a constant image)') in stdout, stdout
    stream = FusionEngine(WEIGHTS, device='cpu', global_track=1000)
    expected = [stream.infer(*pair).flow_px for pair in pairs]
    assert stream.global_track_state()['tracked'] == 1
    second = np.load(out / 'flow' / '0001.npy')
    np.testing.assert_allclose(second, expected[1], atol=0.02)
    alone = FusionEngine(WEIGHTS, device='cpu').infer(*pairs[1]).flow_px
    assert np.abs(second - alone).mean() > 0.05  # tracked from the first map, not its own fit
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-track', '-1')
    assert status == 2 and ('--global-track must be an integer in [0, 10000] (0: off), '
                            'got -1') in err, err
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-track', '20000')  # refused before the model loads
    assert status == 2 and ('--global-track must be an integer in [0, 10000] (0: off), '
                            'got 20000') in err, err
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-track', '5', '--global-every', '5')
    assert status == 2 and ('--global-track 5 tracks the map pair by pair, and --global-every / '
                            '--global-window above 1 hold a median of fits') in err, err
    status, _, err = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out,
                          '--global-track', '5', '--fine-passes', '0')
    # Named as the options were given (it said the checkpoint had 'fine_cell 0').
    assert status == 2 and '--fine-passes 0 turns them off' in err, err


def test_prior_from_tarfuse_calibrate_is_applied_as_the_node_does(tmp_path, capsys):
    # tarfuse-fuse had no way to take the rig's prior: its outputs were not the node's.
    from tarfuse_ros.core.prior import load_prior_yaml, make_prior, write_prior_yaml
    from tarfuse_ros.tools import calibrate
    rig = tmp_path / 'rig'
    for sub in ('ir', 'vi'):
        (rig / sub).mkdir(parents=True)
    rig_homography = np.array([[1.05, 0.0, 9.0], [0.0, 1.05, -5.0], [0.0, 0.0, 1.0]])
    for stem in STEMS[:2]:
        vi = cv2.resize(_read(SAMPLES / 'vi' / f'{stem}.jpg'), (320, 256))
        ir = cv2.resize(_read(SAMPLES / 'ir' / f'{stem}.jpg'), (320, 256))
        ir = cv2.warpPerspective(ir, rig_homography, (320, 256),  # the IR camera's view
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        cv2.imwrite(str(rig / 'vi' / f'{stem}.png'), vi)
        cv2.imwrite(str(rig / 'ir' / f'{stem}.png'), ir)
    prior_file = tmp_path / 'rig_prior.yaml'
    assert calibrate.main(['--pairs', str(rig), '--out', str(prior_file), '--iterations', '1',
                           '--max-side', '160', '--min-inliers', '0', '--threads', '1']) == 0
    capsys.readouterr()
    ir_path, vi_path = rig / 'ir' / f'{STEMS[1]}.png', rig / 'vi' / f'{STEMS[1]}.png'
    out = tmp_path / 'out'
    status, stdout, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                               '--flow', '--prior', prior_file)
    assert status == 0, err
    prior = load_prior_yaml(prior_file)
    expected = FusionEngine(WEIGHTS, device='cpu', registration_prior=prior).infer(
        _read(ir_path), _read(vi_path))
    flow = np.load(out / 'flow' / f'{STEMS[1]}.npy')
    np.testing.assert_allclose(flow, expected.flow_px, atol=0.02)
    alone = FusionEngine(WEIGHTS, device='cpu').infer(_read(ir_path), _read(vi_path)).flow_px
    # The prior acted: an ignored one gives the flow without it (largest difference measured
    # 0.78 px; the network alone registers this rig well).
    assert np.abs(flow - alone).max() > 0.3
    # A file without a prior is refused before the model loads, naming the option.
    empty = tmp_path / 'empty.yaml'
    empty.write_text('/**:\n  ros__parameters:\n    registration:\n      prior: []\n')
    status, _, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                          '--prior', empty)
    assert status == 2 and f"--prior '{empty}' sets no registration.prior" in err, err
    # A prior for another aspect ratio: the pair is reported (calibrate again), exit 1.
    other = tmp_path / 'other.yaml'
    write_prior_yaml(other, make_prior(np.eye(3), (320, 240), (320, 240)))
    status, stdout, err = _run(capsys, '--ir', ir_path, '--visible', vi_path, '--out', out,
                               '--prior', other)
    assert status == 1 and 'run tarfuse-calibrate again for this size' in stdout + err


def test_a_prior_mapping_the_ir_outside_the_visible_frame_exits_2(tmp_path, capsys):
    # It was accepted and every pair fused with an all-zero pre-warped IR.
    prior_file = tmp_path / 'outside.yaml'
    prior_file.write_text('/**:\n  ros__parameters:\n    registration:\n'
                          '      prior: [1.0, 0.0, 0.0, 0.0, 1.0, -900.0, 0.0, 0.0, 1.0]\n'
                          '      prior_ir_size: [640, 512]\n'
                          '      prior_visible_size: [640, 512]\n')
    stem = STEMS[0]
    status, _, err = _run(capsys, '--ir', SAMPLES / 'ir' / f'{stem}.jpg', '--visible',
                          SAMPLES / 'vi' / f'{stem}.jpg', '--out', tmp_path / 'out',
                          '--prior', prior_file)
    assert status == 2, err
    assert ('--prior: registration.prior maps the 640x512 IR frame entirely outside the '
            '640x512 visible frame: its corners land at (-0.5, -900.5), (639.5, -900.5), '
            '(639.5, -388.5), (-0.5, -388.5)') in err, err
    assert not (tmp_path / 'out').exists()


def test_folder_of_sample_pairs_is_matched_by_stem(tmp_path, capsys):
    out = tmp_path / 'out'
    # IR as PNG (the deformed copies), visible as JPEG: pairs are matched by stem.
    status, stdout, _ = _run(capsys, '--ir', SAMPLES / 'synthetic_misaligned' / 'ir_warp',
                             '--visible', SAMPLES / 'vi', '--out', out)
    assert status == 0, stdout
    assert f'{len(STEMS)} pair(s) in, {len(STEMS)} fused out, 0 failed' in stdout
    assert sorted(p.name for p in (out / 'fused').iterdir()) == [f'{s}.png' for s in STEMS]
    for stem in STEMS:
        visible = _read(SAMPLES / 'vi' / f'{stem}.jpg')
        assert _read(out / 'fused' / f'{stem}.png').shape == visible.shape
    assert sorted(p.name for p in out.iterdir()) == ['fused']  # nothing else unless asked


def test_bad_files_are_reported_and_the_rest_is_fused(tmp_path, capsys):
    ir_dir, vi_dir, out = tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'out'
    ir_dir.mkdir()
    vi_dir.mkdir()
    for stem in STEMS[:2]:  # two good pairs, made small to keep the test fast
        cv2.imwrite(str(ir_dir / f'{stem}.png'),
                    cv2.resize(_read(SAMPLES / 'ir' / f'{stem}.jpg'), (160, 112)))
        cv2.imwrite(str(vi_dir / f'{stem}.jpg'),
                    cv2.resize(_read(SAMPLES / 'vi' / f'{stem}.jpg'), (160, 112)))
    shutil.copy(ir_dir / f'{STEMS[0]}.png', ir_dir / 'corrupt.png')
    (vi_dir / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(200)))
    shutil.copy(ir_dir / f'{STEMS[0]}.png', ir_dir / 'twice.png')
    shutil.copy(vi_dir / f'{STEMS[0]}.jpg', vi_dir / 'twice.jpg')
    shutil.copy(vi_dir / f'{STEMS[0]}.jpg', vi_dir / 'twice.png')
    shutil.copy(ir_dir / f'{STEMS[0]}.png', ir_dir / 'lonely.png')
    (vi_dir / 'notes.txt').write_text('not an image')
    (ir_dir / 'gone.png').symlink_to(tmp_path / 'moved_away.png')  # a broken link: named
    shutil.copy(vi_dir / f'{STEMS[0]}.jpg', vi_dir / 'gone.jpg')
    for sub in (ir_dir, vi_dir):  # a readable pair too small to be a frame
        cv2.imwrite(str(sub / 'dot.png'), np.zeros((1, 1), np.uint8))
    status, stdout, stderr = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out)
    assert status == 1
    assert 'corrupt' in stderr and str(vi_dir / 'corrupt.png') in stderr
    assert 'twice' in stderr and 'ambiguous' in stderr
    assert 'skipped dot' in stderr and 'at least 16 pixels' in stderr
    assert f"No such file or directory: '{ir_dir / 'gone.png'}'" in stderr  # not 'unpaired'
    assert '6 pair(s) in, 2 fused out, 4 failed' in stdout
    assert 'lonely' in stdout and 'without a visible image' in stdout
    assert 'ignored 1 file(s)' in stdout
    assert sorted(p.name for p in (out / 'fused').iterdir()) == [f'{s}.png' for s in STEMS[:2]]


def test_a_truncated_jpeg_is_named_and_skipped_not_fused_with_grey_rows(tmp_path, capsys):
    """A JPEG cut short (a copy that stopped) is decoded by OpenCV with its missing rows grey.

    It was fused, exit 0, libjpeg's 'Premature end of JPEG file' naming no file.
    """
    ir_dir, vi_dir, out = tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'out'
    ir_dir.mkdir()
    vi_dir.mkdir()
    for stem in STEMS[:2]:  # made small to keep the test fast
        cv2.imwrite(str(ir_dir / f'{stem}.jpg'),
                    cv2.resize(_read(SAMPLES / 'ir' / f'{stem}.jpg'), (160, 112)))
        cv2.imwrite(str(vi_dir / f'{stem}.jpg'),
                    cv2.resize(_read(SAMPLES / 'vi' / f'{stem}.jpg'), (160, 112)))
    cut = vi_dir / f'{STEMS[1]}.jpg'
    whole = cut.read_bytes()
    cut.write_bytes(whole[:len(whole) * 6 // 10])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone takes it
    status, stdout, stderr = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out)
    assert status == 1
    assert f'{cut}: truncated JPEG' in stderr
    assert '2 pair(s) in, 1 fused out, 1 failed' in stdout
    assert [p.name for p in (out / 'fused').iterdir()] == [f'{STEMS[0]}.png']


def test_a_video_that_cannot_be_opened_exits_2_before_the_model_loads(tmp_path, capsys):
    # It loaded the model, made an empty fused/ folder, listed it as an output and exited 1
    # ("0 fused out, 1 failed"); without both videos no frame can be fused: a usage error
    # such as a missing path, before any output.
    corrupt = tmp_path / 'corrupt.mp4'
    corrupt.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(500))
    video = tmp_path / 'video.mp4'
    _write_video(video, 10.0, 3, (64, 48))
    for ir, vi, option in ((corrupt, video, '--ir'), (video, corrupt, '--visible')):
        status, stdout, stderr = _run(capsys, '--ir', ir, '--visible', vi,
                                      '--out', tmp_path / 'out', '--weights',
                                      tmp_path / 'never_loaded.safetensors')
        assert status == 2 and not stdout
        assert stderr.endswith(f'tarfuse-fuse: error: {option} {corrupt}: cannot open the video '
                               '(corrupt or unsupported): no frame can be fused\n'), stderr
        assert not (tmp_path / 'out').exists()


def test_16_bit_ir_equals_the_engine(tmp_path, capsys, engine):
    ir8 = _read(SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{STEMS[1]}.png')
    ir16 = (20000 + ir8.astype(np.uint16) * 37).astype(np.uint16)  # raw thermal counts
    cv2.imwrite(str(tmp_path / 'ir16.png'), ir16)
    assert _read(tmp_path / 'ir16.png').dtype == np.uint16
    vi_path = SAMPLES / 'vi' / f'{STEMS[1]}.jpg'
    status, stdout, _ = _run(capsys, '--ir', tmp_path / 'ir16.png', '--visible', vi_path,
                             '--out', tmp_path / 'out')
    assert status == 0, stdout
    fused = _read(tmp_path / 'out' / 'fused' / f'{STEMS[1]}.png')
    assert fused.shape == _read(vi_path).shape
    assert _max_diff(fused, engine.infer(ir16, _read(vi_path)).fused) <= 1


def _write_video(path, fps, frames, size):
    """Write a short video: a bright disc moving right on a dark textured background."""
    fourcc = 'MJPG' if path.suffix == '.avi' else 'mp4v'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 90, (size[1], size[0], 3), np.uint8), (5, 5), 0)
    for i in range(frames):
        frame = background.copy()
        cv2.circle(frame, (8 + 3 * i, size[1] // 2), 7, (220, 200, 180), -1)
        writer.write(frame)
    writer.release()


def _nearest(t, times):
    """Index of the time nearest to ``t``, the earlier on a tie (the documented rule)."""
    gaps = [abs(u - t) for u in times]
    return gaps.index(min(gaps))


def test_two_videos_of_different_frame_rates_are_paired_by_time(tmp_path, capsys):
    vi_fps, vi_frames, ir_fps, ir_frames = 15.0, 16, 7.0, 6
    _write_video(tmp_path / 'visible.mp4', vi_fps, vi_frames, (96, 64))
    _write_video(tmp_path / 'thermal.avi', ir_fps, ir_frames, (80, 60))  # another size too
    out = tmp_path / 'out'
    status, stdout, _ = _run(capsys, '--ir', tmp_path / 'thermal.avi',
                             '--visible', tmp_path / 'visible.mp4', '--out', out, '--detections')
    assert status == 0, stdout
    vi_times = [1000.0 * k / vi_fps for k in range(vi_frames)]
    ir_times = [1000.0 * j / ir_fps for j in range(ir_frames)]
    # Visible frames more than one IR period after the last IR frame have no partner.
    paired = [k for k, t in enumerate(vi_times) if t - ir_times[-1] <= 1000.0 / ir_fps]
    assert len(paired) == 13
    assert f'{len(paired)} frame(s) in, {len(paired)} fused out, 0 failed' in stdout
    assert f'{vi_frames - len(paired)} visible frame(s) without an IR frame' in stdout
    for k in paired:
        record = json.loads((out / 'detections' / f'visible_{k:06d}.json').read_text())
        assert record['frame'] == k
        assert record['ir_frame'] == _nearest(vi_times[k], ir_times), k
        assert record['time_s'] == pytest.approx(vi_times[k] / 1000.0, abs=1e-3)
    assert [record['ir_frame'] for record in (
        json.loads((out / 'detections' / f'visible_{k:06d}.json').read_text())
        for k in paired)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    video = cv2.VideoCapture(str(out / 'visible_fused.mp4'))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(vi_fps)
    video.release()
    frames = _frames(out / 'visible_fused.mp4')
    assert len(frames) == len(paired)
    assert all(frame.shape == (64, 96, 3) for frame in frames)
    assert sorted(p.name for p in out.iterdir()) == ['detections', 'labels', 'visible_fused.mp4']


def _write_y4m(path, fps, frames, size):
    """Write an uncompressed 4:4:4 YUV4MPEG2 video (any size, odd ones included)."""
    width, height = size
    rng = np.random.default_rng(1)
    with open(path, 'wb') as stream:
        stream.write(f'YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C444\n'.encode())
        for _ in range(frames):
            planes = rng.integers(16, 235, (3, height, width), np.uint8)
            stream.write(b'FRAME\n' + planes.tobytes())


def _frames(path):
    video = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    return frames


def test_odd_sized_video_keeps_the_visible_size(tmp_path, capsys):
    _write_y4m(tmp_path / 'visible.y4m', 10, 3, (37, 29))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 3, (37, 29))
    assert _frames(tmp_path / 'visible.y4m')[0].shape == (29, 37, 3)
    out = tmp_path / 'out'
    status, stdout, _ = _run(capsys, '--ir', tmp_path / 'thermal.y4m',
                             '--visible', tmp_path / 'visible.y4m', '--out', out)
    assert status == 0, stdout
    assert '3 frame(s) in, 3 fused out, 0 failed' in stdout
    # FFmpeg's mp4v/MJPG encoders would have cropped the frames to 36x28.
    assert sorted(p.name for p in out.iterdir()) == ['visible_fused.avi']
    frames = _frames(out / 'visible_fused.avi')
    assert len(frames) == 3 and all(frame.shape == (29, 37, 3) for frame in frames)


def test_two_runs_at_once_into_one_folder_each_write_a_whole_video(tmp_path):
    # Both wrote into one temporary video: the second to finish stopped with a
    # FileNotFoundError traceback (the first had renamed the file), the video a mix of both.
    import sys
    _write_y4m(tmp_path / 'visible.y4m', 10, 30, (224, 160))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 30, (224, 160))
    out = tmp_path / 'out'
    command = [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir',
               str(tmp_path / 'thermal.y4m'), '--visible', str(tmp_path / 'visible.y4m'),
               '--out', str(out), '--threads', '1', '--no-scale-search']
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        assert '30 frame(s) in, 30 fused out, 0 failed' in stdout, stdout
    assert sorted(path.name for path in out.iterdir()) == ['visible_fused.mp4']
    assert len(_frames(out / 'visible_fused.mp4')) == 30


def test_the_next_run_removes_the_temporary_video_of_a_killed_run(tmp_path, capsys):
    # SIGKILL (out of memory, kill -9) while the video was written left its temporary, as
    # large as the video, in --out for good (visible_fused.mp4.<hex>.tmp.mp4: `ls *.mp4`
    # lists it).
    import signal
    import sys
    import time
    _write_y4m(tmp_path / 'visible.y4m', 10, 30, (224, 160))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 30, (224, 160))
    out = tmp_path / 'out'
    args = ['--ir', tmp_path / 'thermal.y4m', '--visible', tmp_path / 'visible.y4m',
            '--out', out, '--no-scale-search']
    process = subprocess.Popen([sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--threads', '1',
                                *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            not list(out.glob('visible_fused.mp4.*.tmp.mp4')):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert len(list(out.glob('visible_fused.mp4.*.tmp.mp4'))) == 1
    status, stdout, _ = _run(capsys, *args)
    assert status == 0 and '30 frame(s) in, 30 fused out, 0 failed' in stdout, stdout
    assert sorted(path.name for path in out.iterdir()) == ['visible_fused.mp4']


def test_a_video_of_strips_is_refused_once_before_the_model_loads(tmp_path, capsys):
    _write_y4m(tmp_path / 'visible.y4m', 10, 3, (200, 16))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 3, (64, 48))
    status, stdout, stderr = _run(capsys, '--ir', tmp_path / 'thermal.y4m',
                                  '--visible', tmp_path / 'visible.y4m', '--out', tmp_path / 'o')
    assert status == 2
    assert stderr.count('is 200x16: its longer side is 12.5 times the shorter') == 1, stderr
    assert 'no frame of it can be fused' in stderr and 'Traceback' not in stderr


def test_frames_above_4k_are_refused_naming_this_tools_option(tmp_path, capsys):
    """The message names --input-max-long-side (it said input_max_long_side, the engine's).

    A video of such frames is refused once, before its first frame (every frame was decoded
    and refused, the same reason repeated per frame).
    """
    _write_y4m(tmp_path / 'visible.y4m', 10, 2, (4096, 2304))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 2, (64, 48))
    out = tmp_path / 'out'
    status, stdout, stderr = _run(capsys, '--ir', tmp_path / 'thermal.y4m',
                                  '--visible', tmp_path / 'visible.y4m', '--out', out)
    assert status == 2 and stdout == ''
    assert stderr == (f'tarfuse-fuse: error: {tmp_path / "visible.y4m"}: the visible frame '
                      f'4096x2304 would run the network: 9,437,184 pixels, more than the '
                      f'8,294,400 (3840x2160) it runs at (4.8-5.9 GB of memory there); set '
                      f'--input-max-long-side (e.g. 1920) to run large frames shrunk: no frame '
                      f'of it can be fused\n')
    assert not out.exists()
    for name in ('ir', 'vi'):
        (tmp_path / name).mkdir()
    cv2.imwrite(str(tmp_path / 'ir' / 'a.png'), np.full((48, 64), 90, np.uint8))
    cv2.imwrite(str(tmp_path / 'vi' / 'a.png'), np.full((2160, 3848), 90, np.uint8))
    for flags, advice in (((), 'set --input-max-long-side (e.g. 1920)'),
                          (('--input-max-long-side', 4096),
                           'lower --input-max-long-side (now 4096; e.g. 1920)')):
        status, stdout, stderr = _run(capsys, '--ir', tmp_path / 'ir', '--visible',
                                      tmp_path / 'vi', '--out', out, *flags)
        assert status == 1
        assert ('skipped a: the engine rejected the pair: the visible frame 3848x2160 would '
                'run the network: 8,311,680 pixels') in stderr
        assert f'; {advice} to run large frames shrunk' in stderr, stderr


def test_videos_without_a_common_frame_exit_2_and_leave_no_video(tmp_path, capsys):
    _write_video(tmp_path / 'visible.mp4', 10.0, 3, (64, 48))
    _write_video(tmp_path / 'thermal.mp4', 10.0, 3, (64, 48))
    out = tmp_path / 'out'
    status, stdout, stderr = _run(capsys, '--ir', tmp_path / 'thermal.mp4',
                                  '--visible', tmp_path / 'visible.mp4', '--out', out,
                                  '--ir-offset-ms', '60000')
    assert status == 2
    assert '3 visible frame(s) without an IR frame' in stdout
    assert 'no visible frame has an IR frame' in stderr and '--ir-offset-ms' in stderr
    assert 'Traceback' not in stderr
    assert list(out.iterdir()) == []  # no unplayable, frameless video file


def test_a_run_that_fuses_no_frame_keeps_the_video_of_an_earlier_run(tmp_path, capsys):
    # Re-running into the same --out with a wrong --ir-offset-ms (exit 2, "nothing was
    # fused") deleted the video the first run had written.
    _write_video(tmp_path / 'visible.mp4', 10.0, 3, (64, 48))
    _write_video(tmp_path / 'thermal.mp4', 10.0, 3, (64, 48))
    out = tmp_path / 'out'
    args = ('--ir', tmp_path / 'thermal.mp4', '--visible', tmp_path / 'visible.mp4', '--out', out)
    assert _run(capsys, *args)[0] == 0
    first = (out / 'visible_fused.mp4').read_bytes()
    assert len(_frames(out / 'visible_fused.mp4')) == 3
    status, _, stderr = _run(capsys, *args, '--ir-offset-ms', '60000')
    assert status == 2 and 'nothing was fused' in stderr
    assert sorted(p.name for p in out.iterdir()) == ['visible_fused.mp4']
    assert (out / 'visible_fused.mp4').read_bytes() == first


def test_ctrl_c_while_starting_is_one_line_without_a_traceback(tmp_path):
    # Ctrl-C before the first pair (while torch imported or the weights loaded) printed a
    # KeyboardInterrupt traceback. The --prior file here is a pipe: the tool waits in its
    # start-up reading it, where the real SIGINT reaches it.
    import os
    import signal
    import sys
    import time
    prior = tmp_path / 'prior.yaml'
    os.mkfifo(prior)
    ir, vi = SAMPLES / 'ir' / f'{STEMS[0]}.jpg', SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir', str(ir), '--visible', str(vi),
         '--out', str(tmp_path / 'out'), '--prior', str(prior)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:  # the writer's end opens once the tool has opened the pipe to read it
        try:
            writer = os.open(prior, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    time.sleep(0.5)  # blocked reading it
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    os.close(writer)
    assert process.returncode == 130, err
    assert err == 'tarfuse-fuse: interrupted before the first pair: nothing was fused\n', err


def test_without_threads_it_takes_the_cpus_the_process_may_use(tmp_path):
    """A CPU limit that torch does not count (here LOKY_MAX_CPU_COUNT) sets the threads.

    The run is a first one with a new ultralytics settings folder (YOLO_CONFIG_DIR): the
    tool's stdout printed ultralytics' three lines 'Creating new Ultralytics Settings ...'.
    """
    import os
    import sys
    environment = {name: value for name, value in os.environ.items()
                   if name not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'YOLO_VERBOSE')}
    environment['LOKY_MAX_CPU_COUNT'] = '1'
    environment['YOLO_CONFIG_DIR'] = str(tmp_path / 'ultralytics')
    ir, vi = SAMPLES / 'ir' / f'{STEMS[0]}.jpg', SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    result = subprocess.run(
        [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir', str(ir), '--visible', str(vi),
         '--out', str(tmp_path / 'out')], env=environment, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'torch threads 1)' in result.stdout, result.stdout
    assert result.stdout.startswith('tarfuse-fuse: ') and 'Ultralytics' not in result.stdout, \
        result.stdout
    # The settings folder the user chose is the one used.
    assert (tmp_path / 'ultralytics' / 'Ultralytics' / 'settings.json').is_file()


def test_an_unreadable_cpu_limit_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """Without --threads, LOKY_MAX_CPU_COUNT=abc: one line, exit 2, no traceback from joblib."""
    monkeypatch.setenv('LOKY_MAX_CPU_COUNT', 'abc')
    ir, vi = SAMPLES / 'ir' / f'{STEMS[0]}.jpg', SAMPLES / 'vi' / f'{STEMS[0]}.jpg'
    assert fuse.main(['--ir', str(ir), '--visible', str(vi), '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ('tarfuse-fuse: error: the environment variable LOKY_MAX_CPU_COUNT must be an '
                   "integer (the CPUs to use), got 'abc'; or give --threads N\n"), err


def test_ctrl_c_mid_run_accounts_for_the_pair_it_stopped(tmp_path):
    # The summary read '4 pair(s) in, 3 fused out, 0 failed': the pair being fused when
    # Ctrl-C came counted as neither. A real SIGINT once the first pairs are written.
    import signal
    import sys
    import time
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
        for copy in range(4):  # 20 pairs: the run is still going when the signal comes
            for stem in STEMS:
                shutil.copy(SAMPLES / sub / f'{stem}.jpg', tmp_path / sub / f'{copy}_{stem}.jpg')
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir', str(tmp_path / 'ir'),
         '--visible', str(tmp_path / 'vi'), '--out', str(out), '--threads', '1'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            len(list(out.glob('fused/*.png'))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    counts = re.search(r'(\d+) pair\(s\) in, (\d+) fused out, (\d+) failed, (\d+) '
                       r'interrupted;', stdout)
    assert counts, stdout
    pairs_in, pairs_out, failed, interrupted = (int(n) for n in counts.groups())
    assert pairs_in == pairs_out + failed + interrupted and failed == 0, stdout
    assert interrupted <= 1 and pairs_out == len(list(out.glob('fused/*.png'))) < 20, stdout


def _copies_of_the_samples(folder, copies, size=None):
    """Write ``copies`` x the sample pairs into ``folder/ir`` and ``folder/vi`` as PNG."""
    for sub in ('ir', 'vi'):
        (folder / sub).mkdir()
        for copy in range(copies):
            for stem in STEMS:
                img = _read(SAMPLES / sub / f'{stem}.jpg')
                if size is not None:
                    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                cv2.imwrite(str(folder / sub / f'{copy}_{stem}.png'), img)


# The temporaries of tarfuse_ros.core.files.atomic_output that a killed run leaves: the file
# being written, <name>.<8 hex digits>.tmp, or one claimed a moment before, <name>.<hex>.new.
_TEMPORARY = re.compile(r'.+\.[0-9a-f]{8}\.(tmp|new)')


def _outputs(out):
    """Return the output files in ``out`` (not a killed run's temporaries)."""
    return [path for path in out.rglob('*')
            if path.is_file() and not _TEMPORARY.fullmatch(path.name)]


def _every_output_whole(out):
    """Assert that each output file decodes (PNG) or loads (.npy); return how many."""
    files = _outputs(out)
    for path in files:
        if path.suffix == '.png':
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
        elif path.suffix == '.npy':
            np.load(path)
    return len(files)


def test_sigterm_mid_run_stops_as_ctrl_c_does_with_every_pair_written_whole(tmp_path):
    # SIGTERM (timeout, a job scheduler) killed the run: exit status -15, no summary, the
    # fused PNG being written cut short ('libpng error: Read Error') and the pair's other
    # outputs, and those waiting to be written, lost.
    import signal
    import sys
    import time
    _copies_of_the_samples(tmp_path, 4)  # 20 pairs: the run is still going at the signal
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir', str(tmp_path / 'ir'),
         '--visible', str(tmp_path / 'vi'), '--out', str(out), '--threads', '1',
         '--registered', '--flow'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            len(list(out.glob('fused/*.png'))) < 2:
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    counts = re.search(r'(\d+) pair\(s\) in, (\d+) fused out, 0 failed, (\d+) '
                       r'interrupted;', stdout)
    assert counts, stdout
    pairs_in, pairs_out, interrupted = (int(n) for n in counts.groups())
    assert pairs_in == pairs_out + interrupted and 2 <= pairs_out < 20, stdout
    for folder, suffixes in (('fused', ('.png',)), ('registered', ('.png',)),
                             ('flow', ('.npy', '.png'))):
        names = sorted(path.name for path in (out / folder).iterdir())
        assert len(names) == pairs_out * len(suffixes), (folder, names, stdout)
    _every_output_whole(out)


def test_a_killed_run_leaves_no_output_file_cut_short(tmp_path):
    # Files were written in place: SIGKILL (out of memory, kill -9) while a large PNG was
    # encoded left it cut short under its name, as one of two runs writing into one folder
    # saw the other's file half written. They are now renamed into place once whole.
    import signal
    import sys
    import time
    _copies_of_the_samples(tmp_path, 1, size=(2560, 1600))
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--ir', str(tmp_path / 'ir'),
         '--visible', str(tmp_path / 'vi'), '--out', str(out), '--threads', '1', '--flow',
         '--input-max-long-side', '640'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            not (out.is_dir() and _outputs(out)):
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert _every_output_whole(out) >= 1


def test_outputs_are_never_written_over_the_inputs(tmp_path, capsys):
    # --ir out/registered with --registered: each IR image was replaced by its registered
    # copy as the folder was fused (or, a JPEG, got a PNG of its stem beside it, and the same
    # command run again failed on every pair: 'ambiguous, several images of this stem').
    import hashlib
    out = tmp_path / 'out'
    (out / 'registered').mkdir(parents=True)
    for stem in STEMS[:2]:
        shutil.copy(SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{stem}.png',
                    out / 'registered' / f'{stem}.png')

    def digests():
        return {path: hashlib.sha256(path.read_bytes()).hexdigest()
                for path in out.rglob('*') if path.is_file()}

    before = digests()
    status, stdout, err = _run(capsys, '--ir', out / 'registered', '--visible', SAMPLES / 'vi',
                               '--out', out, '--registered')
    assert status == 2 and stdout == '', stdout
    registered = str(out / 'registered')
    assert err == (f'tarfuse-fuse: error: --ir {registered!r} is the folder tarfuse-fuse '
                   f'writes its registered outputs into (--out {str(out)!r}): they would be '
                   f'written among the inputs; give another --out\n'), err
    assert digests() == before
    # One image: the output of the pair (named after the visible image) is the IR image.
    ir = out / 'fused' / f'{STEMS[0]}.png'
    ir.parent.mkdir()
    shutil.copy(SAMPLES / 'ir' / f'{STEMS[0]}.jpg', ir)
    before = digests()
    status, stdout, err = _run(capsys, '--ir', ir, '--visible',
                               SAMPLES / 'vi' / f'{STEMS[0]}.jpg', '--out', out)
    assert status == 2 and 'is an output file of tarfuse-fuse' in err, err
    assert digests() == before
    # Other folders are fine: the visible images' folder as --out writes into its subfolders.
    status, stdout, err = _run(capsys, '--ir', out / 'registered', '--visible', SAMPLES / 'vi',
                               '--out', out / 'registered', '--registered')
    assert status == 0, err
    assert digests().items() >= before.items()


def test_ir_and_visible_files_of_other_exif_orientations_are_warned_of_once(tmp_path, capsys):
    # Images are fused as stored: a visible JPEG tagged 'turned 180 degrees' (a phone held
    # upside down) beside an untagged IR image looks aligned in a viewer but was fused turned
    # against it, without a word (both frames landscape: no portrait warning either).
    from PIL import Image
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
    for stem, ir_tag, vi_tag in (('a', None, 3), ('b', None, 3), ('c', 6, 6)):
        for sub, tag in (('ir', ir_tag), ('vi', vi_tag)):
            image = Image.open(SAMPLES / sub / f'{STEMS[0]}.jpg')
            exif = Image.Exif()
            if tag is not None:
                exif[0x0112] = tag
            image.save(tmp_path / sub / f'{stem}.jpg', exif=exif.tobytes(), quality=95)
    assert [fuse.exif_orientation(tmp_path / 'vi' / f'{stem}.jpg') for stem in 'abc'] == [3, 3, 6]
    status, stdout, err = _run(capsys, '--ir', tmp_path / 'ir', '--visible', tmp_path / 'vi',
                               '--out', tmp_path / 'out')
    assert status == 0 and '3 pair(s) in, 3 fused out' in stdout, err
    warnings = [line for line in err.splitlines() if 'EXIF orientation' in line]
    assert warnings == [
        'tarfuse-fuse: warning: a: EXIF orientation 1 in the IR file (shown as stored), 3 in the '
        'visible file (shown turned 180 degrees): images are fused as stored, not as viewers '
        'show them: if the two look aligned in a viewer, they are fused turned against each '
        'other; write the tagged image turned first (e.g. exiftran -ai FILE) (said once for '
        'these tags)'], err  # once for a and b; none for c, both tagged alike (a phone rig)
    # Still fused as stored: the tag does not change the output.
    assert _read(tmp_path / 'out' / 'fused' / 'a.png').shape == _read(
        SAMPLES / 'vi' / f'{STEMS[0]}.jpg').shape
    # The tags of a large frame's file are read without Pillow's 'decompression bomb' warning.
    import warnings
    cv2.imwrite(str(tmp_path / 'large.png'), np.zeros((9500, 9500), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert fuse.exif_orientation(tmp_path / 'large.png') == 1
    assert not caught, [str(warning.message) for warning in caught]


def test_pairing_rule_nearest_in_time_earlier_on_ties():
    visible = [(k, t, f'v{k}') for k, t in enumerate([0.0, 20.0, 50.0, 99.0, 160.0, 260.0])]
    infrared = [(j, t, f'i{j}') for j, t in enumerate([5.0, 40.0, 60.0, 80.0, 100.0, 140.0])]
    pairs = [(vi[0], None if ir is None else ir[0])
             for vi, ir in fuse.pair_by_time(visible, infrared, max_gap_ms=40.0)]
    # 20 ms is 15 from IR 0 and 20 from IR 1; 50 ms ties IR 1 and IR 2 -> the earlier;
    # IR frames 2 and 3 are skipped (IR faster); 260 ms is 120 ms after the last IR frame.
    assert pairs == [(0, 0), (1, 0), (2, 1), (3, 4), (4, 5), (5, None)]
    assert list(fuse.pair_by_time(visible[:2], [], 40.0)) == [
        (visible[0], None), (visible[1], None)]


def test_console_script_is_installed():
    script = shutil.which('tarfuse-fuse')
    if script is None:
        pytest.skip('tarfuse-fuse is not installed (re-run tools/ros_env/setup_env.sh)')
    result = subprocess.run([script, '--help'], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and '--visible' in result.stdout
    result = subprocess.run([script, '--ir', 'x.png'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and '--visible' in result.stderr


def test_a_portrait_ir_beside_a_landscape_visible_image_is_warned_once(tmp_path, capsys):
    """An IR image shot with the camera on its side was stretched to the visible frame, unsaid.

    The node warned of it; tarfuse-fuse said nothing.
    """
    ir_dir, vi_dir, out = tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'out'
    ir_dir.mkdir()
    vi_dir.mkdir()
    for index, stem in enumerate(STEMS[:3]):
        ir = cv2.resize(_read(SAMPLES / 'ir' / f'{stem}.jpg'), (160, 112))
        if index < 2:  # the first two on their side (112x160), the third as shot
            ir = cv2.rotate(ir, cv2.ROTATE_90_CLOCKWISE)
        cv2.imwrite(str(ir_dir / f'{stem}.png'), ir)
        cv2.imwrite(str(vi_dir / f'{stem}.png'),
                    cv2.resize(_read(SAMPLES / 'vi' / f'{stem}.jpg'), (160, 112)))
    status, stdout, stderr = _run(capsys, '--ir', ir_dir, '--visible', vi_dir, '--out', out)
    assert status == 0, stderr
    said = [line for line in stderr.splitlines() if 'portrait' in line]
    assert said == [f'tarfuse-fuse: warning: {STEMS[0]}: IR 112x160 and visible 160x112, one '
                    f'portrait, the other landscape: is a camera mounted on its side? The IR '
                    f'is stretched to the visible frame, not rotated; rotate those images '
                    f'first (said once for these sizes)'], stderr
    assert '3 pair(s) in, 3 fused out' in stdout


def _fuse_process(args, file_size_limit=None):
    """Run tarfuse-fuse ARGS in a child process, its files capped at ``file_size_limit`` bytes.

    The cap (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails with EFBIG) stands
    for a disk that fills up while the outputs are written, without a small file system.
    """
    import resource
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, '-m', 'tarfuse_ros.tools.fuse', '--threads', '1',
                           *map(str, args)], capture_output=True, text=True, timeout=300,
                          preexec_fn=None if file_size_limit is None else cap)


def test_a_video_cut_short_by_a_full_disk_is_a_failure_and_keeps_the_earlier_one(tmp_path):
    # OpenCV's VideoWriter says nothing when its writes fail: a disk that filled up left an
    # MPEG-4 without its index (no frame readable) in place of the earlier run's whole video,
    # and the run said '30 fused out, 0 failed', exit status 0.
    _write_y4m(tmp_path / 'visible.y4m', 10, 30, (224, 160))
    _write_y4m(tmp_path / 'thermal.y4m', 10, 30, (224, 160))
    out = tmp_path / 'out'
    args = ['--ir', tmp_path / 'thermal.y4m', '--visible', tmp_path / 'visible.y4m',
            '--out', out, '--no-scale-search']
    first = _fuse_process(args)
    assert first.returncode == 0, first.stderr
    video = out / 'visible_fused.mp4'
    whole = video.read_bytes()
    assert len(_frames(video)) == 30 and len(whole) > 60_000
    full = _fuse_process(args, file_size_limit=60_000)
    assert full.returncode == 1, full.stdout + full.stderr
    assert '30 frame(s) in, 0 fused out, 1 failed' in full.stdout, full.stdout
    assert (f'cannot write the fused video {video}: of the 30 frames written, the file OpenCV '
            f'left cannot be opened (a full disk?') in full.stderr, full.stderr
    assert 'outputs: no video (not written whole)' in full.stdout, full.stdout
    assert video.read_bytes() == whole
    assert sorted(path.name for path in out.iterdir()) == ['visible_fused.mp4']


def test_an_output_a_full_disk_cuts_short_is_named_with_the_cause(tmp_path):
    # np.save's failed write was reported as 'cannot write its outputs: 350844 requested and
    # 249968 written', naming neither the file nor the cause, and a failed PNG write as
    # '[Errno 28] No space left on device' without its file.
    stem = STEMS[0]
    out = tmp_path / 'out'
    run = _fuse_process(['--ir', SAMPLES / 'ir' / f'{stem}.jpg', '--visible',
                         SAMPLES / 'vi' / f'{stem}.jpg', '--out', out, '--flow',
                         '--no-scale-search'], file_size_limit=1_000_000)
    assert run.returncode == 1, run.stdout + run.stderr
    npy = out / 'flow' / f'{stem}.npy'
    assert f'{stem}: cannot write its outputs: {npy}: File too large' in run.stderr, run.stderr
    assert '1 pair(s) in, 0 fused out, 1 failed' in run.stdout, run.stdout
    assert sorted(path.name for path in (out / 'flow').iterdir()) == []


def test_the_next_run_removes_the_temporaries_a_killed_run_left_in_its_folders(tmp_path, capsys):
    # A run killed while it wrote a pair's files left <name>.<hex>.tmp beside them for good
    # (a flow's as large as its .npy), however often the command was run again.
    import signal
    import sys
    from tarfuse_ros.core.files import atomic_output
    stem = STEMS[0]
    out = tmp_path / 'out'
    killed_writer = ('import os, signal, sys\n'
                     'from tarfuse_ros.core.files import atomic_output\n'
                     'with atomic_output(sys.argv[1]) as temporary:\n'
                     '    temporary.write_bytes(b"half of a file")\n'
                     '    os.kill(os.getpid(), signal.SIGKILL)\n')
    for name in ('fused/a.png', 'flow/a.npy', 'flow/a.png', 'registered/a.png'):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        writer = subprocess.run([sys.executable, '-c', killed_writer, str(out / name)])
        assert writer.returncode == -signal.SIGKILL
    left = sorted(path.relative_to(out).as_posix() for path in out.rglob('*.tmp'))
    assert [re.sub(r'\.[0-9a-f]{8}\.tmp$', '', name) for name in left] == [
        'flow/a.npy', 'flow/a.png', 'fused/a.png', 'registered/a.png']
    (out / 'fused' / 'notes.tmp').write_text('not ours')
    with atomic_output(out / 'fused' / 'b.png') as live:  # another run's, being written
        status, stdout, _ = _run(capsys, '--ir', SAMPLES / 'ir' / f'{stem}.jpg', '--visible',
                                 SAMPLES / 'vi' / f'{stem}.jpg', '--out', out, '--flow',
                                 '--no-scale-search')
        assert status == 0, stdout
        assert sorted(path.name for path in (out / 'fused').iterdir()) == sorted(
            [f'{stem}.png', live.name, 'notes.tmp'])
    assert sorted(path.name for path in (out / 'flow').iterdir()) == [f'{stem}.npy',
                                                                      f'{stem}.png']
    # --registered was not asked for: that folder is left as it was.
    assert [path.name for path in (out / 'registered').iterdir()] == [left[-1].split('/')[1]]


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path,
                                                                                   capsys):
    # A read-only fused/ (here a link to /proc/self, which not even root can write into) had
    # the model loaded and every pair fused, then each named as failed (exit status 1).
    stem = STEMS[0]
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'fused').symlink_to('/proc/self')
    status, stdout, stderr = _run(capsys, '--ir', SAMPLES / 'ir' / f'{stem}.jpg', '--visible',
                                  SAMPLES / 'vi' / f'{stem}.jpg', '--out', out)
    assert status == 2, stdout + stderr
    assert stderr == (f"tarfuse-fuse: error: --out '{out}' cannot be written (folder "
                      f'{out / "fused"} is not writable); give another --out\n')
    assert stdout == ''
