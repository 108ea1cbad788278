"""tarfuse-pseudo-label: class map, pooling, label files, calibration counts, real teachers."""

from contextlib import contextmanager
import importlib.util
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.tools import pseudo_label as pl

TEACHERS = pl.default_teachers_dir()
DATASETS = TEACHERS.parent / 'datasets' if TEACHERS is not None else None
needs_teachers = pytest.mark.skipif(
    TEACHERS is None or importlib.util.find_spec('onnxruntime') is None,
    reason='shared/teachers or onnxruntime not found (set TARFUSE_SHARED or place ../shared; '
           'pip install onnxruntime)')


def test_class_map_keeps_road_users_and_drops_the_rest():
    # COCO: 0 person, 1 bicycle, 2 car, 3 motorcycle, 5 bus, 7 truck, 16 dog, 9 traffic light.
    mapped = pl.map_coco_classes([0, 1, 2, 3, 5, 7, 16, 9, 79, 80, -1])
    assert mapped.tolist() == [0, 1, 2, 1, 2, 2, -1, -1, -1, -1, -1]
    assert pl.CLASS_NAMES == ('person', 'bicycle', 'car')


def test_pooling_keeps_one_box_for_an_object_seen_in_both_modalities():
    # [x1, y1, x2, y2, score, class] in visible pixels.
    visible = np.array([[10, 10, 50, 90, 0.9, 0],      # person seen in both images
                        [100, 40, 180, 80, 0.6, 2]],   # car seen in the visible image only
                       np.float32)
    infrared = np.array([[12, 11, 52, 92, 0.7, 0],     # same person, IoU ~0.9: suppressed
                         [200, 20, 220, 70, 0.8, 0],   # person seen only in the IR image
                         [101, 41, 181, 81, 0.5, 1]],  # overlaps the car but another class
                        np.float32)
    pooled = pl.pool_boxes([visible, infrared], iou=0.5)
    assert pooled[:, 4].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5])
    assert pooled[:, 5].tolist() == [0, 0, 2, 1]
    np.testing.assert_allclose(pooled[0, :4], [10, 10, 50, 90])
    assert len(pl.pool_boxes([np.zeros((0, 6), np.float32)] * 2)) == 0


def test_label_file_round_trips_through_the_dataset_loader(tmp_path):
    width, height = 400, 300
    boxes = np.array([[0, 0, 40, 60, 0.9, 0], [100.5, 50.25, 300, 299, 0.4, 2],
                      [380, 10, 400, 30, 0.3, 1]], np.float64)
    yolo = pl.boxes_to_yolo(boxes, width, height)
    (tmp_path / 'labels').mkdir()
    (tmp_path / 'labels' / 'a.txt').write_text(data.yolo_label_text(yolo)[0])
    loaded = data.load_labels(tmp_path, 'a')
    assert loaded.shape == (3, 5)
    back = data.yolo_to_xyxy(loaded, width, height)
    np.testing.assert_allclose(back[:, :4], boxes[:, :4], atol=1e-3)
    assert back[:, 4].tolist() == [0, 2, 1]
    for line in (tmp_path / 'labels' / 'a.txt').read_text().splitlines():
        assert re.fullmatch(r'\d (\d\.\d{6} ){3}\d\.\d{6}', line), line
    assert data.yolo_label_text(pl.boxes_to_yolo(np.zeros((0, 6)), width, height))[0] == ''


def test_match_counts_by_hand():
    truth = np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0], [50, 50, 60, 60, 2]], float)
    pred = np.array([[0, 0, 10, 10, 0.9, 0],     # TP
                     [0, 0, 10, 11, 0.8, 0],     # duplicate of a matched box: FP
                     [20, 20, 30, 40, 0.7, 0],   # IoU 0.5 with the second person: TP
                     [50, 50, 60, 60, 0.6, 1]],  # right place, wrong class: FP (bicycle)
                    float)
    counts = pl.match_counts(pred, truth, iou=0.5)
    assert counts.tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_calibration_refuses_a_label_class_id_beyond_classes_txt(tmp_path):
    # It was an IndexError traceback (tarfuse-pseudo-label --calibrate, after the teachers
    # loaded); now the file and line are named while the labelled pairs are chosen.
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    stem = data.read_split(roadscene, 'test')[-1]
    with open(roadscene / 'labels' / f'{stem}.txt', 'a') as handle:
        handle.write('7 0.5 0.5 0.1 0.1\n')
    with pytest.raises(ValueError, match=rf"{stem}\.txt' line \d+ \('7 0\.5 0\.5 0\.1 0\.1'\): "
                                         r"class id 7 is none of the 3 classes \['person'"):
        pl.calibrate([], roadscene, ['test'], max_pairs=1, progress=False)


