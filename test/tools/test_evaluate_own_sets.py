"""tarfuse-eval on a user's own data set folder, and the mistakes such a folder may hold.

Each test lays out a small set as a user would (``ir/``, ``vi/``, ``labels/`` with YOLO files
and ``classes.txt``, list files of stems) from real RoadScene pairs of ``test/data/datasets``,
and runs the tool on it with the shipped weights.
"""

import json
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from tarfuse_ros.tools.evaluate import main

ROADSCENE = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
# Labelled pairs of different sizes (329 x 500, 322 x 478, 346 x 507).
STEMS = ('FLIR_00006', 'FLIR_00018', 'FLIR_00122')


def own_set(folder, stems=STEMS):
    """Lay out RoadScene pairs in ``folder`` as a user's own set (list file ``test.txt``)."""
    for sub in ('ir', 'vi', 'labels'):
        (folder / sub).mkdir(parents=True)
    for stem in stems:
        for sub in ('ir', 'vi'):
            shutil.copy(ROADSCENE / sub / f'{stem}.jpg', folder / sub)
        shutil.copy(ROADSCENE / 'labels' / f'{stem}.txt', folder / 'labels')
    shutil.copy(ROADSCENE / 'labels' / 'classes.txt', folder / 'labels')
    (folder / 'test.txt').write_text('\n'.join(stems) + '\n')
    return folder


def evaluate(data_dir, out, *extra):
    """Run ``tarfuse-eval`` on ``data_dir`` into ``out``, small and quick; return its status."""
    return main(['--data', str(data_dir), '--out', str(out), '--max-side', '96', '--figures',
                 '0', '--no-progress', '--threads', '1', *extra])


def test_a_stem_listed_twice_is_refused(tmp_path, capsys):
    # The pair was evaluated twice without a word, counting twice in every mean.
    data_dir = own_set(tmp_path / 'own')
    (data_dir / 'twice.txt').write_text('FLIR_00006\nFLIR_00018\n\nFLIR_00006.jpg\n')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'twice.txt') == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: split file '{data_dir / 'twice.txt'}' lists 'FLIR_00006' twice "
        '(lines 1 and 4): its pair would count twice; remove one of the lines\n')
    assert not (tmp_path / 'eval').exists()


def test_a_label_folder_with_its_own_classes_txt_is_read_with_it(tmp_path, capsys):
    # --labels DIR named a folder labelled in another class order, with its classes.txt: the
    # set's classes.txt was used instead, so its cars were scored as persons.
    data_dir = own_set(tmp_path / 'own')
    names = (data_dir / 'labels' / 'classes.txt').read_text().split()
    swapped = list(reversed(names))
    (data_dir / 'labels_swapped').mkdir()
    (data_dir / 'labels_swapped' / 'classes.txt').write_text('\n'.join(swapped) + '\n')
    for stem in STEMS:
        rows = [line.split() for line in (data_dir / 'labels' / f'{stem}.txt').open()]
        (data_dir / 'labels_swapped' / f'{stem}.txt').write_text(''.join(
            f'{swapped.index(names[int(row[0])])} {" ".join(row[1:])}\n' for row in rows if row))
    per_class = []
    for labels in ('labels', 'labels_swapped'):
        out = tmp_path / labels
        assert evaluate(data_dir, out, '--split', 'test', '--labels', labels) == 0, \
            capsys.readouterr().err
        detection = json.loads((out / 'metrics.json').read_text())['detection']['per_class']
        per_class.append({name: values['num_gt'] for name, values in detection.items()})
    assert per_class[0] == per_class[1] == {'car': 15}  # these pairs hold cars only


def test_boxes_of_classes_the_model_does_not_know_are_named_once(tmp_path, caplog):
    # Their boxes left the scores without a word: only a count deep in the report said so.
    data_dir = own_set(tmp_path / 'own')
    with open(data_dir / 'labels' / 'classes.txt', 'a') as handle:
        handle.write('truck\ntraffic sign\n')
    for stem, extra in zip(STEMS, ('3 0.5 0.5 0.2 0.2\n4 0.1 0.1 0.05 0.05\n',
                                   '3 0.4 0.6 0.1 0.1\n', '')):
        with open(data_dir / 'labels' / f'{stem}.txt', 'a') as handle:
            handle.write(extra)
    out = tmp_path / 'eval'
    assert evaluate(data_dir, out, '--split', 'test') == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert warnings == [
        'the model does not know the label classes truck (2 boxes), traffic sign (1 box): '
        'those 3 boxes are left out of the detection scores (its classes: person, bicycle, '
        'car)']
    labels = json.loads((out / 'metrics.json').read_text())['detection_labels']
    assert labels['dropped_boxes_unknown_class'] == 3
    assert labels['dropped_boxes_by_class'] == {'truck': 2, 'traffic sign': 1}
    assert '3 boxes of classes unknown to the model (truck 2, traffic sign 1) dropped' in \
        (out / 'report.md').read_text()


