"""``tarfuse-calibrate`` end to end: real pairs seen through a known rig transform, real model.

A folder of RoadScene pairs whose IR is warped by a known homography, and a real rosbag2
(compressed topics, written by ``tarfuse-make-bag``), go through the command; the written file
must be a node parameters file holding a valid prior. The end-to-end corner error with the
shipped model is printed (the shipped model's registration is weak: the exact-flow test in
``test/core/test_calibration.py`` checks the fit itself against the 1 px target).
"""

from pathlib import Path
import re

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.core.prior import (
    corner_error_px, load_prior_yaml, make_prior, write_prior_yaml)
from tarfuse_ros.tools import calibrate
from tarfuse_ros.tools.make_bag import make_bag
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROADSCENE = ROOT / 'test' / 'data' / 'datasets' / 'roadscene'
SIZE = (320, 256)  # 640x512 halved: the model is slow on a shared CPU


def rig_homography():
    """IR -> visible homography at 320x256: 5 % wider field of view, 1.5 deg roll, offset."""
    c, s = np.cos(np.radians(1.5)), np.sin(np.radians(1.5))
    return np.array([[1.05 * c, -1.05 * s, 9.0], [1.05 * s, 1.05 * c, -5.0], [4e-5, -2e-5, 1.0]])


@pytest.fixture(scope='module')
def rig_folder(tmp_path_factory):
    """Two real pairs in the data-set layout, the IR recorded through ``rig_homography``."""
    out = tmp_path_factory.mktemp('rig')
    (out / 'ir').mkdir()
    (out / 'vi').mkdir()
    for stem in data.read_split(ROADSCENE)[:2]:
        ir, vi = data.load_pair(ROADSCENE, stem)
        ir, vi = cv2.resize(ir, SIZE), cv2.resize(vi, SIZE)
        # ir_cam(u) = ir(H u): visible pixel H u sees IR pixel u.
        ir_cam = cv2.warpPerspective(ir, rig_homography(), SIZE,
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        cv2.imwrite(str(out / 'ir' / f'{stem}.png'), ir_cam)
        cv2.imwrite(str(out / 'vi' / f'{stem}.png'), vi)
    return out


def test_calibrate_a_folder_writes_a_prior_file_and_reports_each_pair(rig_folder, tmp_path,
                                                                      capsys):
    out = tmp_path / 'prior.yaml'
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(out), '--pairs-count', '2',
                           '--iterations', '1', '--threads', '2'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for stem in data.read_split(rig_folder):
        assert stem in printed  # one residual line per pair
    document = yaml.safe_load(out.read_text())
    registration = document['/**']['ros__parameters']['registration']
    assert len(registration['prior']) == 9
    prior = load_prior_yaml(out)
    assert (prior.ir_size, prior.visible_size) == (SIZE, SIZE)
    # The figure at 640x512: both homographies scaled to that size.
    fitted = prior.homography_for((640, 512), (640, 512))
    truth = calibrate_truth_at_640()
    error = corner_error_px(fitted, truth, (640, 512))
    identity_error = corner_error_px(np.eye(3), truth, (640, 512))
    with capsys.disabled():
        print(f'\nend to end, shipped model, 2 pairs at 320x256, 1 iteration: corner error '
              f'{error:.1f} px at 640x512 (no prior: {identity_error:.1f} px)')
    assert np.isfinite(error)


def test_calibrate_reads_a_float32_tiff_ir_as_tarfuse_fuse_does(rig_folder, tmp_path, capsys):
    # It refused the pair ("expected 8- or 16-bit pixels") although tarfuse-fuse fuses it.
    pairs = tmp_path / 'float_rig'
    for sub in ('ir', 'vi'):
        (pairs / sub).mkdir(parents=True)
    for path in sorted((rig_folder / 'ir').iterdir()):
        ir = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        kelvin = (273.15 + 10.0 + 0.1 * ir).astype(np.float32)  # a 32FC1 temperature image
        assert cv2.imwrite(str(pairs / 'ir' / f'{path.stem}.tiff'), kelvin)
        assert cv2.imread(str(pairs / 'ir' / f'{path.stem}.tiff'),
                          cv2.IMREAD_UNCHANGED).dtype == np.float32
        vi = rig_folder / 'vi' / path.name
        (pairs / 'vi' / vi.name).write_bytes(vi.read_bytes())
    out = tmp_path / 'prior.yaml'
    code = calibrate.main(['--pairs', str(pairs), '--out', str(out), '--pairs-count', '2',
                           '--iterations', '1', '--threads', '1'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for stem in data.read_split(pairs):
        assert stem in captured.out
    prior = load_prior_yaml(out)
    assert (prior.ir_size, prior.visible_size) == (SIZE, SIZE)
    assert np.isfinite(prior.homography).all()
    # A float image the engine refuses (NaN pixels) is the input's fault: exit 2 naming it.
    bad = sorted((pairs / 'ir').iterdir())[-1]
    kelvin = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    kelvin[0, 0] = np.nan
    assert cv2.imwrite(str(bad), kelvin)
    code = calibrate.main(['--pairs', str(pairs), '--out', str(tmp_path / 'nan.yaml'),
                           '--pairs-count', '2', '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(bad) in err and 'NaN' in err and 'no prior fitted' not in err


def calibrate_truth_at_640():
    from tarfuse_ros.core.prior import make_prior
    return make_prior(rig_homography(), SIZE, SIZE).homography_for((640, 512), (640, 512))


@pytest.mark.parametrize('ir_transport, ir_encoding', [('compressed', 'mono8'),
                                                       ('compressedDepth', 'mono16')])
def test_calibrate_a_bag_with_compressed_topics(tmp_path, capsys, ir_transport, ir_encoding):
    bag = tmp_path / 'rig_bag'
    depth = {'depth_max': 32.0} if ir_transport == 'compressedDepth' else {}  # counts kept
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), ir_transport=ir_transport,
             ir_encoding=ir_encoding, vi_transport='compressed', max_pairs=3, **depth)
    out = tmp_path / 'bag_prior.yaml'
    code = calibrate.main(['--bag', str(bag), '--out', str(out), '--pairs-count', '2',
                           '--iterations', '1', '--threads', '2'])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    prior = load_prior_yaml(out)
    assert (prior.ir_size, prior.visible_size) == ((160, 128), (160, 128))
    # Two visible images chosen (the first and the last), named by their stamps.
    assert len(re.findall(r'^\d+\.\d{9} ', printed.out, re.MULTILINE)) == 2, printed.out


@pytest.mark.parametrize('argv, words', [
    (['--pairs-count', '0'], ['--pairs-count must be >= 1']),
    (['--iterations', '0'], ['--iterations must be >= 1']),
    (['--infrared-topic', '/thermal/image_raw'], ['/thermal/image_raw', 'not in the bag']),
    # inf made every point an inlier and OpenCV found nothing: "the flows disagree", exit 1.
    (['--threshold-px', 'inf'], ['--threshold-px must be a finite number > 0']),
    (['--min-inliers', '1.5'], ['--min-inliers must be in [0, 1]']),
    (['--min-alignment-gain', 'nan'], ['--min-alignment-gain must be in [-2, 1]']),
    (['--infrared-time-offset', '1.5'], ['--infrared-time-offset must be in [-1, 1] s',
                                         'sync.infrared_time_offset']),
    (['--infrared-time-offset', 'nan'], ['--infrared-time-offset must be in [-1, 1] s']),
    # inf ("no limit") ended in a traceback: OverflowError converting it to nanoseconds.
    (['--slop', 'inf'], ['--slop must be a finite number > 0 s']),
])
def test_usage_errors_exit_2_with_the_reason(argv, words, tmp_path, capsys):
    bag = tmp_path / 'small_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(64, 64), max_pairs=1)
    code = calibrate.main(['--bag', str(bag), '--out', str(tmp_path / 'p.yaml')] + argv)
    err = capsys.readouterr().err
    assert code == 2
    for word in words:
        assert word in err
    assert not (tmp_path / 'p.yaml').exists()


def test_folder_usage_errors_exit_2_before_the_model_runs(rig_folder, tmp_path, capsys):
    # --out a folder: refused up front (it used to fail writing, after the whole calibration).
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(tmp_path),
                           '--pairs-count', '1', '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2 and f"--out '{tmp_path}' is a folder" in err and 'Traceback' not in err
    # An unreadable image is the input's fault (exit 2 naming it), not "no prior fitted".
    broken = tmp_path / 'broken'
    for sub in ('ir', 'vi'):
        (broken / sub).mkdir(parents=True)
        for path in (rig_folder / sub).iterdir():
            (broken / sub / path.name).write_bytes(path.read_bytes())
    bad = sorted((broken / 'vi').iterdir())[-1]
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(64))
    code = calibrate.main(['--pairs', str(broken), '--out', str(tmp_path / 'p.yaml'),
                           '--pairs-count', '2', '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'error:' in err and str(bad) in err and 'no prior fitted' not in err
    assert not (tmp_path / 'p.yaml').exists()


def test_a_split_file_listing_a_pair_twice_is_refused_as_tarfuse_eval_refuses_it(
        rig_folder, tmp_path, capsys):
    # A stem listed three times was fitted as three pairs (its points and inlier share counted
    # three times over the other pairs'), exit 0.
    stems = data.read_split(rig_folder)
    split = tmp_path / 'rig.txt'
    split.write_text('\n'.join([stems[0], stems[1], stems[0]]) + '\n')
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(rig_folder), '--split', str(split), '--out',
                           str(out), '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"lists '{stems[0]}' twice (lines 1 and 3)" in err, err
    assert 'iteration' not in err and not out.exists()


@pytest.mark.parametrize('source, argv, words', [
    ('pairs', ['--infrared-time-offset', '-0.06'],
     '--infrared-time-offset applies to --bag only (a --pairs folder pairs its images by file '
     'name)'),
    ('pairs', ['--slop', '0.02', '--visible-topic', '/cam/image_raw'],
     '--visible-topic, --slop apply to --bag only'),
    ('bag', ['--split', 'test'], '--split applies to --pairs only'),
])
def test_an_option_of_the_other_source_is_refused(source, argv, words, rig_folder, tmp_path,
                                                  capsys):
    # It was left unused without a word: a rig's offset given with --pairs changed nothing.
    folder = rig_folder if source == 'pairs' else tmp_path / 'bag'
    if source == 'bag':
        make_bag(ROOT / 'samples', folder, rate=10.0, size=(64, 64), max_pairs=1)
    code = calibrate.main([f'--{source}', str(folder), '--out', str(tmp_path / 'p.yaml')] + argv)
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (tmp_path / 'p.yaml').exists()


def test_a_missing_gpu_names_the_option_to_use_instead(rig_folder, tmp_path, capsys):
    # It ended "use device 'cpu' or allow the CPU fallback", which tarfuse-calibrate has not.
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(tmp_path / 'p.yaml'),
                           '--pairs-count', '1', '--device', 'cuda:99'])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tarfuse-calibrate: error: device 'cuda:99' was requested")
    assert err.endswith('; use --device cpu\n') and 'fallback' not in err, err
    assert not (tmp_path / 'p.yaml').exists()


def test_an_out_that_cannot_be_written_exits_2_before_the_model_runs(tmp_path, capsys):
    # It ran the whole calibration, then died writing the file with a traceback.
    bag = tmp_path / 'small_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(64, 64), max_pairs=1)
    code = calibrate.main(['--bag', str(bag), '--out', '/proc/rig_prior.yaml',
                           '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == ("tarfuse-calibrate: error: --out '/proc/rig_prior.yaml' cannot be written "
                   '(folder /proc is not writable); give a path in a folder you can write to\n')


def test_an_out_holding_other_node_parameters_is_not_replaced(rig_folder, tmp_path, capsys):
    # --out config/tarfuse.yaml (to "add the prior to the parameters"): the 43 parameters of
    # the node were replaced by the prior alone, after the whole calibration.
    params = tmp_path / 'tarfuse.yaml'
    params.write_text((ROOT / 'config' / 'tarfuse.yaml').read_text())
    before = params.read_text()
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(params), '--iterations',
                           '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--out '{params}' holds other node parameters (allow_cpu_fallback," in err, err
    assert 'iteration' not in err and params.read_text() == before
    # A prior file of its own (with an offset) is written over, as before.
    prior = tmp_path / 'prior.yaml'
    write_prior_yaml(prior, make_prior(rig_homography(), SIZE, SIZE), [], 0.01)
    assert calibrate.main(['--pairs', str(rig_folder), '--out', str(prior), '--pairs-count',
                           '1', '--iterations', '1', '--threads', '1', '--max-side', '160']) == 0


def test_an_initial_prior_file_without_a_prior_is_refused(tmp_path, capsys):
    # It was silently ignored: the calibration started from no prior.
    bag = tmp_path / 'small_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(64, 64), max_pairs=1)
    initial = tmp_path / 'params.yaml'
    initial.write_text('/**:\n  ros__parameters:\n    registration:\n      prior: []\n')
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--bag', str(bag), '--out', str(out), '--initial-prior',
                           str(initial), '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == (f"tarfuse-calibrate: error: --initial-prior '{initial}' sets no "
                   f'registration.prior; give a file from tarfuse-calibrate\n')
    assert not out.exists()


# A hand-written prior whose IR frame lands 400 px right of a 320x256 visible frame.
OUTSIDE_PRIOR = ('/**:\n  ros__parameters:\n    registration:\n'
                 '      prior: [1.0, 0.0, 400.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]\n'
                 '      prior_ir_size: [320, 256]\n      prior_visible_size: [320, 256]\n')


def test_an_initial_prior_mapping_the_ir_outside_the_visible_frame_exits_2(tmp_path, capsys):
    # It was accepted: the model then ran on an all-zero pre-warped IR.
    initial = tmp_path / 'outside.yaml'
    initial.write_text(OUTSIDE_PRIOR)
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(tmp_path), '--out', str(out), '--initial-prior',
                           str(initial), '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith('tarfuse-calibrate: error: --initial-prior: registration.prior maps '
                          'the 320x256 IR frame entirely outside the 320x256 visible frame: '
                          'its corners land at (399.5, -0.5), (719.5, -0.5), '), err
    assert not out.exists()


def test_pairs_of_several_sizes_exit_2_naming_them_even_with_max_side(
        rig_folder, tmp_path, capsys):
    # It exited 1 "no prior fitted"; with --max-side making both sizes one, it fitted them.
    mixed = tmp_path / 'mixed'
    for sub in ('ir', 'vi'):
        (mixed / sub).mkdir(parents=True)
    first, second = sorted(data.read_split(rig_folder))
    for stem, scale in ((first, 1.0), (second, 0.5)):
        for sub in ('ir', 'vi'):
            image = cv2.imread(str(rig_folder / sub / f'{stem}.png'), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(mixed / sub / f'{stem}.png'),
                        cv2.resize(image, None, fx=scale, fy=scale))
    for extra in ([], ['--max-side', '160']):
        code = calibrate.main(['--pairs', str(mixed), '--out', str(tmp_path / 'p.yaml'),
                               '--iterations', '1', '--threads', '1'] + extra)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err == ('tarfuse-calibrate: error: the pairs hold several image sizes '
                       f"('{first}': IR 320x256, visible 320x256; '{second}': IR 160x128, "
                       f'visible 160x128); calibrate one rig (one size per camera) at a time\n')
    assert not (tmp_path / 'p.yaml').exists()


def test_spread_indices_cover_the_recording_ends_included():
    assert calibrate.spread_indices(100, 5) == [0, 25, 50, 74, 99]
    assert calibrate.spread_indices(3, 10) == [0, 1, 2]
    assert calibrate.spread_indices(0, 4) == []


def test_an_initial_prior_for_another_aspect_ratio_exits_2_naming_the_recorded_size(
        rig_folder, tmp_path, capsys):
    # It ran the model, then exited 1 "no prior fitted", naming the --max-side size (160x128).
    initial = tmp_path / 'other_rig.yaml'
    write_prior_yaml(initial, make_prior(np.eye(3), (320, 240), SIZE))
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(out), '--initial-prior',
                           str(initial), '--max-side', '160', '--iterations', '1',
                           '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"tarfuse-calibrate: error: --initial-prior '{initial}': "
                          'registration.prior was made for a 320x240 IR image but the IR image '
                          'is 320x256'), err
    assert 'iteration' not in err and not out.exists()


