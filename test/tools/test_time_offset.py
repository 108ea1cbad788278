"""tarfuse-time-offset on recorded bags of a real pair seen by a simulated moving rig."""

from pathlib import Path
import re
import sys

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import time_offset as simulation  # noqa: E402, I100

from tarfuse_ros.tools.time_offset import main  # noqa: E402, I100

IR_TOPIC, VI_TOPIC = '/flir/image_raw', '/rgb/image_raw'
VIEW = (240, 180)  # px: small frames keep the bags small


def _uint8(frame):
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_bag(path, case, seed=0, stem='00004N'):
    """Write a rosbag2 of ``case`` (benchmarks/time_offset.py) as a rig's drivers record it.

    IR: 16-bit PNG on ``<topic>/compressed`` (a radiometric camera's counts), visible: JPEG
    on ``<topic>/compressed``; each message stamped with its camera's latency.
    """
    from tarfuse_ros.tools.bagio import compressed_cdr, jazzy_typestore, offered_qos
    from tarfuse_ros.tools.bagio import open_writer
    if not simulation.DATA.is_dir():
        pytest.skip(f'{simulation.DATA} is absent (../shared not beside the checkout)')
    ir, vi = simulation.read_pair(stem)
    recording = simulation.simulate(case, ir, vi, seed, _uint8, view=VIEW)
    typestore = jazzy_typestore()
    writer = open_writer(path, typestore)
    try:
        messages = []
        for camera, topic, fmt in (('ir', IR_TOPIC, 'png'), ('vi', VI_TOPIC, 'jpeg')):
            connection = writer.add_connection(f'{topic}/compressed',
                                               'sensor_msgs/msg/CompressedImage',
                                               typestore=typestore,
                                               offered_qos_profiles=offered_qos())
            stamps, frames = recording[camera]
            for stamp, frame in zip(stamps, frames):
                image = (frame.astype(np.uint16) * 64 + 20000) if camera == 'ir' else frame
                stamp_ns = int(round((1_700_000_000 + stamp) * 1e9))
                messages.append((stamp_ns, connection, compressed_cdr(image, fmt, camera,
                                                                      stamp_ns)))
        for stamp_ns, connection, data in sorted(messages, key=lambda m: m[0]):
            writer.write(connection, stamp_ns, data)
    finally:
        writer.close()
    return path


def test_an_ir_camera_stamped_60_ms_late_is_found_and_written_as_a_node_parameter(
        tmp_path, capsys):
    case = simulation.Case('pan', duration=10.0)  # IR 9 Hz, visible 30 Hz, IR 60 ms late
    bag = write_bag(tmp_path / 'rig', case)
    out, plot = tmp_path / 'offset.yaml', tmp_path / 'curve.png'
    code = main(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic', VI_TOPIC,
                 '--out', str(out), '--plot', str(plot)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    value = yaml.safe_load(out.read_text())['/**']['ros__parameters']['sync'][
        'infrared_time_offset']
    assert value == pytest.approx(-0.06, abs=0.015), printed.out  # 9 Hz IR: 111 ms frames
    assert 'IR stamped' in printed.out and 'later than the visible camera' in printed.out
    assert f'infrared_time_offset:={value:g}' in printed.out
    assert cv2.imread(str(plot)) is not None


def test_a_still_scene_gives_no_offset_and_writes_nothing(tmp_path, capsys):
    case = simulation.Case('still', motion='still', duration=6.0)
    bag = write_bag(tmp_path / 'still', case)
    out = tmp_path / 'offset.yaml'
    code = main(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic', VI_TOPIC,
                 '--out', str(out)])
    printed = capsys.readouterr()
    assert code == 1
    assert 'no offset to trust' in printed.err and 'too little motion' in printed.err
    assert not out.exists()


