"""Test-session settings shared by every test module."""

import os
from pathlib import Path
import random
import signal

import cv2
import pytest

# Ultralytics must never reach the network; set before anything imports it.
os.environ.setdefault('YOLO_OFFLINE', '1')
# DDS traffic stays on this machine, on a domain of this test run's own, so that test runs
# started at the same time (several developers, CI) never see each other's topics.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
if 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))
# A test run started in the background (`make test &`, nohup) has SIGINT ignored, and every
# process it starts inherits that: the tests that Ctrl-C a node or the demo, as a terminal or
# ros2 launch does, would see it ignored. Children start with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Real data the tests use, inside the repository (no ../shared needed): samples/ (five RoadScene
# test pairs) and test/data/datasets (small excerpts of the shared sets; sources in its README).
SAMPLES = Path(__file__).resolve().parents[1] / 'samples'


@pytest.fixture(scope='session')
def roadscene_pair():
    """Load the first RoadScene test pair (FLIR_00122): IR uint8 HxW, visible uint8 HxWx3 BGR."""
    stem = 'FLIR_00122'
    ir = cv2.imread(str(SAMPLES / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(SAMPLES / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    assert ir is not None and vi is not None, f'{stem} missing under {SAMPLES}'
    return ir, vi


class _BackgroundExport:
    """``tarfuse-export --no-scale-search`` of the shipped weights, in a process of its own.

    Started once the tests are collected, where one of them uses ``shipped_onnx_file``: the
    export (half a minute of tracing on one core, more in a long test session) runs beside the
    tests instead of before the first that needs it.
    """

    def __init__(self):
        import subprocess
        import sys
        import tempfile
        from tarfuse_ros.core.paths import default_weights_path
        self.folder = Path(tempfile.mkdtemp(prefix='tarfuse_test_onnx_'))
        self.path = self.folder / 'tarfuse.onnx'
        self.log = self.folder / 'export.log'
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'tarfuse_ros.tools.export', str(default_weights_path()),
                 '--out', str(self.path), '--no-scale-search', '--no-verify', '--threads', '1'],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def result(self, timeout=900.0):
        """Wait for the export; return the ONNX path (pytest.fail with its log if it failed)."""
        import subprocess
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f'tarfuse-export took over {timeout:.0f} s: {self.log.read_text()}')
        if code != 0 or not self.path.is_file():
            pytest.fail(f'tarfuse-export exited {code}:\n{self.log.read_text()}')
        return self.path

    def close(self):
        import shutil
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_EXPORT = None


def pytest_collection_finish(session):
    global _EXPORT
    if session.config.option.collectonly:
        return
    if _EXPORT is None and any('shipped_onnx_file' in getattr(item, 'fixturenames', ())
                               for item in session.items):
        _EXPORT = _BackgroundExport()


def pytest_sessionfinish(session, exitstatus):
    if _EXPORT is not None:
        _EXPORT.close()


@pytest.fixture(scope='session')
def shipped_onnx_file():
    """Return the shipped model exported to ONNX without the scale search, once per session.

    ``tarfuse-export --no-scale-search --no-verify``: the shipped weights and global stage with
    the 1.0 IR / visible scale only, so the torch side of each parity test is
    ``FusionEngine(scale_search=False)``. Less than half the graph of the three-scale export
    (2-core VM: 27 s, and 6.3-6.5 s instead of 19.9 s per onnxruntime session with its default
    graph rewrites, of which the tests open several); the scale search's own export is checked
    in test_onnx.py on a model of the same architecture. No check: the export's own check runs
    in test_onnx.py. Run in the background from the start of the session
    (:class:`_BackgroundExport`).
    """
    if _EXPORT is None:  # pytest_collection_finish saw no test that uses it
        pytest.fail('shipped_onnx_file was requested by a test pytest did not collect')
    return _EXPORT.result()
