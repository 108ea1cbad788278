"""Test-session settings shared by every test module."""

import os
from pathlib import Path
import random

import cv2
import pytest

# Ultralytics must never reach the network; set before anything imports it.
os.environ.setdefault('YOLO_OFFLINE', '1')
# DDS traffic stays on this machine, on a domain of this test run's own, so that test runs
# started at the same time (several developers, CI) never see each other's topics.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
if 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))


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
