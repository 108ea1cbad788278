"""Tests of the training losses: zero (or minimal) where they should be, positive otherwise."""

import math

import pytest
from tarfuse_ros.core.losses import (box_mask, complementary_loss, consistency_loss,
                                     DetectionLoss, fusion_loss, gradient_loss, intensity_loss,
                                     LossWeights, qabf_loss, registration_loss,
                                     sobel_magnitude, ssim_loss, TarFuseLoss,
                                     target_intensity_loss)
from tarfuse_ros.core.metrics import qabf, ssim
from tarfuse_ros.core.model import build_model, TarFuseConfig
import torch

H, W = 64, 64


def _images(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 1, H, W, generator=generator) for _ in range(3)]


@pytest.fixture(scope='module')
def small_model():
    torch.manual_seed(0)
    return build_model(TarFuseConfig(msrb_channels=(8, 8, 8), detect_channels=(16, 16, 16),
                                     reg_max=8))


def _targets():
    # Image 0 has two boxes, image 1 one box; normalised cx, cy, w, h.
    return {
        'batch_idx': torch.tensor([0.0, 0.0, 1.0]),
        'cls': torch.tensor([[0.0], [2.0], [1.0]]),
        'bboxes': torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2],
                                [0.5, 0.5, 0.4, 0.4]]),
    }


def test_sobel_of_a_ramp():
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 6, 8)
    magnitude = sobel_magnitude(ramp)
    assert torch.allclose(magnitude[..., 1:-1], torch.full((1, 1, 6, 6), 8.0))
    assert sobel_magnitude(torch.ones(2, 3, 5, 5)).abs().max() == 0


def test_fusion_loss_zero_for_identical_inputs_and_positive_otherwise():
    ir, vi, other = _images()
    assert fusion_loss(ir, ir, ir).item() == 0
    # With a black visible image the ideal fused image is the IR itself.
    assert fusion_loss(ir, ir, torch.zeros_like(ir)).item() == pytest.approx(0.0, abs=1e-7)
    assert fusion_loss(other, ir, vi).item() > 0.1
    flat = torch.full_like(ir, 0.5)
    assert gradient_loss(flat, ir, vi) > 0 and intensity_loss(flat, ir, vi) > 0
    total = fusion_loss(flat, ir, vi, beta=2.0)
    expected = intensity_loss(flat, ir, vi) + 2.0 * gradient_loss(flat, ir, vi)
    assert torch.allclose(total, expected)


def test_consistency_loss():
    a, b, _ = _images()
    assert consistency_loss(a, a).item() == 0
    assert consistency_loss(a, a + 0.25).item() == pytest.approx(0.25, rel=1e-5)
    assert consistency_loss(a, b) > 0


def test_complementary_loss_range():
    a, b, _ = _images(seed=3)
    assert complementary_loss(a, a).item() == pytest.approx(1.0, abs=1e-4)
    assert complementary_loss(a, 1 - a).item() == pytest.approx(1.0, abs=1e-4)
    # Independent noise: about 1 / (H * W).
    assert complementary_loss(a, b).item() < 0.01
    # Orthogonal patterns (full periods of sine and cosine) are exactly uncorrelated.
    x = torch.arange(W, dtype=torch.float64) * (2 * math.pi / W)
    sine = torch.sin(x).expand(1, 1, H, W)
    cosine = torch.cos(x).expand(1, 1, H, W)
    assert complementary_loss(sine, cosine).item() < 1e-10
    # Constant channels give 0, not NaN, and a finite gradient.
    constant = torch.ones(1, 2, H, W, requires_grad=True)
    value = complementary_loss(constant, torch.rand(1, 2, H, W))
    value.backward()
    assert value.item() == 0 and torch.isfinite(constant.grad).all()


def test_registration_loss_in_pixels():
    flow_gt = torch.randn(2, 2, H, W)
    assert registration_loss(flow_gt, flow_gt).item() == 0
    assert registration_loss(flow_gt + 1.5, flow_gt).item() == pytest.approx(1.5, rel=1e-5)
    mask = torch.zeros(2, 1, H, W)
    mask[..., :10, :] = 1
    shifted = flow_gt.clone()
    shifted[..., 10:, :] += 100  # outside the mask: ignored
    assert registration_loss(shifted, flow_gt, mask).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('fn', [consistency_loss, complementary_loss, registration_loss])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match='differ'):
        fn(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 9))


