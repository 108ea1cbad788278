"""benchmarks/resized_set.py: a copy of an aligned set at another camera resolution."""

from pathlib import Path
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import resized_set  # noqa: E402, I100

SOURCE = Path(__file__).resolve().parent / 'data' / 'datasets' / 'm3fd_samples'


def test_every_pair_is_resized_with_its_labels_and_a_readme(tmp_path):
    out = tmp_path / 'big'
    assert resized_set.main(['--data', str(SOURCE), '--size', '1280x1024',
                             '--out', str(out)]) == 0
    stems = sorted(p.stem for p in (SOURCE / 'ir').iterdir())
    for stem in stems:
        for sub in ('ir', 'vi'):
            source = cv2.imread(str(next((SOURCE / sub).glob(stem + '.*'))), cv2.IMREAD_UNCHANGED)
            image = cv2.imread(str(out / sub / (stem + '.png')), cv2.IMREAD_UNCHANGED)
            assert image.shape[:2] == (1024, 1280) and image.dtype == source.dtype
            # The same picture: shrunk back, it matches its source (not a blank or shifted frame).
            back = cv2.resize(image, source.shape[1::-1], interpolation=cv2.INTER_AREA)
            assert np.abs(back.astype(float) - source).mean() < 3.0
    assert (out / 'labels' / 'M3FD_00000.txt').read_text() == \
        (SOURCE / 'labels' / 'M3FD_00000.txt').read_text()
    assert (out / 'classes.txt').read_text() == (SOURCE / 'classes.txt').read_text()
    assert str(SOURCE) in (out / 'README.md').read_text()


def test_shrinking_keeps_the_pairs_aligned(tmp_path):
    out = tmp_path / 'small'
    resized_set.write_resized_set(SOURCE, 'all', (320, 240), out)
    ir = cv2.imread(str(out / 'ir' / 'M3FD_00000.png'), cv2.IMREAD_UNCHANGED)
    assert ir.shape[:2] == (240, 320)


def test_a_used_output_folder_or_a_bad_size_is_refused(tmp_path, capsys):
    (tmp_path / 'used').mkdir()
    (tmp_path / 'used' / 'keep.txt').write_text('mine')
    assert resized_set.main(['--data', str(SOURCE), '--size', '640x512',
                             '--out', str(tmp_path / 'used')]) == 1
    assert 'not empty' in capsys.readouterr().err
    assert (tmp_path / 'used' / 'keep.txt').read_text() == 'mine'
    for size in ('12x1024', '1280', 'axb'):
        with pytest.raises(SystemExit):
            resized_set.main(['--data', str(SOURCE), '--size', size, '--out', str(tmp_path / 'x')])