def test_a_run_stopped_half_way_leaves_the_previous_run_whole(tmp_path):
    # --overwrite deleted the old labels but kept the old stems.txt, scores.tsv and README.md,
    # so after a run that stopped at an unreadable image they listed pairs and counts of label
    # files that were no longer there. Then it deleted them too, and the earlier labelling was
    # lost; now nothing is written until every pair is labelled.
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    out = tmp_path / 'pseudo'
    first, second = data.read_split(roadscene, 'test')[:2]
    assert pl.pseudo_label([], roadscene, ['test'], out, progress=False)['pairs'] >= 2
    assert (out / 'stems.txt').read_text().split()[:2] == [first, second]
    earlier = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    Path(data.pair_files(roadscene, second)[1]).write_bytes(b'not an image')
    with pytest.raises(ValueError, match='cannot read image') as refused:
        pl.pseudo_label([], roadscene, ['test'], out, overwrite=True, progress=False)
    # What is left, and how to go on, is said.
    assert (f"nothing was written to {out} (an earlier run's outputs there are kept): mend or "
            'leave out that pair (a split file), then run again') in str(refused.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == \
        earlier


def test_out_in_another_data_set_folder_keeps_its_human_labels(tmp_path):
    """--out COPY --overwrite (another copy of the set) deleted COPY's human labels."""
    import shutil
    source = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    copy = tmp_path / 'roadscene_copy'
    shutil.copytree(source, copy)
    human = {p.name: p.read_text() for p in (copy / 'labels').iterdir()}
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r'is the folder of another data set \(ir/, vi/\), '
                                             'whose labels/ is for human labels'):
            pl.pseudo_label([], source, ['test'], copy, overwrite=overwrite, progress=False)
    assert {p.name: p.read_text() for p in (copy / 'labels').iterdir()} == human


def test_a_labels_link_to_human_labels_is_refused(tmp_path):
    # --out OUT --overwrite, OUT/labels a link to the data set's labels/: the human label
    # files were deleted through the link and pseudo-labels written in their place.
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    human = {p.name: p.read_text() for p in (roadscene / 'labels').iterdir()}
    for source in (roadscene, Path(__file__).resolve().parents[1] / 'data' / 'datasets' /
                   'roadscene'):  # the labels of the set labelled, or of another copy
        out = tmp_path / f'out_{len(list(tmp_path.iterdir()))}'
        out.mkdir()
        (out / 'labels').symlink_to(roadscene / 'labels')
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=f"its labels/ is a link to '{roadscene}/labels', "
                                                 'the human labels of a data set'):
                pl.pseudo_label([], source, ['test'], out, overwrite=overwrite, progress=False)
    assert {p.name: p.read_text() for p in (roadscene / 'labels').iterdir()} == human


def test_out_in_the_data_set_folder_is_refused_without_suggesting_overwrite(tmp_path):
    # --out DATASET said "'DATASET/labels' already holds 5 label files; pass --overwrite to
    # replace them", inviting the user to replace the human labels (which --overwrite then
    # refused anyway); now both say that the human labels are never replaced.
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    human = sorted((roadscene / 'labels').iterdir())
    for overwrite in (False, True):
        with pytest.raises(ValueError, match='is the data set folder, whose labels/ is for '
                                             'human labels') as error:
            pl.pseudo_label([], roadscene, ['test'], roadscene, overwrite=overwrite,
                            progress=False)
        assert '--overwrite' not in str(error.value)
    assert sorted((roadscene / 'labels').iterdir()) == human


def test_an_out_folder_with_its_own_readme_is_not_overwritten(tmp_path):
    # --out . in a project folder replaced the project's README.md and stems.txt with the
    # pseudo-labels' own, without a word (exit 0); now they are named and kept.
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'README.md').write_text('# My project\n')
    (project / 'stems.txt').write_text('mine\n')
    with pytest.raises(ValueError, match=f"'{project}' already holds stems.txt, README.md; "
                                         'pass --overwrite to replace them'):
        pl.pseudo_label([], roadscene, ['test'], project, progress=False)
    assert sorted(p.name for p in project.iterdir()) == ['README.md', 'stems.txt']
    assert (project / 'README.md').read_text() == '# My project\n'
    assert (project / 'stems.txt').read_text() == 'mine\n'
    pl.pseudo_label([], roadscene, ['test'], project, overwrite=True, progress=False)
    assert (project / 'README.md').read_text().startswith('# Pseudo-labels for roadscene')


def test_a_labels_folder_holding_other_files_is_not_replaced(tmp_path):
    # --overwrite deleted labels/*.txt only; now that labels/ is replaced as a whole, what
    # else is there (notes, a sub-folder) is named and the run refused before any work.
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    out = tmp_path / 'pseudo'
    pl.pseudo_label([], roadscene, ['test'], out, progress=False)
    (out / 'labels' / 'notes.md').write_text('checked by hand\n')
    (out / 'labels' / 'night').mkdir()
    before = sorted(p.name for p in (out / 'labels').iterdir())
    with pytest.raises(ValueError, match=f"'{out / 'labels'}' holds night, notes.md, which are "
                                         'no label files: the run replaces that folder as a '
                                         'whole; move them elsewhere'):
        pl.pseudo_label([], roadscene, ['test'], out, overwrite=True, progress=False)
    assert sorted(p.name for p in (out / 'labels').iterdir()) == before


