"""tarfuse-demo end to end: sample bag -> fusion node process over DDS -> recorded outputs."""

import json
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import pytest

from tarfuse_ros.core import paths
from tarfuse_ros.tools import demo
from tarfuse_ros.tools.bagio import read_messages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Return the shipped weights, or (until they exist) a random-init checkpoint."""
    shipped = paths.default_weights_path()
    if shipped.is_file():
        return shipped
    import torch

    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'random_init.safetensors'
    save_checkpoint(path, build_model().eval(),
                    provenance={'note': 'random initialisation, demo test only'})
    return path


@pytest.mark.dds
def test_demo_runs_the_node_on_sample_pairs_and_summarises(weights, tmp_path, capsys):
    out = tmp_path / 'demo'
    code = demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '3',
                      '--loops', '1', '--rate', '2', '--size', '128x96', '--pngs', '2',
                      # A threshold low enough that even an untrained model reports boxes,
                      # so detections are recorded, counted per class and drawn.
                      '--param', 'confidence_threshold:=0.0001', '--param', 'max_detections:=5',
                      # Shorter than the 3 s the recording lingered after the last answer;
                      # the last diagnostics (the node's counts) come well before its end.
                      '--param', 'diagnostics.input_timeout:=2.5',
                      '--param', 'diagnostics.period:=0.5'])
    captured = capsys.readouterr()
    log = (out / 'node.log').read_text() if (out / 'node.log').exists() else ''
    assert code == 0, captured.err + '\nnode log:\n' + log
    # The bag's end is no camera that stopped: the node is stopped before its input timeout
    # (every node.log ended with 'both inputs stopped ... hung camera drivers ...').
    assert '[WARN]' not in log and '[ERROR]' not in log, log
    summary = json.loads((out / 'summary.json').read_text())
    assert '# tarfuse_ros demo' in captured.out and 'pairs in' in captured.out

    # Every pair crossed DDS and was synchronised; each was processed, dropped or rejected,
    # and each processed pair gave one fused image, one detection array, one registered IR.
    assert summary['pairs_in'] == 3
    diag = summary['node_diagnostics']
    assert int(diag['pairs_received']) == 3
    assert int(diag['pairs_processed']) + int(diag['pairs_dropped']) \
        + int(diag['pairs_rejected']) == 3
    assert summary['pairs_out'] == int(diag['pairs_processed']) >= 1
    assert summary['detection_arrays'] == summary['registered_images'] == summary['pairs_out']
    assert summary['latency_ms']['count'] == summary['pairs_out']
    assert summary['latency_ms']['median'] > 0
    assert summary['node_clean_shutdown'] is True and summary['node_exit_code'] == 0
    assert diag['device'] == 'cpu'
    # Ground truth of the pairs with detections (all three unless one was dropped).
    if summary['detection_arrays'] == 3:
        assert sum(summary['ground_truth_boxes_per_class'].values()) == 7 + 3 + 11

    # Outputs carry the visible image's header (frame and one of the published stamps).
    published = set()
    for topic, _t, _b, _raw, msg in read_messages(summary['input_bag']):
        if topic == '/visible/image_raw':
            assert msg.header.frame_id == 'visible_optical_frame'
    recorded = list(read_messages(summary['recorded_bag']))
    fused = [m for topic, _t, _b, _r, m in recorded if topic == '/fused/image_raw']
    assert len(fused) == summary['pairs_out']
    for msg in fused:
        assert msg.header.frame_id == 'visible_optical_frame'
        assert (msg.width, msg.height, msg.encoding) == (128, 96, 'bgr8')
        published.add(msg.header.stamp.sec)
    assert all(sec > 1_700_000_000 + 10**6 for sec in published)  # re-stamped to 'now'

    # Detections: per class, names from the model's class list, at most max_detections each.
    classes = summary['detections_per_class']
    assert summary['detections_total'] == sum(classes.values()) > 0
    assert set(classes) <= {'person', 'bicycle', 'car'}
    assert summary['detections_total'] <= 5 * summary['detection_arrays']
    arrays = [m for topic, _t, _b, _r, m in recorded if topic == '/detections']
    assert sum(len(a.detections) for a in arrays) == summary['detections_total']
    for array in arrays:
        assert array.header.frame_id == 'visible_optical_frame'
        for det in array.detections:
            assert det.header.stamp == array.header.stamp
            assert 0 <= det.bbox.center.position.x <= 128 and 0 <= det.bbox.center.position.y <= 96

    # A few fused PNGs (plus copies with the boxes drawn), decodable, at the camera size.
    plain = [p for p in summary['fused_pngs'] if not p.endswith('_detections.png')]
    assert 1 <= len(plain) <= 2
    assert any(p.endswith('_detections.png') for p in summary['fused_pngs'])
    for name in summary['fused_pngs']:
        image = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (96, 128, 3)
        assert any(stem in name for stem in ('FLIR_00122', 'FLIR_00993', 'FLIR_04229'))
    assert (out / 'summary.md').read_text().startswith('# tarfuse_ros demo')
    assert '- input: 3 pairs from ' in (out / 'summary.md').read_text()  # one loop


@pytest.mark.dds
def test_the_ground_truth_beside_the_detections_is_that_of_the_pairs_with_detections(
        weights, tmp_path, capsys):
    """Pairs the node does not fuse: their boxes are not counted as missed.

    Cameras at 50 Hz under ``max_rate`` 1 Hz: the node runs the model on the first pair and
    skips the other two by their stamps, on any machine (an overload of a 50 Hz stream, as
    this test had before, dropped none on a machine that fuses 128x96 pairs in 20 ms).
    """
    out = tmp_path / 'fast'
    assert demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '3',
                      '--loops', '1', '--rate', '50', '--size', '128x96', '--pngs', '3',
                      '--param', 'cpu_threads:=1', '--param', 'max_rate:=1.0']) == 0, \
        capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['pairs_in'] == 3 and summary['pairs_synchronised_by_node'] == 3
    assert summary['detection_arrays'] == summary['pairs_out'] == 1
    # Each fused pair's PNG is named after its stem; their labels are the ground truth.
    fused = [name.split('_', 2)[2][:-len('.png')] for name in summary['fused_pngs']
             if not name.endswith('_detections.png')]
    assert len(fused) == summary['pairs_out']
    truth = {}
    names = (ROOT / 'samples' / 'labels' / 'classes.txt').read_text().split()
    for stem in fused:
        for line in (ROOT / 'samples' / 'labels' / f'{stem}.txt').read_text().splitlines():
            name = names[int(line.split()[0])]
            truth[name] = truth.get(name, 0) + 1
    assert summary['ground_truth_boxes_per_class'] == truth  # was the three played pairs'
    assert 'ground-truth boxes in the pairs with detections' in (out / 'summary.md').read_text()


@pytest.mark.dds
def test_a_compressed_transport_given_to_the_node_is_the_bag_s_too(weights, tmp_path, capsys):
    """The bag stayed raw: the node never subscribed to it ('no 1 subscriber(s)' after 180 s)."""
    out = tmp_path / 'compressed'
    assert demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '2',
                      '--loops', '1', '--rate', '1', '--size', '128x96', '--pngs', '0',
                      '--startup-timeout', '60', '--param', 'cpu_threads:=1',
                      '--param', 'visible.transport:=compressed',
                      '--param', 'infrared.transport:=compressed']) == 0, capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert {topic for topic, *_rest in read_messages(summary['input_bag'])} == {
        '/visible/image_raw/compressed', '/infrared/image_raw/compressed'}
    assert summary['pairs_in'] == 2 and summary['pairs_out'] >= 1
    assert 'inputs /infrared/image_raw/compressed (compressed)' in (out / 'node.log').read_text()


@pytest.mark.dds
def test_a_compressed_transport_in_the_demo_s_params_file_is_the_bag_s_too(
        weights, tmp_path, capsys):
    """Only --param ones were: the bag stayed raw and the node waited for compressed images."""
    shipped = (ROOT / 'config' / 'tarfuse.yaml').read_text()
    assert shipped.count("      transport: 'raw'") == 2  # infrared, then visible
    params = tmp_path / 'compressed.yaml'
    # An entry for another node is not the fusion node's: its raw transport does not count.
    assert shipped.count('      period: 1.0') == 1  # diagnostics.period
    params.write_text(shipped.replace("      transport: 'raw'", "      transport: 'compressed'")
                      .replace('      period: 1.0', '      period: 0.5')
                      + '/camera:\n  ros__parameters:\n    visible:\n      transport: raw\n')
    out = tmp_path / 'compressed'
    assert demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '1',
                      '--loops', '1', '--rate', '1', '--size', '128x96', '--pngs', '0',
                      '--startup-timeout', '60', '--params-file', str(params),
                      '--param', 'cpu_threads:=1']) == 0, capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert {topic for topic, *_rest in read_messages(summary['input_bag'])} == {
        '/visible/image_raw/compressed', '/infrared/image_raw/compressed'}
    assert summary['pairs_in'] == 1 and summary['pairs_out'] == 1
    assert 'inputs /infrared/image_raw/compressed (compressed)' in (out / 'node.log').read_text()
    # The node's figures are per diagnostics window, one diagnostics.period (said 1 s always).
    assert 'median of 0.5 s windows (ms)' in (out / 'summary.md').read_text()
    assert summary['node_diagnostics_period_s'] == 0.5


@pytest.mark.dds
def test_a_node_on_simulated_time_gets_the_bag_s_clock(weights, tmp_path, capsys):
    """use_sim_time:=true: the bag was played without /clock, so the node's time stood at 0.

    Its latency was never measured ('-' in the summary) and it said to play the bag with its
    clock, which the demo plays. Now the demo plays it with /clock, as tarfuse-play --clock.
    """
    out = tmp_path / 'sim_time'
    assert demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '2',
                      '--loops', '1', '--rate', '2', '--size', '128x96', '--pngs', '0',
                      '--startup-timeout', '60', '--param', 'cpu_threads:=1',
                      '--param', 'use_sim_time:=true']) == 0, capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    log = (out / 'node.log').read_text()
    assert summary['pairs_out'] >= 1 and 'no /clock' not in log, log
    latency = summary['node_latency_ms_median']
    assert latency is not None and 0 <= latency < 30_000, summary['node_diagnostics']


def test_demo_says_what_to_do_without_weights(tmp_path, capsys):
    missing = tmp_path / 'none.safetensors'
    assert demo.main(['--out', str(tmp_path / 'o'), '--weights', str(missing)]) == 2
    err = capsys.readouterr().err
    assert 'no weights at' in err and str(missing) in err and '--weights' in err
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('flags, message', [
    (['--param', 'confidence_threshold=0.4'],
     "node parameter must look like name:=value, got 'confidence_threshold=0.4'"),
    (['--params-file', 'no_such.yaml'], 'node parameters file no_such.yaml not found')])
def test_refused_options_exit_2_as_argparse_and_every_other_tool_say_usage_errors(
        weights, tmp_path, capsys, flags, message):
    """A refused option exited 1, as a demo whose node failed; argparse's own refusals exit 2."""
    out = tmp_path / 'o'
    assert demo.main(['--out', str(out), '--weights', str(weights), *flags]) == 2
    assert capsys.readouterr().err == f'tarfuse-demo: error: {message}\n'
    with pytest.raises(SystemExit) as raised:
        demo.main(['--out', str(out), '--rate', 'fast'])
    assert raised.value.code == 2
    assert not out.exists()


