"""The TarFuse network: register IR features to the visible frame, fuse, reconstruct, detect.

``TarFuse.forward(ir, vi)`` with ``ir`` the (unregistered) infrared image and ``vi`` the visible
luminance, both ``(B, 1, H, W)`` in ``[0, 1]`` with ``H`` and ``W`` multiples of 32:

1. four extractors give ``c_ir, s_ir`` (IR, shared weights for the deformed and the aligned IR)
   and ``c_vi, s_vi`` (visible);
2. the registration network predicts ``flow`` (B, 2, H, W) in pixels from ``c_ir`` and
   ``c_vi``: by default CSEB x 2 + explicit matching (a global affine stage and coarse-to-fine
   cost volumes, :mod:`~tarfuse_ros.core.model.matching`); ``registration='paper'`` selects the
   paper's MSRB U-Net (:mod:`~tarfuse_ros.core.model.registration`);
3. ``c_ir`` and ``s_ir`` are warped with it and concatenated with ``c_vi, s_vi``;
4. the reconstruction head gives the fused image and the neck + ``Detect`` the detections
   (none with ``detect=False``: a fusion-only model, e.g. the medical one, has no neck or head).
"""

import math

from tarfuse_ros.core.model.encoders import FeatureExtractor
from tarfuse_ros.core.model.heads import DetectionNeck, ReconstructionHead
from tarfuse_ros.core.model.matching import MatchingRegistration
from tarfuse_ros.core.model.registration import RegistrationNet
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.model.yolo import build_detect, forget_anchors
# Re-exported: the config lives in a torch-free module (the onnxruntime backend checks it).
from tarfuse_ros.core.model_config import REGISTRATIONS, SIZE_MULTIPLE, TarFuseConfig
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['REGISTRATIONS', 'SIZE_MULTIPLE', 'TarFuse', 'TarFuseConfig', 'build_model',
           'parameter_counts']


def _cat_like(like, tensors):
    """Concatenate (B, C_i, H, W) ``tensors`` along channels in the memory format of ``like``.

    ``grid_sample`` returns contiguous (NCHW) maps, so in a channels-last model (the engine's
    default on the CPU) a plain ``torch.cat`` of the warped IR features with the visible ones was
    contiguous, and each of its two consumers (reconstruction head, detection neck) converted the
    32-channel full-resolution map to channels-last again (about 20 ms each at 640x512, 1 CPU
    thread). Converting the small parts first makes the one concatenation channels-last. The
    values are the same; only the memory layout differs.
    """
    layout = (torch.channels_last if like.dim() == 4 and not like.is_contiguous()
              and like.is_contiguous(memory_format=torch.channels_last)
              else torch.contiguous_format)
    return torch.cat([t.contiguous(memory_format=layout) for t in tensors], dim=1)


def _check_image(name, image):
    if not isinstance(image, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(image).__name__}')
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f'{name} must have shape (B, 1, H, W), got {tuple(image.shape)}')
    if not image.is_floating_point():
        raise ValueError(f'{name} must be floating point in [0, 1], got {image.dtype}')
    height, width = image.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(f'{name} height and width must be positive multiples of '
                         f'{SIZE_MULTIPLE} (pad first), got {tuple(image.shape)}')


