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


@pytest.fixture(scope='session')
def shipped_onnx_file(tmp_path_factory):
    """Return the shipped model exported to ONNX without the scale search, once per session.

    ``tarfuse-export --no-scale-search``: the shipped weights and global stage with the 1.0
    IR / visible scale only, so the torch side of each parity test is
    ``FusionEngine(scale_search=False)``. A third of the graph of the three-scale export (2-core
    VM: 85 s instead of 302 s, and 15 s instead of 49 s per onnxruntime session, of which the
    tests open several); the scale search's own export is checked in test_onnx.py on a model
    of the same architecture. ``verify=False``: the export's own check runs in test_onnx.py.
    """
    import torch
    from tarfuse_ros.core.export import export_onnx
    from tarfuse_ros.core.paths import default_weights_path
    path = tmp_path_factory.mktemp('shipped_onnx') / 'tarfuse.onnx'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a test should; restored below
    try:
        export_onnx(default_weights_path(), path, verify=False, scale_search=False)
    finally:
        torch.set_num_threads(threads)
    return path
