"""Tests of the image conventions: normalisation, colour round trip, padding."""

import cv2
import numpy as np
import pytest
from tarfuse_ros.core import images
import torch


def test_uint8_divides_by_255():
    img = np.array([[0, 51, 255]], np.uint8)
    out = images.to_unit_gray(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], atol=1e-7)


def test_uint8_hxwx1_same_as_hxw():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(images.to_unit_gray(img[:, :, None]), images.to_unit_gray(img))


def test_uint16_percentile_ignores_hot_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(20000, 21000, size=(60, 80)).astype(np.uint16)
    img[0, 0] = 65535  # one hot pixel
    img[1, 1] = 0  # one dead pixel
    out = images.to_unit_gray(img, ir_norm='percentile', low=0.5, high=99.5)
    lo, hi = np.percentile(img, [0.5, 99.5])
    expected = np.clip((img.astype(np.float64) - lo) / (hi - lo), 0, 1)
    # Nearest-rank percentiles differ from numpy's interpolated ones by at most a grey level.
    assert np.abs(out - expected).max() < 3.0 / (hi - lo)
    assert out.min() == 0.0 and out.max() == 1.0
    # The bulk of the frame keeps its contrast, unlike a plain min-max stretch.
    assert out[2:, 2:].std() > 0.25
    assert images.to_unit_gray(img, ir_norm='minmax')[2:, 2:].std() < 0.01