class TarFuse(nn.Module):
    """Target-aware unregistered IR-visible fusion network (about 1M parameters by default).

    ``forward(ir, vi, ir_aligned=None, valid_size=None) -> dict`` (``valid_size``: the images'
    ``(h, w)`` before padding at the bottom/right, for the orientation global stage, which then
    fits its map on that region alone: see ``matching.OrientationMatcher``):

    - ``fused`` (B, 1, H, W) in [0, 1]: fused luminance in the visible frame;
    - ``flow`` (B, 2, H, W) pixels: maps ``ir`` onto the visible frame;
    - ``registered_ir`` (B, 1, H, W) = ``warp(ir, flow)``;
    - ``det``: the ``Detect`` output in the current mode (train: dict ``boxes``, ``scores``,
      ``feats``; eval: ``(y, dict)``, ``y`` (B, 4 + nc, anchors) xywh in input pixels); None
      when ``config.detect`` is false (no neck, no head);
    - ``flow_levels``: in training mode, the registration's intermediate flows resized to
      ``(B, 2, H, W)`` pixels, coarsest first (deep supervision; empty for the paper's MSRB and
      in eval mode);
    - ``features``: ``c_ir``, ``s_ir`` (of ``ir``), ``c_vi``, ``s_vi``, ``c_ir_registered``,
      ``s_ir_registered`` (warped with ``flow``) and, when ``ir_aligned`` is given,
      ``c_ir_aligned``, ``s_ir_aligned`` (same extractors; used by the training losses).
    """

    def __init__(self, config=None):
        super().__init__()
        config = config if config is not None else TarFuseConfig()
        if not isinstance(config, TarFuseConfig):
            raise ValueError(f'config must be a TarFuseConfig, got {type(config).__name__}')
        self.config = config
        width, layers, slope = config.feature_channels, config.extractor_layers, config.leaky_slope
        self.ir_common = FeatureExtractor(1, width, layers, slope)
        self.ir_specific = FeatureExtractor(1, width, layers, slope)
        self.vi_common = FeatureExtractor(1, width, layers, slope)
        self.vi_specific = FeatureExtractor(1, width, layers, slope)
        if config.registration == 'paper':
            self.registration = RegistrationNet(width, config.cseb_channels,
                                                config.msrb_channels,
                                                config.registration_downsample, slope)
        else:
            self.registration = MatchingRegistration(
                width, config.cseb_channels, config.pyramid_channels,
                config.estimator_channels, config.corr_radius, config.registration_downsample,
                config.global_stage, slope, config.corr_radius_finest,
                global_features=config.global_features,
                scale_candidates=config.global_scale_candidates,
                fine_cell=config.global_fine_cell, fine_block=config.global_fine_block,
                coarse_side=config.global_coarse_side, fine_passes=config.global_fine_passes,
                fine_radius=config.global_fine_radius,
                support_mask=config.global_support_mask, fine_check=config.global_fine_check,
                min_side=config.global_min_side, extra_passes=config.global_extra_passes,
                extra_radius=config.global_extra_radius,
                skip_levels=config.registration_skip_levels,
                fine_tolerance=float(config.global_fine_tolerance),
                scale_accept=float(config.global_scale_accept),
                wide_below=float(config.global_wide_below),
                wide_scales=config.global_wide_scales)
        self.reconstruction = ReconstructionHead(4 * width, config.reconstruction_channels, slope)
        self.neck = self.detect = None
        if config.detect:
            self.neck = DetectionNeck(4 * width, config.neck_stem_channels,
                                      config.detect_channels, slope, config.neck_blocks,
                                      config.neck_top_down)
            self.detect = build_detect(config.num_classes, config.reg_max,
                                       config.detect_channels, config.detect_legacy)

    @property
    def class_names(self):
        return self.config.class_names

    @property
    def scale_candidates(self):
        """The IR / visible scales the orientation global stage tries; () without one."""
        matcher = getattr(self.registration, 'global_matcher', None)
        return () if matcher is None else tuple(matcher.scale_candidates)

    def set_global_scale_candidates(self, candidates):
        """Set the IR / visible scales the orientation global stage tries (``config`` too).

        ``(1.0,)`` switches the scale search off: one fit instead of one per candidate (about
        half the network's CPU time with three candidates), right for rigs whose IR and
        visible fields of view match (or a calibration prior that maps one onto the other);
        the wide search (``global_wide_below``) then keeps its wider start but fits none of its
        other scales (``global_wide_scales``). No learnt weight depends on the candidates, so
        any tuple of positive scales is valid.

        Raises:
            ValueError: the model has no orientation global stage (``config.registration``
                ``'match'`` with ``global_features`` ``'orientation'``), or a scale is not
                positive.
        """
        from dataclasses import replace
        if not self.scale_candidates:
            raise ValueError('this model has no orientation global stage (registration '
                             f'{self.config.registration!r}, global_stage '
                             f'{self.config.global_stage}, global_features '
                             f'{self.config.global_features!r}): it has no scales to set')
        config = replace(self.config, global_scale_candidates=tuple(candidates))
        if config.global_scale_candidates == (1.0,):
            config = replace(config, global_wide_scales=())
        matcher = self.registration.global_matcher
        matcher.scale_candidates = config.global_scale_candidates
        matcher.wide_scales = config.global_wide_scales
        self.config = config

    def _apply(self, fn, *args, **kwargs):
        # Detect caches its anchors per feature shape only: drop them when moving / casting.
        result = super()._apply(fn, *args, **kwargs)
        if self.detect is not None:
            forget_anchors(self.detect)
        return result

    def _detect_resized(self, fused_features):
        """Run the neck and head on features resized to the detector's range of frame sizes.

        With ``lo = detect_min_long_side`` and ``hi = detect_max_long_side`` (0: no bound; both
        multiples of 32): where the padded frame's longer side is below ``lo`` (above ``hi``),
        its sides become ``floor(side * N / longer / 32 + 1/2) * 32`` with ``N = lo`` (``hi``),
        at least 32: the longer one exactly ``N`` (bilinear, both ways: an antialiased shrink
        scored no better on validation, docs/METHOD.md); otherwise nothing changes. The sizes are
        computed with tensor operations so that an ONNX export keeps them dynamic. Returns the
        eval-mode ``Detect`` output with the boxes (``cx, cy, w, h``) in pixels of the frame
        given.
        """
        low, high = self.config.detect_min_long_side, self.config.detect_max_long_side
        shape = torch._shape_as_tensor(fused_features)
        height, width = shape[2], shape[3]
        longer = torch.maximum(height, width)
        target = longer
        if low > 0:
            target = torch.where(longer < low, torch.full_like(longer, low), target)
        if high > 0:
            target = torch.where(longer > high, torch.full_like(longer, high), target)
        change = target != longer
        # At least 32 px: a strip's shorter side would round to 0 under a small hi.
        new_h = torch.where(change, torch.div(height * target + 16 * longer, 32 * longer,
                                              rounding_mode='floor').clamp(min=1) * 32, height)
        new_w = torch.where(change, torch.div(width * target + 16 * longer, 32 * longer,
                                              rounding_mode='floor').clamp(min=1) * 32, width)
        if not torch.jit.is_tracing() and int(new_h) == fused_features.shape[2] \
                and int(new_w) == fused_features.shape[3]:
            return self.detect(self.neck(fused_features))  # within the range already
        resized = F.interpolate(fused_features, size=(new_h, new_w), mode='bilinear',
                                align_corners=False)
        out = self.detect(self.neck(resized))
        y = out[0] if isinstance(out, (tuple, list)) else out
        sx = (width.to(y.dtype) / new_w.to(y.dtype))
        sy = (height.to(y.dtype) / new_h.to(y.dtype))
        y = torch.cat((y[:, 0:1] * sx, y[:, 1:2] * sy, y[:, 2:3] * sx, y[:, 3:4] * sy,
                       y[:, 4:]), dim=1)
        return (y,) + tuple(out[1:]) if isinstance(out, (tuple, list)) else y

    def forward(self, ir, vi, ir_aligned=None, valid_size=None, global_theta=None,
                detect_enlarge=False, detect_scale=None):
        _check_image('ir', ir)
        _check_image('vi', vi)
        if ir.shape != vi.shape:
            raise ValueError(f'ir and vi must have the same shape, got {tuple(ir.shape)} and '
                             f'{tuple(vi.shape)} (resize the IR to the visible frame first)')
        if ir_aligned is not None:
            _check_image('ir_aligned', ir_aligned)
            if ir_aligned.shape != ir.shape:
                raise ValueError(f'ir_aligned shape {tuple(ir_aligned.shape)} differs from ir '
                                 f'{tuple(ir.shape)}')
        matcher = getattr(self.registration, 'global_matcher', None)
        if global_theta is not None:
            self._orientation_matcher('global_theta')  # raises for a model without the stage
        elif matcher is not None:
            global_theta = matcher(ir, vi, valid_size)
        c_ir, s_ir = self.ir_common(ir), self.ir_specific(ir)
        c_vi, s_vi = self.vi_common(vi), self.vi_specific(vi)
        flow_levels = []
        extra = {} if matcher is None else {'theta': global_theta}
        if self.training:
            flow, flow_levels = self.registration(c_ir, c_vi, return_levels=True, ir=ir, vi=vi,
                                                  valid_size=valid_size, **extra)
        else:
            flow = self.registration(c_ir, c_vi, ir=ir, vi=vi, valid_size=valid_size, **extra)
            if self.config.flip_average:
                flow = 0.5 * (flow + self._mirrored_flow(ir, vi))
        c_ir_registered = warp(c_ir, flow)
        s_ir_registered = warp(s_ir, flow)
        fused_features = _cat_like(c_vi, (c_ir_registered, s_ir_registered, c_vi, s_vi))
        fused = self.reconstruction(fused_features)
        if self.detect is None:
            det = None
        elif detect_enlarge and not self.training and (self.config.detect_min_long_side > 0
                                                       or self.config.detect_max_long_side > 0):
            det = self._detect_resized(fused_features)
        elif detect_scale is not None and float(detect_scale) != 1.0:
            # Training's feature-scale augmentation (train.detect_scale_range): the neck sees
            # the features enlarged as detect_min_long_side enlarges small frames'.
            height, width = fused_features.shape[2:]
            # Halves rounded up, as _detect_enlarged rounds.
            size = (max(32, math.floor(height * float(detect_scale) / 32 + 0.5) * 32),
                    max(32, math.floor(width * float(detect_scale) / 32 + 0.5) * 32))
            det = self.detect(self.neck(F.interpolate(fused_features, size=size,
                                                      mode='bilinear', align_corners=False)))
        else:
            det = self.detect(self.neck(fused_features))
        features = {'c_ir': c_ir, 's_ir': s_ir, 'c_vi': c_vi, 's_vi': s_vi,
                    'c_ir_registered': c_ir_registered, 's_ir_registered': s_ir_registered}
        if ir_aligned is not None:
            features['c_ir_aligned'] = self.ir_common(ir_aligned)
            features['s_ir_aligned'] = self.ir_specific(ir_aligned)
        return {'fused': fused, 'flow': flow, 'registered_ir': warp(ir, flow), 'det': det,
                'features': features, 'flow_levels': flow_levels, 'global_theta': global_theta}

    def _mirrored_flow(self, ir, vi):
        """Return the flow of the left-right mirrored pair, mirrored back: (B, 2, H, W) px.

        Mirroring maps column ``x`` to ``W - 1 - x``, so the flow's x component changes sign.
        With ``config.flip_average`` the eval-mode flow is the mean of this and the pair's own
        flow. Measured (``tarfuse_medical``, seeded synthetic fields, whole 256x256 slices):
        EPE 4.50 -> 4.14 px on the 103 training pairs, 4.39 -> 4.20 on the 33 test pairs.
        """
        ir, vi = torch.flip(ir, dims=(3,)), torch.flip(vi, dims=(3,))
        flow = torch.flip(self.registration(self.ir_common(ir), self.vi_common(vi), ir=ir, vi=vi),
                          dims=(3,))
        return torch.cat((-flow[:, :1], flow[:, 1:]), dim=1)

    def _orientation_matcher(self, what):
        """Return the orientation global stage; ``ValueError`` naming ``what`` without one."""
        matcher = getattr(self.registration, 'global_matcher', None)
        if matcher is None:
            config = self.config
            raise ValueError(f'{what} needs the orientation global stage; this model has no '
                             f'orientation global stage (registration {config.registration!r}, '
                             f'global_stage {config.global_stage}, global_features '
                             f'{config.global_features!r})')
        return matcher

    def fit_global(self, ir, vi, valid_size=None):
        """Fit the orientation global stage alone (no gradient; no learnt parameter).

        Args:
            ir, vi: ``(B, 1, H, W)`` planes in [0, 1] (as :meth:`predict_raw`).
            valid_size: the images' ``(h, w)`` before padding at the bottom/right, or None.

        Returns:
            ``(B, 2, 3)`` float32 normalised affine maps (``matching.affine_flow``), to pass
            to :meth:`predict_raw` as ``global_theta``.

        Raises:
            ValueError: the model has no orientation global stage.
        """
        matcher = self._orientation_matcher('fit_global')
        _check_image('ir', ir)
        _check_image('vi', vi)
        with torch.no_grad():
            return matcher(ir, vi, valid_size)

    def track_global(self, ir, vi, start, valid_size=None, candidate=None):
        """Refine a map of an earlier pair of the same rig on this pair (no gradient).

        The orientation global stage's fine passes alone, started from ``start``
        (``OrientationMatcher.track``; with ``candidate``, the better-agreeing of the two).

        Args:
            ir, vi: ``(B, 1, H, W)`` planes in [0, 1] (as :meth:`predict_raw`).
            start: ``(B, 2, 3)`` normalised affine maps (``matching.affine_flow``) of the padded
                ``H x W`` input, as :meth:`fit_global` returns them.
            valid_size: the images' ``(h, w)`` before padding at the bottom/right, or None.
            candidate: None, or ``(B, 2, 3)`` maps of the same frame (a full fit,
                :meth:`fit_global`).

        Returns:
            ``(theta, from_candidate)``: ``(B, 2, 3)`` float32 maps for :meth:`predict_raw`'s
            ``global_theta`` and a ``(B,)`` bool tensor (True: the candidate agreed better).

        Raises:
            ValueError: the model has no orientation global stage, or it has no fine pass.
        """
        matcher = self._orientation_matcher('track_global')
        _check_image('ir', ir)
        _check_image('vi', vi)
        return matcher.track(ir, vi, start, valid_size, candidate)

    def predict_raw(self, ir, vi, valid_size=None, global_theta=None):
        """Run in eval mode without gradients (the previous mode is restored).

        ``valid_size``: the images' ``(h, w)`` before padding at the bottom/right (``forward``).
        ``global_theta``: ``(B, 2, 3)`` normalised affine maps (``matching.affine_flow``) used
        in place of the orientation global stage's fit (a map fitted on an earlier frame of the
        same rig: the stage is skipped); None: fit them on this pair.

        Returns a dict with ``fused`` (B, 1, H, W), ``flow`` (B, 2, H, W) px,
        ``registered_ir`` (B, 1, H, W), ``det`` (B, 4 + nc, anchors): ``cx, cy, w, h`` in
        network-input pixels followed by the class probabilities (ultralytics' layout, ready for
        ``ultralytics.utils.nms.non_max_suppression``), None without a detection head
        (``config.detect`` false), and ``global_theta``: the ``(B, 2, 3)`` maps the learnt
        levels started from (given or fitted), None without the orientation global stage.

        Raises:
            ValueError: ``global_theta`` given to a model without the orientation global stage,
                or of the wrong shape.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self.forward(ir, vi, valid_size=valid_size, global_theta=global_theta,
                                   detect_enlarge=True)
        finally:
            self.train(was_training)
        det = out['det'][0] if isinstance(out['det'], (tuple, list)) else out['det']
        return {'fused': out['fused'], 'flow': out['flow'], 'registered_ir': out['registered_ir'],
                'det': det, 'global_theta': out['global_theta']}


def build_model(config=None):
    """Return a freshly initialised :class:`TarFuse` (``config``: TarFuseConfig, dict or None)."""
    if isinstance(config, dict):
        config = TarFuseConfig.from_dict(config)
    return TarFuse(config)


def parameter_counts(model):
    """Return the number of parameters per part of a :class:`TarFuse` and the ``total``.

    ``neck`` and ``detect`` are absent for a model without detection (``config.detect`` false).
    """
    registration = model.registration
    parts = {
        'ir_common': model.ir_common, 'ir_specific': model.ir_specific,
        'vi_common': model.vi_common, 'vi_specific': model.vi_specific,
        'cseb_ir': registration.cseb_ir, 'cseb_vi': registration.cseb_vi,
    }
    if isinstance(registration, MatchingRegistration):
        parts.update(pyramid=registration.pyramid, estimators=registration.estimators)
        if registration.global_estimator is not None:
            parts['global_stage'] = registration.global_estimator
    else:
        parts['msrb'] = registration.msrb
    parts['reconstruction'] = model.reconstruction
    if model.detect is not None:
        parts.update(neck=model.neck, detect=model.detect)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts['total'] = sum(p.numel() for p in model.parameters())
    return counts
