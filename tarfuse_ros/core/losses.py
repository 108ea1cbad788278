"""Training losses of TarFuse (our reading of the paper; see ``docs/METHOD.md``).

Shapes and units:

- images (``fused``, ``ir``, ``vi``): ``(B, 1, H, W)`` (any ``C`` works) in ``[0, 1]``;
  image losses are mean absolute errors in those intensity units;
- features: ``(B, C, H, W)``, arbitrary units;
- flows: ``(B, 2, H, W)`` in pixels; the registration loss is the mean absolute error per flow
  component in pixels (so it is much larger than an image L1 for a few pixels of error:
  weigh it accordingly);
- detection targets (ultralytics layout): ``batch_idx`` (N,), ``cls`` (N, 1), ``bboxes``
  (N, 4) normalised ``cx, cy, w, h``; ``has_labels`` (B,) bool marks images whose labels are
  known (images without labels are skipped, not treated as background).

Total: ``L = fusion * L_fus + reg * L_reg + consistency * L_mc + complementary * L_ci
+ det * L_det + target * L_tgt + ssim * L_ssim + qabf * L_qabf`` with ``L_fus = L_int + beta *
L_grad`` (``L_tgt``, the target-aware intensity term, ``L_ssim``, a structural term, and
``L_qabf``, an edge-transfer term, are ours: :func:`target_intensity_loss`, :func:`ssim_loss`,
:func:`qabf_loss`).
"""

from dataclasses import asdict, dataclass
import math

import kornia
from tarfuse_ros.core.configs import known_fields
from tarfuse_ros.core.metrics import QABF_CONSTANTS
from tarfuse_ros.core.model.yolo import detection_criterion
import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    'DetectionLoss', 'LossWeights', 'TarFuseLoss', 'complementary_loss', 'consistency_loss',
    'box_mask', 'fusion_loss', 'gradient_loss', 'intensity_loss', 'qabf_loss',
    'registration_loss', 'sobel_magnitude', 'ssim_loss', 'target_intensity_loss',
]


def _check_same(name_a, a, name_b, b):
    for name, value in ((name_a, a), (name_b, b)):
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(f'{name} must be a (B, C, H, W) tensor, got {shape}')
    if a.shape != b.shape:
        raise ValueError(f'{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} differ')


def _sobel_xy(image, padding=1):
    """Return the Sobel derivatives ``(B, 2, H', W')`` of ``(B, 1, H, W)``.

    ``padding`` pixels of zeros around the image (1: same size; 0: the image is padded already).
    """
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                            dtype=image.dtype, device=image.device)
    return F.conv2d(image, torch.stack((kernel_x, kernel_x.t())).unsqueeze(1), padding=padding)


