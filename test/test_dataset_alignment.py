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


def moved(image, matrix):
    """Return ``out(p) = image(matrix [p; 1])`` (pixel centres; edge pixels repeated)."""
    return cv2.warpAffine(image, np.float32(matrix), image.shape[::-1],
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def cut(image):
    height, width = image.shape[0] // 32 * 32, image.shape[1] // 32 * 32
    return np.ascontiguousarray(image[:height, :width])


def affine_about_centre(shape, degrees, scale, shift):
    """Return the 2x3 pixel map ``p -> s R (p - c) + c + shift`` (c: the frame's centre)."""
    height, width = shape
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    angle = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([linear, (centre + np.asarray(shift) - linear @ centre)[:, None]])


def true_mean_length(matrix, shape):
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    mapped_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    mapped_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return float(np.hypot(mapped_x - xs, mapped_y - ys).mean())


@pytest.mark.parametrize('degrees, scale, shift', [(0.0, 1.0, SHIFT), (1.5, 1.02, (2.0, 1.0))])
def test_both_estimators_find_a_known_map_in_the_same_convention(
        matcher, roadscene_pair, degrees, scale, shift):
    # One modality (the visible luma moved by a known map): both estimators must find it,
    # in the same convention (opposite signs or swapped axes would make them differ by twice
    # the map) and with the same pixel centres (the rotation and scale test those).
    vi = cut(dataset_alignment.grey_unit(roadscene_pair[1]))
    matrix = affine_about_centre(vi.shape, degrees, scale, shift)
    truth = true_mean_length(matrix, vi.shape)
    flow_global, ecc = dataset_alignment.estimate_flows(matcher, moved(vi, matrix), vi)
    assert ecc.success
    found, by_ecc, difference, both = dataset_alignment.pair_offsets(
        matcher, moved(vi, matrix), vi)
    assert truth > 3.0
    assert found == pytest.approx(truth, abs=0.5)
    assert by_ecc == pytest.approx(truth, abs=0.5)
    assert difference < 0.5
    assert both == pytest.approx(truth, abs=0.5)
    # Flow convention: the moved image sampled at x + flow is the visible image at x, i.e.
    # matrix (x + flow) = x: x + flow = matrix^-1 x.
    inverse = cv2.invertAffineTransform(np.float32(matrix))
    ys, xs = np.mgrid[0:vi.shape[0], 0:vi.shape[1]].astype(np.float32)
    expected = np.stack([inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2] - xs,
                         inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2] - ys], axis=2)
    assert dataset_alignment.mean_length(flow_global - expected) < 0.5


def test_an_aligned_real_pair_is_off_by_less_than_a_moved_one(matcher, roadscene_pair):
    # Across modalities: the real pair's own offset is small (FLIR_00122, a few px at most);
    # moving its IR by 5 px makes the offset both estimators find grow by about that much.
    ir, vi = (cut(dataset_alignment.grey_unit(image)) for image in roadscene_pair)
    aligned = dataset_alignment.pair_offsets(matcher, ir, vi)
    shifted = dataset_alignment.pair_offsets(
        matcher, moved(ir, [[1, 0, SHIFT[0]], [0, 1, SHIFT[1]]]), vi)
    assert aligned[3] < 2.5
    assert shifted[3] > aligned[3] + 2.5
    assert shifted[2] < 2.0


def test_the_corrected_reference_composes_the_offset_and_the_field():
    # A constant field reference r and a constant offset o: o + r(x + o) = o + r.
    reference = np.zeros((40, 48, 2), np.float32) + np.float32([3.0, -1.0])
    offset = np.zeros((40, 48, 2), np.float32) + np.float32([0.5, 2.0])
    np.testing.assert_allclose(dataset_alignment.corrected_reference(reference, offset),
                               reference + offset, atol=1e-5)
    # A field reference that varies along x is read where the offset points.
    ramp = np.zeros((40, 48, 2), np.float32)
    ramp[..., 0] = np.arange(48, dtype=np.float32)[None, :] * 0.1
    shift = np.zeros_like(ramp)
    shift[..., 0] = 2.0
    corrected = dataset_alignment.corrected_reference(ramp, shift)
    np.testing.assert_allclose(corrected[:, 10, 0], 2.0 + 1.2, atol=1e-5)
