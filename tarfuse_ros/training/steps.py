"""One optimisation step and one validation pass, as plain functions.

A training batch holds the ALIGNED IR ``ir`` (B, 1, H, W), the visible luma ``vi``, the
detection targets (``batch_idx``, ``cls``, ``bboxes``, ``has_labels``) and the batch's random
deformation: ``ir_deformed`` (the network's IR input) and ``flow_gt`` (the field that maps it
back onto the aligned IR, the registration target, (B, 2, H, W) pixels), or ``deform_applied``
(the field applied to the IR, ``ir_deformed = warp(ir, applied)``) with ``flow_gt`` its exact
inverse. The loader workers draw the deformation, or :func:`draw_deformation` does it on the
device. With ``ir_context`` (the aligned IR with a margin around the crop) the context is
deformed and its centre cut out, so the deformed crop shows scene content where a crop
deformed alone would show empty borders. The boxes live in the visible frame and never move.
"""

from tarfuse_ros.core.model.warp import warp
import torch
import torch.nn.functional as F

__all__ = ['Accumulator', 'autocast', 'deformed_ir', 'draw_deformation', 'loss_batch',
           'to_device', 'train_step', 'validate']


class Accumulator:
    """Sum detached loss parts on the device; read them once per epoch (one sync)."""

    def __init__(self):
        self.sums = {}
        self.count = 0

    def add(self, parts):
        """Add one step's parts (a dict of scalar tensors or numbers)."""
        for key, value in parts.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(value)
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self):
        """Return the mean of every part as Python floats."""
        return {k: float(v.item()) / max(self.count, 1) for k, v in self.sums.items()}


def autocast(device, enabled):
    """Return bfloat16 autocast on CUDA when ``enabled``; a disabled autocast otherwise."""
    if enabled and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def to_device(batch, device):
    """Move every tensor of a collated batch to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def draw_deformation(batch, deform_cfg, generator):
    """Return ``batch`` with ``ir_deformed`` / ``flow_gt`` drawn on its device, if missing.

    The field is drawn from ``generator`` (CPU) for the size of ``ir_context`` when the batch
    has one (then the deformed context's centre, of the ``ir`` size, is kept, and so is the
    centre of the target flow), else for the ``ir`` size.
    """
    if 'flow_gt' in batch:
        return batch
    from tarfuse_ros.core.deform import random_deformation
    source = batch.get('ir_context', batch['ir'])
    size, _, height, width = source.shape
    applied, inverse = random_deformation(size, height, width, deform_cfg,
                                          generator=generator, device=source.device)
    deformed = warp(source, applied)
    crop_h, crop_w = batch['ir'].shape[2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return dict(batch, ir_deformed=deformed[:, :, top:top + crop_h, left:left + crop_w],
                flow_gt=inverse[:, :, top:top + crop_h, left:left + crop_w].contiguous())


def deformed_ir(batch):
    """Return the network's IR input of a batch with its deformation (module docstring)."""
    if 'ir_deformed' in batch:
        return batch['ir_deformed']
    return warp(batch['ir'], batch['deform_applied'])


def loss_batch(batch, flow_gt):
    """Return the ``TarFuseLoss`` batch: targets, the aligned IR and the flow target."""
    keys = ('vi', 'batch_idx', 'cls', 'bboxes', 'has_labels')
    out = {k: batch[k] for k in keys if k in batch}
    out['ir_aligned'] = batch['ir']
    out['flow_gt'] = flow_gt
    return out


def train_step(net, criterion, optimizer, batch, grad_clip=0.0, amp=False, params=None):
    """Run one optimisation step on a batch with its deformation (module docstring).

    Args:
        net: the network (a ``TarFuse``, possibly wrapped in DistributedDataParallel), in
            training mode, on the batch's device.
        criterion: ``TarFuseLoss``.
        optimizer: the optimizer of ``params``.
        batch: the batch (module docstring).
        grad_clip: global gradient-norm limit (0: none).
        amp: bfloat16 autocast (CUDA only).
        params: the parameters whose gradient norm is clipped (default: those of ``net`` that
            require gradients).

    Returns:
        ``(parts, stepped)``: the detached loss parts (``total`` included) and whether the
        optimizer stepped (a non-finite gradient norm skips the update).

    """
    if params is None:
        params = [p for p in net.parameters() if p.requires_grad]
    device = batch['ir'].device
    deformed = deformed_ir(batch)
    with autocast(device, amp):
        outputs = net(deformed, batch['vi'], ir_aligned=batch['ir'],
                      detect_scale=batch.get('detect_scale'))
        total, parts = criterion(outputs, loss_batch(batch, batch['flow_gt']))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float('inf'))
    # A non-finite gradient skips the update on every rank alike (grads are reduced).
    stepped = bool(torch.isfinite(norm))
    if stepped:
        optimizer.step()
    parts = dict(parts)
    parts['total'] = total.detach()
    return parts, stepped


def _to_multiple_of_32(batch):
    """Resize a batch's images to the nearest multiple of 32 (at least 32) when needed."""
    height, width = batch['ir'].shape[2:]
    size = (max(32, int(round(height / 32)) * 32), max(32, int(round(width / 32)) * 32))
    if size == (height, width):
        return batch
    batch = dict(batch)
    for key in ('ir', 'vi', 'vi_color'):
        if key in batch:
            batch[key] = F.interpolate(batch[key], size=size, mode='bilinear',
                                       align_corners=False).clamp_(0.0, 1.0)
    return batch


@torch.no_grad()
def validate(model, criterion, loader, deform_cfg, generator, amp=False):
    """Return mean validation figures: loss parts, EPE of the flow and of zero flow (px).

    Args:
        model: the ``TarFuse`` (its training / eval mode is restored afterwards).
        criterion: ``TarFuseLoss``.
        loader: validation batches; whole frames whose size is not a multiple of 32 are
            resized (bilinear) to the nearest multiple of 32 (normalised boxes are unchanged).
        deform_cfg: ``DeformConfig`` of the deformations.
        generator: CPU generator of the deformations (seed it the same way every time, so
            that validations are comparable).
        amp: bfloat16 autocast (CUDA only).

    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    acc = Accumulator()
    for batch in loader:
        batch = to_device(batch, device)
        batch = _to_multiple_of_32(batch)
        batch = draw_deformation(batch, deform_cfg, generator)
        deformed = deformed_ir(batch)
        flow_gt = batch['flow_gt']
        with autocast(device, amp):
            outputs = model(deformed, batch['vi'], ir_aligned=batch['ir'])
            _, parts = criterion(outputs, loss_batch(batch, flow_gt))
        flow = outputs['flow'].float()
        parts = dict(parts)
        parts['epe'] = torch.linalg.vector_norm(flow - flow_gt, dim=1).mean()
        parts['epe_zero_flow'] = torch.linalg.vector_norm(flow_gt, dim=1).mean()
        acc.add(parts)
    model.train(was_training)
    means = acc.means()
    if means.get('epe_zero_flow'):
        means['epe_reduction'] = 1.0 - means['epe'] / means['epe_zero_flow']
    return means
