"""The architecture of :class:`~tarfuse_ros.core.model.tarfuse.TarFuse`, without torch.

:class:`TarFuseConfig` (plain values, checked when built) is stored in every checkpoint and in
every ONNX export's metadata. It lives here, apart from the network, so that a program checks a
config without loading torch: the onnxruntime backend checks an export's
(:mod:`~tarfuse_ros.core.onnx_backend`). :mod:`tarfuse_ros.core.model.tarfuse` re-exports it.
"""

from dataclasses import asdict, dataclass
import math

from tarfuse_ros.core.configs import check_field_types, known_fields
from tarfuse_ros.core.fine_passes import MAX_FINE_PASSES
from tarfuse_ros.core.sizes import MAX_ENLARGED_LONG_SIDE

__all__ = ['REGISTRATIONS', 'SIZE_MULTIPLE', 'TarFuseConfig']

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
