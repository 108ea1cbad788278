"""tarfuse-eval's target contrast, detection AP and teacher rows; night pairs of msrs_det.

The real-data tests need ``shared/datasets/msrs_det`` (``$TARFUSE_SHARED`` or ``../shared``)
and are skipped with the reason without it. They check the MEASUREMENT (what the metric gives
on real night pairs, and that the evaluation carries it), not what the shipped model reaches.
"""

import importlib.util
import json
import math

import numpy as np
import pytest
from tarfuse_ros.core import data, metrics
from tarfuse_ros.core.paths import shared_datasets_dir
from tarfuse_ros.evaluation import contrast
from tarfuse_ros.evaluation.detection import detection_summary, operating_points
from tarfuse_ros.evaluation.inputs import prepare

SHARED = shared_datasets_dir()
MSRS_DET = SHARED / 'msrs_det' if SHARED is not None else None
needs_msrs_det = pytest.mark.skipif(
    MSRS_DET is None or not (MSRS_DET / 'labels').is_dir(),
    reason='shared/datasets/msrs_det not found (set TARFUSE_SHARED or place ../shared beside '
           'the checkout): the night pairs are not in the repository')


# --- day / night --------------------------------------------------------------------------

def test_day_and_night_come_from_pairs_tsv_or_msrs_names(tmp_path):
    assert contrast.illumination('00004N') == 'night'
    assert contrast.illumination('01566D') == 'day'
    assert contrast.illumination('FLIR_00006') is None
    assert contrast.illumination('TNO_D') is None  # not an MSRS name
    (tmp_path / 'pairs.tsv').write_text(
        'name\tsource\tIllumination\nFLIR_1\tx\tnight\n00004N\tx\tDay\nFLIR_2\tx\t\n')
    table = contrast.read_illumination(tmp_path)
    assert table == {'FLIR_1': 'night', '00004N': 'day'}
    assert contrast.illumination('FLIR_1', table) == 'night'
    assert contrast.illumination('00004N', table) == 'day'  # the table wins over the name
    assert contrast.illumination('FLIR_2', table) is None
    # msrs_det's pairs.tsv says which repository supplied a pair, not day or night.
    (tmp_path / 'pairs.tsv').write_text('name\tmsrs_official_split\n00004N\ttest\n')
    assert contrast.read_illumination(tmp_path) == {}


# --- pooled target contrast ---------------------------------------------------------------