def test_a_model_without_a_detection_head_is_said_to_detect_no_class(tmp_path, caplog):
    # The medical model on a labelled set: '... left out of the detection scores (its
    # classes: )', an empty list.
    data_dir = own_set(tmp_path / 'own')
    weights = Path(__file__).resolve().parents[2] / 'models' / 'tarfuse_medical.safetensors'
    assert evaluate(data_dir, tmp_path / 'eval', '--max-pairs', '1', '--weights',
                    str(weights)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and warnings[0].endswith(
        'are left out of the detection scores (it has no detection head: it detects no '
        'class)'), warnings


def test_label_ids_without_a_classes_txt_are_said_to_be_read_as_the_models(tmp_path, caplog):
    # They were scored as the model's classes without a word (training refuses such labels).
    data_dir = own_set(tmp_path / 'own')
    (data_dir / 'labels' / 'classes.txt').unlink()
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test') == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert warnings == [
        f'no classes.txt names the class ids of {data_dir / "labels"}: they are read as the ids '
        f'of the model (0 person, 1 bicycle, 2 car); if they mean other classes, write their '
        f'names, one a line in id order, to {data_dir / "classes.txt"}']


def test_split_all_names_the_images_without_a_partner(tmp_path, caplog):
    # An IR image without its visible image (or the reverse) was left out without a word.
    data_dir = own_set(tmp_path / 'own')
    shutil.copy(ROADSCENE / 'ir' / 'FLIR_00060.jpg', data_dir / 'ir')
    for stem in ('FLIR_00211', 'FLIR_00550', *(f'extra_{i}' for i in range(5))):
        shutil.copy(ROADSCENE / 'vi' / 'FLIR_00211.jpg', data_dir / 'vi' / f'{stem}.jpg')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'all', '--max-pairs', '1') == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'] == [
        '--split all: left out 1 IR image without a visible image of the same stem: '
        'FLIR_00060',
        '--split all: left out 7 visible images without an IR image of the same stem: '
        'FLIR_00211, FLIR_00550, extra_0, extra_1, extra_2, ... (2 more)']


def test_a_stem_with_two_image_files_is_refused(tmp_path, capsys):
    # ir/x.jpg beside ir/x.png: one of them was evaluated, whichever the folder listed first.
    data_dir = own_set(tmp_path / 'own')
    shutil.copy(ROADSCENE / 'ir' / 'FLIR_00018.jpg', data_dir / 'ir' / 'FLIR_00018.png')
    for split in ('test', 'all'):
        assert evaluate(data_dir, tmp_path / 'eval', '--split', split) == 2
        assert capsys.readouterr().err == (
            f"tarfuse-eval: error: 2 ir/ images of stem 'FLIR_00018' in '{data_dir}': "
            "FLIR_00018.jpg, FLIR_00018.png; keep the pair's one\n")
        assert not (tmp_path / 'eval').exists()


def test_a_set_whose_image_names_pair_nothing_names_them(tmp_path, capsys, caplog):
    """IR and visible images of other names: 'lists no pair', without saying why."""
    data_dir = own_set(tmp_path / 'own', stems=STEMS[:2])
    (data_dir / 'vi' / 'FLIR_00006.jpg').rename(data_dir / 'vi' / 'VIS_00006.jpg')
    (data_dir / 'vi' / 'FLIR_00018.jpg').rename(data_dir / 'vi' / 'VIS_00018.jpg')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'all') == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: split 'all' of '{data_dir}' lists no pair (left out 2 IR "
        'images without a visible image of the same stem: FLIR_00006, FLIR_00018; left out 2 '
        'visible images without an IR image of the same stem: VIS_00006, VIS_00018; an IR and '
        'a visible image pair up by their file name without the extension): nothing to '
        'evaluate\n')
    assert not (tmp_path / 'eval').exists()
    # One pair of the same name: it alone is evaluated, the others named.
    (data_dir / 'vi' / 'VIS_00006.jpg').rename(data_dir / 'vi' / 'FLIR_00006.jpg')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'all') == 0
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['pairs'] == [
        'FLIR_00006']
    assert 'left out 1 visible image without an IR image of the same stem: VIS_00018' in \
        caplog.text