def test_max_side_runs_downscaled_and_writes_the_prior_for_the_recorded_sizes(
        rig_folder, tmp_path, capsys):
    out = tmp_path / 'small_prior.yaml'
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(out), '--pairs-count', '2',
                           '--iterations', '1', '--max-side', '160'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The residuals are of the 160x128 run: they were printed as if at 320x256.
    assert ('residuals and --threshold-px in pixels of the 160x128 visible images the model '
            'ran on (--max-side); times 2 at 320x256') in captured.out, captured.out
    assert 'times 2 at 320x256' in out.read_text()
    prior = load_prior_yaml(out)
    assert (prior.ir_size, prior.visible_size) == (SIZE, SIZE)
    fitted = prior.homography_for((640, 512), (640, 512))
    error = corner_error_px(fitted, calibrate_truth_at_640(), (640, 512))
    with capsys.disabled():
        print(f'\nend to end, shipped model, 2 pairs run at 160x128 (--max-side 160): corner '
              f'error {error:.1f} px at 640x512')
    assert np.isfinite(error)
    pairs = calibrate.downscale_pairs([('a', np.zeros((471, 640), np.uint8),
                                        np.zeros((480, 640, 3), np.uint8))], 320)
    assert pairs[0][1].shape == (236, 320) and pairs[0][2].shape == (240, 320, 3)


