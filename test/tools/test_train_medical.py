"""The medical training config (issue 14) on the real Harvard MRI-CT / PET / SPECT pairs.

Needs the shared data sets (``$TARFUSE_SHARED/datasets`` or ``../shared`` beside the checkout);
skipped with the reason otherwise.
"""

import json
from pathlib import Path

import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint, read_checkpoint_config
from tarfuse_ros.core.data import read_split
from tarfuse_ros.core.paths import shared_datasets_dir
from tarfuse_ros.tools import train as train_tool
from tarfuse_ros.training import logs
from tarfuse_ros.training.loop import FINAL_NAME

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'config' / 'train_medical.yaml'
SETS = {'harvard_mri_ct': (16, 5), 'harvard_mri_pet': (32, 10), 'harvard_mri_spect': (55, 18)}


def _shared():
    base = shared_datasets_dir()
    if base is None or not all((Path(base) / name / 'ir').is_dir() for name in SETS):
        pytest.skip('the shared Harvard MRI data sets are absent (set TARFUSE_SHARED to the '
                    'folder holding datasets/harvard_mri_*)')
    return Path(base)


def test_medical_splits_are_disjoint_and_cover_every_pair():
    base = _shared()
    for name, (train, test) in SETS.items():
        split_dir = REPO / 'data' / 'splits' / name
        train_stems = read_split(base / name, split_dir / 'train.txt')
        test_stems = read_split(base / name, split_dir / 'test.txt')
        assert (len(train_stems), len(test_stems)) == (train, test), name
        assert not set(train_stems) & set(test_stems)
        assert sorted(train_stems + test_stems) == sorted(read_split(base / name, 'all'))


def test_medical_config_trains_on_real_pairs_without_detection(tmp_path, monkeypatch):
    _shared()
    monkeypatch.chdir(REPO)  # split files and init weights are relative to the repository
    out = tmp_path / 'medical'
    code = train_tool.main(['--config', str(CONFIG), '--out', str(out), '--max-steps', '2',
                            '--batch', '2', '--workers', '0', '--set', 'train.threads=1'])
    assert code == 0
    header = read_checkpoint_config(out / FINAL_NAME)
    assert header['model']['detect'] is False and header['model']['class_names'] == []
    data = {entry['name']: entry['pairs'] for entry in header['provenance']['data']}
    assert data == {name: train for name, (train, _) in SETS.items()}
    model = load_checkpoint(out / FINAL_NAME)
    assert model.detect is None and model.neck is None
    records = [r for r in logs.read_log(out / logs.LOG_NAME) if 'train' in r]
    assert records, 'no epoch record in the training log'
    train = records[-1]['train']
    assert train['detection'] == 0 and train['registration'] > 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['steps'] == 2