def test_an_empty_split_is_refused(tmp_path, capsys):
    # A list file without stems crashed in the report (a traceback, exit status 1) after
    # writing a metrics.json of no pairs.
    data_dir = own_set(tmp_path / 'own')
    (data_dir / 'none.txt').write_text('# to do: pick the test pairs\n\n')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'none') == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: split 'none' of '{data_dir}' lists no pair: nothing to "
        'evaluate\n')
    assert not (tmp_path / 'eval').exists()
    # --max-pairs 0 was refused already.
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test', '--max-pairs', '0') == 2
    assert capsys.readouterr().err == 'tarfuse-eval: error: --max-pairs must be >= 1, got 0\n'


def test_a_box_of_no_area_is_refused_naming_its_line(tmp_path, capsys):
    # A box with width or height 0 counted as an object no detection could match (mAP50 of
    # the MSRS pairs fell from 0.605 to 0.557), and training crops dropped it unseen.
    data_dir = own_set(tmp_path / 'own')
    label = data_dir / 'labels' / f'{STEMS[1]}.txt'
    lines = label.read_text().splitlines()
    label.write_text('\n'.join(lines + ['0 0.5 0.5 0.1 0']) + '\n')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test') == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: '{label}' line {len(lines) + 1} ('0 0.5 0.5 0.1 0'): box width "
        'and height must be > 0 (a box of no area marks no object)\n')
    assert not (tmp_path / 'eval').exists()


def test_the_units_of_epe_are_stated_with_max_side(tmp_path, capsys):
    # With --max-side the EPE is in pixels of the downscaled images; nothing said so.
    data_dir = own_set(tmp_path / 'own')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test', '--max-pairs', '1') == 0
    units = ('px of the evaluated visible images, downscaled where larger so that their '
             'longer side is at most 96 px (not pixels of the stored images)')
    result = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert units in result['conventions']['registration']
    assert f'EPE in {units}' in (tmp_path / 'eval' / 'report.md').read_text()
    assert ' px at max side 96 (unregistered ' in capsys.readouterr().out
    from tarfuse_ros.evaluation.aggregate import conventions
    assert 'EPE in px of the stored visible images (native size)' in conventions(
        True, 0.001, 0.6)['registration']


def _outputs(out):
    """Return ``{relative path: bytes}`` of every file under ``out``."""
    return {str(path.relative_to(out)): path.read_bytes()
            for path in sorted(out.rglob('*')) if path.is_file()}


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_evaluation_with_one_line(tmp_path, signum):
    # It printed a Python traceback of wherever the model was; and a rerun into an earlier
    # evaluation's --out deleted its metrics.json, report.md and figures at the start, so the
    # interrupted rerun left nothing. SIGTERM (timeout, kill) killed it, leaving this run's
    # figures in a temporary folder.
    data_dir = own_set(tmp_path / 'own')
    out = tmp_path / 'eval'
    assert evaluate(data_dir, out, '--max-pairs', '1', '--figures', '1') == 0
    earlier = _outputs(out)
    assert {'metrics.json', 'report.md', 'figures/FLIR_00006_grid.png'} <= set(earlier)
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.evaluate', '--data', str(data_dir), '--split',
         'test', '--out', str(out), '--no-progress', '--threads', '1'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob('.figures.*.tmp/*.png')) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out.glob('.figures.*.tmp/*.png')), 'no pair done in 120 s'
        process.send_signal(signum)  # the first of three native-size pairs is done
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == (
        'tarfuse-eval: interrupted; the evaluation is incomplete: no metrics.json or report.md '
        "written (an earlier evaluation's results in --out are kept)")
    assert 'Traceback' not in stderr and 'pairs ' not in stdout
    assert _outputs(out) == earlier
    assert sorted(path.name for path in out.iterdir()) == ['figures', 'metrics.json',
                                                           'report.md']