def test_an_upper_case_onnx_file_is_run_by_onnxruntime(rig_folder, tmp_path, capsys):
    # 'MODEL.ONNX' was handed to the PyTorch loader (a .safetensors error); tarfuse-fuse
    # already compared the suffix without case.
    model = tmp_path / 'MODEL.ONNX'
    model.write_bytes(b'not an ONNX graph')
    code = calibrate.main(['--pairs', str(rig_folder), '--out', str(tmp_path / 'p.yaml'),
                           '--weights', str(model), '--pairs-count', '1', '--iterations', '1',
                           '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err
    assert 'is not a loadable ONNX model' in err and 'safetensors file' not in err


def _rig_copy(rig_folder, out, ir_image):
    """Copy the rig folder to ``out`` with each IR replaced by ``ir_image(ir)``."""
    for sub in ('ir', 'vi'):
        (out / sub).mkdir(parents=True)
    for path in sorted((rig_folder / 'vi').iterdir()):
        (out / 'vi' / path.name).write_bytes(path.read_bytes())
        ir = cv2.imread(str(rig_folder / 'ir' / path.name), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(out / 'ir' / path.name), ir_image(ir))
    return out


def test_stems_in_one_folder_only_are_named_in_a_warning_and_left_out(
        rig_folder, tmp_path, capsys):
    # They were dropped without a word: a user with 7 IR frames missing saw 2 pairs used.
    folder = _rig_copy(rig_folder, tmp_path / 'gaps', lambda ir: ir)
    ir_file = sorted((rig_folder / 'ir').iterdir())[0]
    vi_file = sorted((rig_folder / 'vi').iterdir())[0]
    for index in range(7):  # real images under stems the other folder lacks
        (folder / 'ir' / f'ir_only_{index}.png').write_bytes(ir_file.read_bytes())
    (folder / 'vi' / 'vi_only_0.png').write_bytes(vi_file.read_bytes())
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(folder), '--out', str(out), '--iterations', '1',
                           '--max-side', '160', '--min-inliers', '0', '--threads', '1'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert ('tarfuse-calibrate: warning: left out 7 IR images without a visible image of the '
            'same stem: ir_only_0, ir_only_1, ir_only_2, ir_only_3, ir_only_4, ... (2 more)\n'
            ) in captured.err, captured.err
    assert ('tarfuse-calibrate: warning: left out 1 visible image without an IR image of the '
            'same stem: vi_only_0\n') in captured.err, captured.err
    assert 'fitted on' in captured.out and 'ir_only' not in captured.out
    assert load_prior_yaml(out) is not None
    # No pair left: exit 2 naming both sides' stems.
    for path in (folder / 'vi').iterdir():
        if not path.stem.startswith('vi_only'):
            path.unlink()
    code = calibrate.main(['--pairs', str(folder), '--out', str(tmp_path / 'q.yaml'),
                           '--iterations', '1', '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"tarfuse-calibrate: error: no IR/visible pair in '{folder}' (split "
                          f"'all'); left out 9 IR images without a visible image of the same "
                          f'stem: '), err
    assert 'left out 1 visible image without an IR image of the same stem: vi_only_0' in err, err
    assert not (tmp_path / 'q.yaml').exists()


def test_a_constant_ir_exits_2_naming_the_pairs_before_the_model_runs(rig_folder, tmp_path,
                                                                      capsys):
    # A lens cap: it wrote a prior fitted to the frame border alone (20 points), exit 0.
    capped = _rig_copy(rig_folder, tmp_path / 'capped', lambda ir: np.full_like(ir, 128))
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(capped), '--out', str(out), '--iterations', '1',
                           '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    stems = data.read_split(capped)
    assert err.startswith('tarfuse-calibrate: error: constant image'), err
    for stem in stems:
        assert f"'{stem}' (IR)" in err
    assert 'iteration' not in err and not out.exists()


def test_a_camera_mounted_on_its_side_exits_2_before_the_model_runs(rig_folder, tmp_path,
                                                                    capsys):
    # A portrait IR beside a landscape visible camera (stretched to it, not turned): the model
    # ran and a prior was written, one pair named as disagreeing with it (exit 0).
    turned = _rig_copy(rig_folder, tmp_path / 'turned',
                       lambda ir: cv2.rotate(ir, cv2.ROTATE_90_CLOCKWISE))
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(turned), '--out', str(out), '--iterations', '1',
                           '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (f'the IR images are {SIZE[1]}x{SIZE[0]} and the visible {SIZE[0]}x{SIZE[1]}, one '
            f'portrait, the other landscape: is a camera mounted on its side?') in err, err
    assert 'iteration' not in err and not out.exists()


def test_a_featureless_ir_writes_no_prior_and_exits_1(tmp_path, capsys):
    # A lens cap with sensor noise over the six pairs: each pair's flow is smooth but they
    # disagree, and it wrote their fit (on CVC-14 pairs a 1.6 y scale and a 90 px offset) with
    # 41 % inliers, exit 0. (One or two pairs can still agree by chance: use many.)
    rng = np.random.default_rng(0)
    noisy = tmp_path / 'noisy'
    for sub in ('ir', 'vi'):
        (noisy / sub).mkdir(parents=True)
    for stem in data.read_split(ROADSCENE):
        ir, vi = data.load_pair(ROADSCENE, stem)
        cv2.imwrite(str(noisy / 'vi' / f'{stem}.png'), cv2.resize(vi, SIZE))
        cv2.imwrite(str(noisy / 'ir' / f'{stem}.png'), np.clip(
            128 + rng.normal(0.0, 2.0, SIZE[::-1]), 0, 255).astype(np.uint8))
    out = tmp_path / 'p.yaml'
    argv = ['--pairs', str(noisy), '--out', str(out), '--iterations', '1', '--threads', '1',
            '--max-side', '160']
    code = calibrate.main(argv)
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert 'no prior written: the fit explains' in captured.err, captured.err
    assert '< --min-inliers 0.5' in captured.err and not out.exists()
    assert 'fitted on' in captured.out  # the per-pair report is still printed
    # Asked for: written (the noise shares no scene with the visible image either).
    assert calibrate.main(argv + ['--min-inliers', '0', '--min-alignment-gain', '-2']) == 0
    assert load_prior_yaml(out) is not None


def test_pairs_whose_cameras_see_no_common_scene_write_no_prior(tmp_path, capsys):
    # Each IR of another RoadScene scene than its visible image: the network's flow is smooth,
    # and a homography fitted to it explained 100 % of it (median 0.1 px): a prior of 1.38
    # x scale and 0.26 shear was written, exit 0.
    stems = data.read_split(ROADSCENE)[:2]
    unrelated = tmp_path / 'unrelated'
    for sub in ('ir', 'vi'):
        (unrelated / sub).mkdir(parents=True)
    for stem, other in zip(stems, stems[::-1]):
        ir, _ = data.load_pair(ROADSCENE, stem)
        _, vi = data.load_pair(ROADSCENE, other)
        cv2.imwrite(str(unrelated / 'ir' / f'{stem}.png'), cv2.resize(ir, SIZE))
        cv2.imwrite(str(unrelated / 'vi' / f'{stem}.png'), cv2.resize(vi, SIZE))
    out = tmp_path / 'p.yaml'
    argv = ['--pairs', str(unrelated), '--out', str(out), '--iterations', '1', '--threads',
            '1', '--max-side', '160']
    for count in ('1', '2'):
        code = calibrate.main(argv + ['--pairs-count', count])
        captured = capsys.readouterr()
        assert code == 1, captured.out
        assert 'the two cameras do not seem to see one scene' in captured.err, captured.err
        assert not out.exists()
        assert 'edge alignment of the IR warped by the prior' in captured.out


def test_a_pair_the_prior_does_not_explain_is_named_in_a_warning(tmp_path, capsys):
    # Two real CVC-14 pairs of one rig: the fit follows one (100 % inliers) and explains none
    # of the other's points, 52 % over all, above --min-inliers: the prior was written, exit
    # 0, with no word that half of the pairs disagree with it.
    cvc14 = ROOT / 'test' / 'data' / 'datasets' / 'cvc14_misaligned'
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--pairs', str(cvc14), '--out', str(out), '--iterations', '1',
                           '--threads', '1', '--max-side', '160'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    low = [line.split()[0] for line in captured.out.splitlines()
           if line.startswith('cvc14_') and float(line.split()[3].rstrip('%')) < 50]
    assert low, captured.out  # the case this test is about
    warning = [line for line in captured.err.splitlines()
               if line.startswith('tarfuse-calibrate: warning: the prior explains less than')]
    assert len(warning) == 1, captured.err
    assert f'of {len(low)} of 2 pairs ({", ".join(low)})' in warning[0]
    assert out.exists()


def test_one_topic_given_for_both_cameras_is_refused_before_the_model_runs(tmp_path, capsys):
    # --infrared-topic naming the visible topic paired each visible image with itself: an
    # identity prior at 100 % inliers, written, exit 0 (tarfuse-time-offset refuses it).
    bag = tmp_path / 'bag'
    make_bag(ROOT / 'test' / 'data' / 'datasets' / 'cvc14_misaligned', bag, rate=10.0,
             size=(160, 118))
    out = tmp_path / 'p.yaml'
    for argv in (['--infrared-topic', '/visible/image_raw'],
                 ['--infrared-topic', '/visible/image_raw', '--visible-topic',
                  '/visible/image_raw']):
        code = calibrate.main(['--bag', str(bag), '--out', str(out), '--iterations', '1',
                               '--threads', '1'] + argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "the IR and visible topics are one topic ('/visible/image_raw')" in err, err
        assert 'iteration' not in err and not out.exists()


def test_a_bag_whose_ir_topic_is_empty_names_that_topic(tmp_path, capsys):
    # It said "no message on '/visible/image_raw' or '/infrared/image_raw'": which?
    from tarfuse_ros.tools.bagio import image_cdr, jazzy_typestore, offered_qos, open_writer
    typestore = jazzy_typestore()
    writer = open_writer(tmp_path / 'bag', typestore)
    for topic in ('/infrared/image_raw', '/visible/image_raw'):
        connection = writer.add_connection(topic, 'sensor_msgs/msg/Image', typestore=typestore,
                                           offered_qos_profiles=offered_qos())
    _, vi = data.load_pair(ROADSCENE, data.read_split(ROADSCENE)[0])
    writer.write(connection, 1_700_000_000_000_000_000,
                 image_cdr(vi, 'bgr8', 'visible', 1_700_000_000_000_000_000))
    writer.close()
    out = tmp_path / 'p.yaml'
    assert calibrate.main(['--bag', str(tmp_path / 'bag'), '--out', str(out), '--threads',
                           '1']) == 2
    err = capsys.readouterr().err
    assert "the bag has no message on '/infrared/image_raw' (its topic is recorded" in err, err
    assert not out.exists()


def test_bag_images_without_an_ir_partner_within_slop_are_named_not_dropped_silently(
        tmp_path, capsys):
    """Visible images whose nearest IR image is beyond --slop are left out with a warning."""
    bag = tmp_path / 'jittered_bag'
    # IR stamped up to 45 ms from its visible image (seeded): some beyond a 20 ms slop.
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), jitter_ms=45.0, seed=0,
             max_pairs=4)
    pairs = calibrate.bag_pairs(bag, 4, slop_s=0.02)
    warning = capsys.readouterr().err
    found = re.search(r'warning: (\d+) of 4 chosen visible images have no IR image within '
                      r'--slop 0.02 s \(nearest (\d\.\d{3})-(\d\.\d{3}) s away\)', warning)
    assert found, warning
    left_out = int(found.group(1))
    assert left_out >= 1 and len(pairs) + left_out == 4, (len(pairs), warning)
    assert 0.02 < float(found.group(2)) <= float(found.group(3)) <= 0.045, warning
    assert 'raise --slop' in warning
    # Every IR image 30 ms late: none within 20 ms, the command says how far they are.
    late = tmp_path / 'late_bag'
    make_bag(ROOT / 'samples', late, rate=10.0, size=(160, 128), offset_ms=30.0, max_pairs=2)
    code = calibrate.main(['--bag', str(late), '--out', str(tmp_path / 'p.yaml'),
                           '--slop', '0.02', '--iterations', '1'])
    printed = capsys.readouterr().err
    assert code == 2, printed
    assert 'no IR image within --slop 0.02 s' in printed and '0.030-0.030 s away' in printed
    assert not (tmp_path / 'p.yaml').exists()


def test_the_infrared_time_offset_pairs_ir_stamped_late_with_the_visible_image_of_its_instant(
        tmp_path, capsys):
    """IR stamped 30 ms after its visible partner: -0.03 s pairs each with that partner.

    The same correction as the node's sync.infrared_time_offset, so the calibration pairs the
    frames the node pairs. The pairs of the bag are distinct scenes, so a wrong partner shows.
    """
    bag = tmp_path / 'late_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), offset_ms=30.0, max_pairs=3)
    from tarfuse_ros.tools.bagio import header_stamp_ns, image_to_array, read_messages
    images = {(topic, header_stamp_ns(raw)): image_to_array(msg)[0]
              for topic, _, _, raw, msg in read_messages(bag)}
    vi_stamps = sorted(stamp for topic, stamp in images if topic == '/visible/image_raw')
    with pytest.raises(calibrate.UsageError, match='--infrared-time-offset'):
        calibrate.bag_pairs(bag, 3, slop_s=0.02)  # 30 ms apart: none within 20 ms
    pairs = calibrate.bag_pairs(bag, 3, slop_s=0.02, ir_offset_s=-0.03)
    assert [name for name, _, _ in pairs] == [
        f'{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}' for stamp in vi_stamps]
    for (name, ir, vi), stamp in zip(pairs, vi_stamps):
        assert np.array_equal(vi, images[('/visible/image_raw', stamp)])
        assert np.array_equal(ir, images[('/infrared/image_raw', stamp + 30_000_000)]), name
    # The wrong sign: 60 ms after their partners, 40 ms before the next visible images.
    with pytest.raises(calibrate.UsageError, match=r'0\.040-0\.060 s away, the IR stamps '
                                                   r'moved \+0\.03 s by --infrared-time-offset'):
        calibrate.bag_pairs(bag, 3, slop_s=0.02, ir_offset_s=0.03)
    # The command line takes it to the same pairing (one model run on two pairs).
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--bag', str(bag), '--out', str(out), '--slop', '0.02',
                           '--infrared-time-offset', '-0.03', '--pairs-count', '2',
                           '--iterations', '1', '--min-inliers', '0'])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert load_prior_yaml(out) is not None