def sobel_magnitude(image):
    """Return ``|Sobel_x| + |Sobel_y|`` per channel, ``(B, C, H, W) -> (B, C, H, W)``.

    The L1 magnitude (no square root, so the gradient is defined at flat regions); borders are
    replicated.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError(f'image must be (B, C, H, W), got {getattr(image, "shape", image)}')
    channels = image.shape[1]
    padded = F.pad(image.reshape(-1, 1, *image.shape[2:]), (1, 1, 1, 1), mode='replicate')
    grads = _sobel_xy(padded, padding=0)  # (B*C, 2, H, W)
    return grads.abs().sum(dim=1).view(-1, channels, *image.shape[2:])


def intensity_loss(fused, ir, vi):
    """Return ``mean |fused - max(ir, vi)|`` (scalar); all ``(B, C, H, W)`` in [0, 1]."""
    _check_same('fused', fused, 'ir', ir)
    _check_same('ir', ir, 'vi', vi)
    return (fused - torch.maximum(ir, vi)).abs().mean()


def gradient_loss(fused, ir, vi):
    """Return ``mean | |S(fused)| - max(|S(ir)|, |S(vi)|) |`` with ``S`` = Sobel (scalar)."""
    _check_same('fused', fused, 'ir', ir)
    _check_same('ir', ir, 'vi', vi)
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vi))
    return (sobel_magnitude(fused) - target).abs().mean()


def box_mask(shape, batch_idx, bboxes, device=None):
    """Return a ``(B, 1, H, W)`` float mask, 1 inside any labelled box of each image, else 0.

    Args:
        shape: ``(B, C, H, W)`` of the images the boxes belong to.
        batch_idx: ``(N,)`` image index of each box (ultralytics' layout).
        bboxes: ``(N, 4)`` normalised ``cx, cy, w, h`` (fractions of the width / height).
        device: the mask's device (default: ``bboxes``').

    Pixel ``(y, x)`` (centre ``x + 0.5``) is inside a box when its centre lies within the box's
    edges; a box smaller than a pixel still marks the pixel holding its centre.
    """
    batch, _, height, width = shape
    bboxes = torch.as_tensor(bboxes, device=device).reshape(-1, 4).float()
    batch_idx = torch.as_tensor(batch_idx, device=bboxes.device).reshape(-1).long()
    mask = torch.zeros(batch, 1, height, width, device=bboxes.device)
    if bboxes.shape[0] != batch_idx.shape[0]:
        raise ValueError(f'{batch_idx.shape[0]} batch indices for {bboxes.shape[0]} boxes')
    xs = torch.arange(width, device=bboxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=bboxes.device, dtype=torch.float32) + 0.5
    for index, (cx, cy, w, h) in zip(batch_idx.tolist(), bboxes.tolist()):
        if not 0 <= index < batch:
            raise ValueError(f'batch index {index} outside [0, {batch})')
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        inside_x = (xs >= x0) & (xs <= x1)
        inside_y = (ys >= y0) & (ys <= y1)
        if not inside_x.any():  # thinner than a pixel: the pixel holding the centre
            inside_x[min(max(int(cx * width), 0), width - 1)] = True
        if not inside_y.any():
            inside_y[min(max(int(cy * height), 0), height - 1)] = True
        mask[index, 0] = torch.maximum(mask[index, 0],
                                       (inside_y[:, None] & inside_x[None, :]).float())
    return mask


def target_intensity_loss(fused, ir, vi, mask):
    """Return ``mean |fused - max(ir, vi)|`` over the pixels of ``mask`` (scalar, ours).

    The intensity term of :func:`intensity_loss` restricted to the labelled targets, so that a
    person that covers 0.5 % of a night frame weighs as much as the whole frame: without it the
    fused image follows the (larger, brighter) visible background and hot targets vanish
    (measured: fused / IR target contrast 0.08 at night). The same idea as TarDAL's target mask
    (Liu et al., CVPR 2022), with the paper's ``max(ir, vi)`` target instead of the IR alone.

    Args:
        fused, ir, vi: ``(B, C, H, W)`` in [0, 1].
        mask: ``(B, 1, H, W)`` in [0, 1] (:func:`box_mask`); zero everywhere gives a zero loss
            that stays in the graph.
    """
    _check_same('fused', fused, 'ir', ir)
    _check_same('fused', fused, 'vi', vi)
    if mask.dim() != 4 or mask.shape[0] != fused.shape[0] or mask.shape[1] != 1 \
            or mask.shape[2:] != fused.shape[2:]:
        raise ValueError(f'mask must be (B, 1, H, W) like fused, got {tuple(mask.shape)}')
    error = (fused - torch.maximum(ir, vi)).abs() * mask
    return error.sum() / (mask.sum() * fused.shape[1]).clamp_min(1.0)


def fusion_loss(fused, ir, vi, beta=2.0):
    """Return ``L_int + beta * L_grad`` (scalar), using the *aligned* IR.

    Zero when ``fused`` equals ``max(ir, vi)`` and its Sobel magnitude equals the larger of the
    two sources' (e.g. ``fused = ir = vi``).
    """
    return intensity_loss(fused, ir, vi) + beta * gradient_loss(fused, ir, vi)


def ssim_loss(fused, ir, vi, window=11):
    """Return ``1 - (SSIM(fused, ir) + SSIM(fused, vi)) / 2`` (scalar in [0, 2], ours).

    SSIM of Wang et al. (2004) with an 11x11 Gaussian window of sigma 1.5 and constants for
    images in [0, 1] (``kornia.metrics.ssim``), averaged over the positions where the window
    lies wholly inside the image (as ``core.metrics.ssim_pair``, which reports the mean of the
    two SSIMs as the fusion metric). Structural losses of this kind are common in IR-visible
    fusion training (e.g. U2Fusion, Xu et al., TPAMI 2022); the paper's loss has none.

    Args:
        fused, ir, vi: ``(B, C, H, W)`` in [0, 1], ``H`` and ``W`` at least ``window``; use the
            aligned IR.
    """
    _check_same('fused', fused, 'ir', ir)
    _check_same('ir', ir, 'vi', vi)
    if min(fused.shape[2:]) < window:
        raise ValueError(f'ssim_loss needs images of at least {window}x{window}, got '
                         f'{tuple(fused.shape[2:])}')
    with_ir = kornia.metrics.ssim(fused, ir, window, max_val=1.0, padding='valid').mean()
    with_vi = kornia.metrics.ssim(fused, vi, window, max_val=1.0, padding='valid').mean()
    return 1.0 - 0.5 * (with_ir + with_vi)


def _edge_preservation(source, fused, eps):
    """Return Q^xF ``(B, 1, H, W)`` and the source's edge strength (:func:`qabf_loss`)."""
    C = QABF_CONSTANTS
    g_src = torch.sqrt((source * source).sum(dim=1, keepdim=True) + eps)
    g_f = torch.sqrt((fused * fused).sum(dim=1, keepdim=True) + eps)
    strength = torch.minimum(g_src, g_f) / torch.maximum(g_src, g_f)
    # The angle between the two edge lines, in [0, pi / 2]: the metric's |atan(sy / sx)|
    # difference taken modulo pi, written with the dot product (no division by sx).
    cosine = (source * fused).sum(dim=1, keepdim=True).abs() / (g_src * g_f)
    angle = torch.acos(cosine.clamp(0.0, 1.0 - 1e-6))
    orient = 1.0 - angle / (math.pi / 2)
    q_g = C['Tg'] / (1.0 + torch.exp(C['kg'] * (strength - C['Dg'])))
    q_a = C['Ta'] / (1.0 + torch.exp(C['ka'] * (orient - C['Da'])))
    return q_g * q_a, g_src