def test_an_offset_beyond_the_search_is_refused_naming_max_offset(tmp_path, capsys):
    case = simulation.Case('pan', ir_latency=0.3, duration=8.0)
    bag = write_bag(tmp_path / 'late', case)
    code = main(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic', VI_TOPIC,
                 '--max-offset', '0.2'])
    printed = capsys.readouterr()
    assert code == 1 and 'raise --max-offset' in printed.err
    code = main(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic', VI_TOPIC,
                 '--max-offset', '0.5'])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    found = float(re.search(r'best offset ([-+0-9.]+) s', printed.out).group(1))
    assert found == pytest.approx(-0.3, abs=0.015)


@pytest.mark.parametrize('argv, words', [
    (['--max-offset', '0'], '--max-offset must be in (0, 1] s'),
    (['--max-offset', 'nan'], '--max-offset must be in (0, 1] s'),
    (['--max-offset', '1.5'], '--max-offset must be in (0, 1] s'),
    (['--windows', '-1'], '--windows must be in [0, 20]'),
    (['--min-correlation', '2'], '--min-correlation must be in [0, 1]'),
    (['--plot', 'curve.jpg2'], 'give a .png, .svg or .pdf file'),
])
def test_bad_options_exit_2_naming_the_option(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'bag').mkdir()
    assert main(['--bag', 'bag'] + argv) == 2
    assert words in capsys.readouterr().err


def test_a_missing_topic_or_bag_exits_2_naming_it(tmp_path, capsys):
    assert main(['--bag', str(tmp_path / 'nothing')]) == 2
    assert 'is not a folder' in capsys.readouterr().err
    bag = write_bag(tmp_path / 'rig', simulation.Case('pan', duration=1.0))
    assert main(['--bag', str(bag), '--infrared-topic', '/thermal/image_raw',
                 '--visible-topic', VI_TOPIC]) == 2
    err = capsys.readouterr().err
    assert "topic '/thermal/image_raw'" in err and '/flir/image_raw/compressed' in err
    assert main(['--bag', str(bag), '--infrared-topic', VI_TOPIC,
                 '--visible-topic', VI_TOPIC]) == 2
    assert 'are one topic' in capsys.readouterr().err


def test_calibrate_finds_the_offset_pairs_with_it_and_writes_it_beside_the_prior(
        tmp_path, capsys):
    from tarfuse_ros.core.prior import load_prior_yaml
    from tarfuse_ros.tools.calibrate import main as calibrate
    case = simulation.Case('pan', duration=8.0)  # IR 9 Hz stamped 60 ms late
    bag = write_bag(tmp_path / 'rig', case)
    out = tmp_path / 'rig_prior.yaml'
    code = calibrate(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic',
                      VI_TOPIC, '--infrared-time-offset', 'auto', '--slop', '0.06',
                      '--pairs-count', '3', '--iterations', '1', '--min-inliers', '0',
                      '--out', str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert 'IR time offset found from the recording' in printed.out
    params = yaml.safe_load(out.read_text())['/**']['ros__parameters']
    assert params['sync']['infrared_time_offset'] == pytest.approx(-0.06, abs=0.015)
    assert load_prior_yaml(out) is not None  # the prior is read as before
    assert 'pairing with it' in printed.out


def test_calibrate_auto_on_a_still_recording_exits_1_saying_what_to_give(tmp_path, capsys):
    from tarfuse_ros.tools.calibrate import main as calibrate
    bag = write_bag(tmp_path / 'still', simulation.Case('still', motion='still', duration=4.0))
    out = tmp_path / 'rig_prior.yaml'
    code = calibrate(['--bag', str(bag), '--infrared-topic', IR_TOPIC, '--visible-topic',
                      VI_TOPIC, '--infrared-time-offset', 'auto', '--out', str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert 'found no offset to trust' in err and 'give the offset in seconds instead' in err
    with pytest.raises(SystemExit) as stop:
        calibrate(['--bag', str(bag), '--infrared-time-offset', 'soon', '--out', str(out)])
    assert stop.value.code == 2
    assert "give a number of seconds or auto, got 'soon'" in capsys.readouterr().err
