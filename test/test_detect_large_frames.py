"""benchmarks/detect_large_frames.py: detection mAP of larger cameras per detect_max_long_side."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import detect_large_frames  # noqa: E402, I100

SOURCE = Path(__file__).resolve().parent / 'data' / 'datasets' / 'roadscene'


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_figures_per_size_and_setting(tmp_path, capsys):
    out = tmp_path / 'figures.json'
    assert detect_large_frames.main([
        '--data', str(SOURCE), '--split', 'det_labelled', '--max-pairs', '2', '--threads', '1',
        '--sizes', '640x480,1024x768', '--max-long-side', '0,800', '--out', str(out)]) == 0
    rows = {(tuple(r['size']), r['detect_max_long_side']): r for r in json.loads(out.read_text())}
    assert set(rows) == {((640, 480), 0), ((640, 480), 800), ((1024, 768), 0),
                         ((1024, 768), 800)}
    for row in rows.values():
        assert row['num_images'] == 2 and row['num_gt'] > 0 and 0.0 <= row['map50'] <= 1.0
    # At 640 px nothing is shrunk: the same detections either way.
    small = [rows[((640, 480), value)] for value in (0, 800)]
    assert small[0]['num_detections'] == small[1]['num_detections']
    assert small[0]['map50'] == small[1]['map50']
    # At 1024 px the neck runs on 800x608 features: other detections.
    large = [rows[((1024, 768), value)] for value in (0, 800)]
    assert large[0]['num_detections'] != large[1]['num_detections'] \
        or large[0]['map50_95'] != large[1]['map50_95']
    printed = capsys.readouterr().out
    assert '1024x768 detect_max_long_side 800: mAP@0.5 ' in printed


def test_the_figures_are_tarfuse_evals_ap(tmp_path):
    """The benchmark scored with COCO AP (core.metrics), tarfuse-eval with ultralytics' AP.

    One pair, detected perfectly, was 1.0 here and 0.995 in tarfuse-eval's report.
    """
    from tarfuse_ros.core import data
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.evaluation.detection import AP_METHOD, detection_summary
    out = tmp_path / 'figures.json'
    args = ['--data', str(SOURCE), '--split', 'det_labelled', '--max-pairs', '1',
            '--threads', '1', '--sizes', '640x480', '--max-long-side', '0', '--out', str(out)]
    assert detect_large_frames.main(args) == 0
    [row] = json.loads(out.read_text())
    assert row['ap'] == AP_METHOD
    engine = FusionEngine(None, device='cpu', conf_threshold=0.001, iou_threshold=0.6,
                          max_detections=100)
    stems = data.read_split(SOURCE, 'det_labelled')[:1]
    classes = list(engine.class_names)
    [(predictions, targets)] = detect_large_frames.detections(
        SOURCE, stems, engine, [(640, 480)], [0], classes).values()
    expected = detection_summary(predictions, targets, classes)
    assert {key: row[key] for key in expected} == expected
    # A perfect detector: ultralytics' 0.995 (COCO's 1.0), as in tarfuse-eval's reports.
    perfect = [np.hstack([t[:, :4], np.ones((len(t), 1)), t[:, 4:]]) for t in targets]
    assert detect_large_frames.detection_summary(perfect, targets, classes)['map50'] == \
        pytest.approx(0.995)


def test_a_refused_setting_stops_before_any_pair(capsys):
    """A usage error: exit status 2, as every benchmark's (README, "Tests and benchmarks")."""
    assert detect_large_frames.main(['--data', str(SOURCE), '--sizes', '640x480',
                                     '--max-long-side', '100']) == 2
    assert 'detect_max_long_side must be 0 or a multiple of 32' in capsys.readouterr().err


@pytest.mark.parametrize('option, value, message', [
    ('--threads', '-1', '--threads must be >= 1, got -1'),  # a RuntimeError traceback
    ('--max-pairs', '-1', '--max-pairs must be >= 1, got -1'),  # all pairs but the last
    ('--max-pairs', '0', '--max-pairs must be >= 1, got 0'),  # no pair, mAP nan
    ('--max-long-side', '0,1e3', "--max-long-side takes comma-separated integers, got '0,1e3'"),
    ('--sizes', '12', "size must be WxH, e.g. 1280x1024, got '12'"),
    ('--split', 'nosuch', "split 'nosuch' not found in"),
])
def test_bad_options_are_one_line_errors(capsys, option, value, message):
    """Refused before any pair runs with exit status 2 (it was 1: README says 2)."""
    args = ['--data', str(SOURCE), '--split', 'det_labelled', '--sizes', '640x480']
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert detect_large_frames.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'detect_large_frames: {message}') and err.count('\n') == 1, err
