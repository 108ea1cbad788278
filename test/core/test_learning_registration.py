"""The matching registration learns large shifts that the paper's MSRB does not.

Both architectures (same small widths elsewhere) are trained for the same few steps with the
registration loss on a synthetic texture whose two modalities differ in contrast (the IR is an
inverted, compressed copy), under shifts of up to 24 px on 64 px images (plus rotation and
scale). The matching network compares features explicitly (cost volumes) and solves the bulk
with its global stage.
"""

from tarfuse_ros.core.deform import DeformConfig, random_deformation
from tarfuse_ros.core.losses import LossWeights, TarFuseLoss
from tarfuse_ros.core.model import build_model, TarFuseConfig, warp
import torch
import torch.nn.functional as F

SIZE = 64
STEPS = 120
BATCH = 8
# Large displacements for a 64 px image: up to 24 px of translation plus rotation and scale.
DEFORM = DeformConfig(rotation_deg=8.0, translation=0.0, translation_px=24.0, scale=(0.9, 1.1),
                      elastic_alpha_px=0.0)
COMMON = {'feature_channels': 8, 'registration_downsample': 1, 'cseb_channels': 16,
          'reconstruction_channels': (8, 8), 'neck_stem_channels': (8, 8),
          'detect_channels': (8, 8, 8), 'reg_max': 2, 'num_classes': 1,
          'class_names': ('target',)}
MATCH = TarFuseConfig(pyramid_channels=(16, 24, 32), estimator_channels=(24, 16, 16), **COMMON)
PAPER = TarFuseConfig(registration='paper', msrb_channels=(16, 24, 32, 32), **COMMON)


def _batch(count, generator):
    texture = 0
    for cells, weight in ((4, 0.5), (8, 0.35), (16, 0.15)):
        coarse = torch.rand(count, 1, cells, cells, generator=generator)
        texture = texture + weight * F.interpolate(coarse, size=(SIZE, SIZE), mode='bicubic',
                                                   align_corners=True)
    texture = texture.clamp(0, 1)
    vi, ir = 0.1 + 0.6 * texture, 0.6 - 0.4 * texture
    applied, inverse = random_deformation(count, SIZE, SIZE, DEFORM, generator=generator)
    return {'ir': warp(ir, applied), 'ir_aligned': ir, 'vi': vi, 'flow_gt': inverse}


def _train_and_measure(config):
    torch.manual_seed(0)
    model = build_model(config)
    criterion = TarFuseLoss(None, LossWeights(reg=1.0, det=0.0, consistency=1.0,
                                              complementary=0.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = _batch(BATCH, generator)
        out = model(batch['ir'], batch['vi'], ir_aligned=batch['ir_aligned'])
        loss, _ = criterion(out, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    held_out = _batch(16, torch.Generator().manual_seed(99))
    flow = model.predict_raw(held_out['ir'], held_out['vi'])['flow']
    epe = (flow - held_out['flow_gt']).norm(dim=1).mean().item()
    return epe, held_out['flow_gt'].norm(dim=1).mean().item()


def test_matching_registration_beats_the_paper_msrb_on_large_shifts():
    match_epe, zero_epe = _train_and_measure(MATCH)
    paper_epe, _ = _train_and_measure(PAPER)
    print(f'EPE zero flow {zero_epe:.2f} px, paper MSRB {paper_epe:.2f} px, '
          f'matching {match_epe:.2f} px')
    # Measured on this 2-core VM: zero flow 18.78 px, paper MSRB 10.96 px, matching 6.33 px.
    assert match_epe < 0.5 * zero_epe, (match_epe, zero_epe)
    assert match_epe < 0.75 * paper_epe, (match_epe, paper_epe)