def test_a_failed_rerun_keeps_the_earlier_evaluation(tmp_path, capsys):
    # A rerun into an earlier evaluation's --out deleted its metrics.json, report.md and figures
    # before the first pair: a pair refused half-way left none of the earlier results.
    data_dir = own_set(tmp_path / 'own')
    out = tmp_path / 'eval'
    assert evaluate(data_dir, out, '--max-pairs', '2', '--figures', '2') == 0
    earlier = _outputs(out)
    assert len([name for name in earlier if name.startswith('figures/')]) == 4
    broken = data_dir / 'vi' / f'{STEMS[2]}.jpg'
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) // 2])
    capsys.readouterr()
    assert evaluate(data_dir, out, '--figures', '3') == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: cannot read image '{broken}': truncated JPEG (the file ends "
        'before the image does)\n')
    assert _outputs(out) == earlier
    assert sorted(path.name for path in out.iterdir()) == ['figures', 'metrics.json',
                                                           'report.md']
    # Complete, the rerun replaces them: its own figures, none of the earlier ones left.
    assert evaluate(data_dir, out, '--max-pairs', '1', '--figures', '1') == 0
    assert sorted(_outputs(out)) == ['figures/FLIR_00006_checkerboard.png',
                                     'figures/FLIR_00006_grid.png', 'metrics.json', 'report.md']
    assert json.loads((out / 'metrics.json').read_text())['pairs'] == ['FLIR_00006']


def test_figures_on_another_file_system_are_written(tmp_path):
    # figures/ as a link to another disk: this run's figures, made beside it in --out, were
    # moved there by os.replace, which raised 'Invalid cross-device link' after the whole run
    # (a traceback, no metrics.json, the temporary folder left in --out).
    shm = Path('/dev/shm')
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip('needs /dev/shm on a file system of its own')
    other = Path(tempfile.mkdtemp(prefix='tarfuse_test_figures_', dir=shm))
    try:
        data_dir = own_set(tmp_path / 'own')
        out = tmp_path / 'eval'
        out.mkdir()
        (out / 'figures').symlink_to(other)
        assert evaluate(data_dir, out, '--max-pairs', '1', '--figures', '1') == 0
        assert sorted(path.name for path in out.iterdir()) == ['figures', 'metrics.json',
                                                               'report.md']
        assert sorted(path.name for path in other.iterdir()) == [
            'FLIR_00006_checkerboard.png', 'FLIR_00006_grid.png']
    finally:
        shutil.rmtree(other)


def test_labelled_pairs_without_a_box_give_a_well_formed_detection_table(tmp_path):
    # Label files without a box (scenes without a person or car): the detection table's
    # header had an empty fourth cell over a rule of three columns, and each row a fourth.
    data_dir = own_set(tmp_path / 'own')
    for stem in STEMS:
        (data_dir / 'labels' / f'{stem}.txt').write_text('')
    assert evaluate(data_dir, tmp_path / 'eval', '--max-pairs', '1') == 0
    result = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert result['detection']['num_gt'] == 0 and result['detection']['map50'] is None
    report = (tmp_path / 'eval' / 'report.md').read_text().splitlines()
    start = report.index('| method | mAP@0.5 | mAP@0.5:0.95 |')
    assert report[start + 1] == '|---|---|---|'
    assert report[start + 2:start + 6] == [
        f'| {name} | n/a | n/a |'
        for name in ('TarFuse (fused)', 'model_zero_flow', 'visible_only', 'ir_only')]


def test_results_are_written_whole_or_not_at_all(tmp_path):
    # metrics.json and report.md were written in place: a run stopped in the write (Ctrl-C, a
    # full disk) left half a file under the name.
    from tarfuse_ros.core.files import write_text_atomic
    report = tmp_path / 'report.md'
    write_text_atomic(report, '# TarFuse evaluation\n')
    with pytest.raises(UnicodeEncodeError):  # fails once the file is open for writing
        write_text_atomic(report, '# TarFuse evaluation\n' * 1000 + 'stem \udce9\n')
    assert report.read_text() == '# TarFuse evaluation\n'
    assert [p.name for p in tmp_path.iterdir()] == ['report.md']


def test_the_speed_names_every_image_size_and_the_machine(tmp_path):
    # speed.image_size gave the first pair's size only, though the pairs' sizes differ; and
    # neither metrics.json nor report.md named the processor the times were taken on.
    data_dir = own_set(tmp_path / 'own')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test') == 0
    result = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    sizes = [entry['size'] for entry in result['per_pair']]
    assert len({tuple(size) for size in sizes}) == 3
    assert result['speed']['image_sizes'] == sorted(sizes)
    assert 'image_size' not in result['speed']
    shown = ', '.join(f'{height}x{width}' for height, width in sorted(sizes))
    report = (tmp_path / 'eval' / 'report.md').read_text()
    assert f'CPU threads, images of {shown} px (height x width)' in report
    from tarfuse_ros.core.cpus import machine_facts
    assert result['speed']['machine'] == machine_facts() and result['speed']['gpu'] is None
    assert f'\n- machine: {machine_facts()}\n' in report