def test_a_stem_listed_twice_is_labelled_and_counted_once(tmp_path):
    # A list file naming a stem twice (FLIR_00122 and FLIR_00122.jpg) ran the teachers twice
    # on it, said "wrote 2 label files" for one file, listed it twice in stems.txt (trained
    # twice) and counted its boxes twice in scores.tsv, the README and --calibrate's table.
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    stem = data.read_split(roadscene, 'test')[0]
    split = tmp_path / 'twice.txt'
    split.write_text(f'{stem}\n{stem}.jpg\n')
    result = pl.pseudo_label([], roadscene, [str(split), 'test'], tmp_path / 'out',
                             progress=False)
    assert result['pairs'] == 2 and result['stems'] == data.read_split(roadscene, 'test')
    assert (tmp_path / 'out' / 'stems.txt').read_text().split() == result['stems']
    human = len(data.load_labels(roadscene, stem))
    calibration = pl.calibrate([], roadscene, [str(split)], progress=False)
    assert calibration['pairs'] == 1
    assert sum(calibration['gt_boxes'].values()) == human


def test_the_readme_says_when_the_data_set_has_no_readme_or_classes(tmp_path):
    # On a folder of one's own images the provenance README said "its README.md gives their
    # source and terms" of a set without README.md, and "classes.txt is absent or lists other
    # classes (None)".
    import shutil
    own = tmp_path / 'own'
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    for sub in ('ir', 'vi'):
        shutil.copytree(roadscene / sub, own / sub)
    pl.pseudo_label([], own, ['all'], tmp_path / 'out', progress=False)
    readme = (tmp_path / 'out' / 'README.md').read_text()
    assert f'belong to `{own}`; it has no README.md: record their source and terms' in readme
    assert 'gives their source' not in readme
    assert 'Note: the data set has no classes.txt; ids here follow `labels/classes.txt`.' in readme
    (own / 'README.md').write_text('# Own images\n\n- Source: my camera\n')
    (own / 'classes.txt').write_text('car\nperson\n')
    pl.pseudo_label([], own, ['all'], tmp_path / 'out', overwrite=True, progress=False)
    readme = (tmp_path / 'out' / 'README.md').read_text()
    assert 'its README.md gives their source and terms, quoted here:\n\n- Source: my camera' \
        in readme
    assert "Note: the data set's classes.txt lists other classes (car, person)" in readme


def test_split_all_names_the_images_it_leaves_out(tmp_path, caplog):
    # --split all on a folder where an IR image had no visible partner labelled the others and
    # said "wrote 5 label files" without a word on the image left out.
    import shutil
    own = tmp_path / 'own'
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    for sub in ('ir', 'vi'):
        shutil.copytree(roadscene / sub, own / sub)
    lone = data.read_split(own, 'all')[0]
    Path(data.pair_files(own, lone)[1]).unlink()
    with caplog.at_level('WARNING', logger='tarfuse-pseudo-label'):
        result = pl.pseudo_label([], own, ['all'], tmp_path / 'out', progress=False)
    assert lone not in result['stems']
    assert caplog.messages == [f'left out 1 IR image without a visible image of the same stem: '
                               f'{lone}']


