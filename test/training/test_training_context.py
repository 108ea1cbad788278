"""Deformed crops cut from a deformed context: scene content at their borders, exact targets.

A crop deformed on its own shows the deformation in its empty borders (zeros pulled in from
outside the crop), a cue that real misaligned pairs do not have; the network learnt to read it
(the first matching run got worse than no registration on real test fields). Drawing the field
for the context and cutting out the centre removes the cue and keeps the target exact.
"""

from pathlib import Path

from tarfuse_ros.core import data
from tarfuse_ros.core.deform import DeformConfig
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.training import steps
import torch

DATASETS = Path(__file__).resolve().parents[1] / 'data' / 'datasets'
SHIFTS = DeformConfig(prob=1.0, rotation_deg=8.0, translation=0.0, scale=(0.9, 1.1),
                      translation_px=24.0, elastic_alpha_px=2.0)


def _batch(context):
    dataset = data.PairedDataset([(DATASETS / 'roadscene', 'train')], crop_size=96,
                                 seed=2, context=context)
    return data.collate_pairs([dataset[i] for i in range(len(dataset))])


def test_deformed_crop_is_the_centre_of_the_deformed_context():
    batch = _batch(context=48)
    out = steps.draw_deformation(batch, SHIFTS, torch.Generator().manual_seed(0))
    assert out['ir_deformed'].shape == batch['ir'].shape
    assert out['flow_gt'].shape == (len(batch['ir']), 2, 96, 96)
    # The target maps the deformed crop back onto the aligned crop wherever it samples inside.
    back = warp(out['ir_deformed'], out['flow_gt'])
    inside = warp(torch.ones_like(out['ir_deformed']), out['flow_gt']) > 0.999
    error = (back - batch['ir']).abs()[inside]
    assert inside.float().mean() > 0.5
    assert float(error.mean()) < 0.02
    # Same seed, same field: the crop deformed alone shares the target but not the content.
    alone = dict(batch)
    alone.pop('ir_context')
    plain = steps.draw_deformation(alone, SHIFTS, torch.Generator().manual_seed(0))
    assert plain['ir_deformed'].shape == out['ir_deformed'].shape


def test_context_removes_the_empty_borders_of_deformed_crops():
    batch = _batch(context=48)
    alone = {k: v for k, v in batch.items() if k != 'ir_context'}
    framed = steps.draw_deformation(batch, SHIFTS, torch.Generator().manual_seed(1))
    plain = steps.draw_deformation(alone, SHIFTS, torch.Generator().manual_seed(1))
    empty_framed = float((framed['ir_deformed'] == 0).float().mean())
    empty_plain = float((plain['ir_deformed'] == 0).float().mean())
    assert empty_plain > 0.05
    assert empty_framed < 0.25 * empty_plain
    # The network's input is the deformed crop whatever the batch carries.
    assert torch.equal(steps.deformed_ir(framed), framed['ir_deformed'])