def test_uint16_minmax_and_fixed():
    img = np.array([[1000, 3000], [2000, 1000]], np.uint16)
    np.testing.assert_allclose(images.to_unit_gray(img, ir_norm='minmax'),
                               [[0.0, 1.0], [0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(images.to_unit_gray(img, ir_norm='fixed'), img / 65535.0,
                               atol=1e-6)


def test_uint16_flat_frame_is_zero():
    out = images.to_unit_gray(np.full((4, 5), 1234, np.uint16))
    assert out.shape == (4, 5) and not out.any()


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_float_scales(dtype):
    unit = np.array([[0.0, 0.5, 1.0]], dtype)
    np.testing.assert_allclose(images.to_unit_gray(unit), unit, atol=1e-7)
    # Any other float IR frame is stretched per frame: kelvin, Celsius (within [0, 255] or
    # below 0: not 8-bit grey levels), a [0, 1] frame with negatives.
    for frame in ([290.0, 300.0, 310.0], [15.0, 27.5, 40.0], [-30.0, -17.5, -5.0],
                  [-0.5, 0.25, 1.0]):
        np.testing.assert_allclose(images.to_unit_gray(np.array([frame], dtype), 'minmax'),
                                   [[0.0, 0.5, 1.0]], atol=1e-6)
    # The visible image keeps the 8-bit scale of floats up to 255.
    y, _ = images.to_unit_visible(np.array([[15.0, 127.5, 255.0]], dtype))
    np.testing.assert_allclose(y, [[15.0 / 255.0, 0.5, 1.0]], atol=1e-6)
    # Far below 0 a visible frame is neither: stretched per frame too. A frame normalised to
    # [-1, 1] was read as a [0, 1] frame and its negative half clipped to black, a zero-centred
    # 8-bit one as an 8-bit frame (the same).
    for frame in ([-1.0, 0.0, 1.0], [-128.0, -0.5, 127.0]):
        y, _ = images.to_unit_visible(np.array([frame], dtype), 'minmax')
        middle = (frame[1] - frame[0]) / (frame[2] - frame[0])
        np.testing.assert_allclose(y, [[0.0, middle, 1.0]], atol=1e-6)


def test_resampled_unit_float_frames_keep_the_unit_reading(roadscene_pair):
    """A [0, 1] stream resampled by a cubic / Lanczos kernel leaves [0, 1] near its edges.

    Its frames must still read as [0, 1] frames (clipped), not switch to the per-frame stretch
    (IR) or the 8-bit scale (visible: a black frame) by where their extreme pixels fall.
    """
    ir, vi = roadscene_pair
    ir_unit = ir.astype(np.float32) / 255.0
    vi_unit = vi.astype(np.float32) / 255.0
    for interp in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        ir_big = cv2.resize(ir_unit, None, fx=1.7, fy=1.7, interpolation=interp)
        vi_big = cv2.resize(vi_unit, None, fx=1.7, fy=1.7, interpolation=interp)
        assert ir_big.max() > 1.0 or ir_big.min() < 0.0  # it does leave [0, 1] here
        assert vi_big.max() > 1.0
        np.testing.assert_allclose(images.to_unit_gray(ir_big), np.clip(ir_big, 0.0, 1.0),
                                   atol=1e-7)
        y, _ = images.to_unit_visible(vi_big)
        expected, _ = images.to_unit_visible(np.clip(vi_big, 0.0, 1.0))
        np.testing.assert_allclose(y, expected, atol=1e-6)
    # Beyond the margin a frame is not a [0, 1] frame: stretched (IR), 8-bit scale (visible).
    margin = images.UNIT_OVERSHOOT
    frame = np.array([[0.0, 0.5, 1.0 + 2 * margin]], np.float32)
    np.testing.assert_allclose(images.to_unit_gray(frame, 'minmax'),
                               frame / frame.max(), atol=1e-6)
    y, _ = images.to_unit_visible(frame)
    np.testing.assert_allclose(y, frame / 255.0, atol=1e-6)


@pytest.mark.parametrize('bad, match', [
    (np.zeros((0, 5), np.uint8), 'empty'),
    (np.zeros((2, 3, 4, 1), np.uint8), 'shape'),
    (np.zeros((2, 3, 2), np.uint8), 'channels'),
    (np.zeros((2, 3), np.int32), 'int32'),
    (np.zeros((2, 3), bool), 'bool'),
    (np.array([[0.1, np.nan]], np.float32), 'NaN'),
    (np.array([[0.1, np.inf]], np.float64), 'infinite'),
])
def test_bad_inputs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        images.to_unit_gray(bad)
    with pytest.raises(ValueError, match=match):
        images.to_unit_visible(bad)


def test_bad_norm_and_percentiles_raise():
    img = np.zeros((2, 2), np.uint16)
    with pytest.raises(ValueError, match='norm'):
        images.to_unit_gray(img, ir_norm='log')
    with pytest.raises(ValueError, match='percentiles'):
        images.to_unit_gray(img, low=60, high=40)


def test_visible_grey_has_no_chroma():
    img = np.full((6, 7), 128, np.uint8)
    y, crcb = images.to_unit_visible(img)
    assert crcb is None and y.shape == (6, 7)


def test_colour_round_trip_on_real_image(roadscene_pair):
    _, vi = roadscene_pair
    y, crcb = images.to_unit_visible(vi)
    assert y.shape == vi.shape[:2] and crcb.shape == vi.shape[:2] + (2,)
    # Luma is OpenCV's grey conversion.
    grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
    assert np.abs(y * 255.0 - grey).max() <= 1.0
    back = images.to_uint8(images.ycrcb_to_bgr(np.dstack([y, crcb])))
    assert np.abs(back.astype(int) - vi.astype(int)).max() <= 1


def test_float_colour_conversions_refuse_an_8_bit_image(roadscene_pair):
    """A uint8 BGR frame gave Y in 0-255 and chroma off any scale, returned as [0, 1] planes."""
    _, vi = roadscene_pair
    ycrcb = images.bgr_to_ycrcb(vi.astype(np.float32) / 255.0)
    assert 0.0 <= ycrcb.min() and ycrcb.max() <= 1.0
    with pytest.raises(ValueError, match='bgr must be float in .* got dtype uint8'):
        images.bgr_to_ycrcb(vi)
    with pytest.raises(ValueError, match='ycrcb must be float in .* got dtype uint8'):
        images.ycrcb_to_bgr(cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb))


def test_split_and_merge_uint8_fast_path():
    bgr = np.random.default_rng(3).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    y, crcb = images.split_visible(bgr)
    y_float, crcb_float = images.to_unit_visible(bgr)
    assert crcb.dtype == np.uint8 and crcb.shape == (9, 11, 2)
    assert np.abs(y - y_float).max() <= 0.5 / 255 + 1e-6  # luma rounded to 8 bits
    # OpenCV's 8-bit conversion is fixed-point: chroma within 1.5 levels of the float one.
    assert np.abs(crcb.astype(np.float32) - crcb_float * 255).max() <= 1.5
    back = images.merge_luma_chroma(images.to_uint8(y), crcb)
    assert np.abs(back.astype(int) - bgr.astype(int)).max() <= 3
    grey_y, grey_crcb = images.split_visible(bgr[:, :, 0])
    assert grey_crcb is None and grey_y.shape == (9, 11)
    _, float_crcb = images.split_visible(bgr.astype(np.float32) / 255)
    assert np.abs(float_crcb.astype(int) - crcb.astype(int)).max() <= 2
    with pytest.raises(ValueError, match='do not match'):
        images.merge_luma_chroma(images.to_uint8(y), crcb[1:])


def test_keep_uint8_planes():
    bgr = np.random.default_rng(4).integers(0, 256, size=(6, 5, 3)).astype(np.uint8)
    y8, crcb = images.split_visible(bgr, keep_uint8=True)
    y, _ = images.split_visible(bgr)
    assert y8.dtype == np.uint8 and crcb.dtype == np.uint8
    np.testing.assert_allclose(y8 / 255.0, y, atol=1e-6)
    grey8 = images.gray_plane(bgr, keep_uint8=True)
    np.testing.assert_array_equal(grey8, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(images.gray_plane(bgr[:, :, :1], keep_uint8=True), bgr[:, :, 0])
    ir16 = np.arange(30, dtype=np.uint16).reshape(6, 5)
    np.testing.assert_array_equal(images.gray_plane(ir16, keep_uint8=True),
                                  images.to_unit_gray(ir16))
    with pytest.raises(ValueError, match='empty'):
        images.gray_plane(np.zeros((0, 3), np.uint8), keep_uint8=True)
    with pytest.raises(ValueError, match='shape'):
        images.split_visible(np.zeros((1, 2, 3, 3), np.uint8), keep_uint8=True)


def test_bgra_drops_alpha():
    bgr = np.random.default_rng(1).integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    bgra = np.dstack([bgr, np.full((5, 6), 7, np.uint8)])
    y1, c1 = images.to_unit_visible(bgr)
    y2, c2 = images.to_unit_visible(bgra)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(c1, c2)


def test_colour_ir_reduced_to_luma():
    bgr = np.random.default_rng(2).integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    y, _ = images.to_unit_visible(bgr)
    np.testing.assert_allclose(images.to_unit_gray(bgr), y)


@pytest.mark.parametrize('mode', images.PAD_MODES)
def test_pad_bottom_right_keeps_pixels(mode):
    t = torch.rand(2, 1, 37, 50)
    padded, (pad_h, pad_w) = images.pad_to_multiple(t, 32, mode)
    assert padded.shape == (2, 1, 64, 64) and (pad_h, pad_w) == (27, 14)
    torch.testing.assert_close(images.unpad(padded, 37, 50), t, rtol=0, atol=0)
    if mode == 'replicate':
        torch.testing.assert_close(padded[..., 63, :50], t[..., 36, :])
        torch.testing.assert_close(padded[..., :37, 63], t[..., :, 49])
    elif mode == 'constant':
        assert not padded[..., 37:, :].any()
    else:
        torch.testing.assert_close(padded[..., 37, :50], t[..., 35, :])


def test_pad_min_size():
    t = torch.rand(1, 1, 20, 70)
    padded, pads = images.pad_to_multiple(t, 32, 'replicate', min_size=64)
    assert padded.shape == (1, 1, 64, 96) and pads == (44, 26)
    torch.testing.assert_close(padded[..., :20, :70], t)


def test_pad_no_op_and_errors():
    t = torch.rand(1, 1, 64, 32)
    padded, pads = images.pad_to_multiple(t)
    assert padded is t and pads == (0, 0)
    with pytest.raises(ValueError, match='reflect'):
        images.pad_to_multiple(torch.rand(1, 1, 8, 8), 32, 'reflect')
    with pytest.raises(ValueError, match='shape'):
        images.pad_to_multiple(torch.rand(8, 8))
    with pytest.raises(ValueError, match='mode'):
        images.pad_to_multiple(t, 32, 'wrap')


def test_resize_picks_interpolation():
    img = np.zeros((8, 8), np.float32)
    img[::2, ::2] = 1.0  # a fine checkerboard: AREA averages it, LINEAR would alias
    small = images.resize_image(img, 4, 4)
    np.testing.assert_allclose(small, 0.25, atol=1e-6)
    big = images.resize_image(img, 16, 12)
    assert big.shape == (16, 12)
    assert images.resize_image(img, 8, 8) is img


def test_to_uint8_numpy_and_tensor():
    values = np.array([[-0.1, 0.0, 0.5, 1.0, 1.2]], np.float32)
    expected = [[0, 0, 128, 255, 255]]
    np.testing.assert_array_equal(images.to_uint8(values), expected)
    out = images.to_uint8(torch.from_numpy(values))
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), expected)
