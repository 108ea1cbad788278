"""One data-source spec and one resolver: exclude, relative paths, the data set, no files."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
import tarfuse_ros
from tarfuse_ros.core.data import DataSource, PairedDataset
from tarfuse_ros.training.config import TrainingConfig
from tarfuse_ros.training.datasets import (build_dataset, count_labelled, parse_data_spec,
                                           resolve_dataset_dir, resolve_sources)

DATASETS = Path(__file__).resolve().parents[1] / 'data' / 'datasets'
ROADSCENE = DATASETS / 'roadscene'


def test_exclude_removes_stems_without_writing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(ROADSCENE))
    source = DataSource(ROADSCENE, 'det_labelled', exclude=('test',))
    assert source.stems() == ['FLIR_00006', 'FLIR_00018', 'FLIR_00060']
    dataset = PairedDataset([source], augment=False)
    assert [item[2] for item in dataset.items] == source.stems()
    assert set(os.listdir(ROADSCENE)) == before and not os.listdir(tmp_path)


def test_sources_parse_from_every_form():
    assert parse_data_spec('roadscene') == DataSource('roadscene', 'train')
    assert parse_data_spec('a/b:test') == DataSource('a/b', 'test')
    for bad in ('', ':x', 'a:'):
        with pytest.raises(ValueError, match='PATH or PATH:SPLIT'):
            parse_data_spec(bad)
    mapping = {'path': 'x', 'split': 'extra', 'exclude': ['test'], 'labels': 'labels_ir'}
    assert DataSource.parse(mapping) == DataSource('x', 'extra', ('test',), 'labels_ir')
    assert DataSource.parse(DataSource.parse(mapping).to_dict()) == DataSource.parse(mapping)
    assert DataSource.parse(('x', 'all')) == DataSource('x', 'all')
    assert DataSource.parse({'path': 'x'}, default_split='train').split == 'train'


def test_resolver_finds_relative_folders_list_files_and_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'two.txt').write_text('FLIR_00006\nFLIR_00018\n')
    assert resolve_dataset_dir('roadscene', root=DATASETS) == ROADSCENE
    sources = resolve_sources(['roadscene:two.txt'], root=DATASETS)
    assert sources == [DataSource(ROADSCENE, str((tmp_path / 'two.txt').resolve()))]
    assert count_labelled(sources) == 2
    # A label folder outside the data set, relative to the working directory.
    (tmp_path / 'pseudo').mkdir()
    (tmp_path / 'pseudo' / 'FLIR_00550.txt').write_text('')
    sources = resolve_sources([{'path': 'roadscene', 'labels': 'pseudo'}], root=DATASETS)
    assert sources[0].labels == str((tmp_path / 'pseudo').resolve())
    assert count_labelled(sources) == 1
    with pytest.raises(ValueError, match='not found') as error:
        resolve_dataset_dir('no_such_set', root=DATASETS)
    assert 'data.root' not in str(error.value)  # a training setting: resolve_sources names it
    with pytest.raises(ValueError, match='or set data.root to the folder that holds it'):
        resolve_sources(['no_such_set'], root=DATASETS)
    for path in ('roadscene/test.txt', ROADSCENE / 'test.txt'):
        with pytest.raises(ValueError, match=r"/roadscene/test\.txt' is a file, not a data set "
                                             r'folder: a data set folder holds ir/ and vi/'):
            resolve_dataset_dir(path, root=DATASETS)
    with pytest.raises(ValueError, match=r"roadscene' split 'test': no pair to use \(all 2 are in "
                                         r'test \(exclude\)\)'):
        resolve_sources([{'path': 'roadscene', 'split': 'test', 'exclude': ['test']}],
                        root=DATASETS)


def test_a_set_name_without_shared_data_sets_says_where_they_were_looked_for(tmp_path):
    """A checkout without ../shared beside it, TARFUSE_SHARED unset: the message says so.

    It named the working directory alone and TARFUSE_SHARED, without saying that no shared
    data sets were found, nor where they are looked for.
    """
    checkout = tmp_path / 'checkout'
    shutil.copytree(Path(tarfuse_ros.__file__).parent, checkout / 'tarfuse_ros',
                    ignore=shutil.ignore_patterns('__pycache__'))
    environment = {name: value for name, value in os.environ.items()
                   if name != 'TARFUSE_SHARED'}
    environment['PYTHONPATH'] = str(checkout)
    code = ('from tarfuse_ros.training.datasets import resolve_dataset_dir\n'
            'try:\n    resolve_dataset_dir("roadscene")\n'
            'except ValueError as exc:\n    print(exc)\n')
    for env in ({}, {'TARFUSE_SHARED': str(tmp_path / 'nothing')}):
        out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=dict(environment, **env))
        assert out.returncode == 0, out.stderr
        setting = f'TARFUSE_SHARED={tmp_path / "nothing"}' if env else 'TARFUSE_SHARED (not set)'
        assert (f"data set 'roadscene' not found (looked in ['{tmp_path}'])" in out.stdout and
                f'no shared data sets in {setting} nor {tmp_path / "shared"} (beside the '
                f'checkout): set TARFUSE_SHARED to the folder that holds datasets/'
                in out.stdout), out.stdout


def test_build_dataset_crops_for_training_and_whole_frames_for_validation():
    raw = {'data': {'root': str(DATASETS), 'train': ['roadscene:train'], 'crop': 64,
                    'class_map': {'person': 0, 'bicycle': 1, 'car': 2}, 'val_crop': 0},
           'train': {'epochs': 1, 'batch': 2, 'lr': 1e-3}}
    config = TrainingConfig.from_dict(raw)
    sources = resolve_sources(config.data.train, config.data.root)
    training = build_dataset(sources, config.data, training=True, seed=3)
    validation = build_dataset(sources, config.data, training=False)
    assert training.crop_size == (64, 64) and training.augment and training.seed == 3
    assert validation.crop_size is None and not validation.augment
    assert len(training) == len(validation) == 4


def test_folder_listings_are_never_stale(tmp_path):
    import cv2
    import numpy as np
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
    image = np.zeros((32, 32), np.uint8)

    def add(stem):
        for sub in ('ir', 'vi'):
            cv2.imwrite(str(tmp_path / sub / f'{stem}.png'), image)

    add('a')
    assert DataSource(tmp_path).stems() == ['a']
    assert PairedDataset([(tmp_path, 'all')], augment=False)[0]['stem'] == 'a'
    add('b')  # files added after the folders were listed, within the same clock tick
    assert DataSource(tmp_path).stems() == ['a', 'b']
    (tmp_path / 'two.txt').write_text('a\nb\n')
    assert PairedDataset([(tmp_path, 'two')], augment=False)[1]['stem'] == 'b'


def _two_pair_set(folder, encode):
    """Write a two-pair labelled set whose text files are written with ``encode(text)``."""
    import cv2
    import numpy as np
    for sub in ('ir', 'vi', 'labels'):
        (folder / sub).mkdir(parents=True)
    for stem in ('a', 'b'):
        for sub in ('ir', 'vi'):
            cv2.imwrite(str(folder / sub / f'{stem}.png'), np.full((64, 64), 90, np.uint8))
        (folder / 'labels' / f'{stem}.txt').write_bytes(encode('0 0.5 0.5 0.25 0.5\r\n'))
    (folder / 'classes.txt').write_bytes(encode('person\r\ncar\r\n'))
    (folder / 'train.txt').write_bytes(encode('a\r\nb\r\n'))
    return folder


def test_text_files_saved_by_windows_notepad_read_as_utf8(tmp_path):
    # A byte-order mark (Notepad's "UTF-8 with BOM") stayed in the first line: training
    # refused the stem '\ufeffa', and tarfuse-eval left every box of the first class out of
    # its scores ("the model does not know the label classes \ufeffperson").
    folder = _two_pair_set(tmp_path / 'bom', lambda text: b'\xef\xbb\xbf' + text.encode())
    sources = resolve_sources([f'{folder}:train'])
    assert sources[0].stems() == ['a', 'b']
    dataset = PairedDataset(sources, class_map={'person': 0, 'car': 1}, augment=False)
    assert dataset.check_labels() == 2
    assert dataset[0]['boxes'].tolist() == [[0.0, 0.5, 0.5, 0.25, 0.5]]
    # UTF-16 (Notepad's "Unicode") or another encoding: the file is named, no decoding error.
    folder = _two_pair_set(tmp_path / 'utf16', lambda text: text.encode('utf-16'))
    with pytest.raises(ValueError, match=r"utf16/train\.txt' is not UTF-8 text \(it is "
                                         r'UTF-16\).*save it as UTF-8'):
        resolve_sources([f'{folder}:train'])
    (folder / 'train.txt').write_text('a\nb\n')
    (folder / 'classes.txt').write_bytes('person\nFußgänger\n'.encode('latin-1'))
    with pytest.raises(ValueError, match=r"utf16/classes\.txt' is not UTF-8 text: byte 9 "):
        PairedDataset(resolve_sources([f'{folder}:train']), class_map={'person': 0})
    (folder / 'classes.txt').write_text('person\ncar\n')
    with pytest.raises(ValueError, match=r"utf16/labels/a\.txt' is not UTF-8 text \(it is "):
        PairedDataset(resolve_sources([f'{folder}:train']),
                      class_map={'person': 0}).check_labels()


def test_a_source_without_pairs_is_named_with_its_reason(tmp_path):
    # The message was 'data source DataSource(path=..., split=..., exclude=(), labels=...):
    # no pairs left in ...' for an empty list file and for ir/ and vi/ without pairs alike.
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
    (tmp_path / 'train.txt').write_text('# to do\n')
    with pytest.raises(ValueError, match=rf"^data source '{tmp_path}' split 'train': no pair "
                                         r'to use \(the split lists none\)$'):
        resolve_sources([f'{tmp_path}:train'])
    with pytest.raises(ValueError, match=rf"^data source '{tmp_path}' split 'all': no pair to "
                                         r'use \(no stem has an image in both ir/ and vi/\)$'):
        resolve_sources([{'path': str(tmp_path), 'split': 'all'}])


def test_a_listed_stem_without_its_images_names_the_list_files_line(tmp_path):
    # 'no ir/ image for stem ...' did not say which list file, nor where in it.
    (tmp_path / 'mine.txt').write_text('FLIR_00006\n# comment\nFLIR_0018\n')
    with pytest.raises(ValueError, match=rf"^no ir/ image for stem 'FLIR_0018' in "
                                         rf"'{ROADSCENE}' \(extensions tried: .*\), listed in "
                                         rf"'{tmp_path / 'mine.txt'}' line 3$"):
        resolve_sources([f'{ROADSCENE}:{tmp_path / "mine.txt"}'])


def test_a_data_root_that_is_no_folder_is_refused(tmp_path, monkeypatch):
    """A typo'd data.root was passed over: the set of that name elsewhere was trained on."""
    monkeypatch.chdir(DATASETS)  # roadscene is found in the working directory
    missing = tmp_path / 'my_sets'
    with pytest.raises(ValueError, match=rf"^data.root '{missing}' is not a folder: give the "
                                         r'folder that holds the data sets, or leave it out'):
        resolve_sources(['roadscene:train'], root=missing)
    assert resolve_sources(['roadscene:train'], root=DATASETS)[0].path == str(ROADSCENE)
