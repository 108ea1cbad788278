"""Seeded random rigid + elastic deformations, their exact inverses, and moving boxes with them.

Conventions (see ``tarfuse_ros.core.model.warp``): flows are ``(B, 2, H, W)`` in pixels,
``warp(x, flow)(p) = x(p + flow(p))``. :func:`random_deformation` returns the *applied* field
``a`` (``deformed_ir = warp(ir, a)``) and its inverse ``g`` (``warp(deformed_ir, g) ~= ir``),
which is the registration ground truth. The inverse is computed by the fixed-point iteration
``g <- -warp(a, g)`` (``g(p) = -a(p + g(p))``), not by negation, on a grid extended by a margin so
that it is exact near the borders too.

Defaults follow ``docs/METHOD.md`` (peers' training ranges): rotation up to 10 degrees,
translation up to 5 % of the image size, scale 0.95..1.05, elastic noise U[-1, 1] smoothed by a
Gaussian of sigma 16 px with a kernel of about 6 sigma (kornia's default kernel truncates the
Gaussian and can fold the field), scaled to a peak displacement drawn from U(0, 4) px.
"""

from dataclasses import asdict, dataclass
import math
from typing import NamedTuple

from tarfuse_ros.core.configs import check_field_types, known_fields
from tarfuse_ros.core.model.warp import identity_grid, warp
import torch
import torch.nn.functional as F

__all__ = ['DeformConfig', 'compose_flows', 'invert_flow', 'random_deformation', 'warp_boxes']


@dataclass(frozen=True)
class DeformConfig:
    """Ranges of the random deformation (every value configurable; defaults: docs/METHOD.md)."""

    # Probability that a sample is deformed at all (otherwise both fields are zero).
    prob: float = 1.0
    # Rotation angle drawn from U(-rotation_deg, rotation_deg), degrees, about the image centre.
    rotation_deg: float = 10.0
    # Translation drawn from U(-translation, translation) as a fraction of the width / height.
    translation: float = 0.05
    # Isotropic scale drawn from U(scale[0], scale[1]).
    scale: tuple = (0.95, 1.05)
    # Extra translation drawn from U(-translation_px, translation_px) pixels per axis (added to
    # the relative one; pixels do not shrink with a training crop).
    translation_px: float = 0.0
    # Anisotropy: x and y scales are multiplied by exp(+-u / 2), u ~ U(-ln(1 + a), ln(1 + a))
    # (a thermal camera whose horizontal and vertical fields of view differ from the visible's).
    aspect: float = 0.0
    # Shear angle drawn from U(-shear_deg, shear_deg) degrees (x += tan(shear) * y).
    shear_deg: float = 0.0
    # Perspective: the homography's last row is (p_x / d, p_y / d, 1), p ~ U(-perspective,
    # perspective), d = half the image diagonal (so 0.05 changes the scale at a corner by ~5 %).
    perspective: float = 0.0
    # Standard deviation of the Gaussian smoothing the elastic noise, pixels (0 disables).
    elastic_sigma_px: float = 16.0
    # When set (> elastic_sigma_px), the sigma of each batch is drawn from
    # U(elastic_sigma_px, elastic_sigma_max_px): elastic fields of several sizes.
    elastic_sigma_max_px: float = 0.0
    # Peak elastic displacement drawn from U(0, elastic_alpha_px), pixels (0 disables).
    elastic_alpha_px: float = 4.0
    # Half-width of the Gaussian kernel in sigmas (3 -> kernel of about 6 sigma + 1).
    elastic_kernel_sigmas: float = 3.0
    # Draw and smooth the elastic noise on a grid this many times coarser, then upsample it
    # bilinearly (the cost falls by about n^3; the field is smooth at sigma >> n anyway).
    elastic_downsample: int = 1
    # Fixed-point iterations of the inverse (each contracts the error by about |grad a|).
    inverse_iterations: int = 20

    def __post_init__(self):
        check_field_types(self)
        scale = self.scale
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in scale)):
            raise ValueError(f'scale must be (low, high) with 0 < low <= high, got {scale!r}')
        object.__setattr__(self, 'scale', tuple(float(v) for v in self.scale))
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {self.prob}')
        for name in ('rotation_deg', 'translation', 'elastic_sigma_px', 'elastic_alpha_px',
                     'translation_px', 'aspect', 'shear_deg', 'perspective',
                     'elastic_sigma_max_px'):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be a finite value >= 0, got {value}')
        if self.rotation_deg > 90:
            raise ValueError(f'rotation_deg must be <= 90, got {self.rotation_deg}')
        if self.translation >= 1:
            raise ValueError(
                f'translation is a fraction of the size (< 1), got {self.translation}')
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f'scale must be (low, high) with 0 < low <= high, got {self.scale}')
        if self.shear_deg >= 45 or self.perspective >= 0.25 or self.aspect >= 1:
            raise ValueError('need shear_deg < 45, perspective < 0.25 and aspect < 1, got '
                             f'{self.shear_deg}, {self.perspective}, {self.aspect}')
        if self.elastic_kernel_sigmas < 1:
            raise ValueError(
                f'elastic_kernel_sigmas must be >= 1, got {self.elastic_kernel_sigmas}')
        if int(self.elastic_downsample) < 1:
            raise ValueError(f'elastic_downsample must be >= 1, got {self.elastic_downsample}')
        if int(self.inverse_iterations) < 1:
            raise ValueError(f'inverse_iterations must be >= 1, got {self.inverse_iterations}')

    @classmethod
    def from_dict(cls, values):
        """Build from a plain dict (e.g. YAML); unknown keys raise ``ValueError``."""
        values = known_fields(cls, values)
        return cls(**values)

    def to_dict(self):
        """Return a plain dict (tuples as lists), the inverse of :meth:`from_dict`."""
        out = asdict(self)
        out['scale'] = list(self.scale)
        return out

    @classmethod
    def zero(cls):
        """Return a configuration that never deforms (identity fields)."""
        return cls(rotation_deg=0.0, translation=0.0, scale=(1.0, 1.0), elastic_alpha_px=0.0)


