"""Paired data sets: splits, pairs, labels, class maps, crops/flips that move boxes, collation.

The real data come from ``test/data/datasets`` (small excerpts of the shared data sets, in the
same layout; sources in its README), so these tests run on a fresh clone.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data
from tarfuse_ros.core.images import to_unit_visible
from tarfuse_ros.core.model.warp import warp
import torch

DATASETS = Path(__file__).resolve().parents[1] / 'data' / 'datasets'
UNIFIED = {'person': 0, 'people': 0, 'bicycle': 1, 'car': 2}


def _make_set(root, boxes_px, size=(96, 128), labelled=True, name='toy'):
    """Write a one-pair data set whose IR and visible show white rectangles at ``boxes_px``."""
    height, width = size
    folder = Path(root) / name
    for sub in ('ir', 'vi', 'labels'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ir = np.full((height, width), 20, np.uint8)
    vi = np.zeros((height, width, 3), np.uint8)
    vi[:, :] = (40, 80, 120)
    lines = []
    for x1, y1, x2, y2, cls in boxes_px:
        ir[y1:y2, x1:x2] = 255
        vi[y1:y2, x1:x2] = 255
        lines.append(f'{cls} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} '
                     f'{(x2 - x1) / width} {(y2 - y1) / height}')
    cv2.imwrite(str(folder / 'ir' / 'a.png'), ir)
    cv2.imwrite(str(folder / 'vi' / 'a.png'), vi)
    if labelled:
        (folder / 'labels' / 'a.txt').write_text('\n'.join(lines) + '\n')
    (folder / 'classes.txt').write_text('person\ncar\n')
    (folder / 'train.txt').write_text('a\n')
    return folder


def _bright_box(channel):
    ys, xs = np.nonzero(channel.numpy()[0] > 0.9)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_splits_of_the_real_sets():
    roadscene = DATASETS / 'roadscene'
    assert len(data.read_split(roadscene, 'train')) == 4
    test = data.read_split(roadscene, 'test')
    assert len(test) == 2
    assert data.read_split(roadscene, roadscene / 'test.txt') == test
    assert len(data.read_split(DATASETS / 'tno', 'all')) == 1
    assert set(test) <= set(data.read_split(roadscene, 'misaligned'))
    with pytest.raises(ValueError, match="split 'val' not found.*'test'"):
        data.read_split(roadscene, 'val')


def test_pairs_load_as_stored():
    ir, vi = data.load_pair(DATASETS / 'roadscene', 'FLIR_00006')
    assert ir.dtype == np.uint8 and ir.ndim == 2
    assert vi.dtype == np.uint8 and vi.shape == ir.shape + (3,)
    # TNO stores 3 identical channels: the visible image is grey, the IR is reduced to HxW.
    ir, vi = data.load_pair(DATASETS / 'tno', 'TNO_01')
    assert ir.ndim == 2 and vi.ndim == 2 and ir.shape == vi.shape
    with pytest.raises(ValueError, match="no ir/ image for stem 'nope'"):
        data.load_pair(DATASETS / 'tno', 'nope')


def test_a_stem_with_two_image_files_is_refused(tmp_path):
    # ir/x.png beside ir/x.jpg: one of them was taken, whichever the folder listed first.
    import shutil
    roadscene = tmp_path / 'roadscene'
    shutil.copytree(DATASETS / 'roadscene', roadscene)
    ir = cv2.imread(str(roadscene / 'ir' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(roadscene / 'ir' / 'FLIR_00122.png'), 255 - ir)
    message = (f"2 ir/ images of stem 'FLIR_00122' in '{roadscene}': FLIR_00122.jpg, "
               "FLIR_00122.png; keep the pair's one")
    for read in (lambda: data.read_split(roadscene, 'test'),
                 lambda: data.read_split(roadscene, 'all'),
                 lambda: data.load_pair(roadscene, 'FLIR_00122'),
                 lambda: data.PairedDataset([(roadscene, 'all')], augment=False)):
        with pytest.raises(ValueError) as refused:
            read()
        assert str(refused.value) == message
    assert data.read_split(roadscene, 'train') == data.read_split(DATASETS / 'roadscene',
                                                                  'train')


def test_labels_distinguish_unlabelled_from_empty():
    roadscene = DATASETS / 'roadscene'
    labelled = data.read_split(roadscene, 'det_labelled')
    boxes = data.load_labels(roadscene, labelled[0])
    assert boxes.dtype == np.float32 and boxes.shape[1] == 5 and len(boxes) >= 1
    assert ((boxes[:, 1:] >= 0) & (boxes[:, 1:] <= 1)).all()
    unlabelled = sorted(set(data.read_split(roadscene, 'all')) - set(labelled))[0]
    assert data.load_labels(roadscene, unlabelled) is None
    empty = data.load_labels(DATASETS / 'msrs_det', '01574D')
    assert empty.shape == (0, 5)


def test_malformed_labels_name_the_line(tmp_path):
    folder = _make_set(tmp_path, [(10, 10, 40, 40, 0)])
    (folder / 'labels' / 'a.txt').write_text('0 0.5 0.5 0.2\n')
    with pytest.raises(ValueError, match='line 1.*5 columns'):
        data.load_labels(folder, 'a')
    (folder / 'labels' / 'a.txt').write_text('0 0.5 0.5 0.2 0.2\n1 1.5 0.5 0.2 0.2\n')
    with pytest.raises(ValueError, match='line 2.*normalised'):
        data.load_labels(folder, 'a')
    (folder / 'labels' / 'a.txt').write_text('0 0.5 0.5 0.2 0.2\n\n1 0.5 0.5 0 0.2\n')
    with pytest.raises(ValueError, match=r'line 3 .*width and height must be > 0'):
        data.load_labels(folder, 'a')
    # Centres may be up to 1e-3 past an edge: a box that small lies wholly outside the image.
    for line in ('0 1.0009 0.5 0.0015 0.2', '0 0.5 -0.0009 0.2 0.0015'):
        (folder / 'labels' / 'a.txt').write_text(f'0 0.5 0.5 0.2 0.2\n{line}\n')
        with pytest.raises(ValueError, match=r'line 2 .*wholly outside the image'):
            data.load_labels(folder, 'a')
    (folder / 'labels' / 'a.txt').write_text('0 1.0009 0.5 0.002 0.2\n')  # 0.0001 inside
    assert data.load_labels(folder, 'a')[0, 3] == pytest.approx(1e-4, abs=1e-6)


def test_boxes_past_the_image_edge_are_clipped_for_eval_and_training_alike(tmp_path):
    # Centres were checked against [0, 1], edges not: a box past the image edge stayed so in
    # eval's targets and in whole training frames, while training crops clipped it.
    from tarfuse_ros.evaluation.inputs import targets
    folder = _make_set(tmp_path, [(0, 30, 20, 60, 0)])
    (folder / 'labels' / 'a.txt').write_text(
        '0 0.05 0.5 0.2 0.25\n'     # 0.1 of its width past the left edge
        '1 0.9 0.95 0.3 0.2\n'      # past the right and the bottom edge
        '1 0.5 0.5 0.25 0.125\n')   # inside: unchanged
    labels = data.load_labels(folder, 'a')
    np.testing.assert_allclose(labels, [[0, 0.075, 0.5, 0.15, 0.25],
                                        [1, 0.875, 0.925, 0.25, 0.15],
                                        [1, 0.5, 0.5, 0.25, 0.125]], atol=1e-6)
    boxes, _ = targets(labels, None, 128, 96)  # eval's targets, pixels of a 128 x 96 image
    np.testing.assert_allclose(boxes[:, :4], [[0, 36, 19.2, 60], [96, 81.6, 128, 96],
                                              [48, 42, 80, 54]], atol=1e-4)
    sample = data.PairedDataset([(folder, 'all')], class_map={'person': 0, 'car': 1},
                                augment=False)[0]  # a whole frame (no crop)
    np.testing.assert_allclose(sample['boxes'].numpy(), labels, atol=1e-6)


def test_class_map_unifies_label_sets():
    dataset = data.PairedDataset([(DATASETS / 'm3fd_samples', 'all')], class_map=UNIFIED,
                                 augment=False)
    assert dataset.class_names == ('person', 'bicycle', 'car')
    by_stem = {dataset.items[i][2]: i for i in range(len(dataset))}
    sample = dataset[by_stem['M3FD_00000']]
    # M3FD: 4 People (id 0) -> person 0, 7 Car (id 1) -> car 2; Bus/Lamp/... would be dropped.
    assert sample['has_labels'] is True
    assert sorted(sample['boxes'][:, 0].tolist()) == [0.0] * 4 + [2.0] * 7
    unlabelled = dataset[by_stem['M3FD_00370']]
    assert unlabelled['has_labels'] is False and unlabelled['boxes'].shape == (0, 5)
    default = data.default_class_map([DATASETS / 'msrs_det', DATASETS / 'm3fd_samples'])
    assert default == {'person': 0, 'bicycle': 1, 'car': 2, 'people': 3, 'bus': 4,
                       'motorcycle': 5, 'lamp': 6, 'truck': 7}


def test_a_label_folder_with_its_own_classes_txt_names_its_ids(tmp_path):
    # A second label folder written with other class ids (another tool's order) was read with
    # the set's classes.txt: its persons were trained as cars and the reverse.
    import shutil
    from tarfuse_ros.training.datasets import check_class_map
    m3fd = tmp_path / 'm3fd'
    shutil.copytree(DATASETS / 'm3fd_samples', m3fd)
    set_names = data.read_classes(m3fd)
    swapped = list(reversed(set_names))
    (m3fd / 'labels_swapped').mkdir()
    (m3fd / 'labels_swapped' / 'classes.txt').write_text('\n'.join(swapped) + '\n')
    lines = (m3fd / 'labels' / 'M3FD_00000.txt').read_text().splitlines()
    (m3fd / 'labels_swapped' / 'M3FD_00000.txt').write_text(''.join(
        f'{swapped.index(set_names[int(line.split()[0])])} {line.split(None, 1)[1]}\n'
        for line in lines))
    assert data.read_classes(m3fd, 'labels_swapped') == swapped
    assert data.read_classes(m3fd, str(m3fd / 'labels_swapped')) == swapped
    assert data.read_classes(m3fd, 'labels') == set_names  # none of its own: the set's
    both = [data.PairedDataset([(m3fd, 'all', labels)], class_map=UNIFIED, augment=False)
            for labels in ('labels', 'labels_swapped')]
    assert [sorted(d[0]['boxes'][:, 0].tolist()) for d in both] == [[0.0] * 4 + [2.0] * 7] * 2
    assert data.default_class_map([data.DataSource(m3fd, 'all', (), 'labels_swapped')]) == {
        name.lower(): i for i, name in enumerate(swapped)}
    # The training's check reads the label folder's list too: a map naming only its classes.
    (m3fd / 'labels_people').mkdir()
    (m3fd / 'labels_people' / 'classes.txt').write_text('pedestrian\n')
    check_class_map([data.DataSource(m3fd, 'all', (), 'labels_people')], {'pedestrian': 0})
    with pytest.raises(ValueError, match='pedestrian is in no classes.txt'):
        check_class_map([data.DataSource(m3fd, 'all')], {'pedestrian': 0})


def test_sample_channels_are_ir_and_visible_luma():
    roadscene = DATASETS / 'roadscene'
    dataset = data.PairedDataset([(roadscene, 'test')], augment=False, keep_color=True)
    sample = dataset[0]
    ir, vi = data.load_pair(roadscene, sample['stem'])
    assert sample['ir'].shape == (1,) + ir.shape
    np.testing.assert_allclose(sample['ir'][0].numpy(), ir / 255.0, atol=1e-6)
    # The engine's luma: OpenCV's 8-bit BT.601 Y of the colour image (images.prepare_pair),
    # within half a grey level of the unrounded float luma.
    y_ref = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)[:, :, 0] / 255.0
    np.testing.assert_allclose(sample['vi'][0].numpy(), y_ref, atol=1e-6)
    np.testing.assert_allclose(sample['vi'][0].numpy(), to_unit_visible(vi)[0],
                               atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(sample['vi_color'].numpy(), vi.transpose(2, 0, 1) / 255.0,
                               atol=1e-6)


def test_boxes_follow_random_crops_and_flips(tmp_path):
    folder = _make_set(tmp_path, [(40, 30, 72, 62, 0)])
    dataset = data.PairedDataset([(folder, 'train')], class_map={'person': 0, 'car': 1},
                                 crop_size=64, hflip_prob=0.5, vflip_prob=0.5, seed=3)
    seen_flips = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert sample['ir'].shape == (1, 64, 64) and sample['vi'].shape == (1, 64, 64)
        if len(sample['boxes']) == 0:
            continue  # the rectangle fell (mostly) outside this crop
        _, cx, cy, w, h = sample['boxes'][0].tolist()
        x1, y1, x2, y2 = _bright_box(sample['ir'])
        assert (cx - w / 2) * 64 == pytest.approx(x1, abs=1e-3)
        assert (cx + w / 2) * 64 == pytest.approx(x2, abs=1e-3)
        assert (cy - h / 2) * 64 == pytest.approx(y1, abs=1e-3)
        assert (cy + h / 2) * 64 == pytest.approx(y2, abs=1e-3)
        assert _bright_box(sample['vi']) == (x1, y1, x2, y2)
        seen_flips.add((x1 == 0, y1 == 0))
    assert len(seen_flips) >= 1


def test_crops_clip_and_drop_cut_boxes(tmp_path):
    # A 64x64 centre crop of 96x128 spans x 32..96, y 16..80.
    boxes = [(20, 30, 60, 50, 0),   # cut on the left: clipped to x 32..60
             (90, 20, 100, 40, 1),  # 6 px of 10 inside: kept, clipped to x 90..96
             (0, 0, 31, 10, 0),     # entirely outside: dropped
             (94, 60, 110, 70, 1)]  # 2 px wide inside: dropped (min_box_px 3)
    folder = _make_set(tmp_path, boxes)
    dataset = data.PairedDataset([(folder, 'train')], class_map={'person': 0, 'car': 1},
                                 crop_size=64, augment=False)
    got = dataset[0]['boxes'].numpy()
    xyxy = data.yolo_to_xyxy(got, 64, 64)
    np.testing.assert_allclose(xyxy[:, :4], [[0, 14, 28, 34], [58, 4, 64, 24]], atol=1e-4)
    np.testing.assert_array_equal(xyxy[:, 4], [0, 1])


def test_small_images_are_scaled_up_to_the_crop(tmp_path):
    folder = _make_set(tmp_path, [(10, 10, 30, 30, 0)], size=(40, 60))
    sample = data.PairedDataset([(folder, 'train')], crop_size=64, augment=False)[0]
    assert sample['ir'].shape == (1, 64, 64)


def test_samples_are_reproducible_per_epoch(tmp_path):
    folder = _make_set(tmp_path, [(40, 30, 72, 62, 0)], size=(200, 240))
    dataset = data.PairedDataset([(folder, 'train')], crop_size=64, seed=7)
    first = dataset[0]['ir'].clone()
    assert torch.equal(dataset[0]['ir'], first)
    changed = False
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        changed |= not torch.equal(dataset[0]['ir'], first)
    assert changed


def test_collate_builds_ultralytics_targets(tmp_path):
    labelled = _make_set(tmp_path, [(40, 30, 72, 62, 0), (5, 5, 20, 20, 1)], name='l')
    bare = _make_set(tmp_path, [(40, 30, 72, 62, 0)], labelled=False, name='u')
    dataset = data.PairedDataset([(labelled, 'train'), (bare, 'train')],
                                 class_map={'person': 0, 'car': 1}, resize=(96, 128),
                                 augment=False)
    batch = data.collate_pairs([dataset[1], dataset[0], dataset[0]])
    assert batch['ir'].shape == (3, 1, 96, 128)
    assert batch['has_labels'].tolist() == [False, True, True]
    assert batch['batch_idx'].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert batch['batch_idx'].dtype == torch.float32
    assert batch['cls'].shape == (4, 1) and batch['cls'][:, 0].tolist() == [0, 1, 0, 1]
    assert batch['bboxes'].shape == (4, 4)
    np.testing.assert_allclose(batch['bboxes'][0].numpy(),
                               [56 / 128, 46 / 96, 32 / 128, 32 / 96], atol=1e-6)
    assert batch['dataset'] == ['u', 'l', 'l']
    small = data.PairedDataset([(labelled, 'train')], resize=(64, 64), augment=False)[0]
    with pytest.raises(ValueError, match='share one size'):
        data.collate_pairs([dataset[0], small])


def test_bad_arguments_raise(tmp_path):
    folder = _make_set(tmp_path, [(10, 10, 30, 30, 0)])
    with pytest.raises(ValueError, match='multiples of 32'):
        data.PairedDataset([(folder, 'train')], crop_size=50)
    with pytest.raises(ValueError, match='must contain ir/ and vi/'):
        data.PairedDataset([(tmp_path, 'train')])
    with pytest.raises(ValueError, match='without gaps'):
        data.PairedDataset([(folder, 'train')], class_map={'person': 0, 'car': 2})


def test_dataset_displacement_reproduces_the_deformed_ir():
    roadscene = DATASETS / 'roadscene'
    stem = data.misaligned_stems(roadscene)[0]
    disp = data.load_disp(roadscene, stem)
    ir, _ = data.load_pair(roadscene, stem)
    deformed = data.load_misaligned_ir(roadscene, stem)
    assert disp.shape == ir.shape + (2,) and disp.dtype == np.float32
    # The stored field is the APPLIED one: ir_warp = warp(ir, disp).
    ir_t = torch.from_numpy(ir / 255.0).float()[None, None]
    flow = torch.from_numpy(disp).permute(2, 0, 1)[None]
    rebuilt = warp(ir_t, flow)[0, 0].numpy() * 255.0
    assert np.abs(rebuilt - deformed).mean() < 1.0
    with pytest.raises(ValueError, match='no ground-truth displacement'):
        data.load_disp(roadscene, 'nope')


def test_context_surrounds_the_crop_and_follows_its_flips(tmp_path):
    roadscene = DATASETS / 'roadscene'
    plain = data.PairedDataset([(roadscene, 'train')], crop_size=64, hflip_prob=0.5,
                               vflip_prob=0.5, seed=5)
    framed = data.PairedDataset([(roadscene, 'train')], crop_size=64, hflip_prob=0.5,
                                vflip_prob=0.5, seed=5, context=16)
    for epoch in range(4):
        plain.set_epoch(epoch)
        framed.set_epoch(epoch)
        for index in range(len(framed)):
            sample = framed[index]
            # The same crops and flips with or without context; the crop is its centre.
            assert torch.equal(sample['ir'], plain[index]['ir'])
            assert sample['ir_context'].shape == (1, 96, 96)
            assert torch.equal(sample['ir_context'][:, 16:80, 16:80], sample['ir'])
    batch = data.collate_pairs([framed[0], framed[1]])
    assert batch['ir_context'].shape == (2, 1, 96, 96)


def test_context_beyond_the_frame_is_zero(tmp_path):
    folder = _make_set(tmp_path, [(10, 10, 30, 30, 0)], size=(64, 64))
    sample = data.PairedDataset([(folder, 'train')], crop_size=64, augment=False,
                                context=8)[0]
    context = sample['ir_context'][0]
    assert context.shape == (80, 80)
    assert float(context[:8].abs().max()) == 0.0 and float(context[:, -8:].abs().max()) == 0.0
    assert torch.equal(context[8:72, 8:72], sample['ir'][0])
    with pytest.raises(ValueError, match='context must be >= 0'):
        data.PairedDataset([(folder, 'train')], crop_size=64, context=-1)


def test_scale_range_resizes_the_pair_and_its_boxes(tmp_path):
    # One 40x20 px box in a 192x256 frame; 64 px crops without flips.
    folder = _make_set(tmp_path, [(100, 80, 140, 100, 0)], size=(192, 256))
    plain = data.PairedDataset([(folder, 'train')], crop_size=64, hflip_prob=0.0, seed=3)
    doubled = data.PairedDataset([(folder, 'train')], crop_size=128, hflip_prob=0.0, seed=3,
                                 scale_range=(2.0, 2.0))
    halved = data.PairedDataset([(folder, 'train')], crop_size=64, hflip_prob=0.0, seed=3,
                                scale_range=(0.5, 0.5))
    whole = {2.0: 0, 0.5: 0}
    for epoch in range(12):
        for dataset, factor in ((doubled, 2.0), (halved, 0.5)):
            dataset.set_epoch(epoch)
            sample = dataset[0]
            crop = dataset.crop_size[0]
            for box in sample['boxes'].numpy():
                if box[3] * crop > 0.99 * 40 * factor:  # the whole box is inside this crop
                    whole[factor] += 1
                    assert box[3] * crop == pytest.approx(40 * factor, abs=1.0)
                    assert box[4] * crop == pytest.approx(20 * factor, abs=1.0)
            if len(sample['boxes']):  # the box pixels and the label move together
                x1, y1, x2, y2 = _bright_box(sample['ir'])
                cx, cy = sample['boxes'][0, 1:3].numpy() * crop
                assert (x1 + x2) / 2 == pytest.approx(cx, abs=1.5)
                assert (y1 + y2) / 2 == pytest.approx(cy, abs=1.5)
    assert min(whole.values()) >= 2, whole
    # Without a range nothing is drawn: the crops of earlier runs stay the same.
    again = data.PairedDataset([(folder, 'train')], crop_size=64, hflip_prob=0.0, seed=3)
    assert torch.equal(again[0]['ir'], plain[0]['ir'])
    # Validation (augment false) never resizes; a small frame is still enlarged to cover.
    fixed = data.PairedDataset([(folder, 'train')], crop_size=64, augment=False,
                               scale_range=(0.5, 0.5))[0]
    assert torch.equal(fixed['ir'], data.PairedDataset([(folder, 'train')], crop_size=64,
                                                       augment=False)[0]['ir'])
    covered = data.PairedDataset([(folder, 'train')], crop_size=160, scale_range=(0.5, 0.5))[0]
    assert covered['ir'].shape == (1, 160, 160)
    for bad in ((0.0, 1.0), (1.5, 1.0), (1.0,), 'big', '12', (1.0, float('nan')), (True, 2),
                {1: 'a', 2: 'b'}):
        with pytest.raises(ValueError, match='scale_range'):
            data.PairedDataset([(folder, 'train')], crop_size=64, scale_range=bad)


def test_min_long_side_enlarges_small_frames_as_inference_does(tmp_path):
    # A 30x20 px box in a 96x128 frame; frames under a 256 px longer side are doubled here.
    folder = _make_set(tmp_path, [(40, 30, 70, 50, 0)], size=(96, 128))
    assert data.enlarged_size(96, 128, 256) == (192, 256)
    assert data.enlarged_size(96, 128, 128) == (96, 128)  # already there: unchanged
    assert data.enlarged_size(96, 128, 0) == (96, 128)
    assert data.enlarged_size(161, 622, 640) == (166, 640)
    whole = data.PairedDataset([(folder, 'train')], augment=False, min_long_side=256)[0]
    assert whole['ir'].shape == (1, 192, 256)
    x1, y1, x2, y2 = _bright_box(whole['ir'])
    assert (x2 - x1, y2 - y1) == pytest.approx((60, 40), abs=2)
    _, cx, cy, w, h = whole['boxes'][0].tolist()  # normalised: the same box
    assert (cx * 256, cy * 192, w * 256, h * 192) == pytest.approx((110, 80, 60, 40), abs=1e-3)
    # Crops are cut from the enlarged frame (the box keeps its enlarged size).
    crop = data.PairedDataset([(folder, 'train')], crop_size=128, augment=False,
                              min_long_side=256)[0]
    _, _, _, w, h = crop['boxes'][0].tolist()
    assert (w * 128, h * 128) == pytest.approx((60, 40), abs=1e-3)
    unchanged = data.PairedDataset([(folder, 'train')], augment=False, min_long_side=128)[0]
    assert unchanged['ir'].shape == (1, 96, 128)
    for bad in (-1, 1.5, True, '640'):
        with pytest.raises(ValueError, match='min_long_side'):
            data.PairedDataset([(folder, 'train')], min_long_side=bad)


def test_photometric_change_is_monotonic_and_drawn_per_modality(tmp_path):
    roadscene = DATASETS / 'roadscene'
    plain = data.PairedDataset([(roadscene, 'train')], crop_size=64, hflip_prob=0.0, seed=3)
    changed = data.PairedDataset([(roadscene, 'train')], crop_size=64, hflip_prob=0.0, seed=3,
                                 photometric=1.0, context=16, keep_color=True)
    off = data.PairedDataset([(roadscene, 'train')], crop_size=64, hflip_prob=0.0, seed=3,
                             photometric=0.0)
    assert torch.equal(off[0]['ir'], plain[0]['ir'])
    moved = 0
    for index in range(len(changed)):
        sample = changed[index]
        for key in ('ir', 'vi', 'vi_color'):
            assert 0.0 <= float(sample[key].min()) and float(sample[key].max()) <= 1.0
        # The context changed with the frame: the crop is still its centre.
        assert torch.equal(sample['ir_context'][:, 16:80, 16:80], sample['ir'])
    # Whole frames (no crop draw): the same geometry, so pixel orders compare.
    plain = data.PairedDataset([(roadscene, 'train')], hflip_prob=0.0, seed=3)
    changed = data.PairedDataset([(roadscene, 'train')], hflip_prob=0.0, seed=3,
                                 photometric=1.0)
    for index in range(len(changed)):
        sample, before = changed[index], plain[index]
        for key in ('ir', 'vi'):
            # Monotonic: sorted by the unchanged frame, the changed one does not decrease.
            order = torch.argsort(before[key].flatten())
            assert bool((torch.diff(sample[key].flatten()[order]) >= -1e-6).all())
        moved += int(not torch.allclose(sample['ir'], before['ir'], atol=1e-3))
        moved += int(not torch.allclose(sample['vi'], before['vi'], atol=1e-3))
    assert moved == 2 * len(changed)  # probability 1: both modalities change every time
    # Gamma, contrast and brightness together; one change for every plane given.
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, -1, 1).repeat(2, axis=2)
    out = data.photometric_change(ramp, rng)
    assert out.dtype == np.float32 and out.shape == ramp.shape
    assert np.array_equal(out[..., 0], out[..., 1])
    assert np.all(np.diff(out[0, :, 0]) >= 0) and not np.allclose(out, ramp)
    with pytest.raises(ValueError, match='photometric'):
        data.PairedDataset([(roadscene, 'train')], photometric=1.5)


def test_mosaic_boxes_follow_their_quadrants_and_the_context_surrounds_it(tmp_path):
    labelled = _make_set(tmp_path, [(10, 10, 30, 30, 0), (70, 40, 110, 80, 1)])
    unlabelled = _make_set(tmp_path, [(20, 20, 60, 50, 0)], labelled=False, name='bare')
    plain = data.PairedDataset([(labelled, 'train')], crop_size=64, seed=2, context=8)
    off = data.PairedDataset([(labelled, 'train')], crop_size=64, seed=2, context=8,
                             mosaic=0.0)
    assert torch.equal(off[0]['ir'], plain[0]['ir'])  # 0: no draw, the same crops
    mosaic = data.PairedDataset([(labelled, 'train')], crop_size=64, seed=2, context=8,
                                mosaic=1.0, min_box_px=1.0, min_box_area=0.0)
    boxes_seen = 0
    for epoch in range(12):
        mosaic.set_epoch(epoch)
        sample = mosaic[0]
        assert sample['ir'].shape == (1, 64, 64) and sample['has_labels']
        assert torch.equal(sample['ir_context'][:, 8:72, 8:72], sample['ir'])
        ir = sample['ir'][0]
        for _, cx, cy, w, h in sample['boxes'].tolist():
            x1, x2 = round((cx - w / 2) * 64), round((cx + w / 2) * 64)
            y1, y2 = round((cy - h / 2) * 64), round((cy + h / 2) * 64)
            assert x2 > x1 and y2 > y1
            # Each box lies on a white rectangle of its quadrant's pair (the IR is 20 around).
            assert float(ir[y1:y2, x1:x2].min()) > 0.9
            boxes_seen += 1
        # Every bright pixel is inside a box (cut boxes are all kept here).
        covered = torch.zeros_like(ir, dtype=torch.bool)
        for _, cx, cy, w, h in sample['boxes'].tolist():
            covered[round((cy - h / 2) * 64):round((cy + h / 2) * 64),
                    round((cx - w / 2) * 64):round((cx + w / 2) * 64)] = True
        assert float(((ir > 0.9) & ~covered).float().mean()) < 0.01
    assert boxes_seen >= 12
    # A labelled pair takes labelled partners only; a mosaic with a pair without labels has
    # none as a whole (its objects would be negatives).
    mixed = data.PairedDataset([(labelled, 'train'), (unlabelled, 'train')], crop_size=64,
                               seed=2, mosaic=1.0)
    for epoch in range(12):
        mixed.set_epoch(epoch)
        assert mixed[0]['has_labels'] and not mixed[1]['has_labels']
    with pytest.raises(ValueError, match='mosaic'):
        data.PairedDataset([(labelled, 'train')], crop_size=64, mosaic=-0.1)


def test_crops_without_the_new_augmentations_are_those_of_earlier_runs():
    """Without photometric changes or mosaics the samples of earlier runs are unchanged.

    Pinned: sums of the sample computed with the data code of commit 19b2514 (before both).
    """
    dataset = data.PairedDataset([(DATASETS / 'roadscene', 'train')], crop_size=64,
                                 hflip_prob=0.5, vflip_prob=0.5, seed=3, context=8,
                                 scale_range=(0.7, 1.4), photometric=0.0, mosaic=0.0)
    dataset.set_epoch(1)
    sample = dataset[1]
    assert float(sample['ir'].sum()) == pytest.approx(3353.6672, abs=1e-2)
    assert float(sample['vi'].sum()) == pytest.approx(3540.6714, abs=1e-2)
    assert float(sample['ir_context'].sum()) == pytest.approx(5166.7373, abs=1e-2)


def test_colour_planes_resize_with_the_pair(tmp_path):
    """Five planes (IR, luma, colour) at a non-integer downscale: OpenCV takes at most 4."""
    dataset = data.PairedDataset([(DATASETS / 'roadscene', 'train')], crop_size=64, seed=1,
                                 keep_color=True, scale_range=(0.7, 0.9))
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample['vi_color'].shape == (3, 64, 64)
        # The luma is the colour's BT.601 mix: both were resized by the same factor.
        blue, green, red = sample['vi_color']
        luma = 0.114 * blue + 0.587 * green + 0.299 * red
        assert float((luma - sample['vi'][0]).abs().mean()) < 0.02


def test_a_pair_whose_ir_has_another_aspect_ratio_is_refused_naming_it(tmp_path):
    """It was stretched to the visible frame without a word: not aligned as stored."""
    folder = tmp_path / 'roadscene'
    for sub in ('ir', 'vi'):
        (folder / sub).mkdir(parents=True)
    stems = data.read_split(DATASETS / 'roadscene', 'train')[:3]
    for stem in stems:
        for sub in ('ir', 'vi'):
            (folder / sub / f'{stem}.jpg').write_bytes(
                (DATASETS / 'roadscene' / sub / f'{stem}.jpg').read_bytes())
    # The first IR image at half size (the same aspect ratio: scaled, as before); the second
    # cropped to 4/5 of its height.
    vi_sizes = [cv2.imread(str(folder / 'vi' / f'{stem}.jpg')).shape[:2] for stem in stems]
    for stem, change in zip(stems, (lambda ir: cv2.resize(ir, (ir.shape[1] // 2,
                                                               ir.shape[0] // 2)),
                                    lambda ir: ir[:ir.shape[0] * 4 // 5])):
        path = folder / 'ir' / f'{stem}.jpg'
        cv2.imwrite(str(path), change(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))
    cropped = cv2.imread(str(folder / 'ir' / f'{stems[1]}.jpg')).shape[:2]
    sizes = (f'IR {cropped[1]}x{cropped[0]}, visible {vi_sizes[1][1]}x{vi_sizes[1][0]}')
    dataset = data.PairedDataset(folder, augment=False)
    assert [item[2] for item in dataset.items] == stems
    why = ('training pairs are aligned (the IR image is the visible frame, at any size), so '
           'such a pair is not aligned as stored or not a pair, and stretched it would teach a '
           'wrong alignment: align its IR image to the visible one, or leave it out of the '
           "data (a split's list file without it, or a list file of it in the source's "
           'exclude)')
    with pytest.raises(ValueError) as raised:
        dataset.check_sizes()
    assert str(raised.value) == (f'1 of the 3 pairs have an IR image of another aspect ratio '
                                 f'than their visible image: roadscene/{stems[1]} ({sizes}); '
                                 f'{why}')
    # A loader reaching the pair refuses it too (a data set used without check_sizes).
    with pytest.raises(ValueError) as raised:
        dataset[1]
    assert str(raised.value) == (f"pair roadscene/{stems[1]} of '{folder}': {sizes}, another "
                                 f'aspect ratio; {why}')
    assert dataset[0]['ir'].shape == dataset[0]['vi'].shape == (1, *vi_sizes[0])
    # Left out, the others pass.
    (folder / 'bad.txt').write_text(f'{stems[1]}\n')
    kept = data.PairedDataset({'path': folder, 'split': 'all', 'exclude': ['bad']})
    kept.check_sizes()
    assert len(kept) == 2


def test_both_label_writers_write_one_format_and_leave_out_boxes_of_no_area():
    """tarfuse-fuse --detections and tarfuse-pseudo-label each had a formatter of their own."""
    from tarfuse_ros.core.pair_engine import Detection
    from tarfuse_ros.tools import fuse, pseudo_label
    width, height = 640, 480
    boxes = [(10.0, 20.0, 110.5, 220.25, 0.9, 0), (600.0, 0.0, 640.0, 30.0, 0.5, 2),
             (300.0, 100.0, 300.0001, 200.0, 0.4, 1)]  # 0.0001 px wide: 0.000000 written
    expected = ('0 0.094141 0.250260 0.157031 0.417187\n'
                '2 0.968750 0.031250 0.062500 0.062500\n')
    detections = [Detection(x1, y1, x2, y2, score, cls, 'name')
                  for x1, y1, x2, y2, score, cls in boxes]
    assert fuse._yolo_lines(detections, height, width) == expected
    rows = pseudo_label.boxes_to_yolo(np.array(boxes), width, height)
    text, kept = data.yolo_label_text(rows)
    assert text == expected and kept.tolist() == [True, True, False]
    # The bound itself prints as 0.000000 (the double nearest 5e-7 lies just below it); the
    # next double up prints 0.000001.
    side = data.MIN_WRITTEN_BOX_SIDE
    text, kept = data.yolo_label_text([[0, 0.5, 0.5, side, 0.2],
                                       [0, 0.5, 0.5, np.nextafter(side, 1.0), 0.2]])
    assert kept.tolist() == [False, True] and text == '0 0.500000 0.500000 0.000001 0.200000\n'
    text, kept = data.yolo_label_text(np.zeros((0, 5)))
    assert text == '' and kept.shape == (0,)


def _png_with_bad_text_crc(image):
    """Return PNG bytes of ``image`` with a tEXt chunk whose CRC is wrong.

    libpng (OpenCV) drops such an ancillary chunk with a warning and decodes the image;
    Pillow refuses the file when it opens it.
    """
    import struct
    png = bytes(cv2.imencode('.png', image)[1])
    chunk = b'tEXt' + b'Comment\x00x'
    bad = struct.pack('>I', len(chunk) - 4) + chunk + b'\xde\xad\xbe\xef'
    return png[:33] + bad + png[33:]  # after the signature and IHDR


def _own_set_of_one(tmp_path):
    """Return ``(folder, stem, ir, vi)``: empty ``ir/`` and ``vi/``, a RoadScene pair's images."""
    folder = tmp_path / 'own'
    for sub in ('ir', 'vi'):
        (folder / sub).mkdir(parents=True)
    stem = 'FLIR_00006'
    ir = cv2.imread(str(DATASETS / 'roadscene' / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(DATASETS / 'roadscene' / 'vi' / f'{stem}.jpg'))
    return folder, stem, ir, vi


def test_a_truncated_jpeg_is_refused_not_loaded_with_grey_rows(tmp_path):
    """A JPEG cut short was decoded by OpenCV, its missing rows grey; tarfuse-eval scored it."""
    folder, stem, ir, _ = _own_set_of_one(tmp_path)
    cv2.imwrite(str(folder / 'ir' / f'{stem}.png'), ir)
    whole = (DATASETS / 'roadscene' / 'vi' / f'{stem}.jpg').read_bytes()
    (folder / 'vi' / f'{stem}.jpg').write_bytes(whole[:len(whole) * 6 // 10])
    with pytest.raises(ValueError, match=f"vi/{stem}.jpg'.*truncated JPEG"):
        data.load_pair(folder, stem)
    (folder / 'vi' / f'{stem}.jpg').write_bytes(whole)  # the whole file loads
    assert data.load_pair(folder, stem)[1].shape == ir.shape + (3,)


def test_an_ir_image_pillow_cannot_read_is_checked_at_the_size_opencv_loads(tmp_path):
    """Its header was not read, the pair passed, and tarfuse-eval scored it stretched."""
    import PIL.Image
    folder, stem, ir, vi = _own_set_of_one(tmp_path)
    (folder / 'vi' / f'{stem}.jpg').write_bytes(
        (DATASETS / 'roadscene' / 'vi' / f'{stem}.jpg').read_bytes())
    ir_path = folder / 'ir' / f'{stem}.png'
    ir_path.write_bytes(_png_with_bad_text_crc(ir[:, :ir.shape[1] * 3 // 4]))
    # (ultralytics, once imported, turns Pillow's refusal into an ImportError of pi_heif.)
    with pytest.raises((PIL.UnidentifiedImageError, ImportError)):
        PIL.Image.open(ir_path)
    loaded, _ = data.load_pair(folder, stem)
    assert loaded.shape == (ir.shape[0], ir.shape[1] * 3 // 4)
    with pytest.raises(ValueError) as raised:
        data.check_aspect_ratios([(folder, stem)], 'why')
    assert str(raised.value) == (
        f'1 of the 1 pairs have an IR image of another aspect ratio than their visible image: '
        f'own/{stem} (IR {ir.shape[1] * 3 // 4}x{ir.shape[0]}, visible {vi.shape[1]}x'
        f'{vi.shape[0]}); why')
    # At the visible image's aspect ratio it passes.
    ir_path.write_bytes(_png_with_bad_text_crc(ir))
    data.check_aspect_ratios([(folder, stem)], 'why')


@pytest.mark.parametrize('ir_size, refused', [((510, 500), False), ((490, 500), False),
                                              ((500, 510), False), ((500, 490), True),
                                              ((511, 500), True), ((489, 500), True)])
def test_an_ir_image_exactly_at_the_aspect_tolerance_passes(tmp_path, ir_size, refused):
    """2 % off the visible image's aspect ratio is within 'by more than 2 %'.

    (1.02 - 1.0 is 0.020000000000000018 in floating point: 510x500 beside 500x500 was refused;
    500x490 is 2.04 % off.) A registration prior takes such a size as well.
    """
    folder, stem, ir, vi = _own_set_of_one(tmp_path)
    cv2.imwrite(str(folder / 'ir' / f'{stem}.png'), cv2.resize(ir, ir_size))
    cv2.imwrite(str(folder / 'vi' / f'{stem}.png'), cv2.resize(vi, (500, 500)))
    if refused:
        with pytest.raises(ValueError, match='another aspect ratio'):
            data.check_aspect_ratios([(folder, stem)], 'why')
    else:
        data.check_aspect_ratios([(folder, stem)], 'why')
    from tarfuse_ros.core.prior import make_prior
    prior = make_prior(list(np.eye(3).ravel()), [500, 500], [640, 480])
    if refused:
        with pytest.raises(ValueError, match='another aspect ratio'):
            prior.homography_for(ir_size, (640, 480))
    else:
        assert prior.homography_for(ir_size, (640, 480)).shape == (3, 3)


def test_a_list_file_named_like_a_keyword_is_offered_once(tmp_path):
    """An unknown split named the available ones with 'all' twice where the set has all.txt."""
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / 'a.png'), np.zeros((8, 8), np.uint8))
    for name in ('all', 'test'):
        (tmp_path / f'{name}.txt').write_text('a\n')
    with pytest.raises(ValueError) as raised:
        data.read_split(tmp_path, 'val')
    assert "available: ['test', 'all'] or a path to a list file" in str(raised.value)