def test_demo_refuses_an_unusable_out_before_any_work(tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    assert demo.main(['--out', str(a_file)]) == 2
    assert 'is a file, not a folder' in capsys.readouterr().err


@pytest.mark.parametrize('flags, message', [
    (['--startup-timeout', 'nan'], '--startup-timeout must be a number of seconds > 0, got nan'),
    (['--startup-timeout', '-1'], '--startup-timeout must be a number of seconds > 0, got -1.0'),
    (['--pngs', '-1'], '--pngs must be >= 0, got -1')])
def test_demo_refuses_bad_numbers_before_any_work(weights, tmp_path, capsys, flags, message):
    """A bad --startup-timeout or --pngs is refused before the bag is built, naming it.

    --startup-timeout nan built the bag and started the node, then said 'wait_timeout must be
    >= 0, got nan' (the player's option, not the demo's); --pngs -1 wrote none silently.
    """
    out = tmp_path / 'o'
    assert demo.main(['--out', str(out), '--weights', str(weights), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f'tarfuse-demo: error: {message}\n'
    assert not out.exists()


@pytest.mark.parametrize('flags, message', [
    (['--rate', '0'], 'rate must be > 0 and at most 1e+09 Hz, got 0.0'),
    (['--size', '512'], "size must look like WIDTHxHEIGHT (e.g. 640x512), got '512'"),
    (['--loops', '0'], 'loops must be >= 1, got 0'),
    # Accepted, the earlier outputs replaced, then refused by the node.
    (['--size', '12x12'], '--size is 12x12: both sides must be at least 16 pixels'),
    (['--size', '900x100'], '--size is 900x100: its longer side is 9.0 times the '
                            'shorter, more than 8 (a strip, not a frame)'),
    (['--param', 'visible.transport:=jpeg'],
     "vi_transport must be one of ('raw', 'compressed'), got 'jpeg'")])
def test_a_bad_bag_option_keeps_the_earlier_demo_s_outputs(
        weights, tmp_path, capsys, flags, message):
    """--out of an earlier demo with --rate 0 deleted its summary, PNGs and bags, then refused."""
    out = tmp_path / 'earlier'
    (out / 'input_bag').mkdir(parents=True)
    (out / demo.MARKER).write_text('tarfuse-demo wrote this folder\n')
    files = {'summary.md': 'the last run', 'summary.json': '{}', 'fused_000_a.png': 'png',
             'input_bag/metadata.yaml': 'bag'}
    for name, text in files.items():
        (out / name).write_text(text)
    assert demo.main(['--out', str(out), '--weights', str(weights), *flags]) == 2
    assert capsys.readouterr().err == f'tarfuse-demo: error: {message}\n'
    assert {name: (out / name).read_text() for name in files} == files
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [demo.MARKER, 'input_bag', 'summary.md', 'summary.json', 'fused_000_a.png'])


def test_demo_refuses_a_folder_of_other_files_and_deletes_none(weights, tmp_path, capsys):
    """--out . in one's own folder deleted its summary.md, fused_*.png, input_bag/ and more."""
    mine = tmp_path / 'mine'
    (mine / 'input_bag').mkdir(parents=True)
    files = {'summary.md': 'my notes', 'summary.json': '{}', 'fused_holiday.png': 'a photo',
             'input_bag/notes.txt': 'my bag', 'other.txt': 'other'}
    for name, text in files.items():
        (mine / name).write_text(text)
    assert demo.main(['--out', str(mine), '--weights', str(weights), '--max-pairs', '1',
                      '--loops', '1', '--size', '128x96', '--pngs', '0']) == 2
    err = capsys.readouterr().err
    assert f"--out '{mine}' is not empty and no earlier demo wrote it" in err
    assert 'pass a new or empty folder' in err
    assert {name: (mine / name).read_text() for name in files} == files
    assert sorted(p.name for p in mine.iterdir()) == sorted(
        ['input_bag', 'summary.md', 'summary.json', 'fused_holiday.png', 'other.txt'])


@pytest.mark.dds
def test_a_fusion_node_on_the_shell_s_domain_neither_gets_nor_adds_to_the_demo_s_pairs(
        weights, tmp_path, capsys):
    """With ROS_DOMAIN_ID set, the demo ran there: another fusion node's outputs counted."""
    domain = os.environ['ROS_DOMAIN_ID']  # set: this test run's own (conftest)
    log = tmp_path / 'other_node.log'
    with open(log, 'w') as output:
        other = subprocess.Popen(
            [sys.executable, '-m', 'tarfuse_ros.ros.fuse_node', '--ros-args', '-p',
             f'weights:={weights}', '-p', 'cpu_threads:=1'], stdout=output,
            stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 'ready' not in _read(log):
            time.sleep(0.2)
        assert 'ready' in _read(log), _read(log)
        out = tmp_path / 'demo'
        assert demo.main(['--out', str(out), '--weights', str(weights), '--max-pairs', '2',
                          '--loops', '1', '--rate', '1', '--size', '128x96', '--pngs', '0',
                          '--param', 'cpu_threads:=1']) == 0, capsys.readouterr().err
    finally:
        other.send_signal(signal.SIGINT)
        other.wait(30)
    summary = json.loads((out / 'summary.json').read_text())
    assert str(summary['ros_domain_id']) != domain
    assert summary['pairs_in'] == 2 and summary['pairs_out'] == int(
        summary['node_diagnostics']['pairs_processed']) <= 2
    assert 'WARN' not in _read(log) and 'skipped' not in _read(log)


@pytest.mark.dds
def test_the_demo_s_domain_is_one_where_no_other_node_runs(domain_ids):
    """A robot's node in a domain the shell does not name could be the demo's, fed its images.

    The domain was drawn from 1-100 but the shell's; nothing looked whether nodes ran there.
    """
    import rclpy
    from rclpy.context import Context
    # Two of this test process's own domains (conftest) where nothing runs yet.
    shuffled = random.SystemRandom().sample(domain_ids, len(domain_ids))
    busy, quiet = [domain_id for domain_id in shuffled if not demo._domain_in_use(domain_id)][:2]
    context = Context()
    rclpy.init(context=context, domain_id=busy)
    try:
        robot = rclpy.create_node('robot_fusion', context=context)
        assert demo._domain_in_use(busy)
        assert demo._quiet_domain('', candidates=[busy, quiet]) == quiet
        with pytest.raises(demo.DemoError, match=rf'no quiet ROS domain found: DDS participants '
                                                 rf'run on this machine in every domain tried '
                                                 rf'\({busy}\)'):
            demo._quiet_domain('', candidates=[busy])
        robot.destroy_node()
    finally:
        context.try_shutdown()


def _child_node_environment(found, done):
    """Fill ``found`` with the environment of this process's fusion node child once it runs."""
    parent = f'PPid:\t{os.getpid()}\n'
    while not found and not done.is_set():
        for status in Path('/proc').glob('[0-9]*/status'):
            try:
                if parent in status.read_text() and \
                        b'tarfuse_ros.ros.fuse_node' in (status.parent / 'cmdline').read_bytes():
                    items = (status.parent / 'environ').read_bytes().decode().split('\0')
                    found.update(item.split('=', 1) for item in items if '=' in item)
            except OSError:  # a process that ended meanwhile
                continue
        time.sleep(0.05)


@pytest.mark.dds
def test_the_demo_s_dds_discovery_stays_on_this_machine(weights, tmp_path, capsys, monkeypatch):
    """Without ROS_AUTOMATIC_DISCOVERY_RANGE the private domain reached the local network."""
    monkeypatch.delenv('ROS_AUTOMATIC_DISCOVERY_RANGE', raising=False)
    node_env, done = {}, threading.Event()
    watcher = threading.Thread(target=_child_node_environment, args=(node_env, done))
    watcher.start()
    try:
        code = demo.main(['--out', str(tmp_path / 'demo'), '--weights', str(weights),
                          '--max-pairs', '1', '--loops', '1', '--size', '128x96', '--pngs', '0',
                          '--param', 'cpu_threads:=1'])
    finally:
        done.set()
        watcher.join()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert node_env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST', node_env
    assert node_env['ROS_DOMAIN_ID'] != os.environ.get('ROS_DOMAIN_ID')
    # The player and recorder run in this process: its environment when they started.
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert f"private ROS_DOMAIN_ID={node_env['ROS_DOMAIN_ID']}, " \
        'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: this machine only' in captured.out


def _start_long_demo(weights, out):
    """Start a demo of 50 loops in a process group of its own; return the process."""
    return subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.demo', '--out', str(out), '--weights',
         str(weights), '--loops', '50', '--rate', '4', '--size', '128x96'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        start_new_session=True)


def _wait_for_the_node(out, timeout=120.0):
    """Wait until the demo's node says it is ready in its log (fails the test after timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and 'ready' not in _read(out / 'node.log'):
        time.sleep(0.2)
    assert 'ready' in _read(out / 'node.log'), _read(out / 'node.log')


@pytest.mark.dds
def test_ctrl_c_stops_the_demo_and_its_node_cleanly(weights, tmp_path):
    """A terminal Ctrl-C reaches the demo and its node (one process group): exit 130."""
    out = tmp_path / 'interrupted'
    process = _start_long_demo(weights, out)
    try:
        _wait_for_the_node(out)
        time.sleep(2.0)  # pairs are flowing
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    node_log = _read(out / 'node.log')
    assert process.returncode == 130, output
    assert 'interrupted' in output and not (out / 'summary.md').exists()
    assert 'Traceback' not in output + node_log and 'terminate called' not in node_log
    # '250 pairs' said nothing of the 5 pairs played 50 times.
    assert '/input_bag (250 pairs: the 5 sample pairs 50 times, at 4.0 Hz)' in output, output


@pytest.mark.dds
def test_sigterm_stops_the_demo_and_its_node(weights, tmp_path):
    """SIGTERM (timeout, kill) ended the demo at once and left its node running, orphaned."""
    out = tmp_path / 'terminated'
    process = _start_long_demo(weights, out)
    nodes = []
    try:
        _wait_for_the_node(out)
        nodes = [int(pid) for pid in subprocess.run(
            ['pgrep', '-P', str(process.pid)], capture_output=True, text=True).stdout.split()]
        assert nodes
        process.send_signal(signal.SIGTERM)  # to the demo only, not its process group
        output, _ = process.communicate(timeout=60)
        left = [pid for pid in nodes if Path(f'/proc/{pid}').exists()]
    finally:
        for pid in nodes:  # the node this test started through the demo, if left running
            if Path(f'/proc/{pid}').exists():
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert 'interrupted; the node was stopped' in output and 'Traceback' not in output
    assert left == [] and not (out / 'summary.md').exists()


@pytest.mark.dds
def test_a_demo_started_with_sigint_ignored_stops_its_node_cleanly(weights, tmp_path):
    """A background job's demo (SIGINT ignored, which its node inherits) stops its node cleanly.

    The node keeps an inherited SIGINT ignored: the demo's SIGINT went unheard until its
    SIGTERM 20 s later, after the node's input timeout ('node_clean_shutdown': false).
    """
    out = tmp_path / 'background'
    process = subprocess.run(
        [sys.executable, '-m', 'tarfuse_ros.tools.demo', '--out', str(out), '--weights',
         str(weights), '--max-pairs', '2', '--loops', '1', '--rate', '2', '--size', '128x96',
         '--pngs', '1'],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert process.returncode == 0, process.stdout + process.stderr + _read(out / 'node.log')
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['node_clean_shutdown'] is True, _read(out / 'node.log')
    assert summary['node_exit_code'] == 0


def test_help_says_what_leaving_an_option_out_does(capsys):
    """``--help`` read 'default: the shipped model (default: None)' after --weights."""
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(['--help'])
    shown = ' '.join(capsys.readouterr().out.split())
    assert '(default: None)' not in shown and '(default: [])' not in shown, shown
    assert 'checkpoint (.safetensors); default: the shipped model --device' in shown
    assert 'use the first N pairs (default: all)' in shown
    assert '(default: 512x288)' in shown  # other defaults are still shown


@pytest.mark.dds
def test_a_node_that_refuses_its_start_is_answered_in_the_demo_s_options(tmp_path, capsys):
    """The node's fix, 'Point the weights parameter at ... (-p weights:=...)', is told as ours.

    tarfuse-demo refuses -p; the node's error was repeated as it stood.
    """
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'not a checkpoint')
    assert demo.main(['--out', str(tmp_path / 'demo'), '--weights', str(broken),
                      '--max-pairs', '1', '--loops', '1', '--size', '128x96']) == 1
    err = capsys.readouterr().err
    assert 'the node exited with code 1' in err and '-p weights:=' in err, err
    assert ("(the node's -p NAME:=VALUE is tarfuse-demo's --param NAME:=VALUE; -p device:=... "
            'and -p weights:=... are its --device and --weights)') in err, err


@pytest.mark.dds
def test_a_folder_of_your_own_pairs_is_refused_or_run_with_the_demo_s_own_options(
        weights, tmp_path, capsys):
    """Errors about --samples named tarfuse-make-bag's options (--pairs, --ir-encoding)."""
    pairs = tmp_path / 'pairs'
    for side in ('ir', 'vi'):
        (pairs / side).mkdir(parents=True)
    ir = cv2.imread(str(ROOT / 'samples' / 'ir' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    assert cv2.imwrite(str(pairs / 'ir' / 'a.png'), 27315 + 16 * ir.astype('uint16'))
    shutil.copy(ROOT / 'samples' / 'vi' / 'FLIR_00122.jpg', pairs / 'vi' / 'a.jpg')
    out = tmp_path / 'demo'
    assert demo.main(['--out', str(out), '--weights', str(weights), '--samples', str(pairs)]) == 2
    err = capsys.readouterr().err
    assert (f'{pairs}/synthetic_misaligned/ir_warp is not a folder: --samples needs vi/ and the '
            f'IR folder --ir-dir (synthetic_misaligned/ir_warp; --ir-dir ir for a folder of ir/ '
            f'and vi/)') in err and '--pairs' not in err
    assert not out.exists()
    command = ['--out', str(out), '--weights', str(weights), '--samples', str(pairs),
               '--ir-dir', 'ir', '--loops', '1', '--size', '128x96', '--pngs', '0']
    assert demo.main(command) == 2
    assert 'use --ir-encoding mono16' in capsys.readouterr().err  # now an option of the demo
    assert demo.main(command + ['--ir-encoding', 'mono16']) == 0, capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['pairs_out'] == 1
    assert (out / demo.MARKER).is_file()  # so the failed runs before could be replaced
    assert [m.encoding for topic, _t, _b, _r, m in read_messages(summary['input_bag'])
            if topic == '/infrared/image_raw'] == ['mono16']


@pytest.mark.dds
def test_label_files_of_your_own_pairs_are_read_as_the_other_tools_read_them(
        weights, tmp_path, capsys):
    """Saved by Windows Notepad (byte-order mark), classes.txt naming one class a line."""
    pairs = tmp_path / 'pairs'
    for side in ('ir', 'vi', 'labels'):
        (pairs / side).mkdir(parents=True)
    for side in ('ir', 'vi'):
        shutil.copy(ROOT / 'samples' / side / 'FLIR_00122.jpg', pairs / side / 'a.jpg')
    bom = b'\xef\xbb\xbf'
    (pairs / 'labels' / 'classes.txt').write_bytes(bom + b'person\ntraffic light\ncar\n')
    (pairs / 'labels' / 'a.txt').write_bytes(
        bom + b'1 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n2 0.7 0.6 0.1 0.1\n')
    out = tmp_path / 'demo'
    # A threshold so low that the pair has detections: its ground truth is then counted.
    code = demo.main(['--out', str(out), '--weights', str(weights), '--samples', str(pairs),
                      '--ir-dir', 'ir', '--loops', '1', '--size', '128x96', '--pngs', '0',
                      '--param', 'confidence_threshold:=0.0001', '--param', 'cpu_threads:=1'])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['pairs_out'] == 1
    assert summary['ground_truth_boxes_per_class'] == {'traffic light': 1, 'car': 2}


def _read(path):
    return path.read_text(errors='replace') if path.is_file() else ''


def test_the_summary_reads_the_diagnostics_of_its_own_node_only():
    """Another fusion node in the demo's domain publishes on /diagnostics too: it was read."""
    from tarfuse_ros.tools.bagio import jazzy_typestore
    types = jazzy_typestore().types
    status, pair = types['diagnostic_msgs/msg/DiagnosticStatus'], types[
        'diagnostic_msgs/msg/KeyValue']
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='')

    def array(*names):
        return types['diagnostic_msgs/msg/DiagnosticArray'](header=header, status=[
            status(level=b'\x00', name=name, message='ok', hardware_id='cpu',
                   values=[pair(key='node', value=name)]) for name in names])

    ours = f'{demo.NODE_NAME.lstrip("/")}: fusion'
    assert demo._diagnostic_values(array('front_tarfuse: fusion', ours)) == {'node': ours}
    assert demo._diagnostic_values(array('front_tarfuse: fusion')) == {}