def qabf_loss(fused, ir, vi, eps=1e-8):
    """Return ``1 - Q^AB/F`` of the fused image (scalar in about [0.025, 1], ours).

    The Xydeas-Petrovic edge-transfer figure (Electronics Letters 36(4), 2000) that
    ``core.metrics.qabf`` reports, written to be differentiable: Sobel derivatives (zeros
    beyond the frame), the strength ratio ``min(g_x, g_F) / max(g_x, g_F)`` and the angle
    between the edge lines, through the same sigmoids and constants
    (``metrics.QABF_CONSTANTS``), weighted by the sources' edge strengths; the mean over the
    batch of ``1 - Q``. ``eps`` (in squared intensity units) keeps the strengths and the
    angle finite on flat regions. Scale-free in the intensities (ratios and angles), so
    images in [0, 1] give the metric's figure for the same images in grey levels, up to
    ``eps``.

    Args:
        fused, ir, vi: ``(B, 1, H, W)`` in [0, 1]; use the aligned IR.

    Raises:
        ValueError: not 4-D tensors of one shape, or more than one channel.

    Computed in float32 whatever the inputs' dtype or an enclosing autocast (a float32 scalar).
    """
    _check_same('fused', fused, 'ir', ir)
    _check_same('ir', ir, 'vi', vi)
    if fused.shape[1] != 1:
        raise ValueError(f'qabf_loss takes one-channel images, got {fused.shape[1]} channels')
    # In float32 even under autocast: eps and the strength ratios of flat regions underflow in
    # float16 (0 / 0), and bfloat16 blurs the ratios the sigmoids are steep on.
    with torch.autocast(fused.device.type, enabled=False):
        fused, ir, vi = fused.float(), ir.float(), vi.float()
        d_f, d_a, d_b = _sobel_xy(fused), _sobel_xy(ir), _sobel_xy(vi)
        q_af, g_a = _edge_preservation(d_a, d_f, eps)
        q_bf, g_b = _edge_preservation(d_b, d_f, eps)
        weighted = (q_af * g_a + q_bf * g_b).flatten(1).sum(dim=1)
        quality = weighted / (g_a + g_b).flatten(1).sum(dim=1)
        return 1.0 - quality.mean()


def consistency_loss(c_ir, c_vi):
    """Return ``mean |c_ir - c_vi|`` (scalar): common features of aligned IR and VI agree."""
    _check_same('c_ir', c_ir, 'c_vi', c_vi)
    return (c_ir - c_vi).abs().mean()


