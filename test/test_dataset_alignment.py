"""benchmarks/dataset_alignment.py: two estimators of an aligned pair's own offset."""

from pathlib import Path
import sys

import cv2
import numpy as np
import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import dataset_alignment  # noqa: E402, I100

WEIGHTS = Path(__file__).resolve().parents[1] / 'models' / 'tarfuse_default.safetensors'
SHIFT = (4.0, -3.0)  # px: x, y


@pytest.fixture(scope='module')
def matcher():
    return load_checkpoint(str(WEIGHTS)).eval().registration.global_matcher


def shifted(image, shift):
    """Return ``out(x, y) = image(x + dx, y + dy)`` (edge pixels repeated)."""
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, matrix, image.shape[::-1],
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def cut(image):
    height, width = image.shape[0] // 32 * 32, image.shape[1] // 32 * 32
    return np.ascontiguousarray(image[:height, :width])


def test_both_estimators_find_a_known_shift_and_share_it(matcher, roadscene_pair):
    # One modality (the visible luma moved by a known shift): both estimators must find the
    # shift, in the same convention (opposite signs would make the shared part 0).
    vi = cut(dataset_alignment.grey_unit(roadscene_pair[1]))
    length = float(np.hypot(*SHIFT))
    found, ecc, difference, common, ecc_ok = dataset_alignment.pair_offsets(
        matcher, shifted(vi, SHIFT), vi)
    assert ecc_ok
    assert found == pytest.approx(length, abs=0.5)
    assert ecc == pytest.approx(length, abs=0.5)
    assert difference < 0.5
    assert common == pytest.approx(length, abs=0.5)


def test_an_aligned_real_pair_shares_less_than_a_shifted_one(matcher, roadscene_pair):
    # Across modalities: the real pair's own offset is small (FLIR_00122, a few px at most);
    # moving its IR by 5 px makes the offset both estimators share grow by about that much.
    ir, vi = (cut(dataset_alignment.grey_unit(image)) for image in roadscene_pair)
    aligned = dataset_alignment.pair_offsets(matcher, ir, vi)
    moved = dataset_alignment.pair_offsets(matcher, shifted(ir, SHIFT), vi)
    assert aligned[3] < 2.5
    assert moved[3] > aligned[3] + 2.5
    assert moved[2] < 2.0