def test_the_chosen_pairs_are_read_one_at_a_time_not_held_all_at_once(tmp_path, capsys):
    # Every chosen pair was held from reading to the end, and downscaled copies beside them
    # (6.5 MB a 1080p pair): 8 pairs of 1280x1024 peaked 6 pairs (31 MB) above 2 pairs.
    import tracemalloc
    bag = tmp_path / 'large_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(1280, 1024), loops=2,
             ir_transport='compressed', vi_transport='compressed')
    pair_bytes = 1280 * 1024 * (3 + 1)  # bgr8 visible, mono8 IR
    peaks = {}
    for count in (2, 8):
        out = tmp_path / f'prior_{count}.yaml'
        tracemalloc.start()
        try:
            code = calibrate.main(['--bag', str(bag), '--out', str(out), '--pairs-count',
                                   str(count), '--iterations', '2', '--max-side', '64',
                                   '--min-inliers', '0', '--min-alignment-gain', '-2',
                                   '--threads', '1'])
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        printed = capsys.readouterr()
        assert code == 0, printed.err
        assert f'pair {count}/{count}' in printed.err
    assert peaks[8] - peaks[2] < pair_bytes, {n: f'{peak / 1e6:.1f} MB'
                                              for n, peak in peaks.items()}


def test_pairs_read_one_at_a_time_give_the_prior_of_the_pairs_held_in_memory(tmp_path, capsys):
    # As the command fitted before its pairs were read one at a time: all of them decoded
    # into memory at once, then the model run on them twice.
    from tarfuse_ros.core.calibration import calibrate as fit
    from tarfuse_ros.tools.bagio import header_stamp_ns, image_to_array, read_messages
    bag = tmp_path / 'late_bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), offset_ms=20.0, loops=2)
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--bag', str(bag), '--out', str(out), '--infrared-time-offset',
                           '-0.02', '--pairs-count', '4', '--iterations', '2',
                           '--min-inliers', '0', '--min-alignment-gain', '-2', '--threads', '1'])
    assert code == 0, capsys.readouterr().err
    images = {(topic, header_stamp_ns(raw)): image_to_array(msg)[0]
              for topic, _, _, raw, msg in read_messages(bag)}
    vi_stamps = sorted(stamp for topic, stamp in images if topic == '/visible/image_raw')
    held = [(str(stamp), images[('/infrared/image_raw', stamp + 20_000_000)],
             images[('/visible/image_raw', stamp)])
            for stamp in (vi_stamps[index] for index in calibrate.spread_indices(10, 4))]
    expected = fit(held, calibrate._engine_factory(None, 'cpu'), iterations=2).prior
    assert np.array_equal(load_prior_yaml(out).homography, expected.homography)