def complementary_loss(s_ir, s_vi, eps=1e-6):
    """Return the mean over samples and channels of ``pearson(s_ir[b, k], s_vi[b, k])**2``.

    Our definition (the paper gives none): specific features should be uncorrelated, so each
    carries what the other modality lacks. In ``[0, 1]``: 0 for uncorrelated maps (and for
    constant channels), 1 for identical or negated ones. Use spatially aligned features (the
    aligned IR's, or the registered ones).
    """
    _check_same('s_ir', s_ir, 's_vi', s_vi)
    a = s_ir.flatten(2)
    b = s_vi.flatten(2)
    a = a - a.mean(dim=2, keepdim=True)
    b = b - b.mean(dim=2, keepdim=True)
    cov = (a * b).mean(dim=2)
    std = (a.pow(2).mean(dim=2) * b.pow(2).mean(dim=2) + eps * eps).sqrt()
    return (cov / (std + eps)).pow(2).mean()


def registration_loss(flow, flow_gt, mask=None):
    """Return ``mean |flow - flow_gt|`` in pixels (scalar); flows ``(B, 2, H, W)``.

    ``mask`` (optional, ``(B, 1, H, W)`` weights in [0, 1]) restricts the mean to where it is
    positive.
    """
    _check_same('flow', flow, 'flow_gt', flow_gt)
    if flow.shape[1] != 2:
        raise ValueError(f'flows must be (B, 2, H, W), got {tuple(flow.shape)}')
    error = (flow - flow_gt).abs()
    if mask is None:
        return error.mean()
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != flow.shape[2:]:
        raise ValueError(f'mask must be (B, 1, H, W) like the flow, got {tuple(mask.shape)}')
    weight = mask.expand_as(error)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)