def compose_flows(first_px, second_px):
    """Return the single flow equal to warping with ``first_px`` and then with ``second_px``.

    ``warp(warp(x, first), second) = x(p + second(p) + first(p + second(p)))``, so the result is
    ``second + warp(first, second)`` (first sampled with border padding). Shapes
    ``(B, 2, H, W)``, pixels.
    """
    return second_px + warp(first_px, second_px, padding_mode='border')


def invert_flow(flow_px, iterations=20):
    """Return the inverse ``g`` of a smooth flow ``f``: ``warp(warp(x, f), g) ~= x``.

    Solves ``g(p) = -f(p + g(p))`` by the fixed-point iteration ``g <- -warp(f, g)`` (border
    padding), starting from ``g = -f``. It converges when ``|grad f| < 1`` (no folding); the
    error shrinks by about ``max |grad f|`` per iteration. Where ``p + g(p)`` leaves the image,
    ``f`` is extrapolated as constant; :func:`random_deformation` avoids that by inverting on an
    extended grid.

    Args:
        flow_px: ``(B, 2, H, W)`` flow in pixels.
        iterations: number of fixed-point iterations (>= 1).

    Returns:
        ``(B, 2, H, W)`` inverse flow in pixels.

    """
    if not isinstance(flow_px, torch.Tensor) or flow_px.dim() != 4 or flow_px.shape[1] != 2:
        shape = tuple(flow_px.shape) if isinstance(flow_px, torch.Tensor) else type(flow_px)
        raise ValueError(f'flow_px must have shape (B, 2, H, W), got {shape}')
    if int(iterations) < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    inverse = -flow_px
    for _ in range(int(iterations)):
        inverse = -warp(flow_px, inverse, padding_mode='border')
    return inverse


def _gaussian_kernel_1d(sigma, radius, dtype, device):
    taps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def _elastic_field(batch, height, width, sigma, kernel_sigmas, peaks, generator, device,
                   downsample=1):
    """Return a smooth random field ``(B, 2, H, W)`` whose peak magnitude per sample is ``peaks``.

    The noise is drawn on a grid larger by the kernel radius and smoothed without padding, so
    the field has the same statistics everywhere (no border effects). With ``downsample`` n > 1
    it is drawn on a grid n times coarser (sigma / n) and upsampled bilinearly to ``(H, W)``.
    """
    full_h, full_w = height, width
    if downsample > 1:
        sigma = sigma / downsample
        height, width = -(-height // downsample) + 1, -(-width // downsample) + 1
    radius = max(1, int(math.ceil(kernel_sigmas * sigma)))
    noise = torch.rand(batch * 2, 1, height + 2 * radius, width + 2 * radius,
                       generator=generator).to(device) * 2 - 1
    kernel = _gaussian_kernel_1d(sigma, radius, noise.dtype, noise.device)
    smooth = F.conv2d(noise, kernel.view(1, 1, 1, -1))
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1))
    field = smooth.view(batch, 2, height, width)
    if downsample > 1:
        field = F.interpolate(field, scale_factor=float(downsample), mode='bilinear',
                              align_corners=True)[:, :, :full_h, :full_w]
    peak = (field[:, 0] ** 2 + field[:, 1] ** 2).amax(dim=(1, 2)).sqrt().clamp_min(1e-12)
    return field * (peaks.to(field) / peak).view(batch, 1, 1, 1)