def test_a_prior_of_an_ir_camera_with_another_aspect_ratio_is_applied(tmp_path, capsys):
    # A 640x512 thermal camera beside a 640x480 visible one, calibrated by tarfuse-calibrate:
    # tarfuse-eval --prior refused the prior ("made for a 640x512 IR image but the IR image is
    # 640x480"): it checked the IR after resizing it to the visible frame.
    import cv2
    import numpy as np
    from tarfuse_ros.core.prior import make_prior, write_prior_yaml
    msrs = ROADSCENE.parent / 'msrs_train'
    data_dir = tmp_path / 'rig'
    for sub in ('ir', 'vi'):
        (data_dir / sub).mkdir(parents=True)
    shutil.copy(msrs / 'vi' / '00854N.jpg', data_dir / 'vi')
    angle = np.deg2rad(3.0)
    homography = np.array([[1.1 * np.cos(angle), -1.1 * np.sin(angle), -20.0],
                           [1.1 * np.sin(angle), 1.1 * np.cos(angle), -30.0], [0.0, 0.0, 1.0]])
    aligned = cv2.imread(str(msrs / 'ir' / '00854N.png'), cv2.IMREAD_UNCHANGED)
    # ir(q) = aligned(H q): the IR camera's image of the visible scene.
    ir = cv2.warpPerspective(aligned, homography, (640, 512),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    cv2.imwrite(str(data_dir / 'ir' / '00854N.png'), ir)
    prior = make_prior(homography, (640, 512), (640, 480))
    write_prior_yaml(tmp_path / 'rig_prior.yaml', prior)
    scores = []
    for extra in ((), ('--prior', str(tmp_path / 'rig_prior.yaml'))):
        out = tmp_path / f'eval{len(extra)}'
        code = main(['--data', str(data_dir), '--split', 'all', '--stored-ir', 'unregistered',
                     '--out', str(out), '--max-side', '160', '--figures', '0', '--no-progress',
                     '--threads', '1', *extra])
        assert code == 0, capsys.readouterr().err
        scores.append(json.loads((out / 'metrics.json').read_text())['registration'])
    # The prior does the registration: its IR lines up with the visible image better.
    assert scores[1]['edge_alignment'] > scores[1]['unregistered']['edge_alignment'] + 0.1
    # The network sees the same pre-warp as the node's (raw IR in, resized by the engine).
    from tarfuse_ros.evaluation.protocol import prior_in_visible_frame
    for visible_wh in ((640, 480), (160, 120)):
        np.testing.assert_allclose(
            prior_in_visible_frame(prior).pre_warp_for(visible_wh, visible_wh),
            prior.pre_warp_for((640, 512), visible_wh), atol=1e-9)
    # An IR of another aspect ratio than the prior's is still refused.
    cv2.imwrite(str(data_dir / 'ir' / '00854N.png'), cv2.resize(ir, (640, 640)))
    code = main(['--data', str(data_dir), '--split', 'all', '--stored-ir', 'unregistered',
                 '--out', str(tmp_path / 'never'), '--max-side', '160', '--no-progress',
                 '--threads', '1', '--prior', str(tmp_path / 'rig_prior.yaml')])
    assert code == 2
    assert ('was made for images of IR 640x512, visible 640x480, and 1 of the 1 pairs has '
            'another aspect ratio: 00854N (IR 640x640, visible 640x480)') in \
        capsys.readouterr().err


def test_pairs_of_another_aspect_ratio_than_the_prior_are_refused_before_any_pair(
        tmp_path, capsys):
    # Each pair's sizes were checked against --prior as it came: a set of mixed sizes was
    # evaluated up to its first pair of another aspect ratio, then the whole run was refused.
    from tarfuse_ros.core.prior import make_prior, write_prior_yaml
    import numpy as np
    data_dir = own_set(tmp_path / 'own')  # 500x329, 478x322 and 507x346 pairs
    write_prior_yaml(tmp_path / 'prior.yaml', make_prior(np.eye(3), (500, 329), (500, 329)))
    out = tmp_path / 'eval'
    assert evaluate(data_dir, out, '--prior', str(tmp_path / 'prior.yaml')) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-eval: error: --prior {tmp_path / 'prior.yaml'} was made for images of IR "
        '500x329, visible 500x329, and 2 of the 3 pairs have another aspect ratio: FLIR_00018 '
        '(IR 478x322, visible 478x322), FLIR_00122 (IR 507x346, visible 507x346); a prior fits '
        'one camera pair: evaluate only the pairs of that rig (a list file), or run '
        'tarfuse-calibrate for them\n')
    assert not out.exists()
    (data_dir / 'rig.txt').write_text('FLIR_00006\n')
    assert evaluate(data_dir, out, '--prior', str(tmp_path / 'prior.yaml'), '--split',
                    'rig.txt') == 0