def _scene(target, background, size=(40, 60), box=(20, 10, 30, 20)):
    image = np.full(size, background, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = target
    return image


def test_one_pair_gives_the_metric_ratio_and_pairs_pool_their_boxes():
    box = [[20, 10, 30, 20]]
    ir_a, vi_a, fused_a = _scene(120, 40), _scene(30, 50), _scene(100, 60)  # IR 80, fused 40
    measured = contrast.TargetContrast(['model', 'other'])
    measured.add('00001N', 'night', box, ['person'], ir_a, vi_a,
                 {'model': fused_a, 'other': _scene(60, 60)})
    night = measured.summary()['night']
    expected = metrics.target_contrast_ratio(fused_a, ir_a, box)
    assert night['ratio']['model'] == pytest.approx(expected['ratio'])
    assert night['ratio']['model'] == pytest.approx(0.5)
    assert night['ir'] == pytest.approx(80.0) and night['visible'] == pytest.approx(-20.0)
    assert night['ratio']['other'] == pytest.approx(0.0)

    # A day pair: IR 20, fused 20 (ratio 1 alone). Pooled: mean fused / mean IR over boxes,
    # (40 + 20) / (80 + 20), not the mean of the two ratios (0.75).
    ir_b, fused_b = _scene(60, 40), _scene(80, 60)
    # A bicycle box and a box flat in the IR do not count.
    boxes = [[20, 10, 30, 20], [40, 25, 50, 35], [2, 2, 8, 8]]
    measured.add('00002D', 'day', boxes, ['car', 'person', 'bicycle'], ir_b, ir_b,
                 {'model': fused_b, 'other': fused_b})
    summary = measured.summary()
    assert summary['day']['ratio']['model'] == pytest.approx(1.0)
    assert summary['day']['boxes'] == 2 and summary['day']['counted_boxes'] == 1
    assert summary['all']['ratio']['model'] == pytest.approx(60 / 100)
    assert summary['all']['pairs'] == 2 and summary['all']['counted_boxes'] == 2
    assert summary['all']['per_class']['person']['ratio']['model'] == pytest.approx(0.5)
    assert summary['all']['per_class']['car']['ratio']['model'] == pytest.approx(1.0)
    model = measured.for_method('model')
    assert model['all']['ratio'] == pytest.approx(0.6)
    assert model['all']['fused'] == pytest.approx(30.0)
    assert model['night']['per_class']['car']['ratio'] is None  # no car at night

    with pytest.raises(ValueError, match='no fused image'):
        measured.add('x', None, box, ['person'], ir_a, vi_a, {'model': fused_a})
    with pytest.raises(ValueError, match='class names'):
        measured.add('x', None, box, [], ir_a, vi_a, {'model': fused_a, 'other': fused_a})


# --- detection AP (ultralytics' code) -----------------------------------------------------

def test_detection_ap_follows_ultralytics_on_hand_made_cases():
    truth = [np.array([[10, 10, 50, 50, 0], [60, 60, 90, 90, 0]], float)]
    found_one = [np.array([[10, 10, 50, 50, 0.9, 0]], float)]
    # Precision 1 up to recall 0.5, then nothing: the 101-point curve integrated with the
    # trapezoid rule (ultralytics) gives 0.5 - 0.01 / 2 (the step at recall 0.5 is linear
    # over one 0.01 bin); COCO's sampled mean would give 51 / 101.
    result = detection_summary(found_one, truth, ['person', 'car'])
    assert result['map50'] == pytest.approx(0.495)
    assert result['per_class'] == {'person': {'ap50': pytest.approx(0.495),
                                              'ap50_95': pytest.approx(0.495), 'num_gt': 2}}
    # Everything found exactly: 1 - 0.01 / 2 (the same last bin); a detection of a class
    # without ground truth changes nothing; a class with ground truth and no detection is 0.
    both = [np.array([[10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.8, 0],
                      [0, 0, 5, 5, 0.99, 1]], float)]
    assert detection_summary(both, truth)['map50'] == pytest.approx(0.995)
    with_car = [np.array([[10, 10, 50, 50, 0], [60, 60, 90, 90, 0], [0, 0, 9, 9, 1]], float)]
    result = detection_summary(both, with_car, ['person', 'car'])
    assert result['per_class']['car']['ap50'] == 0.0
    assert result['map50'] == pytest.approx(0.995 / 2)
    # A box with IoU 0.81 counts at 0.5 .. 0.8 (7 of the 10 thresholds), not above.
    shifted = [np.array([[10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90 - 30 * 0.19, 0.8, 0]], float)]
    result = detection_summary(shifted, truth)
    assert result['map50'] == pytest.approx(0.995)
    assert result['map50_95'] == pytest.approx((7 * 0.995 + 3 * 0.495) / 10)
    # Only the 100 best detections per image count.
    many = [np.vstack([np.array([[200, 200, 210, 210, 0.95, 0]] * 100, float), found_one[0]])]
    assert detection_summary(many, truth)['map50'] == 0.0
    assert detection_summary(many, truth, max_detections=101)['map50'] > 0
    assert math.isnan(detection_summary([np.zeros((0, 6))], [np.zeros((0, 5))])['map50'])
    with pytest.raises(ValueError, match='one prediction array per target'):
        detection_summary([np.zeros((0, 6))], [])


def test_operating_points_count_precision_and_recall_at_each_threshold():
    """Hand-made image: 2 people and 1 car labelled, five detections (one of a 3rd class)."""
    truth = np.array([[10, 10, 50, 90, 0], [100, 10, 140, 90, 0], [200, 50, 300, 100, 2]],
                     np.float64)
    found = np.array([[11, 10, 50, 90, 0.9, 0],       # person 1
                      [400, 10, 440, 90, 0.6, 0],     # nobody there
                      [200, 52, 300, 100, 0.5, 2],    # the car
                      [200, 10, 240, 90, 0.4, 1],     # a bicycle class without ground truth
                      [100, 12, 140, 90, 0.3, 0]],    # person 2
                     np.float64)
    names = ['person', 'bicycle', 'car']
    low, mid, high = operating_points([found], [truth], [0.25, 0.5, 0.95], names)
    assert [p['conf'] for p in (low, mid, high)] == [0.25, 0.5, 0.95]
    assert set(low['per_class']) == {'person', 'car'}  # classes with ground truth
    person, car = low['per_class']['person'], low['per_class']['car']
    assert (person['tp'], person['fp'], person['num_gt']) == (2, 1, 2)
    assert person['precision'] == pytest.approx(2 / 3) and person['recall'] == 1.0
    assert person['f1'] == pytest.approx(0.8)
    assert (car['tp'], car['fp'], car['precision'], car['recall']) == (1, 0, 1.0, 1.0)
    # Over all boxes the bicycle detection is a false positive too: 3 of 5 right.
    assert low['precision'] == pytest.approx(3 / 5) and low['recall'] == 1.0
    assert low['mean_f1'] == pytest.approx((0.8 + 1.0) / 2)
    person = mid['per_class']['person']
    assert (person['tp'], person['fp'], person['recall']) == (1, 1, 0.5)
    assert mid['precision'] == pytest.approx(2 / 3) and mid['recall'] == pytest.approx(2 / 3)
    # Nothing above 0.95: no precision to speak of, nothing found.
    person = high['per_class']['person']
    assert math.isnan(person['precision']) and person['recall'] == 0 and person['f1'] == 0
    assert high['recall'] == 0 and high['f1'] == 0
    with pytest.raises(ValueError, match='one prediction array per target'):
        operating_points([found], [], [0.5])
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        operating_points([found], [truth], [1.5])


def test_detection_ap_agrees_with_the_coco_sampling_of_core_metrics():
    rng = np.random.default_rng(0)
    predictions, truths = [], []
    for _ in range(30):
        corner = rng.uniform(0, 200, (5, 2))
        truth = np.hstack([corner, corner + rng.uniform(10, 60, (5, 2)),
                           rng.integers(0, 3, (5, 1))])
        found = np.hstack([truth[:, :4] + rng.normal(0, 4, (5, 4)), rng.uniform(0, 1, (5, 1)),
                           truth[:, 4:]])
        corner = rng.uniform(0, 200, (3, 2))
        false = np.hstack([corner, corner + 30, rng.uniform(0, 1, (3, 1)),
                           rng.integers(0, 3, (3, 1))])
        predictions.append(np.vstack([found, false]))
        truths.append(truth)
    ours = detection_summary(predictions, truths, ['a', 'b', 'c'])
    coco = metrics.detection_metrics(predictions, truths, class_names=['a', 'b', 'c'])
    # Same matching; the two ways of reading the 101-point curve differ by < 0.01.
    assert 0.1 < ours['map50'] < 0.9
    assert ours['map50'] == pytest.approx(coco['map50'], abs=0.01)
    assert ours['map50_95'] == pytest.approx(coco['map50_95'], abs=0.01)
    for name in 'abc':
        assert ours['per_class'][name]['num_gt'] == coco['per_class'][name]['num_gt']


# --- real night pairs ---------------------------------------------------------------------

def _night_person_contrasts():
    """(IR, visible) contrasts of every person box of the msrs_det night pairs."""
    names = data.read_classes(MSRS_DET)
    ir_all, vi_all = [], []
    for stem in data.read_split(MSRS_DET, 'test'):
        if contrast.illumination(stem) != 'night':
            continue
        ir_raw, vi_raw = data.load_pair(MSRS_DET, stem)
        pair = prepare(ir_raw, vi_raw)
        labels = data.load_labels(MSRS_DET, stem, 'labels')
        height, width = pair.vi_y.shape
        boxes = data.yolo_to_xyxy(labels, width, height)
        people = boxes[[names[int(c)] == 'person' for c in labels[:, 0]], :4]
        ir_all.append(metrics.target_contrast(pair.ir, people))
        vi_all.append(metrics.target_contrast(pair.vi_y, people))
    return np.concatenate(ir_all), np.concatenate(vi_all)


@needs_msrs_det
def test_people_at_night_stand_out_in_the_ir_and_not_in_the_visible_image():
    stems = data.read_split(MSRS_DET, 'test')
    groups = [contrast.illumination(s) for s in stems]
    assert None not in groups  # every msrs_det pair is named the MSRS way
    assert groups.count('night') >= 10 and groups.count('day') >= 10
    ir_c, vi_c = _night_person_contrasts()
    assert len(ir_c) >= 20 and np.isfinite(ir_c).all() and np.isfinite(vi_c).all()
    # Warm people in cool surroundings: clearly positive in the IR, box by box too.
    assert ir_c.mean() > 10.0 and (ir_c > 0).mean() > 0.8
    # In the dark visible image they do not stand out: lower contrast, on most boxes.
    assert vi_c.mean() < 0.5 * ir_c.mean()
    assert (vi_c < ir_c).mean() > 0.8


@needs_msrs_det
@pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None,
                    reason='onnxruntime not installed (the teacher row needs it)')