def _invert_extended(applied_ext, margin, height, width, iterations):
    """Invert a field known on a grid extended by ``margin``; return the inverse on the image.

    Same iteration as :func:`invert_flow`, but ``g`` lives only on the ``(H, W)`` image while
    ``a`` is sampled on the extended grid, so ``p + g(p)`` outside the image still finds ``a``.
    """
    ext_h, ext_w = applied_ext.shape[2:]
    base = identity_grid(height, width, device=applied_ext.device, dtype=applied_ext.dtype)
    base = base + margin
    scale = torch.tensor([2 / (ext_w - 1), 2 / (ext_h - 1)], device=base.device, dtype=base.dtype)
    scale = scale.view(1, 2, 1, 1)
    inverse = -applied_ext[:, :, margin:margin + height, margin:margin + width]
    for _ in range(int(iterations)):
        grid = ((base + inverse) * scale - 1).permute(0, 2, 3, 1)
        inverse = -F.grid_sample(applied_ext, grid, mode='bilinear', padding_mode='border',
                                 align_corners=True)
    return inverse


def _margin(config, height, width, elastic_px):
    """Return an upper bound (px, with slack) of the displacement on and near the image."""
    half_diag = 0.5 * math.hypot(width, height)
    growth = math.exp(0.5 * math.log1p(config.aspect)) * (1 + math.tan(
        math.radians(config.shear_deg)))
    linear = max(config.scale[1] * growth - 1, 1 - config.scale[0] / growth)
    linear += 2 * math.sin(math.radians(config.rotation_deg) / 2)
    linear += math.tan(math.radians(config.shear_deg))
    bound = half_diag * linear + config.translation * max(width, height) + config.translation_px
    # The perspective divides by 1 +- 2p near the image: up to ~2p/(1-2p) of the position more.
    bound += half_diag * config.scale[1] * growth * 2 * config.perspective / (
        1 - 2 * config.perspective)
    bound = bound * config.scale[1] * growth + elastic_px
    # p + g(p) lies up to ~bound further out, where the displacement is larger still.
    return int(math.ceil(1.5 * bound)) + 2


def random_deformation(batch, height, width, config=None, generator=None, device=None):
    """Draw ``batch`` random rigid + elastic deformations and their exact inverses.

    The applied field is ``a = e + (A - id)(p + e)``: first the elastic field ``e``, then the
    projective map ``A(x) = c + (M (x - c) + t) / (1 + q . (x - c))`` about the image centre
    ``c`` with ``M = s R S_shear diag(exp(u/2), exp(-u/2))`` (a similarity by default; shear,
    anisotropy ``u`` and perspective ``q`` when configured), composed exactly (``A`` is
    evaluated analytically at ``p + e(p)``). The inverse is computed by :func:`invert_flow` on
    a grid extended by the largest displacement, then cropped.

    Args:
        batch: number of fields.
        height, width: image size in pixels.
        config: :class:`DeformConfig` (defaults when ``None``).
        generator: optional ``torch.Generator`` (CPU) for reproducible draws.
        device: device to compute on and of the returned tensors (random numbers are always
            drawn on the CPU, so a seeded generator gives the same fields on every device).

    Returns:
        ``(applied_px, inverse_px)``, each ``(B, 2, H, W)`` float32 in pixels, with
        ``deformed = warp(image, applied_px)`` and ``warp(deformed, inverse_px) ~= image``.

    """
    config = config if config is not None else DeformConfig()
    if not isinstance(config, DeformConfig):
        raise ValueError(f'config must be a DeformConfig, got {type(config).__name__}')
    batch, height, width = int(batch), int(height), int(width)
    if batch < 1 or height < 2 or width < 2:
        raise ValueError(f'need batch >= 1 and height, width >= 2, got {(batch, height, width)}')
    dtype = torch.float32
    device = torch.device(device) if device is not None else torch.device('cpu')
    draw = _draw(config, batch, height, width, generator, device, dtype)
    elastic_on = config.elastic_sigma_px > 0 and config.elastic_alpha_px > 0

    # Margin: an upper bound of the displacement, so the inverse is exact up to the borders.
    margin = _margin(config, height, width, config.elastic_alpha_px if elastic_on else 0.0)
    ext_h, ext_w = height + 2 * margin, width + 2 * margin

    coords = identity_grid(ext_h, ext_w, device=device, dtype=dtype) - margin
    if elastic_on:
        elastic = _elastic_field(batch, ext_h, ext_w, draw.sigma, config.elastic_kernel_sigmas,
                                 draw.peaks, generator, device, int(config.elastic_downsample))
    else:
        elastic = torch.zeros(batch, 2, ext_h, ext_w, device=device, dtype=dtype)
    points = coords + elastic
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=device, dtype=dtype)
    rel = points - centre.view(1, 2, 1, 1)
    rigid = _projective_displacement(rel, draw, config.perspective > 0)
    applied = (elastic + rigid) * draw.active.view(-1, 1, 1, 1)

    rows, cols = slice(margin, margin + height), slice(margin, margin + width)
    inverse = _invert_extended(applied, margin, height, width, config.inverse_iterations)
    applied = applied[:, :, rows, cols]
    return applied.contiguous(), inverse.contiguous()