def test_detection_loss_finite_positive_and_backpropagates(small_model):
    small_model.train()
    ir, vi, _ = _images()
    out = small_model(ir, vi)
    loss, items = DetectionLoss(small_model.detect)(out['det'], _targets())
    assert torch.isfinite(loss) and loss.item() > 0
    assert items.shape == (3,) and (items > 0).all()
    assert torch.allclose(loss.detach(), items.sum())
    loss.backward()
    assert small_model.neck.levels[0][0][0].weight.grad.abs().sum() > 0
    small_model.zero_grad()


def test_detection_loss_skips_unlabelled_images(small_model):
    small_model.train()
    ir, vi, _ = _images(batch=3, seed=5)
    criterion = DetectionLoss(small_model.detect)
    with torch.no_grad():
        out = small_model(ir, vi)
        # Image 1 has no labels: it must not change the loss of images 0 and 2.
        targets = _targets()
        targets['batch_idx'] = torch.tensor([0.0, 0.0, 2.0])
        targets['has_labels'] = torch.tensor([True, False, True])
        loss, _ = criterion(out['det'], targets)
        sub = {'boxes': out['det']['boxes'][[0, 2]], 'scores': out['det']['scores'][[0, 2]],
               'feats': [f[[0, 2]] for f in out['det']['feats']]}
        alone, _ = criterion(sub, _targets())
    assert torch.allclose(loss, alone, rtol=1e-5)
    # Treating image 1 as labelled background changes the loss.
    targets['has_labels'] = torch.tensor([True, True, True])
    with torch.no_grad():
        as_background, _ = criterion(out['det'], targets)
    assert not torch.allclose(as_background, loss)


def test_detection_loss_zero_without_labels(small_model):
    small_model.train()
    ir, vi, _ = _images()
    out = small_model(ir, vi)
    targets = {'batch_idx': torch.zeros(0), 'cls': torch.zeros(0, 1), 'bboxes': torch.zeros(0, 4),
               'has_labels': torch.tensor([False, False])}
    loss, items = DetectionLoss(small_model.detect)(out['det'], targets)
    assert loss.item() == 0 and items.abs().sum() == 0
    loss.backward()  # still part of the graph


def test_detection_loss_bad_targets(small_model):
    small_model.train()
    ir, vi, _ = _images()
    out = small_model(ir, vi)
    targets = _targets()
    targets['batch_idx'] = torch.tensor([0.0, 0.0, 5.0])
    with pytest.raises(ValueError, match='batch_idx'):
        DetectionLoss(small_model.detect)(out['det'], targets)
    with pytest.raises(ValueError, match='Detect output'):
        DetectionLoss(small_model.detect)(torch.zeros(2, 7, 10), _targets())


def test_total_loss_parts_and_weights(small_model):
    small_model.train()
    ir, vi, _ = _images()
    flow_gt = torch.randn(2, 2, H, W)
    batch = {'ir_aligned': ir, 'vi': vi, 'flow_gt': flow_gt,
             'has_labels': torch.tensor([True, True]), **_targets()}
    out = small_model(ir, vi, ir_aligned=ir)
    weights = LossWeights()
    total, parts = TarFuseLoss(small_model, weights)(out, batch)
    expected = (parts['fusion'] + weights.reg * parts['registration']
                + weights.reg * weights.reg_levels * parts['registration_levels']
                + weights.consistency * parts['consistency']
                + weights.complementary * parts['complementary']
                + weights.det * parts['detection'])
    assert torch.allclose(total.detach(), expected, rtol=1e-5)
    for name, value in parts.items():
        assert torch.isfinite(value), name
    # Untrained flow is zero, so the registration loss is the mean |flow_gt|.
    assert parts['registration'].item() == pytest.approx(flow_gt.abs().mean().item(), rel=1e-5)
    total.backward()
    # Switching the complementary term off removes it from the total but still reports it.
    off = LossWeights.from_dict({'complementary': 0.0})
    total_off, parts_off = TarFuseLoss(small_model, off)(out, batch)
    assert torch.allclose(total_off.detach(), expected - 5.0 * parts['complementary'],
                          rtol=1e-5)
    assert parts_off['complementary'] > 0


