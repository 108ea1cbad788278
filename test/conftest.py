"""Test-session settings shared by every test module."""

import os
import random

import cv2
import pytest
from tarfuse_ros.core.paths import shared_datasets_dir

# Ultralytics must never reach the network; set before anything imports it.
os.environ.setdefault('YOLO_OFFLINE', '1')
# DDS traffic stays on this machine, on a domain of this test run's own, so that test runs
# started at the same time (several developers, CI) never see each other's topics.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
if 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))


@pytest.fixture(scope='session')
def roadscene_pair():
    """Load the first RoadScene test pair: IR uint8 HxW, visible uint8 HxWx3 BGR."""
    datasets = shared_datasets_dir()
    if datasets is None:
        pytest.skip('shared datasets not found (set TARFUSE_SHARED or put shared/ '
                    'beside the clone)')
    root = datasets / 'roadscene'
    stem = (root / 'test.txt').read_text().split()[0]
    ir = cv2.imread(str(root / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(root / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    assert ir is not None and vi is not None, stem
    return ir, vi