class _Draw(NamedTuple):
    """The random parameters of a batch of deformations (see :func:`random_deformation`)."""

    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    active: torch.Tensor
    peaks: torch.Tensor
    linear: torch.Tensor
    tilt: torch.Tensor
    sigma: float


def _draw(config, batch, height, width, generator, device, dtype):
    """Draw a batch's parameters from ``generator``, always in the same order."""
    def uniform(low, high, count=batch):
        draw = torch.rand(count, generator=generator, dtype=torch.float64)
        return (low + (high - low) * draw).to(device=device, dtype=dtype)

    angle = uniform(-config.rotation_deg, config.rotation_deg) * (math.pi / 180)
    scale = uniform(config.scale[0], config.scale[1])
    shift = torch.stack((uniform(-config.translation, config.translation) * width,
                         uniform(-config.translation, config.translation) * height), dim=1)
    active = (torch.rand(batch, generator=generator) < config.prob).to(device=device, dtype=dtype)
    peaks = uniform(0.0, config.elastic_alpha_px) * active
    # Draws added after the original ones (and only when configured), so that configurations
    # without them keep drawing exactly the fields they always drew for a given seed.
    extended = (config.translation_px, config.aspect, config.shear_deg, config.perspective,
                config.elastic_sigma_max_px)
    sigma = config.elastic_sigma_px
    linear = torch.zeros(batch, 2, 2, device=device, dtype=dtype)
    linear[:, 0, 0] = linear[:, 1, 1] = 1.0
    tilt = torch.zeros(batch, 2, device=device, dtype=dtype)
    if any(extended):
        shift = shift + torch.stack((uniform(-config.translation_px, config.translation_px),
                                     uniform(-config.translation_px, config.translation_px)), 1)
        log_aspect = math.log1p(config.aspect)
        stretch = torch.exp(0.5 * uniform(-log_aspect, log_aspect))
        shear = torch.tan(uniform(-config.shear_deg, config.shear_deg) * (math.pi / 180))
        linear[:, 0, 0] = stretch
        linear[:, 0, 1] = shear / stretch
        linear[:, 1, 1] = 1.0 / stretch
        half_diag = 0.5 * math.hypot(width, height)
        tilt = torch.stack((uniform(-config.perspective, config.perspective),
                            uniform(-config.perspective, config.perspective)), 1) / half_diag
        if config.elastic_sigma_max_px > config.elastic_sigma_px:
            sigma = float(uniform(config.elastic_sigma_px, config.elastic_sigma_max_px, 1))
    return _Draw(angle, scale, shift, active, peaks, linear, tilt, sigma)