def test_loss_weights_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match='unknown LossWeights keys'):
        LossWeights.from_dict({'regist': 1})
    assert LossWeights.from_dict({'reg': 3}).reg == 3.0


def test_box_mask_marks_the_box_pixels():
    mask = box_mask((2, 1, 10, 20), [0, 1, 1],
                    [[0.25, 0.5, 0.2, 0.4], [0.5, 0.5, 0.01, 0.01], [0.9, 0.1, 0.1, 0.2]])
    assert mask.shape == (2, 1, 10, 20)
    # Image 0: x in [3, 7] px, y in [3, 7] px -> pixel centres 3.5..6.5 -> 3 x 4 ... exactly
    # columns 3..6 and rows 3..6 (centres 3.5, 4.5, 5.5, 6.5).
    assert mask[0, 0].sum().item() == 16
    assert mask[0, 0, 3:7, 3:7].min().item() == 1.0
    # Image 1: a sub-pixel box marks the pixel holding its centre (x 10, y 5), plus the
    # 2 x 2 box at the top right (x 17..19, y 0..2 -> columns 17, 18, rows 0, 1).
    assert mask[1, 0, 5, 10].item() == 1.0
    assert mask[1, 0, 0:2, 17:19].min().item() == 1.0
    assert mask[1, 0].sum().item() == 5
    with pytest.raises(ValueError, match='batch index 2'):
        box_mask((2, 1, 10, 20), [2], [[0.5, 0.5, 0.1, 0.1]])


def test_target_intensity_loss_weighs_only_the_targets():
    ir = torch.zeros(1, 1, 32, 32)
    ir[..., 10:14, 10:14] = 0.9          # a hot target
    vi = torch.full((1, 1, 32, 32), 0.4)  # a brighter background, dark where the target is
    mask = box_mask(ir.shape, [0], [[12 / 32, 12 / 32, 4 / 32, 4 / 32]])
    follows_visible = vi.clone()
    keeps_target = torch.maximum(ir, vi)
    # Following the visible image costs little over the frame but everything on the target.
    assert intensity_loss(follows_visible, ir, vi).item() < 0.01
    assert target_intensity_loss(follows_visible, ir, vi, mask).item() == pytest.approx(0.5)
    assert target_intensity_loss(keeps_target, ir, vi, mask).item() == 0.0
    empty = target_intensity_loss(follows_visible, ir, vi, torch.zeros_like(mask))
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match='mask must be'):
        target_intensity_loss(vi, ir, vi, torch.zeros(1, 1, 16, 16))


def test_total_loss_target_term(small_model):
    small_model.train()
    ir, vi, _ = _images()
    batch = {'ir_aligned': ir, 'vi': vi, 'has_labels': torch.tensor([True, False]),
             **_targets()}
    out = small_model(ir, vi, ir_aligned=ir)
    _, parts = TarFuseLoss(small_model, LossWeights())(out, batch)
    assert parts['target'].item() == 0.0  # off by default (the paper)
    weights = LossWeights.from_dict({'target': 4.0})
    total, parts_on = TarFuseLoss(small_model, weights)(out, batch)
    # Only image 0 is labelled: its two boxes, not image 1's.
    mask = box_mask(ir.shape, [0, 0], _targets()['bboxes'][:2])
    expected = target_intensity_loss(out['fused'].detach(), ir, vi, mask)
    assert parts_on['target'].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts_on['target'] > 0
    assert total.item() == pytest.approx(parts_on['total'].item())
    assert (total - parts['total']).item() == pytest.approx(4.0 * expected.item(), rel=1e-4)


def test_ssim_loss_is_one_minus_the_fusion_metric():
    generator = torch.Generator().manual_seed(3)
    ir = torch.rand(1, 1, 48, 64, generator=generator)
    vi = (0.5 * ir + 0.5 * torch.rand(1, 1, 48, 64, generator=generator)).clamp(0, 1)
    average = 0.5 * (ir + vi)
    noise = torch.rand(1, 1, 48, 64, generator=generator)
    # The same figure as the eval's SSIM (mean of SSIM with each source, valid windows).
    for fused in (average, noise):
        expected = 1.0 - ssim(fused[0, 0].numpy(), ir[0, 0].numpy(), vi[0, 0].numpy())
        assert ssim_loss(fused, ir, vi).item() == pytest.approx(expected, abs=1e-5)
    assert ssim_loss(ir, ir, ir).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(average, ir, vi) < ssim_loss(noise, ir, vi)
    with pytest.raises(ValueError, match='at least 11x11'):
        ssim_loss(ir[..., :8, :8], ir[..., :8, :8], vi[..., :8, :8])