def test_a_split_without_pairs_is_an_error_not_an_empty_result(tmp_path):
    # A folder of .webp images (or an empty list file) gave "wrote 0 label files", exit 0,
    # and an empty stems.txt and README.md, replacing an earlier run's with --overwrite.
    own = tmp_path / 'own'
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    stem = data.read_split(roadscene, 'test')[0]
    for sub, path in zip(('ir', 'vi'), data.pair_files(roadscene, stem)):
        (own / sub).mkdir(parents=True)
        cv2.imwrite(str(own / sub / f'{stem}.webp'), cv2.imread(str(path)))
    (own / 'empty.txt').write_text('# nothing yet\n')
    for split in ('all', 'empty'):
        with pytest.raises(ValueError, match=f"no pair to label: {split} of '{own}' holds no "
                                             r'stem with an image in both ir/ and vi/ '
                                             r'\(file types: \.png \.jpg'):
            pl.pseudo_label([], own, [split], tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()


def test_stems_a_list_file_cannot_name_are_refused_before_any_work(tmp_path):
    # Images named 'shot#1.jpg' or ' lead.jpg' were labelled, and stems.txt listed them as
    # 'shot#1' and ' lead', which a list file reads as 'shot' and 'lead': training on the
    # README's recipe then stopped with "no ir/ image for stem 'shot'".
    import shutil
    own = tmp_path / 'own'
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    stem = data.read_split(roadscene, 'test')[0]
    for name in ('shot#1', ' lead', 'fine'):
        for sub, path in zip(('ir', 'vi'), data.pair_files(roadscene, stem)):
            (own / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, own / sub / f'{name}.jpg')
    with pytest.raises(ValueError, match=r"stems.txt could not list 2 pair\(s\) \(' lead', "
                                         r"'shot#1'\): a list file ends a stem at \"#\""):
        pl.pseudo_label([], own, ['all'], tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()
    for sub in ('ir', 'vi'):
        for name in ('shot#1', ' lead'):
            (own / sub / f'{name}.jpg').unlink()
    pl.pseudo_label([], own, ['all'], tmp_path / 'out', progress=False)
    assert data.read_split(own, str(tmp_path / 'out' / 'stems.txt')) == ['fine']


def _two_pair_split(tmp_path, roadscene):
    """List file with one human-labelled and one unlabelled train stem of RoadScene."""
    train = data.read_split(roadscene, 'train')
    labelled = next(s for s in train if (roadscene / 'labels' / f'{s}.txt').is_file())
    unlabelled = next(s for s in train if not (roadscene / 'labels' / f'{s}.txt').is_file())
    split = tmp_path / 'two.txt'
    split.write_text(f'{labelled}\n{unlabelled}\n')
    return split, labelled, unlabelled


@needs_teachers
def test_teachers_find_the_human_labelled_objects_of_a_real_pair(tmp_path):
    roadscene = DATASETS / 'roadscene'
    split, labelled, _ = _two_pair_split(tmp_path, roadscene)
    teachers = pl.load_teachers('both', TEACHERS)
    result = pl.pseudo_label(teachers, roadscene, [str(split)], tmp_path / 'out', score=0.3,
                             progress=False)
    assert result['pairs'] == 2 and result['skipped'] == 0
    ir, vi = data.load_pair(roadscene, labelled)
    height, width = vi.shape[:2]
    pseudo = data.yolo_to_xyxy(data.load_labels(tmp_path / 'out', labelled), width, height)
    human = data.yolo_to_xyxy(data.load_labels(roadscene, labelled), width, height)
    pred = np.concatenate([pseudo[:, :4], np.ones((len(pseudo), 1)), pseudo[:, 4:]], axis=1)
    tp, fp, fn = pl.match_counts(pred, human).sum(axis=0)
    # Letterboxing and decoding are right when most pseudo boxes land on human boxes.
    assert tp >= max(1, 0.5 * len(human)), (tp, fp, fn)
    assert tp >= fp


@needs_teachers
def test_a_12_bit_colour_visible_image_is_seen_as_its_8_bit_version(tmp_path):
    # A colour visible image stored as 16-bit with 12-bit values (a machine-vision camera)
    # was divided by 65535, so the teachers saw it almost black (at most 16 grey levels) and
    # found in the IR image only: here the person only the visible image shows was lost.
    ir, vi = data.load_pair(DATASETS / 'msrs_train', '00115D')
    teachers = pl.load_teachers('yolov8n', TEACHERS)
    eight = pl.pseudo_label_pair(teachers, ir, vi)
    twelve = pl.pseudo_label_pair(teachers, ir, vi.astype(np.uint16) * 16)
    eight, twelve = eight[eight[:, 4] >= 0.3], twelve[twelve[:, 4] >= 0.3]
    assert sorted(eight[:, 5].tolist()) == sorted(twelve[:, 5].tolist()) == [0.0, 2.0]
    for box in eight:
        same = twelve[twelve[:, 5] == box[5]][0]
        np.testing.assert_allclose(same[:4], box[:4], atol=0.02 * vi.shape[1])


@needs_teachers
def test_cli_skips_human_labelled_pairs_and_records_provenance(tmp_path):
    roadscene = DATASETS / 'roadscene'
    split, labelled, unlabelled = _two_pair_split(tmp_path, roadscene)
    out = tmp_path / 'pseudo'
    argv = ['--data', str(roadscene), '--split', str(split), '--out', str(out),
            '--teacher', 'yolox', '--score', '0.4', '--skip-labelled']
    assert pl.main(argv) == 0
    written = sorted(p.name for p in (out / 'labels').iterdir())
    assert written == sorted(['classes.txt', f'{unlabelled}.txt'])
    assert (out / 'labels' / 'classes.txt').read_text().split() == ['person', 'bicycle', 'car']
    labels = data.load_labels(out, unlabelled)
    assert labels is not None and set(labels[:, 0].tolist()) <= {0.0, 1.0, 2.0}
    assert (out / 'stems.txt').read_text().split() == [unlabelled]
    scores = (out / 'scores.tsv').read_text().splitlines()
    assert len(scores) == 1 + len(labels)
    assert all(float(row.split('\t')[-1]) >= 0.4 for row in scores[1:])
    readme = (out / 'README.md').read_text()
    sha = pl.file_sha256(TEACHERS / 'yolox_nano_coco.onnx')
    assert f'`yolox_nano_coco.onnx` sha256 `{sha}`' in readme
    assert sha in (TEACHERS / 'SHA256SUMS').read_text()
    for needed in ('score >= 0.4', 'IoU 0.5', 'motorcycle -> bicycle', 'truck -> car',
                   '--skip-labelled', 'left out (human labels win): 1', str(roadscene),
                   'the images are not copied', 'License/terms'):
        assert needed in readme, needed
    # Existing labels are never silently mixed with a new run.
    assert pl.main(argv) == 2
    assert pl.main(argv + ['--overwrite']) == 0
    # The training data set reads them through an absolute labels folder.
    dataset = data.PairedDataset({'path': roadscene, 'split': str(split),
                                  'labels': str(out / 'labels')}, augment=False)
    samples = {dataset[i]['stem']: dataset[i] for i in range(len(dataset))}
    assert samples[unlabelled]['has_labels'] and not samples[labelled]['has_labels']
    np.testing.assert_allclose(samples[unlabelled]['boxes'].numpy(), labels, atol=1e-6)
    only_pseudo = data.PairedDataset({'path': roadscene, 'split': str(out / 'stems.txt'),
                                      'labels': str(out / 'labels')}, augment=False)
    assert len(only_pseudo) == 1 and only_pseudo[0]['has_labels']


@needs_teachers
def test_calibrate_reads_the_class_list_of_the_label_folder_it_is_given(tmp_path, capsys):
    # --calibrate --labels DIR read the set's classes.txt, not DIR's own: a folder labelled
    # with the classes in another order (car, bicycle, person) had its cars scored as
    # persons, and the teachers' cars all counted as false boxes (F1 0.000).
    import json
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    other = roadscene / 'labels_other'
    other.mkdir()
    (other / 'classes.txt').write_text('car\nbicycle\nperson\n')
    for human in (roadscene / 'labels').glob('FLIR_*.txt'):
        lines = [line.split() for line in human.read_text().splitlines()]
        (other / human.name).write_text(''.join(f'{2 - int(w[0])} {" ".join(w[1:])}\n'
                                                for w in lines))
    results = []
    for labels in ('labels', 'labels_other'):
        argv = ['--calibrate', '--data', str(roadscene), '--split', 'test', '--labels', labels,
                '--thresholds', '0.3', '--out', str(tmp_path / labels)]
        assert pl.main(argv) == 0, labels
        capsys.readouterr()
        results.append(json.loads((tmp_path / labels / 'calibration.jsonl').read_text()))
    human, other_order = results
    assert human['gt_boxes']['car'] > 0 and human['thresholds'][0]['overall']['f1'] > 0.5
    for key in ('pairs', 'gt_boxes', 'thresholds'):
        assert other_order[key] == human[key], key
    # A record cut short (a run killed while it appended) went on one line with the next
    # run's, so that neither was read; the file is now replaced whole (a new inode), and the
    # new record starts a line of its own.
    jsonl = tmp_path / labels / 'calibration.jsonl'  # the last run's --out
    jsonl.write_text(jsonl.read_text() + '{"command": "tarfuse-pseudo-label --cal')
    before = jsonl.stat().st_ino
    assert pl.main(argv) == 0
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])['pairs'] == human['pairs']
    assert jsonl.stat().st_ino != before
    assert (tmp_path / labels / 'calibration.md').read_text().count('Command: ') == 2