def _projective_displacement(rel, draw, perspective):
    """Return ``A(c + rel) - (c + rel)`` for points ``rel`` (B, 2, H, W) relative to the centre.

    ``A(x) = c + (M (x - c) + t) / (1 + q . (x - c))`` with ``M = s R L`` (shear / anisotropy
    first, then rotation and scale); the perspective division only when ``perspective``.
    """
    linear = draw.linear
    lx = linear[:, 0, 0].view(-1, 1, 1) * rel[:, 0] + linear[:, 0, 1].view(-1, 1, 1) * rel[:, 1]
    ly = linear[:, 1, 0].view(-1, 1, 1) * rel[:, 0] + linear[:, 1, 1].view(-1, 1, 1) * rel[:, 1]
    cos, sin = torch.cos(draw.angle).view(-1, 1, 1), torch.sin(draw.angle).view(-1, 1, 1)
    s = draw.scale.view(-1, 1, 1)
    moved_x = s * (cos * lx - sin * ly) + draw.shift[:, 0].view(-1, 1, 1)
    moved_y = s * (sin * lx + cos * ly) + draw.shift[:, 1].view(-1, 1, 1)
    if perspective:
        denominator = (1.0 + draw.tilt[:, 0].view(-1, 1, 1) * rel[:, 0]
                       + draw.tilt[:, 1].view(-1, 1, 1) * rel[:, 1])
        moved_x, moved_y = moved_x / denominator, moved_y / denominator
    return torch.stack((moved_x, moved_y), dim=1) - rel


def warp_boxes(boxes_xyxy_px, inverse_px_single, samples_per_side=8, clip=True):
    """Move boxes with an image deformed by ``applied`` whose inverse is ``inverse_px_single``.

    A point ``q`` of the original image appears at ``q + g(q)`` in the deformed image
    (``g`` = inverse field), so each box's outline (``samples_per_side`` points per edge) is
    moved that way and the new box is the outline's bounding box.

    Args:
        boxes_xyxy_px: ``(N, 4)`` boxes ``x1, y1, x2, y2`` in pixels of the original image.
        inverse_px_single: ``(2, H, W)`` or ``(1, 2, H, W)`` inverse field in pixels.
        samples_per_side: outline points per box edge (>= 2).
        clip: clip the moved boxes to ``[0, W] x [0, H]``.

    Returns:
        ``(N, 4)`` moved boxes ``x1, y1, x2, y2`` in pixels of the deformed image (same order;
        boxes that left the image are clipped to zero width or height when ``clip``).

    """
    boxes = torch.as_tensor(boxes_xyxy_px)
    field = inverse_px_single
    if not isinstance(field, torch.Tensor):
        raise ValueError('inverse_px_single must be a torch.Tensor')
    if field.dim() == 4 and field.shape[0] == 1:
        field = field[0]
    if field.dim() != 3 or field.shape[0] != 2:
        raise ValueError(f'inverse_px_single must be (2, H, W) or (1, 2, H, W), '
                         f'got {tuple(inverse_px_single.shape)}')
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f'boxes_xyxy_px must have shape (N, 4), got {tuple(boxes.shape)}')
    if samples_per_side < 2:
        raise ValueError(f'samples_per_side must be >= 2, got {samples_per_side}')
    height, width = field.shape[1:]
    if boxes.shape[0] == 0:
        return boxes.to(dtype=field.dtype, device=field.device).clone()
    boxes = boxes.to(dtype=field.dtype, device=field.device)
    steps = torch.linspace(0, 1, samples_per_side, dtype=field.dtype, device=field.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = x1[:, None] + (x2 - x1)[:, None] * steps
    ys = y1[:, None] + (y2 - y1)[:, None] * steps
    ones = torch.ones_like(steps)
    outline_x = torch.cat((xs, xs, x1[:, None] * ones, x2[:, None] * ones), dim=1)
    outline_y = torch.cat((y1[:, None] * ones, y2[:, None] * ones, ys, ys), dim=1)
    # Box coordinates are pixel edges (0..W); the field lives on pixel centres (0..W-1).
    grid = torch.stack(((outline_x.clamp(0, width - 1)) * (2 / (width - 1)) - 1,
                        (outline_y.clamp(0, height - 1)) * (2 / (height - 1)) - 1), dim=-1)
    disp = F.grid_sample(field[None], grid[None], mode='bilinear', padding_mode='border',
                         align_corners=True)[0]
    moved_x = outline_x + disp[0]
    moved_y = outline_y + disp[1]
    out = torch.stack((moved_x.amin(1), moved_y.amin(1), moved_x.amax(1), moved_y.amax(1)), 1)
    if clip:
        out[:, 0::2] = out[:, 0::2].clamp(0, width)
        out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out
