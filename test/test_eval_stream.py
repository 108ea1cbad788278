"""benchmarks/eval_stream.py: the settings it parses and a tiny emulated-rig run."""

import json
from pathlib import Path
import sys

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import eval_stream  # noqa: E402, I100

ROADSCENE = Path(__file__).resolve().parent / 'data' / 'datasets' / 'roadscene'


@pytest.mark.parametrize('text, setting, name', [
    ('1x1', ('every', 1, 1), '1x1'),
    ('5X9', ('every', 5, 9), '5x9'),
    ('track10', ('track', 10), 'track10'),
    ('Track1', ('track', 1), 'track1'),
    ('track10000', ('track', 10000), 'track10000'),
    ('track10:1', ('track', 10, 1), 'track10:1'),
    ('5x9:0', ('every', 5, 9, 0), '5x9:0'),
])
def test_parses_every_window_and_track_settings(text, setting, name):
    assert eval_stream.parse_setting(text) == setting
    assert eval_stream.setting_name(setting) == name


@pytest.mark.parametrize('text, message', [
    ('5', r'EVERYxWINDOW \(e\.g\. 5x9\) or trackN \(e\.g\. track10\)'),
    ('track', 'or trackN'),
    ('track-1', 'or trackN'),
    ('track 5', 'or trackN'),
    ('track2.5', 'or trackN'),
    ('track\u0663', 'or trackN'),  # an Arabic-Indic 3: Python's int() would take it
    ('track0', r'N of trackN must be in \[1, 10000\]'),
    ('track10001', r'N of trackN must be in \[1, 10000\]'),
    ('0x1', r'EVERY must be in \[1, 10000\] and WINDOW in \[1, 1000\]'),
    ('track10:9', 'P of a setting ending in :P is 0-8 fine passes'),
    ('track10:', 'P of a setting ending in :P is 0-8 fine passes'),
    ('track10:-1', 'P of a setting ending in :P is 0-8 fine passes'),
    ('track0:1', r'N of trackN must be in \[1, 10000\]'),
])
def test_refuses_a_bad_setting(text, message):
    with pytest.raises(ValueError, match=message):
        eval_stream.parse_setting(text)


def test_main_refuses_a_bad_or_repeated_setting(capsys):
    with pytest.raises(SystemExit):
        eval_stream.main(['--settings', 'track0'])
    assert 'N of trackN must be in [1, 10000]' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_stream.main(['--settings', 'track3', 'TRACK3'])
    assert 'lists a setting twice' in capsys.readouterr().err


@pytest.fixture()
def rig_pairs(tmp_path):
    """Three RoadScene pairs at one size (256x192) in a data set folder of their own."""
    for folder in ('ir', 'vi'):
        (tmp_path / folder).mkdir()
    for stem in ('FLIR_00006', 'FLIR_00018', 'FLIR_00060'):
        ir, vi = data.load_pair(ROADSCENE, stem)
        for folder, image in (('ir', ir), ('vi', vi)):
            small = cv2.resize(image, (256, 192), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(tmp_path / folder / f'{stem}.png'), small)
    return tmp_path


def test_a_tiny_run_names_the_track_setting_and_counts_what_it_did(
        rig_pairs, tmp_path, capsys):
    out = tmp_path / 'stream.json'
    assert eval_stream.main(['--data', str(rig_pairs), '--split', 'all', '--seeds', '1',
                             '--threads', '1', '--settings', '1x1', 'track2',
                             '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '  every 1, window 1: EPE ' in printed
    assert '  track2: EPE ' in printed
    # Three pairs with global_track 2: fitted (first), tracked, fitted (second after it).
    assert 'tracked 1, fitted 2 (kept over the track ' in printed and 'held 0' in printed
    written = json.loads(out.read_text())
    # Its times (ms) did not say on which machine they were taken.
    from tarfuse_ros.core.cpus import machine_facts
    assert written['summary']['machine'] == machine_facts()
    settings = written['summary']['settings']
    assert set(settings) == {'1x1', 'track2'}
    track = settings['track2']
    assert (track['tracked'], track['fitted'], track['held']) == (1.0, 2.0, 0.0)
    assert 0.0 <= track['fit_kept'] <= 1.0 and track['final_spread_px'] is None
    assert 'tracked' not in settings['1x1'] and track['epe'] > 0.0
    rows = {row['setting']: row for row in written['pairs']}
    assert set(rows) == {'1x1', 'track2'} and len(rows['track2']['pairs']) == 3
    assert rows['track2']['fitted'] == 2 and rows['track2']['rig_seed'] == 1


def test_a_setting_with_fine_passes_runs_that_many():
    engines = [eval_stream.make_engine(eval_stream.parse_setting(text), None)
               for text in ('track2:1', '1x1:0', 'track2')]
    assert [engine.fine_passes for engine in engines] == [1, 0, 4]
    assert [engine.global_track for engine in engines] == [2, 0, 2]


def test_pan_frames_slide_a_window_right_and_back():
    ir = np.arange(100 * 200, dtype=np.uint16).reshape(100, 200)
    vi = np.dstack([ir, ir, ir])
    frames = eval_stream.pan_frames(ir, vi, 6)
    assert len(frames) == 6 and all(a.shape == (80, 160) and b.shape == (80, 160, 3)
                                    for a, b in frames)
    lefts = [int(a[0, 0] % 200) for a, _ in frames]
    assert lefts == [0, 4, 8, 12, 8, 4]  # 4 px a frame, right for half the frames, then back
    assert [int(a[0, 0] // 200) for a, _ in frames] == [10] * 6  # centred vertically
    assert all(np.array_equal(a, b[..., 0]) for a, b in frames)  # both cut alike
    # A frame with little room: smaller steps, never outside it.
    lefts = [int(a[0, 0] % 200) for a, _ in eval_stream.pan_frames(ir, vi, 30)]
    assert max(lefts) <= 40 and lefts[1] == 2


def test_a_panned_run_streams_every_pair_as_a_scene(rig_pairs, tmp_path, capsys):
    out = tmp_path / 'pan.json'
    assert eval_stream.main(['--data', str(rig_pairs), '--split', 'all', '--seeds', '1',
                             '--threads', '1', '--settings', 'track4', '--pan', '2',
                             '--max-pairs', '2', '--json', str(out)]) == 0
    written = json.loads(out.read_text())
    assert written['summary']['pairs'] == 4 and written['summary']['pan_frames'] == 2
    assert written['summary']['frame'] == [205, 154]  # 80 % of 256x192
    stems = [row['stem'] for row in written['pairs'][0]['pairs']]
    assert stems == ['FLIR_00006@0', 'FLIR_00006@1', 'FLIR_00018@0', 'FLIR_00018@1']
    assert written['pairs'][0]['tracked'] == 3
    with pytest.raises(SystemExit):
        eval_stream.main(['--data', str(rig_pairs), '--split', 'all', '--pan', '-1'])
    assert '--pan in [0, 1000]' in capsys.readouterr().err
