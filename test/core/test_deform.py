"""Tests of the synthetic deformations: exact inverses, reproducibility, ranges, boxes."""

import math

import pytest
from tarfuse_ros.core.deform import (compose_flows, DeformConfig, invert_flow,
                                     random_deformation, warp_boxes)
from tarfuse_ros.core.model.warp import identity_grid, warp
import torch
import torch.nn.functional as F


def _smooth_images(batch, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, height // 8, width // 8, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode='bicubic', align_corners=True)


def _inside(inverse_px):
    """Return where p + g(p) lies inside the image (the inverse is defined by data there)."""
    height, width = inverse_px.shape[2:]
    points = identity_grid(height, width, dtype=inverse_px.dtype) + inverse_px
    return ((points[:, 0] >= 0) & (points[:, 0] <= width - 1)
            & (points[:, 1] >= 0) & (points[:, 1] <= height - 1))


def test_inverse_residual_below_a_thousandth_pixel():
    generator = torch.Generator().manual_seed(3)
    applied, inverse = random_deformation(4, 96, 128, generator=generator)
    # g(p) + a(p + g(p)) = 0 wherever p + g(p) is inside the image.
    residual = compose_flows(applied.double(), inverse.double())
    inside = _inside(inverse.double())
    assert inside.float().mean() > 0.8
    worst = residual.norm(dim=1)[inside].max().item()
    assert worst < 1e-3, f'inverse residual {worst:.2e} px'
    # The deformation is substantial, so this is not a trivially small field.
    assert applied.norm(dim=1).mean() > 1.0


def test_warping_back_with_inverse_recovers_image_in_interior():
    generator = torch.Generator().manual_seed(4)
    images = _smooth_images(4, 96, 128)
    applied, inverse = random_deformation(4, 96, 128, generator=generator)
    recovered = warp(warp(images, applied), inverse)
    valid = warp(warp(torch.ones_like(images), applied), inverse) > 0.999
    exact = (recovered - images).abs()[valid].mean().item()
    # Negating the applied field is the naive "inverse" the exact one must beat clearly.
    naive = (warp(warp(images, applied), -applied) - images).abs()[valid].mean().item()
    assert exact < 0.01, f'mean residual {exact:.4f}'
    assert exact < 0.5 * naive, f'exact {exact:.4f} vs negation {naive:.4f}'


def test_invert_flow_of_a_smooth_field():
    grid = identity_grid(64, 64, dtype=torch.float64)
    flow = torch.cat((2.0 * torch.sin(grid[:, 1:] / 9.0), 1.5 * torch.cos(grid[:, :1] / 7.0)), 1)
    inverse = invert_flow(flow, iterations=20)
    residual = compose_flows(flow, inverse)
    inside = _inside(inverse)
    assert residual.norm(dim=1)[inside].max() < 1e-3
    assert (inverse + flow).abs().max() > 0.1  # the inverse is not the negation


def test_seeded_draws_are_reproducible():
    first = random_deformation(2, 64, 64, generator=torch.Generator().manual_seed(7))
    second = random_deformation(2, 64, 64, generator=torch.Generator().manual_seed(7))
    other = random_deformation(2, 64, 64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.allclose(first[0], other[0])


def test_zero_config_gives_zero_field():
    applied, inverse = random_deformation(3, 64, 64, DeformConfig.zero(),
                                          generator=torch.Generator().manual_seed(0))
    assert applied.shape == inverse.shape == (3, 2, 64, 64)
    assert applied.abs().max() == 0 and inverse.abs().max() == 0


def test_prob_zero_gives_zero_field():
    applied, inverse = random_deformation(2, 64, 64, DeformConfig(prob=0.0))
    assert applied.abs().max() == 0 and inverse.abs().max() == 0


def test_pure_translation_is_constant_and_inverse_is_its_negation():
    config = DeformConfig(rotation_deg=0.0, translation=0.1, scale=(1.0, 1.0),
                          elastic_alpha_px=0.0)
    applied, inverse = random_deformation(5, 64, 96, config,
                                          generator=torch.Generator().manual_seed(1))
    dx, dy = applied[:, 0], applied[:, 1]
    assert torch.allclose(dx, dx[:, :1, :1].expand_as(dx), atol=1e-4)
    assert (dx.abs() <= 0.1 * 96 + 1e-4).all() and (dy.abs() <= 0.1 * 64 + 1e-4).all()
    assert torch.allclose(inverse, -applied, atol=1e-4)


def test_pure_rotation_matches_the_analytic_field():
    config = DeformConfig(rotation_deg=20.0, translation=0.0, scale=(1.0, 1.0),
                          elastic_alpha_px=0.0)
    applied, _ = random_deformation(1, 64, 64, config,
                                    generator=torch.Generator().manual_seed(2))
    grid = identity_grid(64, 64) - 31.5
    # Recover the angle from one corner and check every pixel against the rotation.
    corner = grid[0, :, 0, 0] + applied[0, :, 0, 0]
    angle = math.atan2(corner[1], corner[0]) - math.atan2(grid[0, 1, 0, 0], grid[0, 0, 0, 0])
    assert 0 < abs(angle) <= math.radians(20.0) + 1e-4
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = torch.stack((cos * grid[:, 0] - sin * grid[:, 1],
                           sin * grid[:, 0] + cos * grid[:, 1]), 1)
    assert torch.allclose(applied, rotated - grid, atol=1e-3)


def test_elastic_peak_is_bounded_by_alpha():
    config = DeformConfig(rotation_deg=0.0, translation=0.0, scale=(1.0, 1.0),
                          elastic_sigma_px=6.0, elastic_alpha_px=3.0)
    applied, _ = random_deformation(6, 64, 64, config,
                                    generator=torch.Generator().manual_seed(5))
    peaks = applied.norm(dim=1).amax(dim=(1, 2))
    assert (peaks <= 3.0 + 1e-4).all() and peaks.max() > 0.5
    # Smooth: neighbouring displacements differ by far less than a pixel.
    assert (applied[..., 1:] - applied[..., :-1]).abs().max() < 0.5


def test_warp_boxes_translation_moves_boxes_exactly():
    inverse = torch.zeros(2, 40, 60)
    inverse[0] = -5.0  # content moves 5 px left and 3 px down
    inverse[1] = 3.0
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0]])
    moved = warp_boxes(boxes, inverse)
    assert torch.allclose(moved, torch.tensor([[5.0, 13.0, 15.0, 33.0]]), atol=1e-4)


