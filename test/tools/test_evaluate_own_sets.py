"""tarfuse-eval on a user's own data set folder, and the mistakes such a folder may hold.

Each test lays out a small set as a user would (``ir/``, ``vi/``, ``labels/`` with YOLO files
and ``classes.txt``, list files of stems) from real RoadScene pairs of ``test/data/datasets``,
and runs the tool on it with the shipped weights.
"""

import json
from pathlib import Path
import shutil

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
