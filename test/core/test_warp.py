"""Tests of the pixel-flow warp: identity, known shifts, gradients, flow resizing."""

import pytest
from tarfuse_ros.core.model.warp import identity_grid, resize_flow, Warp, warp
import torch


def test_identity_flow_leaves_image_unchanged():
    image = torch.rand(2, 3, 24, 40)
    out = warp(image, torch.zeros(2, 2, 24, 40))
    assert torch.allclose(out, image, atol=1e-5)


def test_module_equals_function():
    image = torch.rand(1, 2, 16, 16)
    flow = torch.randn(1, 2, 16, 16)
    assert torch.equal(Warp()(image, flow), warp(image, flow))


def test_integer_shift_is_reproduced():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 20, 30, generator=generator)
    dx, dy = 3, -2
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = dx
    flow[:, 1] = dy
    out = warp(image, flow)
    # out(y, x) = image(y + dy, x + dx) where it is inside, zero outside.
    expected = torch.zeros_like(image)
    expected[..., 2:, :27] = image[..., :18, 3:]
    assert torch.allclose(out, expected, atol=1e-5)


def test_half_pixel_shift_is_bilinear_mean():
    image = torch.rand(1, 1, 8, 8)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 0.5
    out = warp(image, flow)
    expected = 0.5 * (image[..., :-1] + image[..., 1:])
    assert torch.allclose(out[..., :-1], expected, atol=1e-5)


def test_flow_broadcasts_over_batch():
    image = torch.rand(3, 1, 10, 12)
    flow = torch.full((1, 2, 10, 12), 1.0)
    out = warp(image, flow)
    assert out.shape == image.shape
    assert torch.allclose(out[:, :, :-1, :-1], image[:, :, 1:, 1:], atol=1e-5)


def test_gradcheck_image_and_flow_float64():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 2, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    # Fractional flows away from integer kinks of the bilinear interpolation.
    flow = (0.3 + 0.4 * torch.rand(1, 2, 5, 6, dtype=torch.float64, generator=generator))
    flow = (flow * torch.where(torch.rand(1, 2, 5, 6, generator=generator) > 0.5, 1.0, -1.0))
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(warp, (image, flow), eps=1e-6, atol=1e-5)


def test_resize_flow_scales_values():
    flow = torch.ones(1, 2, 9, 17)
    flow[:, 1] = 2.0
    resized = resize_flow(flow, (33, 65))
    assert resized.shape == (1, 2, 33, 65)
    assert torch.allclose(resized[:, 0], torch.full((1, 33, 65), 64 / 16))
    assert torch.allclose(resized[:, 1], torch.full((1, 33, 65), 2.0 * 32 / 8))


def test_resized_affine_flow_stays_consistent():
    # A flow that is an affine function of the pixel position on the small grid must be the
    # same physical displacement on the big grid (pixel centres at integer coordinates).
    small = identity_grid(9, 13) * 0.1
    big = resize_flow(small, (17, 25))
    expected = identity_grid(17, 25) * 0.1
    assert torch.allclose(big, expected, atol=1e-5)


def test_identity_grid_layout():
    grid = identity_grid(3, 4)
    assert grid.shape == (1, 2, 3, 4)
    assert grid[0, 0, 2, 3] == 3 and grid[0, 1, 2, 3] == 2


@pytest.mark.parametrize('image_shape, flow_shape', [
    ((1, 1, 8, 8), (1, 3, 8, 8)),
    ((1, 1, 8, 8), (1, 2, 8, 9)),
    ((2, 1, 8, 8), (3, 2, 8, 8)),
    ((1, 8, 8), (1, 2, 8, 8)),
])
def test_bad_shapes_raise_value_error_with_shapes(image_shape, flow_shape):
    with pytest.raises(ValueError, match=r'\('):
        warp(torch.zeros(image_shape), torch.zeros(flow_shape))


def test_bad_resize_size_raises():
    with pytest.raises(ValueError, match='size'):
        resize_flow(torch.zeros(1, 2, 4, 4), (1, 4))