class DetectionLoss:
    """YOLO training loss (ultralytics' ``v8DetectionLoss`` through ``model.yolo``).

    ``__call__(det_out, targets) -> (loss, items)``:

    - ``det_out``: the ``Detect`` output, the train-mode dict or the eval-mode ``(y, dict)``;
    - ``targets``: ``batch_idx`` (N,), ``cls`` (N, 1), ``bboxes`` (N, 4) normalised cxcywh,
      optional ``has_labels`` (B,) bool: images without labels are removed from the batch
      before the loss, so they count neither as background nor in the normalisation;
    - ``loss``: scalar, ``box * 7.5 + cls * 0.5 + dfl * 1.5`` (the gains) averaged over the
      labelled images (ultralytics returns it multiplied by the batch size; we divide by the
      number of labelled images so it does not grow with the batch); zero (still in the graph)
      when no image is labelled;
    - ``items``: detached ``(3,)`` tensor ``box, cls, dfl`` on the same scale.
    """

    def __init__(self, detect, box=7.5, cls=0.5, dfl=1.5):
        self.detect = detect
        self.gains = (float(box), float(cls), float(dfl))
        self._criterion = None
        self._device = None

    def _get_criterion(self, device):
        if self._criterion is None or self._device != device:
            self._criterion = detection_criterion(self.detect, *self.gains)
            self._device = device
        return self._criterion

    def __call__(self, det_out, targets):
        preds = det_out[1] if isinstance(det_out, (tuple, list)) else det_out
        if not isinstance(preds, dict) or not {'boxes', 'scores', 'feats'} <= set(preds):
            raise ValueError('det_out must be the Detect output (a dict with boxes, scores, '
                             f'feats, or an eval-mode tuple), got {type(det_out).__name__}')
        boxes = preds['boxes']
        device, batch = boxes.device, boxes.shape[0]
        batch_idx = torch.as_tensor(targets['batch_idx'], device=device).reshape(-1).long()
        cls = torch.as_tensor(targets['cls'], device=device).reshape(-1, 1).float()
        bboxes = torch.as_tensor(targets['bboxes'], device=device).reshape(-1, 4).float()
        if not batch_idx.shape[0] == cls.shape[0] == bboxes.shape[0]:
            raise ValueError(f'targets disagree: batch_idx {tuple(batch_idx.shape)}, '
                             f'cls {tuple(cls.shape)}, bboxes {tuple(bboxes.shape)}')
        if batch_idx.numel() and (batch_idx.min() < 0 or batch_idx.max() >= batch):
            raise ValueError(f'batch_idx must lie in [0, {batch}), got '
                             f'{batch_idx.min().item()}..{batch_idx.max().item()}')
        has_labels = targets.get('has_labels')
        if has_labels is None:
            has_labels = torch.ones(batch, dtype=torch.bool, device=device)
        has_labels = torch.as_tensor(has_labels, device=device).reshape(-1).bool()
        if has_labels.shape[0] != batch:
            raise ValueError(
                f'has_labels has {has_labels.shape[0]} entries for a batch of {batch}')
        kept = int(has_labels.sum())
        if kept == 0:
            zero = (boxes.sum() + preds['scores'].sum()) * 0.0
            return zero, torch.zeros(3, device=device)
        if kept < batch:
            keep = torch.nonzero(has_labels).flatten()
            preds = {'boxes': boxes[keep], 'scores': preds['scores'][keep],
                     'feats': [f[keep] for f in preds['feats']]}
            new_index = torch.cumsum(has_labels.long(), 0) - 1
            selected = has_labels[batch_idx]
            batch_idx = new_index[batch_idx[selected]]
            cls, bboxes = cls[selected], bboxes[selected]
        criterion = self._get_criterion(device)
        loss, _ = criterion(preds, {'batch_idx': batch_idx.float(), 'cls': cls, 'bboxes': bboxes})
        loss = loss / kept
        return loss.sum(), loss.detach()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss (paper: 10, 5, 5 and beta = 2; ``fusion`` is ours)."""

    # Registration L1 (pixels).
    reg: float = 10.0
    # Deep supervision (ours, as in PWC-Net): weight, relative to ``reg``, of the mean L1 of the
    # registration's intermediate flows (``outputs['flow_levels']``; none for the paper MSRB).
    reg_levels: float = 0.5
    # Modality consistency of the common features.
    consistency: float = 5.0
    # Complementary information of the specific features (0 switches it off).
    complementary: float = 5.0
    # Weight of the gradient term inside the fusion loss.
    beta: float = 2.0
    # Detection loss (0 switches it off).
    det: float = 1.0
    # Fusion loss as a whole.
    fusion: float = 1.0
    # Ours: target-aware intensity term (:func:`target_intensity_loss`) over the labelled boxes
    # of labelled images (0, the paper, switches it off).
    target: float = 0.0
    # Ours: structural term 1 - mean SSIM of the fused image with both sources
    # (:func:`ssim_loss`; 0, the paper, switches it off and skips its computation).
    ssim: float = 0.0
    # Ours: edge-transfer term 1 - Q^AB/F of the fused image (:func:`qabf_loss`; 0 switches it
    # off and skips its computation).
    qabf: float = 0.0
    # Gains of the YOLO loss's box (CIoU), class (BCE) and DFL terms inside ``det``
    # (:class:`DetectionLoss`; ultralytics' defaults, tuned on COCO).
    det_box_gain: float = 7.5
    det_cls_gain: float = 0.5
    det_dfl_gain: float = 1.5

    @classmethod
    def from_dict(cls, values):
        """Build from a plain dict; unknown keys and weights that are not numbers >= 0 raise.

        Strings that read as a number are taken (YAML reads 5e-4, without a dot, as a string).
        """
        values = known_fields(cls, values)
        weights = {}
        for key, value in values.items():
            try:
                weights[key] = float(value)
            except (TypeError, ValueError, OverflowError):
                weights[key] = math.nan
            if isinstance(value, bool) or not math.isfinite(weights[key]):
                raise ValueError(f'{key} must be a finite number, got {value!r}')
            if weights[key] < 0:
                # A negative weight would maximise its term (drive the network away from it).
                raise ValueError(f'{key} must be >= 0 (0 switches the term off), got {value!r}')
        return cls(**weights)

    def to_dict(self):
        return asdict(self)


class TarFuseLoss(nn.Module):
    """The total training loss.

    ``TarFuseLoss(model, weights)``: ``model`` is the :class:`TarFuse` (or its ``Detect``; ``None``
    disables detection). ``forward(outputs, batch) -> (total, parts)``:

    - ``outputs``: the dict of ``TarFuse.forward(ir_deformed, vi, ir_aligned=ir_aligned)``;
    - ``batch``: ``ir_aligned`` (B, 1, H, W), ``vi`` (B, 1, H, W), ``flow_gt`` (B, 2, H, W) px,
      optionally ``flow_mask`` (B, 1, H, W), and the detection targets ``batch_idx``, ``cls``,
      ``bboxes``, ``has_labels``;
    - ``parts``: detached scalars ``total``, ``fusion``, ``intensity``, ``gradient``,
      ``registration``, ``registration_levels``, ``consistency``, ``complementary``,
      ``target``, ``ssim``, ``qabf``, ``detection``, ``det_box``, ``det_cls``, ``det_dfl``
      (unweighted values; terms with weight 0 are still reported, ``ssim`` and ``qabf`` as 0
      when their weight is 0).

    Consistency and complementary use the aligned IR's features when present (else the
    registered ones); the fusion loss uses the aligned IR.
    """

    def __init__(self, model=None, weights=None):
        super().__init__()
        if isinstance(weights, dict):
            weights = LossWeights.from_dict(weights)
        self.weights = w = weights if weights is not None else LossWeights()
        detect = getattr(model, 'detect', model)
        self.detection = None if detect is None else DetectionLoss(
            detect, w.det_box_gain, w.det_cls_gain, w.det_dfl_gain)

    def forward(self, outputs, batch):
        w = self.weights
        features = outputs['features']
        ir, vi, fused = batch['ir_aligned'], batch['vi'], outputs['fused']
        parts = {}
        intensity = intensity_loss(fused, ir, vi)
        gradient = gradient_loss(fused, ir, vi)
        fusion = intensity + w.beta * gradient
        total = w.fusion * fusion
        parts.update(fusion=fusion, intensity=intensity, gradient=gradient)

        flow_gt = batch.get('flow_gt')
        if flow_gt is not None:
            mask = batch.get('flow_mask')
            registration = registration_loss(outputs['flow'], flow_gt, mask)
            levels = outputs.get('flow_levels') or []
            level_loss = torch.zeros((), device=fused.device)
            if levels:
                level_loss = sum(registration_loss(level, flow_gt, mask)
                                 for level in levels) / len(levels)
            total = total + w.reg * (registration + w.reg_levels * level_loss)
        else:
            registration = torch.zeros((), device=fused.device)
            level_loss = torch.zeros((), device=fused.device)
        parts['registration'] = registration
        parts['registration_levels'] = level_loss

        c_ir = features.get('c_ir_aligned', features.get('c_ir_registered'))
        s_ir = features.get('s_ir_aligned', features.get('s_ir_registered'))
        with torch.set_grad_enabled(torch.is_grad_enabled() and w.consistency != 0):
            consistency = consistency_loss(c_ir, features['c_vi'])
        with torch.set_grad_enabled(torch.is_grad_enabled() and w.complementary != 0):
            complementary = complementary_loss(s_ir, features['s_vi'])
        total = total + w.consistency * consistency + w.complementary * complementary
        parts.update(consistency=consistency, complementary=complementary)

        target = torch.zeros((), device=fused.device)
        if w.target != 0 and 'bboxes' in batch:
            mask = box_mask(fused.shape, batch['batch_idx'], batch['bboxes'], fused.device)
            has_labels = batch.get('has_labels')
            if has_labels is not None:
                labelled = torch.as_tensor(has_labels, device=fused.device).reshape(-1)
                mask = mask * labelled.float().view(-1, 1, 1, 1)
            target = target_intensity_loss(fused, ir, vi, mask)
            total = total + w.target * target
        parts['target'] = target

        structure = torch.zeros((), device=fused.device)
        if w.ssim != 0:
            structure = ssim_loss(fused, ir, vi)
            total = total + w.ssim * structure
        parts['ssim'] = structure

        edges = torch.zeros((), device=fused.device)
        if w.qabf != 0:
            edges = qabf_loss(fused, ir, vi)
            total = total + w.qabf * edges
        parts['qabf'] = edges

        det_items = torch.zeros(3, device=fused.device)
        detection = torch.zeros((), device=fused.device)
        if self.detection is not None and w.det != 0 and 'bboxes' in batch:
            detection, det_items = self.detection(outputs['det'], batch)
            total = total + w.det * detection
        parts.update(detection=detection, det_box=det_items[0], det_cls=det_items[1],
                     det_dfl=det_items[2])
        parts['total'] = total
        return total, {name: value.detach() for name, value in parts.items()}