def test_warp_boxes_follow_a_bright_square():
    image = torch.zeros(1, 1, 96, 96)
    image[..., 40:56, 30:50] = 1.0  # box x1=30, y1=40, x2=50, y2=56 in pixel edges
    config = DeformConfig(rotation_deg=8.0, translation=0.08, elastic_sigma_px=8.0,
                          elastic_alpha_px=2.0)
    applied, inverse = random_deformation(1, 96, 96, config,
                                          generator=torch.Generator().manual_seed(11))
    deformed = warp(image, applied)
    ys, xs = torch.nonzero(deformed[0, 0] > 0.5, as_tuple=True)
    seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    moved = warp_boxes(torch.tensor([[30.0, 40.0, 50.0, 56.0]]), inverse)[0]
    assert (moved - seen).abs().max() < 2.0, f'moved {moved.tolist()} seen {seen.tolist()}'
    assert (moved - torch.tensor([30.0, 40.0, 50.0, 56.0])).abs().max() > 1.0


def test_warp_boxes_empty_and_bad_input():
    assert warp_boxes(torch.zeros(0, 4), torch.zeros(2, 8, 8)).shape == (0, 4)
    with pytest.raises(ValueError, match=r'\(N, 4\)'):
        warp_boxes(torch.zeros(3, 5), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r'\(2, H, W\)'):
        warp_boxes(torch.zeros(1, 4), torch.zeros(3, 8, 8))


def test_config_from_dict_round_trip_and_validation():
    config = DeformConfig.from_dict({'rotation_deg': 5, 'scale': [0.9, 1.1]})
    assert config.scale == (0.9, 1.1)
    assert DeformConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='unknown DeformConfig keys'):
        DeformConfig.from_dict({'rotation': 5})
    with pytest.raises(ValueError, match='prob'):
        DeformConfig(prob=1.5)
    with pytest.raises(ValueError, match='scale'):
        DeformConfig(scale=(1.1, 0.9))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match='height'):
        random_deformation(1, 1, 64)
    with pytest.raises(ValueError, match=r'\(B, 2, H, W\)'):
        invert_flow(torch.zeros(1, 3, 8, 8))