@needs_teachers
def test_a_stem_with_two_image_files_is_refused_with_one_line(tmp_path, capsys):
    # vi/x.jpg beside vi/x.png: which is the pair's? Refused (data layer), nothing written.
    import shutil
    source = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(source, roadscene)
    stem = data.read_split(source, 'test')[0]
    visible = cv2.imread(data.pair_files(source, stem)[1])
    cv2.imwrite(str(roadscene / 'vi' / f'{stem}.png'), visible)
    for extra in (['--out', str(tmp_path / 'out')], ['--calibrate']):
        for split in ('test', 'all'):
            assert pl.main(['--data', str(roadscene), '--split', split, *extra]) == 2
            assert capsys.readouterr().err == (
                f"tarfuse-pseudo-label: error: 2 vi/ images of stem '{stem}' in "
                f"'{roadscene}': {stem}.jpg, {stem}.png; keep the pair's one\n")
    assert not (tmp_path / 'out').exists()


@needs_teachers
def test_ctrl_c_mid_run_says_what_is_left_without_a_traceback(tmp_path):
    # Ctrl-C printed a KeyboardInterrupt traceback from inside onnxruntime and left label
    # files without stems.txt or README.md, with no word on what to do next. Now it leaves
    # nothing (no partial labelling), and says so.
    out = tmp_path / 'pseudo'
    returncode, err = _stopped_half_way(out, signal.SIGINT)
    assert returncode == 130, err
    assert 'Traceback' not in err, err
    assert err.splitlines()[-1] == (
        'tarfuse-pseudo-label: interrupted: the labelling is incomplete: nothing written to '
        f"{out} (an earlier run's labels/, stems.txt, scores.tsv and README.md are kept)")
    assert not out.exists()


