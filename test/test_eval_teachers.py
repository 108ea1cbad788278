"""benchmarks/eval_teachers.py: the COCO teachers scored as tarfuse-eval --teacher scores them."""

import importlib.util
from pathlib import Path
import sys

import pytest
from tarfuse_ros.tools import pseudo_label as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
sys.path.insert(0, str(Path(__file__).resolve().parent / 'tools'))
import eval_teachers  # noqa: E402, I100
from test_evaluate_own_sets import own_set  # noqa: E402, I100

DATASETS = Path(__file__).resolve().parent / 'data' / 'datasets'
ROADSCENE = DATASETS / 'roadscene'
STEMS = ('FLIR_00006', 'FLIR_00018')
TEACHERS = pl.default_teachers_dir()


def _own_set(folder):
    """Lay out the labelled RoadScene pairs of STEMS in ``folder`` (list file ``test.txt``)."""
    return own_set(folder, STEMS)


def _teacher_args():
    if TEACHERS is None or importlib.util.find_spec('onnxruntime') is None:
        pytest.skip('shared/teachers or onnxruntime not found (set TARFUSE_SHARED)')
    return ['--teacher', str(TEACHERS / pl.TEACHER_FILES['yolov8n']), '--max-side', '160']


def test_bad_requests_are_refused_in_one_line(tmp_path, capsys):
    """Unknown teacher, no labelled pair, bad thresholds, a missing label folder: exit 2.

    Each raised a traceback (a TypeError on 'NoneType' for a split without labels, after the
    teacher had run on nothing), or ran with a --conf outside [0, 1].
    """
    unlabelled = _own_set(tmp_path / 'unlabelled')
    for stem in STEMS:
        (unlabelled / 'labels' / f'{stem}.txt').unlink()
    for argv, message in [
            (['--data', str(unlabelled), *_teacher_args()],
             'none of the 2 pairs of test has a label file in'),
            (['--data', str(DATASETS / 'tno'), '--split', 'all', *_teacher_args()],
             f"--labels 'labels': '{DATASETS / 'tno' / 'labels'}' is not a folder"),
            (['--data', str(ROADSCENE), '--teacher', 'yolo9000'],
             "expected one of ['yolov8n', 'yolox'] or an .onnx file, got 'yolo9000'"),
            (['--data', str(ROADSCENE), '--conf', '2'], '--conf must be a number in [0, 1]'),
            (['--data', str(ROADSCENE), '--labels', 'labels_ir'],
             "--labels 'labels_ir': "),
            (['--data', str(ROADSCENE), '--max-side', '8'], '--max-side must be >= 32')]:
        assert eval_teachers.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == '' and captured.err.startswith('eval_teachers: error: '), argv
        assert message in captured.err, captured.err


def test_label_ids_are_read_with_the_label_folders_classes(tmp_path, capsys):
    """The label folder's own classes.txt names its ids, as in tarfuse-eval.

    The set's classes.txt was used (the lookup ignored --labels), so a folder labelled in
    another class order was scored as the wrong classes; an id beyond the classes raised an
    IndexError instead of naming the file and line.
    """
    data_dir = _own_set(tmp_path / 'own')
    names = (data_dir / 'labels' / 'classes.txt').read_text().split()
    swapped = data_dir / 'labels_swapped'
    swapped.mkdir()
    (swapped / 'classes.txt').write_text('\n'.join(reversed(names)) + '\n')
    for stem in STEMS:
        rows = (data_dir / 'labels' / f'{stem}.txt').read_text().splitlines()
        (swapped / f'{stem}.txt').write_text(''.join(
            f'{len(names) - 1 - int(row.split()[0])} {" ".join(row.split()[1:])}\n'
            for row in rows))
    assert eval_teachers.main(['--data', str(data_dir), *_teacher_args()]) == 0
    plain = capsys.readouterr().out
    assert eval_teachers.main(['--data', str(data_dir), '--labels', 'labels_swapped',
                               *_teacher_args()]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == plain.splitlines()[1:]
    label = swapped / f'{STEMS[0]}.txt'
    label.write_text(label.read_text() + '7 0.5 0.5 0.1 0.1\n')
    assert eval_teachers.main(['--data', str(data_dir), '--labels', 'labels_swapped',
                               *_teacher_args()]) == 2
    err = capsys.readouterr().err
    assert f"eval_teachers: error: '{label}' line " in err and 'Traceback' not in err, err