def _crop_ir(data_dir, stem):
    """Cut the IR image of ``stem`` to 3/4 of its width; return its sizes as messages give them."""
    import cv2
    path = next((data_dir / 'ir').glob(f'{stem}.*'))
    ir = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), ir[:, :ir.shape[1] * 3 // 4])
    height, width = cv2.imread(str(next((data_dir / 'vi').glob(f'{stem}.*')))).shape[:2]
    return f'IR {ir.shape[1] * 3 // 4}x{ir.shape[0]}, visible {width}x{height}'


# What tarfuse-eval does with an aligned pair, and what to do with one that is not.
NOT_ALIGNED = (
    'its IR image is the visible frame, at any size, and the reference of the deformations and '
    'of the fusion, registration and detection scores, so such a pair is not aligned as stored '
    'or not a pair, and stretched it would be scored against a wrong reference: align its IR '
    'image to the visible one, leave it out of the split (a list file without it), or evaluate '
    'cameras not registered to each other with --stored-ir unregistered (no aligned-IR scores)')


@pytest.mark.parametrize('deform', ['auto', 'synthetic', 'none'])
def test_an_aligned_set_whose_ir_has_another_aspect_ratio_is_refused(tmp_path, capsys, deform):
    # The IR was stretched to the visible frame, deformed from there, and the fusion,
    # registration and detection scores measured against it as the aligned ground truth.
    data_dir = own_set(tmp_path / 'own')
    sizes = _crop_ir(data_dir, 'FLIR_00018')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test', '--deform', deform) == 2
    assert capsys.readouterr().err == (
        f'tarfuse-eval: error: 1 of the 3 pairs have an IR image of another aspect ratio than '
        f'their visible image: own/FLIR_00018 ({sizes}); the set is evaluated as aligned '
        f'(--stored-ir auto, which takes a set without landmarks/ as aligned): {NOT_ALIGNED}\n')
    assert not (tmp_path / 'eval').exists()
    # Left out of the split, the others are evaluated.
    (data_dir / 'kept.txt').write_text('FLIR_00006\nFLIR_00122\n')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'kept', '--deform', deform) == 0
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['num_pairs'] == 2


def test_a_set_with_ground_truth_fields_whose_ir_has_another_aspect_ratio_is_refused(
        tmp_path, capsys):
    # --deform dataset: the stored field deforms the aligned IR's frame, and the scores
    # measure against that IR; both were stretched to the visible frame.
    data_dir = tmp_path / 'roadscene'
    shutil.copytree(ROADSCENE, data_dir)
    stems = sorted(path.stem for path in (data_dir / 'synthetic_misaligned' / 'disp').iterdir())
    sizes = [_crop_ir(data_dir, stem) for stem in stems]
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test', '--deform', 'dataset',
                    '--stored-ir', 'aligned') == 2
    assert capsys.readouterr().err == (
        f'tarfuse-eval: error: 2 of the 2 pairs have an IR image of another aspect ratio than '
        f'their visible image: roadscene/{stems[0]} ({sizes[0]}), roadscene/{stems[1]} '
        f'({sizes[1]}); the set is evaluated as aligned (--stored-ir aligned): {NOT_ALIGNED}\n')
    assert not (tmp_path / 'eval').exists()


def test_an_unregistered_set_whose_ir_has_another_aspect_ratio_is_evaluated(tmp_path, capsys):
    # Real cameras not registered to each other (a 640x512 IR beside a 640x480 visible
    # camera): the network registers the IR, nothing is scored against it as aligned.
    data_dir = own_set(tmp_path / 'own')
    _crop_ir(data_dir, 'FLIR_00018')
    assert evaluate(data_dir, tmp_path / 'eval', '--split', 'test',
                    '--stored-ir', 'unregistered') == 0, capsys.readouterr().err
    result = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert result['stored_ir'] == 'unregistered' and result['num_pairs'] == 3
    assert result['registration']['EPE'] is None