def _stopped_half_way(out, number, *options):
    """Label 50 msrs_train pairs into ``out`` in a child process; send it signal ``number``.

    The signal comes once the child said it labelled 25 of them. Returns ``(its exit status,
    its stderr)``.
    """
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.pseudo_label', '--data',
         str(DATASETS / 'msrs_train'), '--split', 'train', '--out', str(out), *options,
         '--max-pairs', '50'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not lines or 'pseudo-labelled 25/50 pairs' not in lines[-1]:  # half-way
        lines.append(process.stderr.readline())
        assert lines[-1], ''.join(lines)
    process.send_signal(number)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def _files(folder):
    """Return ``{relative path: bytes}`` of the files under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob('*') if p.is_file()}


@needs_teachers
@pytest.mark.parametrize('stop', ['SIGKILL', 'SIGTERM'])
def test_a_rerun_stopped_mid_run_leaves_the_earlier_labelling_whole(tmp_path, stop):
    """A rerun with --overwrite deleted the earlier labels first, then wrote in place.

    Killed (SIGKILL) or stopped (SIGTERM, which killed it without a word) half-way, it left
    some of the new label files (one perhaps cut short, read as fewer boxes) and the earlier
    labelling lost. The new labels are now put in place whole once every pair is labelled:
    the earlier ones stay as they were, and the next run removes a folder of new labels that a
    run killed while it put them in place left.
    """
    roadscene = DATASETS / 'roadscene'
    split, labelled, unlabelled = _two_pair_split(tmp_path, roadscene)
    out = tmp_path / 'pseudo'
    argv = ['--data', str(roadscene), '--split', str(split), '--out', str(out)]
    assert pl.main(argv) == 0
    earlier = _files(out)
    assert {'stems.txt', 'scores.tsv', 'README.md', 'labels/classes.txt',
            f'labels/{labelled}.txt', f'labels/{unlabelled}.txt'} == set(earlier)
    returncode, err = _stopped_half_way(out, getattr(signal, stop), '--overwrite')
    assert returncode == (-signal.SIGKILL if stop == 'SIGKILL' else 130), err
    if stop == 'SIGTERM':
        assert 'Traceback' not in err, err
        assert err.splitlines()[-1] == (
            'tarfuse-pseudo-label: interrupted: the labelling is incomplete: nothing written to '
            f"{out} (an earlier run's labels/, stems.txt, scores.tsv and README.md are kept)")
    assert _files(out) == earlier
    # The earlier labelling is there whole, so a plain rerun is refused; --overwrite replaces
    # it and removes what a run killed while it put its labels in place left.
    assert pl.main(argv) == 2
    stale = out / 'labels.0123abcd.tmp'
    stale.mkdir()
    (stale / f'{labelled}.txt').write_text('0 0.5 0.5 0.1')
    (out / 'stems.txt.4567cdef.tmp').write_text(labelled)
    before = {name: (out / name).stat().st_ino for name in ('labels', 'stems.txt')}
    assert pl.main(argv + ['--overwrite', '--teacher', 'yolox']) == 0
    # Put in place, not rewritten: new inodes (a reader holding the old ones reads them whole).
    assert [name for name, inode in before.items() if (out / name).stat().st_ino == inode] == []
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'labels', 'scores.tsv',
                                                     'stems.txt']
    assert sorted(p.name for p in (out / 'labels').iterdir()) == sorted(
        ['classes.txt', f'{labelled}.txt', f'{unlabelled}.txt'])
    assert 'yolox_nano_coco.onnx' in (out / 'README.md').read_text()


@contextmanager
def _a_run_into_a_held_folder(tmp_path):
    """Yield ``(process, out, stems)``: a run into a --out held by another, once it waits.

    The folder is held as a run putting its outputs in place holds it, until the block ends.
    The run is killed after 120 s: one that never says that it waits fails the test, not hangs.
    """
    from tarfuse_ros.core.files import claim_folder
    roadscene = DATASETS / 'roadscene'
    split, labelled, unlabelled = _two_pair_split(tmp_path, roadscene)
    out = tmp_path / 'pseudo'
    out.mkdir()
    claim = claim_folder(out)
    assert claim is not None
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.pseudo_label', '--data', str(roadscene),
         '--split', str(split), '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        lines = []
        while not lines or 'waiting for another run' not in lines[-1]:
            lines.append(process.stderr.readline())
            assert lines[-1], ''.join(lines)
        assert 'pseudo-labelled 2/2 pairs' in lines[-2], ''.join(lines)
        assert lines[-1] == (f'tarfuse-pseudo-label: waiting for another run into {out} to put '
                             f'its outputs in place\n')
        yield process, out, [labelled, unlabelled]
    finally:
        os.close(claim)
        watchdog.cancel()


@needs_teachers
def test_a_run_waits_while_another_puts_its_outputs_in_the_same_folder(tmp_path):
    """Two runs into one --out could interleave their deletes and writes.

    That could leave one run's stems.txt beside the other's labels; each now puts its outputs
    in place under a lock on the folder. The run waiting for it said nothing: it seemed to hang
    once all its pairs were labelled.
    """
    with _a_run_into_a_held_folder(tmp_path) as (process, out, stems):
        time.sleep(3)
        assert process.poll() is None and list(out.iterdir()) == []
    assert process.wait(timeout=60) == 0, process.stderr.read()
    assert (out / 'stems.txt').read_text().split() == stems


@needs_teachers
def test_a_run_waiting_for_another_stops_at_ctrl_c(tmp_path):
    """Ctrl-C and SIGTERM were held back while a run waited for the lock on --out.

    Only SIGKILL stopped it until the other run let go. Nothing is written yet then: the run
    stops as one interrupted while labelling.
    """
    with _a_run_into_a_held_folder(tmp_path) as (process, out, _):
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 130
        assert list(out.iterdir()) == []
    assert process.stderr.read() == (
        f'tarfuse-pseudo-label: interrupted: the labelling is incomplete: nothing written to '
        f"{out} (an earlier run's labels/, stems.txt, scores.tsv and README.md are kept)\n")


def test_cli_usage_errors_exit_2_before_the_teachers_load(tmp_path, capsys):
    (tmp_path / 'file').write_text('not a folder')
    for extra, words in ((['--max-pairs', '0'], '--max-pairs must be >= 1, got 0'),
                         (['--threads', '0'], '--threads must be >= 1'),
                         (['--out', str(tmp_path / 'file')], 'is a file, not a folder'),
                         (['--data', 'no_such_set'], "data set 'no_such_set' not found"),
                         # A file said "not found ...; set data.root", a training setting.
                         (['--data', str(tmp_path / 'file')],
                          'is a file, not a data set folder: a data set folder holds ir/ and '
                          'vi/')):
        argv = ['--data', str(tmp_path), '--out', str(tmp_path / 'out'), *extra]
        assert pl.main(argv) == 2, extra
        err = capsys.readouterr().err
        assert words in err and 'Traceback' not in err, err
        assert 'data.root' not in err, err
    assert not (tmp_path / 'out').exists()  # --max-pairs 0 wrote an empty result (exit 0)


def test_cli_refuses_scores_ious_and_thresholds_outside_0_1_before_any_work(tmp_path, capsys):
    # --iou 5 turned the pooling NMS off (50 car boxes on one pair, exit 0); --thresholds ','
    # was an IndexError traceback, --thresholds 0.3,5 a row of zeros in the table.
    for extra, words in ((['--iou', '5'], '--iou must be in (0, 1], got 5'),
                         (['--iou', '0'], '--iou must be in (0, 1], got 0'),
                         (['--score', 'nan'], '--score must be in (0, 1], got nan'),
                         (['--calibrate', '--thresholds', ','], "--thresholds ',' names no"),
                         (['--calibrate', '--thresholds', '0.3,5'],
                          '--thresholds must be in (0, 1], got 5'),
                         (['--calibrate', '--thresholds', '0.3,x'],
                          "--thresholds '0.3,x': 'x' is not a number")):
        argv = ['--data', str(tmp_path), '--out', str(tmp_path / 'out'), *extra]
        assert pl.main(argv) == 2, extra
        err = capsys.readouterr().err
        assert words in err and 'Traceback' not in err, err
    assert not (tmp_path / 'out').exists()


def test_cli_refuses_an_out_whose_labels_folder_it_cannot_write(tmp_path, capsys):
    # A read-only --out/labels (or a file of that name) passed the --out check, then the run
    # stopped with a PermissionError / FileExistsError traceback after the teachers loaded.
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    out = tmp_path / 'pseudo'
    out.mkdir()
    (out / 'labels').write_text('not a folder')
    argv = ['--data', str(roadscene), '--split', 'test', '--out', str(out),
            '--teachers-dir', str(tmp_path / 'no_teachers_needed')]
    assert pl.main(argv) == 2
    assert capsys.readouterr().err == (
        f"tarfuse-pseudo-label: error: --out '{out}' cannot be written ({out / 'labels'} is a "
        'file, not a folder); give a folder you can write to (created if needed)\n')


@pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None,
                    reason='onnxruntime not installed')
def test_a_teacher_file_that_is_no_onnx_model_is_one_error_line(tmp_path, capsys):
    # It was an onnxruntime InvalidProtobuf traceback (tarfuse-eval --teacher FILE.onnx too).
    from tarfuse_ros.evaluation.teachers import load_teacher
    teachers = tmp_path / 'teachers'
    teachers.mkdir()
    junk = teachers / pl.TEACHER_FILES['yolov8n']
    junk.write_text('not an ONNX model\n')
    roadscene = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene'
    argv = ['--data', str(roadscene), '--split', 'test', '--out', str(tmp_path / 'out'),
            '--teachers-dir', str(teachers)]
    assert pl.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tarfuse-pseudo-label: error: '{junk}' is not a loadable ONNX "
                          'model (') and len(err.splitlines()) == 1, err
    with pytest.raises(ValueError, match='is no known teacher: .* is not a loadable ONNX'):
        load_teacher(str(junk))


@needs_teachers
def test_cli_refuses_an_out_it_cannot_write_before_any_work(tmp_path, capsys):
    # Under a regular file it crashed with a traceback making the folder (after the teachers
    # loaded; with --calibrate after the whole calibration).
    (tmp_path / 'file').write_text('not a folder')
    out = tmp_path / 'file' / 'pseudo'
    for extra in ([], ['--calibrate']):
        argv = ['--data', str(DATASETS / 'roadscene'), '--split', 'test', '--out', str(out),
                '--max-pairs', '1', *extra]
        assert pl.main(argv) == 2, extra
        captured = capsys.readouterr()
        assert captured.err == (f"tarfuse-pseudo-label: error: --out '{out}' cannot be written "
                                f"({tmp_path / 'file'} is a file, not a folder); give a folder "
                                'you can write to (created if needed)\n'), extra
        assert not captured.out


# Why tarfuse-pseudo-label refuses an IR image of another aspect ratio, and what to do.
NOT_ALIGNED = ('the teachers run on the IR and the visible image of each pair and their boxes '
               'are pooled in the visible frame, so the pairs must be aligned (the IR image is '
               'the visible frame, at any size): such a pair is not aligned as stored or not a '
               'pair, and the boxes found in its IR image, stretched to the visible frame, would '
               'land in the wrong place: align its IR image to the visible one, or leave it out '
               'of the split (a list file without it)')


def _with_a_cropped_ir(tmp_path):
    """Copy RoadScene's test pairs; cut the second one's IR image to 3/4 of its height.

    Returns the set, the cropped stem and its sizes as the refusal names them.
    """
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    stem = data.read_split(roadscene, 'test')[1]
    ir_path, vi_path = data.pair_files(roadscene, stem)
    ir = cv2.imread(str(ir_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(ir_path), ir[:ir.shape[0] * 3 // 4])
    height, width = cv2.imread(str(vi_path)).shape[:2]
    return roadscene, stem, (f'IR {ir.shape[1]}x{ir.shape[0] * 3 // 4}, '
                             f'visible {width}x{height}')


def test_a_pair_whose_ir_has_another_aspect_ratio_is_refused_before_any_work(tmp_path):
    # Its IR image was stretched to the visible frame, so the teachers' IR boxes were written
    # (and scored, --calibrate) where the object is not.
    roadscene, stem, sizes = _with_a_cropped_ir(tmp_path)
    out = tmp_path / 'pseudo'
    # An earlier run's labels in --out (of the pairs before the crop).
    first = data.read_split(roadscene, 'test')[0]
    (tmp_path / 'first.txt').write_text(f'{first}\n')
    pl.pseudo_label([], roadscene, [str(tmp_path / 'first.txt')], out, progress=False)
    before = sorted(path.relative_to(out) for path in out.rglob('*'))
    refusal = (f'1 of the 2 pairs have an IR image of another aspect ratio than their visible '
               f'image: roadscene/{stem} ({sizes}); {NOT_ALIGNED}')
    with pytest.raises(ValueError) as raised:
        pl.pseudo_label([], roadscene, ['test'], out, overwrite=True, progress=False)
    assert str(raised.value) == refusal
    assert sorted(path.relative_to(out) for path in out.rglob('*')) == before
    with pytest.raises(ValueError) as raised:
        pl.calibrate([], roadscene, ['test'], thresholds=(0.3,), progress=False)
    assert str(raised.value) == refusal
    # Left out of the split, the other pair is labelled.
    assert pl.pseudo_label([], roadscene, [str(tmp_path / 'first.txt')], out, overwrite=True,
                           progress=False)['pairs'] == 1


@needs_teachers
def test_cli_refuses_a_pair_whose_ir_has_another_aspect_ratio_in_both_modes(tmp_path, capsys):
    roadscene, stem, sizes = _with_a_cropped_ir(tmp_path)
    for mode in (['--out', str(tmp_path / 'pseudo')], ['--calibrate', '--thresholds', '0.3']):
        assert pl.main(['--data', str(roadscene), '--split', 'test', *mode]) == 2
        assert capsys.readouterr().err == (
            f'tarfuse-pseudo-label: error: 1 of the 2 pairs have an IR image of another aspect '
            f'ratio than their visible image: roadscene/{stem} ({sizes}); {NOT_ALIGNED}\n')
    assert not (tmp_path / 'pseudo' / 'labels').exists()


def test_skip_labelled_with_every_pair_labelled_is_refused(tmp_path):
    """It exited 0 with an empty stems.txt (a split list of no pair) and no label file."""
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'roadscene',
                    roadscene)
    stems = data.read_split(roadscene, 'test')
    for stem in stems:  # a human label file for each, some with no object
        label = roadscene / 'labels' / f'{stem}.txt'
        if not label.is_file():
            label.write_text('')
    out = tmp_path / 'pseudo'
    with pytest.raises(ValueError, match=rf'every one of the {len(stems)} pairs has a human '
                                         r'label file in .*labels \(--skip-labelled\): nothing '
                                         'to pseudo-label'):
        pl.pseudo_label([], roadscene, ['test'], out, skip_labelled=True, progress=False)
    assert not (out / 'stems.txt').exists()
