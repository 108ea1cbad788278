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

from dataclasses import asdict, dataclass
import math

from tarfuse_ros.core.configs import check_field_types, known_fields
from tarfuse_ros.core.fine_passes import MAX_FINE_PASSES
from tarfuse_ros.core.model.encoders import FeatureExtractor
from tarfuse_ros.core.model.heads import DetectionNeck, ReconstructionHead
from tarfuse_ros.core.model.matching import MatchingRegistration
from tarfuse_ros.core.model.registration import RegistrationNet
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.model.yolo import build_detect, forget_anchors
from tarfuse_ros.core.sizes import MAX_ENLARGED_LONG_SIDE
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['REGISTRATIONS', 'SIZE_MULTIPLE', 'TarFuse', 'TarFuseConfig', 'build_model',
           'parameter_counts']

SIZE_MULTIPLE = 32
REGISTRATIONS = ('match', 'paper')


@dataclass(frozen=True)
class TarFuseConfig:
    """Architecture of :class:`TarFuse` (plain values only; stored in every checkpoint)."""

    # Output channels of each of the four feature extractors (full resolution: keep narrow).
    feature_channels: int = 8
    # conv3x3-BN-LeakyReLU layers per extractor.
    extractor_layers: int = 2
    # Stride-2 steps before registration: the flow is predicted at 1 / 2**n and upsampled.
    registration_downsample: int = 2
    # Width of each CSEB.
    cseb_channels: int = 32
    # Registration network: 'match' (global affine stage + coarse-to-fine cost volumes) or
    # 'paper' (the paper's MSRB U-Net, for the ablation).
    registration: str = 'match'
    # MSRB (U-Net) widths per level, finest first ('paper' only).
    msrb_channels: tuple = (32, 48, 64, 64)
    # 'match' only: widths of the pyramid levels below the CSEB (each halves the resolution),
    # hidden widths of each level's flow estimator (a 1x1 squeeze, then 3x3 layers), the
    # cost-volume radius in cells (coarser levels; the finest level, which only refines, has
    # its own), and whether the flow starts from one affine map fitted at the coarsest level.
    pyramid_channels: tuple = (48, 64, 96)
    estimator_channels: tuple = (64, 48, 32)
    corr_radius: int = 4
    corr_radius_finest: int = 2
    global_stage: bool = True
    # What the global stage matches: 'learned' (a 1x1 estimator on the coarsest learnt cost
    # volume, a weighted affine fit) or 'orientation' (fixed unsigned-orientation descriptors
    # matched cell by cell, a robust affine fit: modality-independent without training).
    global_features: str = 'learned'
    # 'orientation' only: the IR / visible scales the global stage tries (one fit each, the
    # best-agreeing map wins; for thermal cameras with another field of view). (1.0,): one fit.
    global_scale_candidates: tuple = (1.0,)
    # 'orientation' only: cell side (px) of a last, finer pass of the global stage on the IR
    # warped by its map (0: none, as in checkpoints written before the field), and that pass's
    # block side in cells (OrientationMatcher). No learnt parameter depends on them.
    global_fine_cell: int = 0
    global_fine_block: int = 8
    # 'orientation' only: how many times the fine pass runs, each on the IR warped by the map
    # the previous one fitted, and its search radius in fine cells (1 and 2, as in checkpoints
    # written before the fields).
    global_fine_passes: int = 1
    global_fine_radius: int = 2
    # 'orientation' only: a sample's fine passes stop once one moves its map by less than this
    # many pixels at every frame corner (0.0: every pass runs, as in checkpoints written before
    # the field; OrientationMatcher). No learnt parameter depends on it.
    global_fine_tolerance: float = 0.0
    # 'orientation' only: with several scale candidates, the unzoomed candidate's map is kept
    # without fitting the others where at least this fraction of its blocks are inliers (0.0:
    # every candidate is fitted, as in checkpoints written before the field; OrientationMatcher).
    # No learnt parameter depends on it.
    global_scale_accept: float = 0.0
    # 'orientation' only: where the map found explains less than this fraction of the pair
    # (inlier blocks), the global stage also fits wide candidates: a start on the frame reduced
    # twice as much (twice the reach) and the scales of ``global_wide_scales``; one that
    # explains the pair ``prefer_unit`` times better wins (0.0: no wide search, as in
    # checkpoints written before the fields; OrientationMatcher). No learnt parameter depends
    # on them.
    global_wide_below: float = 0.0
    global_wide_scales: tuple = ()
    # 'orientation' only: how many more passes on 8 px cells refine the global stage's map
    # before the fine passes, and their search radius in cells (0 and 2: none, as in
    # checkpoints written before the fields; OrientationMatcher). No learnt parameter depends
    # on them.
    global_extra_passes: int = 0
    global_extra_radius: int = 2
    # 'orientation' only: the 8 px passes on the warped IR drop blocks whose search window
    # leaves its support (false, as in checkpoints written before the field).
    global_support_mask: bool = False
    # 'orientation' only: the map from before the fine passes is kept where it agrees better
    # with the visible image than the map they end on (false, as in checkpoints written before
    # the field).
    global_fine_check: bool = False
    # 'orientation' only: frames whose longer side exceeds this (px) run the global stage's
    # first two passes on the frame halved, then refine at full size (0: never, as in
    # checkpoints written before the field). No learnt parameter depends on it.
    global_coarse_side: int = 0
    # 'orientation' only: frames whose shorter side is below this (px) are enlarged by an
    # integer factor for the global stage's fit (0: never, as in checkpoints written before
    # the field). No learnt parameter depends on it.
    global_min_side: int = 0
    # Inference: frames whose longer side is below this (px) are enlarged (bilinear, aspect
    # kept) to it before the network and its outputs brought back to the frame (as YOLO's
    # ``imgsz`` enlarges small images); training crops come from frames enlarged alike
    # (``core.sizes.enlarged_size``). 0: never, as in checkpoints written before the field.
    # No learnt parameter depends on it.
    input_min_long_side: int = 0
    # Inference only (predict_raw): when the padded frame's longer side is below this (px),
    # the fused features are enlarged (bilinear) before the detection neck until it reaches
    # it (sides rounded to multiples of 32) and the boxes are scaled back, so objects of small
    # frames reach the neck at about the scale of the 640 px frames it was trained on, while
    # the fused image and the registration keep the frame's own resolution. 0 (never, as in
    # checkpoints written before the field) or a multiple of 32. No learnt parameter depends
    # on it.
    detect_min_long_side: int = 0
    # Inference only (predict_raw), the converse: when the padded frame's longer side is above
    # this (px), the fused features are shrunk (bilinear) before the detection neck
    # until it reaches it and the boxes are scaled back, so objects of large frames (a 1920x1080
    # camera) reach the neck at about the scale it learnt. 0 (never, as in checkpoints written
    # before the field) or a multiple of 32, not below detect_min_long_side. No learnt parameter
    # depends on it.
    detect_max_long_side: int = 0
    # 'match' registration only: learnt levels (0 = the finest, counted towards the coarsest)
    # whose residual flow is not added: the flow passes them unchanged and their cost volume
    # is not computed (() : every level, as in checkpoints written before the field). No learnt
    # parameter depends on it (the skipped levels' weights stay in the file).
    registration_skip_levels: tuple = ()
    # Eval mode only: the flow is the mean of the pair's flow and the mirrored flow of the pair
    # mirrored left-right (test-time augmentation; the registration runs twice). Not with the
    # orientation global stage, whose fit on the unpadded region cannot be mirrored.
    flip_average: bool = False
    # Hidden widths of the reconstruction head (third layer -> 1 channel, Tanh).
    reconstruction_channels: tuple = (16, 8)
    # Detection neck: stem widths at strides 2 and 4, then P3, P4, P5 widths.
    neck_stem_channels: tuple = (16, 32)
    detect_channels: tuple = (64, 80, 96)
    # Residual blocks after each neck level (identity when added; checkpoints without the
    # field have none).
    neck_blocks: int = 0
    # A top-down path in the neck (P5 -> P4 -> P3, identity when added; checkpoints without
    # the field have none): heads.DetectionNeck.
    neck_top_down: bool = False
    # Detection classes (names in class-id order) and ultralytics' DFL bins.
    # With detect=False they are cleared (no classes): class_names () and num_classes 0.
    num_classes: int = 3
    class_names: tuple = ('person', 'bicycle', 'car')
    reg_max: int = 16
    # True: YOLOv8's exact classification branch; False: the lighter v11 one (default).
    detect_legacy: bool = False
    # Negative slope of every LeakyReLU.
    leaky_slope: float = 0.1
    # False: no detection neck or head (registration + fusion only; ``det`` outputs are None).
    # Checkpoints written before this field existed have a head (True).
    detect: bool = True

    def __post_init__(self):
        # Types first (a YAML "false" is a string, 8.5 no width): the checks below compare values.
        check_field_types(self)
        if not self.detect:
            object.__setattr__(self, 'class_names', ())
            object.__setattr__(self, 'num_classes', 0)
        for name in ('msrb_channels', 'pyramid_channels', 'estimator_channels',
                     'reconstruction_channels', 'neck_stem_channels', 'detect_channels'):
            object.__setattr__(self, name, _number_tuple(name, getattr(self, name), int))
        object.__setattr__(self, 'registration_skip_levels',
                           _number_tuple('registration_skip_levels',
                                         self.registration_skip_levels, int))
        object.__setattr__(self, 'global_scale_candidates',
                           _number_tuple('global_scale_candidates',
                                         self.global_scale_candidates, float))
        object.__setattr__(self, 'global_wide_scales',
                           _number_tuple('global_wide_scales', self.global_wide_scales, float))
        if not isinstance(self.class_names, (list, tuple)):
            # A string was taken as a list of one-letter names ('person': p, e, r, s, o, n).
            raise ValueError(f'class_names must be a list of names, got {self.class_names!r}'
                             + (' (one name: write it as a list, [name])'
                                if isinstance(self.class_names, str) else ''))
        object.__setattr__(self, 'class_names', tuple(str(v) for v in self.class_names))
        if self.detect and (self.num_classes < 1 or len(self.class_names) != self.num_classes):
            raise ValueError(f'num_classes ({self.num_classes}) must be >= 1 and equal '
                             f'len(class_names) ({len(self.class_names)}: {self.class_names})')
        if self.feature_channels < 1 or self.extractor_layers < 1:
            raise ValueError('feature_channels and extractor_layers must be >= 1, got '
                             f'{self.feature_channels}, {self.extractor_layers}')
        if not 0 <= self.registration_downsample <= 4:
            raise ValueError(
                f'registration_downsample must be in 0..4, got {self.registration_downsample}')
        if len(self.detect_channels) != 3 or len(self.neck_stem_channels) != 2:
            raise ValueError('detect_channels needs 3 widths (P3, P4, P5) and neck_stem_channels '
                             f'2, got {self.detect_channels}, {self.neck_stem_channels}')
        if self.registration not in REGISTRATIONS:
            raise ValueError(f'registration must be one of {REGISTRATIONS}, got '
                             f'{self.registration!r}')
        if (min(self.corr_radius, self.corr_radius_finest) < 1 or not self.pyramid_channels
                or not self.estimator_channels):
            raise ValueError('corr_radius must be >= 1 and pyramid_channels / estimator_channels '
                             f'non-empty, got {self.corr_radius}, {self.pyramid_channels}, '
                             f'{self.estimator_channels}')
        if self.reg_max < 1:
            raise ValueError(f'reg_max must be >= 1, got {self.reg_max}')
        if not self.global_scale_candidates or min(self.global_scale_candidates) <= 0:
            raise ValueError('global_scale_candidates must be positive scales, got '
                             f'{self.global_scale_candidates!r}')
        if not isinstance(self.neck_blocks, int) or self.neck_blocks < 0:
            raise ValueError(f'neck_blocks must be an integer >= 0, got {self.neck_blocks!r}')
        for name, least in (('global_fine_cell', 0), ('global_fine_block', 0),
                            ('global_coarse_side', 0), ('global_min_side', 0),
                            ('input_min_long_side', 0), ('detect_min_long_side', 0),
                            ('detect_max_long_side', 0),
                            ('global_fine_passes', 1),
                            ('global_fine_radius', 1), ('global_extra_passes', 0),
                            ('global_extra_radius', 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')
        if self.global_fine_passes > MAX_FINE_PASSES:  # as the engines' fine_passes setting
            raise ValueError(f'global_fine_passes must be at most {MAX_FINE_PASSES}, got '
                             f'{self.global_fine_passes}')
        tolerance = self.global_fine_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
                or not 0.0 <= tolerance < math.inf:
            raise ValueError(f'global_fine_tolerance must be a number of pixels >= 0 (0: every '
                             f'fine pass runs), got {tolerance!r}')
        accept = self.global_scale_accept
        if isinstance(accept, bool) or not isinstance(accept, (int, float)) \
                or not 0.0 <= accept <= 1.0:
            raise ValueError(f'global_scale_accept must be an inlier fraction in [0, 1] (0: '
                             f'every scale candidate is fitted), got {accept!r}')
        wide = self.global_wide_below
        if isinstance(wide, bool) or not isinstance(wide, (int, float)) or not 0.0 <= wide <= 1.0:
            raise ValueError(f'global_wide_below must be an inlier fraction in [0, 1] (0: no '
                             f'wide search), got {wide!r}')
        if self.global_wide_scales and min(self.global_wide_scales) <= 0:
            raise ValueError('global_wide_scales must be positive scales, got '
                             f'{self.global_wide_scales!r}')
        for name in ('input_min_long_side', 'detect_min_long_side'):
            # A typo such as 64000 enlarged every frame (or its features) to that size: gigabytes
            # a frame, then the process killed for memory.
            if getattr(self, name) > MAX_ENLARGED_LONG_SIDE:
                raise ValueError(f'{name} must be at most {MAX_ENLARGED_LONG_SIDE} (pixels; 0: '
                                 f'never enlarge), got {getattr(self, name)}')
        for name in ('detect_min_long_side', 'detect_max_long_side'):
            if getattr(self, name) % 32:
                raise ValueError(f'{name} must be 0 or a multiple of 32 (the padded frames '
                                 f'are), got {getattr(self, name)}')
        if 0 < self.detect_max_long_side < self.detect_min_long_side:
            raise ValueError(f'detect_max_long_side ({self.detect_max_long_side}) must be 0 or '
                             f'at least detect_min_long_side ({self.detect_min_long_side})')
        if self.global_fine_cell > 0 and (self.global_fine_block < 1
                                          or 32 % self.global_fine_cell):
            raise ValueError('global_fine_cell must divide 32 (the padded frames are multiples '
                             f'of 32) and global_fine_block be >= 1, got '
                             f'{self.global_fine_cell}, {self.global_fine_block}')
        if self.global_fine_check and self.global_fine_cell == 0:
            raise ValueError('global_fine_check needs a fine pass to check: set '
                             'global_fine_cell (e.g. 4) or global_fine_check false')
        if self.registration_skip_levels and self.registration != 'match':
            raise ValueError("registration_skip_levels needs registration 'match' (the paper's "
                             'MSRB has no separate levels); set it to []')
        orientation = (self.registration == 'match' and self.global_stage
                       and self.global_features == 'orientation')
        if self.flip_average and orientation:
            raise ValueError('flip_average needs a model without the orientation global stage '
                             '(its fit on the unpadded region cannot be mirrored): set '
                             'flip_average false, or global_stage false')
        if self.global_features not in ('learned', 'orientation'):
            raise ValueError(f"global_features must be 'learned' or 'orientation', got "
                             f'{self.global_features!r}')

    def to_dict(self):
        """Return a JSON-ready dict (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values):
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        values = known_fields(cls, values)
        if isinstance(values.get('class_names'), (list, tuple)) and 'num_classes' not in values:
            values['num_classes'] = len(values['class_names'])
        return cls(**values)


def _number_tuple(name, values, kind):
    """Return ``values`` (a list of numbers) as a tuple of ``kind``, or raise naming ``name``."""
    wrong = ValueError(f'{name} must be a list of {"integers" if kind is int else "numbers"}, '
                       f'got {values!r}')
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, '__iter__'):
        raise wrong
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or (kind is int and value != int(value)):
            raise wrong
        out.append(kind(value))
    return tuple(out)


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