def test_evaluation_reports_target_contrast_and_teacher_rows_on_real_pairs(tmp_path):
    from tarfuse_ros.core.paths import default_weights_path
    from tarfuse_ros.tools.evaluate import main
    stems = ['00004N', '00881N', '01566D']
    split = tmp_path / 'pairs.txt'
    split.write_text('\n'.join(stems) + '\n')
    out = tmp_path / 'eval'
    code = main(['--data', str(MSRS_DET), '--split', str(split), '--weights',
                 str(default_weights_path()), '--out', str(out), '--max-side', '320',
                 '--no-progress', '--figures', '0', '--threads', '1', '--teacher', 'yolov8n'])
    assert code == 0
    result = json.loads((out / 'metrics.json').read_text())
    fusion = result['fusion']
    assert math.isfinite(fusion['target_contrast_ratio'])
    groups = fusion['target_contrast']
    assert fusion['target_contrast_ratio'] == groups['all']['ratio']
    assert (groups['night']['pairs'], groups['day']['pairs'], groups['all']['pairs']) == (2, 1, 3)

    # The IR and visible contrasts are those of the labelled boxes in the evaluated frame,
    # measured here independently of the evaluation's code path.
    names = data.read_classes(MSRS_DET)
    ir_c, vi_c = [], []
    for stem in stems[:2]:
        ir_raw, vi_raw = data.load_pair(MSRS_DET, stem)
        pair = prepare(ir_raw, vi_raw, max_side=320)
        labels = data.load_labels(MSRS_DET, stem, 'labels')
        boxes = data.yolo_to_xyxy(labels, pair.vi_y.shape[1], pair.vi_y.shape[0])
        wanted = [names[int(c)] in ('person', 'car') for c in labels[:, 0]]
        ir_c.append(metrics.target_contrast(pair.ir, boxes[wanted, :4]))
        vi_c.append(metrics.target_contrast(pair.vi_y, boxes[wanted, :4]))
    ir_c, vi_c = np.concatenate(ir_c), np.concatenate(vi_c)
    kept = ir_c > 0
    night = groups['night']
    assert night['boxes'] == len(ir_c) and night['counted_boxes'] == int(kept.sum())
    assert night['ir'] == pytest.approx(ir_c[kept].mean())
    assert night['visible'] == pytest.approx(vi_c[kept].mean())
    assert night['ir'] > 0 and night['visible'] < night['ir']

    # Every fused image measured: ratio = its fused contrast / the IR contrast.
    for name in ('unregistered_average', 'unregistered_max', 'ecc_average', 'model_zero_flow'):
        values = result['baselines'][name]['fusion']['target_contrast']['night']
        assert values['ir'] == night['ir']
        assert values['ratio'] == pytest.approx(values['fused'] / values['ir'])
    assert night['ratio'] == pytest.approx(night['fused'] / night['ir'])
    entry = {e['stem']: e for e in result['per_pair']}
    assert entry['00004N']['illumination'] == 'night' and entry['01566D']['illumination'] == 'day'
    assert set(entry['00004N']['target_contrast']) == {'ratio', 'boxes', 'ir_contrast',
                                                       'fused_contrast'}

    teacher = result['teachers']['yolov8n']
    assert teacher['kind'] == 'yolov8n' and len(teacher['sha256']) == 64
    for source in ('visible', 'ir', 'visible+ir'):
        assert 0 <= teacher[source]['map50'] <= 1
        assert teacher[source]['num_gt'] == result['detection']['num_gt']
    report = (out / 'report.md').read_text()
    assert '## Target contrast' in report and '| TarFuse: **ratio** |' in report
    assert '| ECC + average: **ratio** |' in report
    assert '| teacher yolov8n (visible) |' in report and 'night target contrast ratio' in report