def test_a_bag_rewritten_while_calibrating_is_named_not_fitted_on_other_images(
        tmp_path, capsys, monkeypatch):
    # The pairs are read again from the bag whenever they are used: a bag recorded again
    # into the same folder (same stamps, other scenes or sizes) gave the model other images
    # than those checked, without a word (a prior of other pairs, or exit 1 'several image
    # sizes' when the size changed).
    import shutil
    bag = tmp_path / 'bag'
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), max_pairs=3)
    pairs = calibrate.bag_pairs(bag, 3)
    name, _, _ = pairs[1]
    shutil.rmtree(bag)
    make_bag(ROOT / 'test' / 'data' / 'datasets' / 'cvc14_misaligned', bag, rate=10.0,
             size=(160, 128), max_pairs=3)
    pairs[0]  # never read before: taken as it is now
    with pytest.raises(calibrate.UsageError, match=rf"pair '{name}' changed since it was "
                                                   rf"first read: .*'{bag}'"):
        pairs[1]

    # The command: the bag recorded again at another size after the pairs were checked.
    shutil.rmtree(bag)
    make_bag(ROOT / 'samples', bag, rate=10.0, size=(160, 128), max_pairs=2)
    surveyed = calibrate._survey

    def survey_then_record_again(pairs):
        rows = surveyed(pairs)
        shutil.rmtree(bag)
        make_bag(ROOT / 'samples', bag, rate=10.0, size=(200, 100), max_pairs=2)
        return rows
    monkeypatch.setattr(calibrate, '_survey', survey_then_record_again)
    out = tmp_path / 'p.yaml'
    code = calibrate.main(['--bag', str(bag), '--out', str(out), '--iterations', '1',
                           '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'changed since it was first read' in err and 'several image sizes' not in err, err
    assert not out.exists()


def test_a_folder_image_replaced_while_calibrating_is_named(rig_folder, tmp_path):
    import shutil
    folder = _rig_copy(rig_folder, tmp_path / 'rig', lambda ir: ir)
    pairs = calibrate.folder_pairs(folder, 2)
    stem, _, _ = pairs[0]
    ir_file = next((folder / 'ir').glob(f'{stem}.*'))
    other = next(path for path in sorted((folder / 'ir').iterdir()) if path != ir_file)
    shutil.copyfile(other, ir_file)  # the same size, another scene
    with pytest.raises(calibrate.UsageError, match=rf"pair '{stem}' changed since it was "
                                                   rf"first read: .*'{folder}'"):
        pairs[0]


def test_images_with_a_zero_stamp_are_left_out_and_named_not_paired_or_blamed_on_slop(
        tmp_path, capsys):
    # A driver's first visible image stamped 0 (before its clock was set), as the node refuses
    # it: it was chosen as the recording's first pair and left out as 'nearest IR images
    # 1700000000.000 s away; raise --slop', and with --pairs-count 1 the command exited 2
    # on it.
    from tarfuse_ros.tools.bagio import image_cdr, jazzy_typestore, offered_qos, open_writer
    typestore = jazzy_typestore()

    def write(bag, stamps):
        """Write three pairs at 10 Hz, ``stamps(index, at) -> (visible, IR)`` header stamps."""
        writer = open_writer(bag, typestore)
        connections = {camera: writer.add_connection(
            f'/{camera}/image_raw', 'sensor_msgs/msg/Image', typestore=typestore,
            offered_qos_profiles=offered_qos()) for camera in ('infrared', 'visible')}
        for index, stem in enumerate(data.read_split(ROADSCENE)[:3]):
            ir, vi = (cv2.resize(image, (160, 128)) for image in data.load_pair(ROADSCENE, stem))
            at = 1_700_000_000_000_000_000 + index * 100_000_000
            vi_stamp, ir_stamp = stamps(index, at)
            writer.write(connections['visible'], at, image_cdr(vi, 'bgr8', 'vi', vi_stamp))
            writer.write(connections['infrared'], at, image_cdr(ir, 'mono8', 'ir', ir_stamp))
        writer.close()
        return bag

    write(tmp_path / 'bag', lambda index, at: (0 if index == 0 else at, at))
    pairs = calibrate.bag_pairs(tmp_path / 'bag', 1)
    err = capsys.readouterr().err
    assert [name for name, _, _ in pairs] == ['1700000000.100000000'], err
    assert ("1 of 3 images on '/visible/image_raw' have a zero header stamp (the node refuses "
            'them), left out') in err, err
    assert '--slop' not in err
    assert len(calibrate.bag_pairs(tmp_path / 'bag', 3)) == 2
    # An IR driver that never stamps: named as such, not as an empty topic.
    with pytest.raises(calibrate.UsageError, match=r"no message on '/infrared/image_raw' \(its "
                                                   r'images all have a zero header stamp'):
        calibrate.bag_pairs(write(tmp_path / 'unstamped', lambda index, at: (at, 0)), 3)
