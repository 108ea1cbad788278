"""The pieces learn: a short run on tiny synthetic data improves registration and detection.

Synthetic set (drawn fresh every step, seeded): a smooth random texture seen with different
intensity mappings by the two modalities (visible ``0.1 + 0.6 t``, infrared ``0.6 - 0.4 t``)
and a square "warm target" (bright in IR, lighter in the visible image) whose box is the
label. The IR image is deformed by :func:`random_deformation`; the network is trained with the
full :class:`TarFuseLoss` (fusion, registration, consistency, complementary, detection) by the
trainer's own step (:func:`tarfuse_ros.training.steps.train_step`).
"""

from tarfuse_ros.core.deform import DeformConfig, random_deformation
from tarfuse_ros.core.losses import LossWeights, TarFuseLoss
from tarfuse_ros.core.model import build_model, TarFuseConfig, warp
from tarfuse_ros.training.steps import loss_batch, train_step
import torch
import torch.nn.functional as F

SIZE = 64
STEPS = 200
BATCH = 8
DEFORM = DeformConfig(rotation_deg=5.0, translation=0.06, scale=(0.95, 1.05),
                      elastic_sigma_px=8.0, elastic_alpha_px=2.0)
# A narrow network: the architecture of the default one, small widths.
CONFIG = TarFuseConfig(feature_channels=8, registration_downsample=1, cseb_channels=16,
                       pyramid_channels=(16, 24, 32), estimator_channels=(24, 16, 16),
                       reconstruction_channels=(8, 8), neck_stem_channels=(8, 16),
                       detect_channels=(16, 24, 32), reg_max=4, num_classes=1,
                       class_names=('target',))


def _scenes(count, generator):
    texture = 0
    for cells, weight in ((4, 0.5), (8, 0.35), (16, 0.15)):
        coarse = torch.rand(count, 1, cells, cells, generator=generator)
        texture = texture + weight * F.interpolate(coarse, size=(SIZE, SIZE), mode='bicubic',
                                                   align_corners=True)
    texture = texture.clamp(0, 1)
    vi = 0.1 + 0.6 * texture
    ir = 0.6 - 0.4 * texture
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing='ij')
    boxes = []
    for index in range(count):
        side = 10 + int(torch.randint(0, 9, (1,), generator=generator))
        x0 = int(torch.randint(2, SIZE - side - 2, (1,), generator=generator))
        y0 = int(torch.randint(2, SIZE - side - 2, (1,), generator=generator))
        inside = (xs >= x0) & (xs < x0 + side) & (ys >= y0) & (ys < y0 + side)
        ir[index, 0][inside] = 0.95
        vi[index, 0][inside] = 0.75
        boxes.append([(x0 + side / 2) / SIZE, (y0 + side / 2) / SIZE, side / SIZE, side / SIZE])
    return ir, vi, torch.tensor(boxes)


def _batch(count, generator):
    """Return a batch as the trainer's loader makes it: the aligned IR and its deformation."""
    ir, vi, boxes = _scenes(count, generator)
    applied, inverse = random_deformation(count, SIZE, SIZE, DEFORM, generator=generator)
    return {'ir': ir, 'deform_applied': applied, 'flow_gt': inverse, 'vi': vi,
            'batch_idx': torch.arange(count, dtype=torch.float32), 'cls': torch.zeros(count, 1),
            'bboxes': boxes, 'has_labels': torch.ones(count, dtype=torch.bool)}


def _evaluate(model, criterion, batch):
    model.eval()
    with torch.no_grad():
        out = model(warp(batch['ir'], batch['deform_applied']), batch['vi'],
                    ir_aligned=batch['ir'])
        _, parts = criterion(out, loss_batch(batch, batch['flow_gt']))
    model.train()
    epe = (out['flow'] - batch['flow_gt']).norm(dim=1).mean().item()
    return epe, parts['detection'].item()


def test_training_reduces_registration_epe_and_detection_loss():
    torch.manual_seed(0)
    held_out = _batch(16, torch.Generator().manual_seed(99))
    model = build_model(CONFIG)
    criterion = TarFuseLoss(model, LossWeights(reg=2.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=4e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=4e-3, total_steps=STEPS,
                                                   pct_start=0.15)
    baseline_epe = held_out['flow_gt'].norm(dim=1).mean().item()  # zero flow
    initial_epe, initial_det = _evaluate(model, criterion, held_out)
    # The untrained flow is the identity (up to the float32 affine fit of a zero flow).
    assert abs(initial_epe - baseline_epe) < 1e-3

    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        _, stepped = train_step(model, criterion, optimiser, _batch(BATCH, generator))
        assert stepped
        schedule.step()

    final_epe, final_det = _evaluate(model, criterion, held_out)
    print(f'EPE {baseline_epe:.3f} px (zero flow) -> {final_epe:.3f} px; '
          f'detection loss {initial_det:.3f} -> {final_det:.3f}')
    # Zero flow scores 1.0 of the baseline; this recipe's training seeds 0 / 1 / 2 reached
    # 0.575 / 0.600 / 0.441 (session 47): 0.75 asks for learning without resting on one seed's
    # luck (0.6 failed seed 1, and could fail seed 0 on CPU kernels that add in another order).
    assert final_epe < 0.75 * baseline_epe, (baseline_epe, final_epe)
    assert final_det < 0.5 * initial_det, (initial_det, final_det)


def test_detection_learns_on_enlarged_features_and_finds_targets_enlarged_at_inference():
    """train.detect_scale_range's path: the neck trained on enlarged features, run enlarged.

    Every batch's fused features are enlarged by 1.5 before the neck (as the trainer's
    ``detect_scale``); at inference ``detect_min_long_side`` 96 enlarges the 64 px frames'
    features by the same 1.5, and the boxes, scaled back, must land on the targets.
    """
    from dataclasses import replace
    from tarfuse_ros.core.metrics import box_iou
    torch.manual_seed(0)
    model = build_model(CONFIG)
    criterion = TarFuseLoss(model, LossWeights(reg=2.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=4e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        batch = dict(_batch(BATCH, generator), detect_scale=1.5)
        parts, stepped = train_step(model, criterion, optimiser, batch)
        assert stepped and torch.isfinite(parts['detection'])
    model.config = replace(model.config, detect_min_long_side=96)
    held_out = _batch(16, torch.Generator().manual_seed(98))
    deformed = warp(held_out['ir'], held_out['deform_applied'])
    raw = model.predict_raw(deformed, held_out['vi'])
    assert raw['det'].shape[2] == sum((96 // s) ** 2 for s in (8, 16, 32))  # enlarged
    best = raw['det'][:, 4].argmax(dim=1)
    hits = 0
    for index in range(16):
        cx, cy, w, h = raw['det'][index, :4, best[index]].tolist()
        tx, ty, tw, th = (held_out['bboxes'][index] * SIZE).tolist()
        iou = box_iou([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]],
                      [[tx - tw / 2, ty - th / 2, tx + tw / 2, ty + th / 2]])[0, 0]
        hits += int(iou >= 0.5)
    print(f'{hits} of 16 targets found')
    assert hits >= 12, hits  # the top box finds the target in the frame's own pixels