@pytest.mark.skipif(SHARED is None or not (SHARED.parent / 'teachers').is_dir()
                    or importlib.util.find_spec('onnxruntime') is None,
                    reason='shared/teachers or onnxruntime not found (the teacher loads)')
def test_a_teacher_on_pairs_without_labels_is_refused(tmp_path, capsys):
    """Its rows need labels: the run ended with exit 0 and no teacher row, without a word."""
    from pathlib import Path
    from tarfuse_ros.tools.evaluate import main
    tno = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'tno'  # no labels/
    out = tmp_path / 'eval'
    code = main(['--data', str(tno), '--split', 'all', '--out', str(out), '--no-progress',
                 '--figures', '0', '--threads', '1', '--teacher', 'yolov8n'])
    err = capsys.readouterr().err
    assert code == 2 and '--teacher: none of the 1 pairs has a label file in' in err, err
    assert not out.exists()


def test_a_teacher_is_a_known_name_or_an_onnx_file(tmp_path):
    from tarfuse_ros.evaluation.teachers import load_teacher
    with pytest.raises(ValueError, match='.onnx'):
        load_teacher('resnet')
    with pytest.raises(ValueError, match='not found'):
        load_teacher(str(tmp_path / 'missing.onnx'))
    # The suffix in any case (it was refused as not an .onnx file).
    with pytest.raises(ValueError, match='not found'):
        load_teacher(str(tmp_path / 'MISSING.ONNX'))
    from tarfuse_ros.evaluation.options import EvalOptions
    assert EvalOptions(teachers=['yolov8n']).teachers == ('yolov8n',)
    with pytest.raises(ValueError, match='sequence'):
        EvalOptions(teachers='yolov8n')