@pytest.mark.parametrize('name, loss_fn', [('ssim', ssim_loss), ('qabf', qabf_loss)])
def test_total_loss_optional_image_terms(small_model, name, loss_fn):
    small_model.train()
    ir, vi, _ = _images()
    batch = {'ir_aligned': ir, 'vi': vi}
    out = small_model(ir, vi, ir_aligned=ir)
    _, parts = TarFuseLoss(small_model, LossWeights())(out, batch)
    assert parts[name].item() == 0.0  # off by default (the paper has no such term)
    total, parts_on = TarFuseLoss(small_model, LossWeights.from_dict({name: 3.0}))(out, batch)
    expected = loss_fn(out['fused'].detach(), ir, vi).item()
    assert parts_on[name].item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 < expected < 2.0
    assert (total - parts['total']).item() == pytest.approx(3.0 * expected, rel=1e-4)


def test_qabf_loss_is_one_minus_the_metric():
    ir, vi, _ = _images(batch=1)
    generator = torch.Generator().manual_seed(3)
    average = 0.5 * (ir + vi)
    noise = torch.rand(1, 1, *ir.shape[2:], generator=generator)
    for fused in (average, torch.maximum(ir, vi), noise, ir):
        expected = 1.0 - qabf(fused[0, 0].numpy(), ir[0, 0].numpy(), vi[0, 0].numpy())
        assert qabf_loss(fused, ir, vi).item() == pytest.approx(expected, abs=2e-3)
    assert qabf_loss(average, ir, vi) < qabf_loss(noise, ir, vi)
    # Differentiable, finite on flat regions, and a step along its gradient raises Q^AB/F.
    fused = average.clone().requires_grad_(True)
    loss = qabf_loss(fused, ir, vi)
    loss.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    flat = torch.full_like(ir, 0.5).requires_grad_(True)
    qabf_loss(flat, ir, vi).backward()
    assert torch.isfinite(flat.grad).all()
    stepped = (average - 0.5 * fused.grad / fused.grad.abs().max()).clamp(0, 1)
    assert qabf_loss(stepped, ir, vi) < loss.detach()
    with pytest.raises(ValueError, match='one-channel'):
        qabf_loss(ir.repeat(1, 2, 1, 1), ir.repeat(1, 2, 1, 1), vi.repeat(1, 2, 1, 1))
    # Under autocast (training on a GPU runs the loss in bfloat16 autocast) it stays float32.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for fused in (average, torch.full_like(ir, 0.5)):
            fused = fused.clone().requires_grad_(True)
            low = qabf_loss(fused.bfloat16(), ir.bfloat16(), vi.bfloat16())
            assert low.dtype == torch.float32
            low.backward()
            assert torch.isfinite(fused.grad).all()
            assert low.item() == pytest.approx(
                qabf_loss(fused.detach().bfloat16().float(), ir.bfloat16().float(),
                          vi.bfloat16().float()).item(), abs=1e-5)


def test_detection_gains_come_from_the_loss_weights(small_model):
    """loss.det_*_gain weight the YOLO terms: doubling the box gain doubles that term only."""
    small_model.train()
    ir, vi, _ = _images()
    batch = {'ir_aligned': ir, 'vi': vi, 'flow_gt': torch.zeros(2, 2, H, W),
             'has_labels': torch.tensor([True, True]), **_targets()}
    out = small_model(ir, vi, ir_aligned=ir)
    _, default = TarFuseLoss(small_model)(out, batch)
    doubled = LossWeights.from_dict({'det_box_gain': 15.0})
    _, parts = TarFuseLoss(small_model, doubled)(out, batch)
    assert parts['det_box'] == pytest.approx(2 * default['det_box'].item(), rel=1e-5)
    assert parts['det_cls'] == pytest.approx(default['det_cls'].item(), rel=1e-5)
    assert parts['det_dfl'] == pytest.approx(default['det_dfl'].item(), rel=1e-5)
    assert default['det_box'] > 0
    with pytest.raises(ValueError, match='det_cls_gain must be a finite number'):
        LossWeights.from_dict({'det_cls_gain': 'abc'})
