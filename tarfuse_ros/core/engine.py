"""Inference engine: numpy IR + visible frames in, fused image, registration and detections out.

The engine is the only place (with the tools) that binds the network to a device. One call of
:meth:`FusionEngine.infer`:

1. preprocess (CPU, numpy): :func:`~tarfuse_ros.core.images.prepare_pair`, as in training and
   evaluation: the visible image is normalised and split into its luma (fused) and chroma
   (restored afterwards, colour input only); the IR image is normalised (``uint16``: robust
   per-frame range) and resized to the visible frame when the sizes differ (``INTER_AREA`` when
   shrinking, ``INTER_LINEAR`` otherwise); both are padded at the bottom/right to multiples of 32
   (replicated borders), and to at least the network's minimum size (64 px for the default
   architecture);
2. model: ``TarFuse.predict_raw`` on the device under ``torch.inference_mode`` (told the size
   before padding, so that the orientation global stage fits its map on the image alone: the
   replicated rows and columns are the same in both images and would pull it towards no
   motion), with BatchNorm
   folded into the convolutions and the channels-last memory format (both measured faster);
   on CUDA optionally fp16 autocast and CUDA-graph replay per input size;
3. postprocess: outputs are cropped back to the visible frame; detections go through ultralytics'
   NMS, and since padding only adds pixels at the bottom/right, NMS boxes are already in visible
   image pixels: they are only clipped to the image (boxes left with no area are dropped).

With a calibration prior (``registration_prior``, :mod:`tarfuse_ros.core.prior`), step 1 also
warps the resized IR by the prior's homography (``cv2.warpPerspective``), the network predicts the
residual, and step 3 composes the published flow (``prior.compose_flow``); the flow convention
below holds either way.

Outputs are in the visible frame: ``fused`` (uint8, grey, or BGR with the visible chroma when the
visible input is colour; with a grey visible (or one of neutral chroma) and a colour 8-bit IR
input, the IR chroma registered by the flow, :mod:`tarfuse_ros.core.chroma`), ``registered_ir``
(uint8), ``flow_px`` (float32 HxWx2, dx then dy, in pixels of the visible frame;
``registered_ir(p) = ir_resized(p + flow_px(p))``). A checkpoint without a detection head
(``TarFuseConfig.detect`` false; :attr:`FusionEngine.detects`) gives no detections (empty
lists).

Device notes: ``half=True`` only applies on CUDA (autocast to float16, grid sampling stays in
float32); on CPU it is ignored with a warning, because fp16 convolutions on CPU are slower than
fp32. The engine changes no process-wide setting for good: cuDNN's benchmark mode is switched on
around its own forward passes only (:func:`tarfuse_ros.core.runtime.cudnn_benchmark`), and the
CPU thread count is the program's to set (``torch.set_num_threads`` in its ``main``).
``cuda_graph``: ``'off'``, ``'on'`` (capture a graph for every new input size at its first use;
capture errors raise) or ``'auto'`` (capture when a size is seen a second time, fall back to eager
execution with a warning if capture fails); ignored on CPU.
"""

import collections
import functools
import logging
import numbers
import operator
from pathlib import Path
import threading
import time
import warnings

import numpy as np
from tarfuse_ros.core import images
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.fine_passes import check_fine_passes, NoFineStageError
from tarfuse_ros.core.global_stream import check_stream_checkpoint, check_stream_settings
from tarfuse_ros.core.model.matching import _normalised_affine_to_pixel
from tarfuse_ros.core.pair_engine import (check_finite_outputs, check_flags,
                                          check_ir_percentiles, Detection, FusionResult,
                                          outputs_to_frame, PairEngine, resize_planes)
from tarfuse_ros.core.prior import apply_prior, check_prior, published_outputs
from tarfuse_ros.core.runtime import cudnn_benchmark, resolve_device
import torch
import torch.nn.functional as F

__all__ = ['Detection', 'FusionEngine', 'FusionResult', 'fine_passes_of', 'fuse_conv_bn',
           'scale_search_off', 'set_fine_passes']

_LOG = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ('auto', 'on', 'off')
_MAX_GRAPHS = 8  # captured sizes kept per engine; each holds its own activation memory


def scale_search_off(model):
    """Make a TarFuse model's orientation global stage fit the 1.0 IR / visible scale only.

    ``TarFuse.set_global_scale_candidates((1.0,))`` on a model with several scale candidates
    (``FusionEngine(scale_search=False)``, ``tarfuse-export --no-scale-search``).

    Returns:
        True if the model changed; False for one candidate or no orientation global stage.

    """
    if len(model.scale_candidates) <= 1:
        return False
    model.set_global_scale_candidates((1.0,))
    return True


def set_fine_passes(model, passes):
    """Set how many fine passes a TarFuse model's orientation global stage runs (config too).

    An inference setting, no retraining: the fine passes have no learnt parameter
    (``OrientationMatcher``). ``FusionEngine(fine_passes=...)``, ``tarfuse-export
    --fine-passes``. Everything that fits the global stage reads the matcher (the engine's
    fits over a stream, :meth:`TarFuse.fit_global`, an ONNX trace), so all of it runs the
    passes set here.

    Args:
        model: a ``TarFuse``.
        passes: None: leave the checkpoint's own. 0: no fine pass at all, as a checkpoint
            saved with ``global_fine_cell`` 0 and ``global_fine_check`` false (the fine stage
            is skipped, and with it the check of its passes). N in [1, 8]: N passes, with the
            checkpoint's fine cell, block, radius, check and tolerance.

    Returns:
        True if the model changed; False for None, the checkpoint's own count, or 0 on a
        model with no fine stage.

    Raises:
        ValueError: ``passes`` not None or an integer in [0, 8]; N >= 1 for a model whose
            global stage has no fine stage (no orientation global stage, or
            ``global_fine_cell`` 0): :class:`~tarfuse_ros.core.fine_passes.NoFineStageError`.

    """
    from dataclasses import replace
    check_fine_passes(passes)
    if passes is None:
        return False
    matcher = getattr(model.registration, 'global_matcher', None)
    config = model.config
    if matcher is None or matcher.fine_cell <= 0:
        if passes == 0:
            return False
        stage = ('global_fine_cell 0' if matcher is not None else
                 f'no orientation global stage: registration {config.registration!r}, '
                 f'global_stage {config.global_stage}, global_features '
                 f'{config.global_features!r}')
        raise NoFineStageError(f'{passes} fine passes asked for, but this checkpoint has no '
                               f"fine stage ({stage}): only 0 or the checkpoint's own count "
                               f'apply')
    if passes == 0:
        model.config = replace(config, global_fine_cell=0, global_fine_check=False)
        matcher.fine_cell, matcher.fine_check = 0, False
        return True
    if passes == matcher.fine_passes:
        return False
    model.config = replace(config, global_fine_passes=int(passes))
    matcher.fine_passes = int(passes)
    return True


def fine_passes_of(model):
    """Return how many fine passes a TarFuse model's global stage runs (0: none, or no stage)."""
    matcher = getattr(model.registration, 'global_matcher', None)
    return 0 if matcher is None or matcher.fine_cell <= 0 else int(matcher.fine_passes)


def fuse_conv_bn(model):
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` into the convolution.

    Covers ``nn.Sequential`` runs (``Conv2d``, ``BatchNorm2d``, ...) and modules with ``conv``
    and ``bn`` attributes (ultralytics' ``Conv``). The folded BatchNorm becomes ``Identity``.
    Inference only: the result is the same function up to float rounding, with one pass over
    the feature map less per layer (BatchNorm was half of the GPU time at 640x512).

    Returns:
        the number of folded pairs.

    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def foldable(conv, bn):
        return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats and bn.running_mean is not None)

    count = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module._modules.items())
            for (conv_key, conv), (bn_key, bn) in zip(items, items[1:]):
                if foldable(conv, bn) and isinstance(module._modules[bn_key], nn.BatchNorm2d):
                    module._modules[conv_key] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                    module._modules[bn_key] = nn.Identity()
                    count += 1
        conv, bn = getattr(module, 'conv', None), getattr(module, 'bn', None)
        if foldable(conv, bn):
            module.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            module.bn = nn.Identity()
            count += 1
    return count


def _min_input_side(config):
    """Smallest H and W the network takes: its coarsest flow level needs at least 2x2 pixels."""
    downsample = int(getattr(config, 'registration_downsample', 2))
    if getattr(config, 'registration', 'paper') == 'paper':
        coarser = len(getattr(config, 'msrb_channels', (0, 0, 0, 0))) - 1
    else:
        coarser = len(getattr(config, 'pyramid_channels', ()))
    side = 2 * 2 ** (downsample + max(coarser, 0))
    return max(32, -(-side // 32) * 32)


def _plausible_map(theta, height, width):
    """Return True when a ``(1, 2, 3)`` normalised affine map may describe a camera rig.

    Finite, both singular values of its linear part in pixels (``D^-1 A D`` on an ``height x
    width`` frame, ``D = diag(2 / (W - 1), 2 / (H - 1))``) in [0.5, 2] (the scale candidates
    are 0.8-1.25), and its shift at most 1 (half the frame): a flat or featureless pair can
    give a degenerate fit (a scale of 0.03 on a constant image), which must not enter a stream.
    """
    if not bool(torch.isfinite(theta).all()):
        return False
    pixel = _normalised_affine_to_pixel(theta.double().cpu(), height, width)
    singular = torch.linalg.svdvals(pixel[0, :, :2])
    return bool((singular.min() >= 0.5) & (singular.max() <= 2.0)
                & (theta[0, :, 2].abs().max() <= 1.0))


def _featureless(plane, valid, nonzero=False):
    """Return True when a ``(1, 1, H, W)`` plane in [0, 1] is (nearly) constant.

    Standard deviation below 1 / 255 (one grey level) over the ``valid`` ``(height, width)``
    top-left region (None: the whole plane): the global stage has nothing to fit there (its
    blocks do not vote and it returns the identity), so a stream must not keep that map as a
    fit of the rig. ``nonzero``: over the pixels at least 2 px inside the region above 0 only
    (True where there are none): an IR pre-warped by a registration prior has zero borders,
    around a constant IR as well, and a band of interpolated values along them.
    """
    if valid is not None:
        plane = plane[..., :valid[0], :valid[1]]
    plane = plane.float()
    if nonzero:
        inside = -F.max_pool2d(-(plane > 0).float(), 5, stride=1, padding=2) > 0.5
        plane = plane[inside]
        if plane.numel() < 2:
            return True
    return bool(plane.std() < 1.0 / 255.0)


# What global_track counts (FusionEngine.global_track_state).
_TRACK_COUNTS = ('tracked', 'fitted', 'fit_kept', 'held')


def _median_map(fits):
    """Return the elementwise median ``(1, 2, 3)`` of a stream's fits, stacked ``(N, 2, 3)``.

    Even counts: the mean of the two middle fits (``torch.median`` would take the lower).
    """
    return fits.quantile(0.5, dim=0, keepdim=True)


def _padded_from(tensor, height, width):
    """Return ``(height, width)`` if ``tensor`` (B, 1, H', W') was padded beyond it, else None."""
    return None if tuple(tensor.shape[2:]) == (height, width) else (int(height), int(width))


class _GraphRunner:
    """One captured CUDA graph of ``predict_raw`` for a fixed input shape.

    Inputs are copied into static buffers and the graph is replayed; the returned tensors are
    the graph's static outputs, overwritten by the next replay (the engine's lock serialises
    calls and postprocessing copies them out first).
    """

    def __init__(self, forward, model, shape, device):
        self.static_ir = torch.zeros(shape, device=device)
        self.static_vi = torch.zeros(shape, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuDNN autotuning and lazy caches happen outside capture
                forward(self.static_ir, self.static_vi)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = forward(self.static_ir, self.static_vi)
        # Tensors cached on modules during capture (e.g. the Detect head's anchors) are read by
        # the graph at fixed addresses: keep them alive even if a later size replaces them.
        self.keep_alive = [value for module in model.modules()
                           for value in vars(module).values() if isinstance(value, torch.Tensor)]

    def __call__(self, ir, vi):
        self.static_ir.copy_(ir)
        self.static_vi.copy_(vi)
        self.graph.replay()
        return self.static_out


class FusionEngine(PairEngine):
    """Run a TarFuse checkpoint on numpy IR/visible pairs.

    Args:
        weights: path of a ``.safetensors`` checkpoint (``None``: the shipped default weights).
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        half: fp16 autocast on CUDA; ignored with a warning on CPU.
        cuda_graph: ``'auto'``, ``'on'`` or ``'off'`` (see the module docstring).
        threads: deprecated: a program sets its thread count itself (``torch.set_num_threads``
            in its ``main``). Still applied (process-wide) for callers that pass it, with a
            ``DeprecationWarning``; None: leave torch's setting.
        conf_threshold, iou_threshold, max_detections, classes: NMS settings (see
            :meth:`set_thresholds`).
        allow_cpu_fallback: use the CPU with a warning when CUDA is asked for but absent.
        ir_norm, ir_low, ir_high: how ``uint16``/float thermal frames are normalised
            (:func:`tarfuse_ros.core.images.to_unit_gray`).
        pad_mode: ``'replicate'`` (default), ``'reflect'`` or ``'constant'``.
        cudnn_benchmark: on CUDA, let cuDNN time its kernels once per input size and keep the
            fastest (``torch.backends.cudnn.benchmark``, set during the engine's own calls).
        fuse_bn: fold BatchNorm layers into the preceding convolutions (:func:`fuse_conv_bn`).
        channels_last: run in the channels-last memory format (default: measured faster on
            CUDA, where it avoids cuDNN's layout transposes, and on the CPU with 2 threads).
        registration_prior: a :class:`~tarfuse_ros.core.prior.RegistrationPrior` (IR -> visible
            homography applied before the network, :func:`~tarfuse_ros.core.prior.make_prior`)
            or None (default: no prior, the IR is only resized to the visible frame).
        scale_search: False: a checkpoint saved with several scale candidates fits the 1.0
            IR / visible scale only (``TarFuse.set_global_scale_candidates``): about half the
            CPU time of the default three-scale search, for rigs with matching fields of view.
            No effect on a checkpoint with one candidate or without the orientation global
            stage.
        fine_passes: how many fine passes the orientation global stage runs, overriding the
            checkpoint's (:func:`set_fine_passes`; no retraining): a CPU speed knob (times in
            the README's ``registration.fine_passes`` row, accuracy in the model card). None
            (default): the checkpoint's own; 0: no fine pass (nor its check); 1-8: that many,
            with the checkpoint's fine cells, radius, check and tolerance (``ValueError`` for a
            checkpoint without a fine stage). A stream's fits (``global_every``) run them too.
        global_every, global_window: the orientation global stage over a stream of pairs from
            one rigid rig (:meth:`infer`, one pair per call): every pair starts the learnt
            levels from the elementwise median of the last ``global_window`` fits of its
            affine map (the mean of the two middle ones for an even count; the error of a fit
            depends on the scene and averages out over scenes, and with 3 or more fits a
            failed one is outvoted); the stage fits every pair until it holds
            ``global_window`` fits, then one pair in ``global_every`` (a pair that skips it
            takes about half the CPU time of a fitted one). A fit whose map is not
            plausible (not finite, a scale outside [0.5, 2] or a shift of more than half the
            frame), or of a pair whose IR or visible image is constant (a flat scene, a
            covered lens: nothing to fit), is not kept; the pair then starts from the held
            fits' median, or from its own map when none is held. The fits are forgotten when
            the visible frame size, the IR input's shape or the registration prior changes,
            and by :meth:`reset_global_maps`; a call with several pairs (:meth:`infer_batch`)
            fits each of them and leaves the stream alone. With CUDA, a stream's pairs run
            without CUDA graphs (eagerly). 1 and 1 (default): every pair is fitted alone, as
            without a stream. Integers, ``global_every`` <= 10000 and ``global_window`` <=
            1000; above 1 they need the orientation global stage (:attr:`streams_global_map`).
        global_track: the orientation global stage tracks one rig's map over a stream of pairs
            (:meth:`infer`, one pair per call): 0 (default) off; N (1-10000): the first pair
            is fitted in full (scale search, 8 px passes, fine passes); each later pair runs the
            fine passes alone, started from the previous pair's map (``TarFuse.track_global``:
            a map that moves with the scene's depth, as a rig's parallax does, at about half
            the global stage's CPU time), and every N-th pair is fitted in full as well and
            keeps the full fit or the tracked map, whichever agrees better with the visible
            image (a tracked map that went wrong is taken back by the next full fit). A pair
            whose IR or visible image is constant keeps the previous map (and postpones a due
            full fit); a tracked map that is not plausible (as for ``global_every``) is
            replaced by a full fit of the pair, or where that is not plausible either by the
            previous map, and a full fit that is not plausible never replaces a tracked map.
            Forgotten as ``global_every``'s fits are (another frame size, IR input shape or
            prior, :meth:`reset_global_maps`); :meth:`global_track_state` counts what it did.
            With CUDA, a stream's pairs run without CUDA graphs (eagerly). Not with
            ``global_every`` or ``global_window`` above 1; needs the orientation global stage
            with at least one fine pass (``ValueError``).
        input_min_long_side: a visible frame whose longer side is below this many pixels is
            enlarged to it (aspect kept, bilinear) for the network, and the outputs are brought
            back to the frame (:func:`~tarfuse_ros.core.pair_engine.outputs_to_frame`), as
            YOLO's ``imgsz`` enlarges small images; the detection head then sees objects at
            the scale it was trained at. None (default): the checkpoint's
            ``input_min_long_side`` (0 in checkpoints written before the field); 0: never.
        input_max_long_side: a visible frame whose longer side is above this many pixels is
            shrunk to it (aspect kept, area average) for the network, and the outputs are
            brought back to the frame (:func:`~tarfuse_ros.core.pair_engine.outputs_to_frame`:
            the flow and the boxes scaled, the registered IR resampled from the frame's IR at
            that flow, the fused image enlarged with the detail band the shrink removed put
            back): a 1920x1080 camera then costs about what a 1024x576 one does (README,
            "Large cameras"). 0 (default): never; else an integer in [256, 16384], not below
            ``input_min_long_side``.

    Raises:
        CheckpointError: missing or invalid weights.
        DeviceUnavailableError: (a ``RuntimeError``) CUDA unavailable, without
            ``allow_cpu_fallback``.
        ValueError: bad settings.

    """

    def __init__(self, weights=None, device='cpu', half=False, cuda_graph='auto', threads=None,
                 conf_threshold=0.25, iou_threshold=0.45, max_detections=100, classes=None,
                 allow_cpu_fallback=False, ir_norm='percentile', ir_low=0.5, ir_high=99.5,
                 pad_mode='replicate', cudnn_benchmark=True, fuse_bn=True, channels_last=True,
                 registration_prior=None, scale_search=True, global_every=1, global_window=1,
                 input_min_long_side=None, input_max_long_side=0, fine_passes=None,
                 global_track=0):
        if isinstance(cuda_graph, (bool, np.bool_)):  # a NumPy bool too, as the other flags
            cuda_graph = 'on' if cuda_graph else 'off'
        if cuda_graph not in CUDA_GRAPH_MODES:
            raise ValueError(f'cuda_graph must be one of {CUDA_GRAPH_MODES}, got {cuda_graph!r}')
        if ir_norm not in images.IR_NORMS:
            raise ValueError(f'ir_norm must be one of {images.IR_NORMS}, got {ir_norm!r}')
        check_ir_percentiles(ir_low, ir_high)
        check_flags(half=half, allow_cpu_fallback=allow_cpu_fallback,
                    cudnn_benchmark=cudnn_benchmark, fuse_bn=fuse_bn, channels_last=channels_last,
                    scale_search=scale_search)
        if pad_mode not in images.PAD_MODES:
            raise ValueError(f'pad_mode must be one of {images.PAD_MODES}, got {pad_mode!r}')
        check_prior(registration_prior)  # fail before loading the weights
        check_fine_passes(fine_passes)
        check_stream_settings(global_every, global_window, global_track, fine_passes)
        if threads is not None:
            if (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                    or threads < 1):
                raise ValueError(f'threads must be None or an integer >= 1, got {threads!r}')
            warnings.warn('FusionEngine(threads=...) is deprecated: set the thread count in the '
                          'program (torch.set_num_threads)', DeprecationWarning, stacklevel=2)
            torch.set_num_threads(int(threads))
        self._device = resolve_device(device, allow_cpu_fallback)
        cuda = self._device.type == 'cuda'
        if half and not cuda:
            _LOG.warning('half=True is ignored on the CPU (fp16 is only used on CUDA)')
        self._half = bool(half) and cuda
        # Frame sizes are static in a camera pipeline: let cuDNN pick the fastest kernels.
        self._cudnn_benchmark = bool(cudnn_benchmark) and cuda
        self._graph_mode = cuda_graph if cuda else 'off'
        if weights is None:
            from tarfuse_ros.core.paths import default_weights_path
            weights = default_weights_path()
        model = load_checkpoint(weights, map_location='cpu').eval()  # '' is not Path('.')
        self._weights = Path(weights)
        if not scale_search:
            scale_search_off(model)
        matcher = getattr(model.registration, 'global_matcher', None)
        # The checkpoint's, before fine_passes 0 takes its fine cell away (a restart with 1-8
        # runs them).
        self._fine_stage = matcher is not None and matcher.fine_cell > 0
        set_fine_passes(model, fine_passes)
        self._fused_layers = fuse_conv_bn(model) if fuse_bn else 0
        self._channels_last = bool(channels_last)
        model = model.to(self._device)
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        self._ir_norm, self._ir_low, self._ir_high = ir_norm, float(ir_low), float(ir_high)
        self._pad_mode = pad_mode
        super().__init__(self._model.config.class_names, self._model.config.num_classes,
                         registration_prior, conf_threshold, iou_threshold, max_detections,
                         classes)
        self._infer_lock = threading.Lock()
        self._min_side = _min_input_side(self._model.config)
        self._graphs = {}
        self._seen_shapes = set()
        self._graph_failed = set()
        config, matcher = model.config, getattr(model.registration, 'global_matcher', None)
        check_stream_checkpoint(
            global_every, global_window, global_track,
            f'{str(self._weights)!r} (registration {config.registration!r}, global_stage '
            f'{config.global_stage}, global_features {config.global_features!r})',
            global_stage=matcher is not None,
            fine_cell=0 if matcher is None else matcher.fine_cell,
            fine_passes=0 if matcher is None else matcher.fine_passes)
        self._global_every, self._global_window = int(global_every), int(global_window)
        self._global_track = int(global_track)
        self._set_input_min_long_side(input_min_long_side, model.config.input_min_long_side)
        self._set_input_max_long_side(input_max_long_side)
        # The stream's state, behind its own lock (read by global_map_state without waiting
        # for a model run): the key its fits belong to (IR input shape, visible frame size,
        # network input shape, valid size, pre-warp), the fits, and the pairs since the last
        # fit.
        self._global_lock = threading.Lock()
        self._global_key = None
        self._global_fits = collections.deque(maxlen=self._global_window)
        self._global_age = 0
        # global_track: the map the next pair starts from, and what tracking did.
        self._track_theta = None
        self._track_counts = dict.fromkeys(_TRACK_COUNTS, 0)

    # -- properties -------------------------------------------------------------------------
    @property
    def detects(self):
        """Whether the checkpoint has a detection head (False: detections are always empty)."""
        return self._model.detect is not None

    @property
    def device(self):
        """The device the model runs on, as a string (``'cpu'``, ``'cuda:0'``)."""
        return str(self._device)

    @property
    def config(self):
        """The checkpoint's ``TarFuseConfig``."""
        return self._model.config

    @property
    def model(self):
        """The underlying ``TarFuse`` (eval mode, on :attr:`device`, BatchNorm folded if asked)."""
        return self._model

    @property
    def half(self):
        """Whether fp16 autocast is in effect (CUDA only)."""
        return self._half

    @property
    def streams_global_map(self):
        """True when the global map is kept over a stream (global_every, global_track)."""
        return self._global_every > 1 or self._global_window > 1 or self._global_track > 0

    @property
    def global_track(self):
        """Pairs between full fits of the global stage when it tracks a stream (0: off)."""
        return self._global_track

    def global_track_state(self):
        """Return what tracking did since the start or :meth:`reset_global_maps` (a dict).

        ``tracked``: pairs whose map was refined from the previous pair's alone; ``fitted``:
        pairs fitted in full (the first, the first after the map was forgotten or not kept,
        every ``global_track``-th, and where a tracked map was not plausible); ``fit_kept``: of
        the full fits made beside a tracked map, those that replaced it (agreeing better, or the
        tracked map not plausible; an implausible full fit never does, and where neither is
        plausible the pair keeps the previous map); ``held``: pairs that
        kept the previous map (a constant IR or visible image). All 0 when tracking is off.
        Does not wait for a model run.
        """
        with self._global_lock:
            return dict(self._track_counts)

    def global_map_state(self):
        """Return ``(fits, spread_px)`` of the stream's global fits (``global_window``).

        ``fits``: how many are held; ``spread_px``: how far they lie from the map in use, the
        median over the fits of the mean distance (pixels of the network input frame: the
        visible frame, enlarged where it is smaller than :attr:`input_min_long_side` or shrunk
        where it is larger than :attr:`input_max_long_side`, padded to multiples of 32) between
        where a fit and the median map put that frame's four corners; None with fewer than 2
        fits. Does not wait for a model run.
        """
        with self._global_lock:
            fits = tuple(self._global_fits)
            key = self._global_key
        if len(fits) < 2:
            return len(fits), None
        height, width = key[2][2:]
        stacked = torch.cat(fits).double()
        gap = stacked - _median_map(stacked)
        corners = torch.tensor([[-1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]],
                               dtype=stacked.dtype, device=stacked.device)
        moved = gap[:, :, :2] @ corners + gap[:, :, 2:]
        scale = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=stacked.dtype,
                             device=stacked.device).view(1, 2, 1)
        distance = torch.linalg.vector_norm(moved * scale, dim=1).mean(dim=1)
        return len(fits), float(distance.median())

    def reset_global_maps(self):
        """Forget the stream's global fits: the next pair is fitted afresh (a new rig)."""
        with self._global_lock:
            self._global_key = None
            self._global_fits.clear()
            self._global_age = 0
            self._track_theta = None
            self._track_counts = dict.fromkeys(_TRACK_COUNTS, 0)

    @property
    def scale_candidates(self):
        """The IR / visible scales the orientation global stage tries; () without one."""
        return self._model.scale_candidates

    @property
    def fine_passes(self):
        """How many fine passes the orientation global stage runs (0: none, or no such stage)."""
        return fine_passes_of(self._model)

    @property
    def fine_stage(self):
        """Whether the checkpoint has a fine stage (False: 1-8 fine passes apply to none).

        As :func:`set_fine_passes` refuses them: an orientation global stage with a fine cell,
        as the checkpoint was saved (``fine_passes=0`` leaves it True).
        """
        return self._fine_stage

    # -- inference ---------------------------------------------------------------------------
    def forward_tensors(self, ir, vi, valid_size=None):
        """Run the network alone on prepared tensors, as :meth:`infer` does internally.

        Args:
            ir, vi: ``(B, 1, H, W)`` float32 tensors in [0, 1] on :attr:`device`, H and W
                multiples of 32 and at least the network's minimum size (64 px for the
                default architecture; :meth:`infer` pads smaller frames to it).
            valid_size: ``(h, w)`` of the images before they were padded at the bottom/right
                (:meth:`infer` passes it when it pads); None: nothing padded.

        Returns:
            ``predict_raw``'s dict (``fused``, ``flow``, ``registered_ir``, ``det``,
            ``global_theta``), float32. With CUDA graphs these tensors are reused by the next
            call: copy what you keep. The global stage fits every call here (no stream).

        Raises:
            ValueError: tensors of another shape or dtype (float16 only with :attr:`half`),
                smaller than the minimum size, or with values outside [0, 1] (NaN too);
                ``valid_size`` not two integers within the tensors' size.

        """
        allowed = (torch.float32, torch.float16) if self._half else (torch.float32,)
        for name, tensor in (('ir', ir), ('vi', vi)):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
                continue  # the model names what is wrong with them
            if tensor.dtype not in allowed:
                raise ValueError(f'{name} must be a float32 tensor in [0, 1], got '
                                 f'{tensor.dtype} (shape {tuple(tensor.shape)})')
            if min(tensor.shape[2:]) < self._min_side:
                raise ValueError(f'{name} is {tuple(tensor.shape)}: H and W must be at least '
                                 f'{self._min_side} for this network (pad at the bottom/right '
                                 f'as infer does, images.pad_to_multiple(..., min_size='
                                 f'{self._min_side}))')
            # 0-255 or NaN inputs ran without a word and gave a meaningless flow.
            low, high = (float(v) for v in torch.aminmax(tensor.detach()))
            if not (low >= 0.0 and high <= 1.0):
                raise ValueError(f'{name} must hold values in [0, 1], got min {low:g}, max '
                                 f'{high:g}: divide 8-bit data by 255 and replace NaN (or make '
                                 f'the inputs with input_tensors, as infer does)')
        if valid_size is not None:
            try:
                sides = tuple(operator.index(v) for v in valid_size)  # 'ab' said int('a')
            except TypeError:
                sides = ()
            if len(sides) != 2:
                raise ValueError(f'valid_size must be None or (h, w), two integers, got '
                                 f'{valid_size!r}')
            valid_size = sides
        with self._infer_lock:
            return self._run_model(ir, vi, valid_size)

    def _prepare(self, ir, vi, index):
        """Prepare one pair on the CPU (:func:`~tarfuse_ros.core.images.prepare_pair`)."""
        suffix = f' #{index}' if index else ''
        # uint8 planes stay uint8 until they are on the device (4x less to copy and convert).
        pair = images.prepare_pair(ir, vi, self._ir_norm, self._ir_low, self._ir_high,
                                   keep_uint8=True,
                                   names=('IR image' + suffix, 'visible image' + suffix))
        return apply_prior(self._prior, pair, (ir.shape[1], ir.shape[0]))

    def input_tensors(self, ir, vi):
        """Return the network's inputs for one pair as :meth:`infer` makes them, before padding.

        Args:
            ir, vi: as :meth:`infer`.

        Returns:
            ``(ir, vi)``: ``(1, 1, H, W)`` float32 tensors in [0, 1] on :attr:`device`, the IR
            resized to the visible frame (and warped by the registration prior); ``H x W`` is
            the visible frame, enlarged where it is smaller than :attr:`input_min_long_side`
            and shrunk where it is larger than :attr:`input_max_long_side`
            (:meth:`network_size`).

        """
        pair = self._prepare(ir, vi, 0)
        size = self.network_size(*pair.vi_y.shape[:2])
        ir_plane, vi_plane = resize_planes([pair.ir, pair.vi_y], size)
        return self._unit_tensor([ir_plane]), self._unit_tensor([vi_plane])

    def _unit_tensor(self, planes):
        """Stack ``HxW`` planes (uint8 0-255 or float32 0-1) into a (B, 1, H, W) unit tensor."""
        non_blocking = self._device.type == 'cuda'
        if all(p.dtype == np.uint8 for p in planes):
            stacked = torch.from_numpy(np.stack(planes)[:, None])
            return stacked.to(self._device, non_blocking=non_blocking).float().mul_(1.0 / 255.0)
        planes = [p.astype(np.float32) * np.float32(1.0 / 255.0) if p.dtype == np.uint8 else p
                  for p in planes]
        stacked = torch.from_numpy(np.stack(planes)[:, None])
        return stacked.to(self._device, non_blocking=non_blocking)

    def _run_group(self, items, height, width, stream_key=None):
        """Same-size prepared pairs -> ``(outputs, (preprocess, model, postprocess) s)``."""
        t0 = time.perf_counter()
        net_size = self.network_size(height, width)
        ir_t, vi_t = self._to_tensors(items, net_size)
        t1 = time.perf_counter()
        with self._infer_lock:
            valid_size = _padded_from(ir_t, *net_size)
            if self.streams_global_map and stream_key is not None:
                theta = self._stream_theta(ir_t, vi_t, valid_size,
                                           (stream_key, (height, width), items[0].pre_warp))
                raw = self._run_model(ir_t, vi_t, valid_size, theta)
            else:
                raw = self._run_model(ir_t, vi_t, valid_size)
            if self._device.type == 'cuda':
                torch.cuda.synchronize(self._device)
            t2 = time.perf_counter()
            outputs = self._postprocess(raw, items, height, width, net_size)
        return outputs, (t1 - t0, t2 - t1, time.perf_counter() - t2)

    def _stream_theta(self, ir_t, vi_t, valid_size, source):
        """Return the ``(1, 2, 3)`` global map of a stream's pair (``global_every``).

        With ``global_track``: :meth:`_tracked_theta` (the same key forgets the tracked map).

        ``source``: ``(IR input shape, visible frame (height, width), pre-warp matrix or
        None)``. Fits the global stage on every pair until ``global_window`` fits are held,
        then when ``global_every`` pairs have passed since the last fit (another frame size, IR
        shape or pre-warp forgets the fits, also where ``input_min_long_side`` or
        ``input_max_long_side`` resize two frame sizes to one network input),
        keeps a fit when it is plausible (:func:`_plausible_map`) and neither image is
        constant (:func:`_featureless`), and returns the elementwise
        median of the held fits (the pair's own map when none is held).
        """
        valid = None if valid_size is None else tuple(int(v) for v in valid_size)
        ir_shape, frame_size, pre_warp = source
        key = (ir_shape, frame_size, tuple(ir_t.shape), valid,
               None if pre_warp is None else pre_warp.tobytes())
        with self._global_lock:
            if key != self._global_key:
                self._global_key = key
                self._global_fits.clear()
                self._global_age = 0
                self._track_theta = None
            start, age = self._track_theta, self._global_age
            due = (len(self._global_fits) < self._global_window
                   or self._global_age >= self._global_every)
        if self._global_track:
            return self._tracked_theta(ir_t, vi_t, valid, start, age, pre_warp is not None)
        fit = plausible = None
        if due:
            # As a per-pair fit runs (under autocast with half); kept on the CPU, so that
            # global_map_state never waits for the device.
            with torch.inference_mode(), torch.autocast('cuda', dtype=torch.float16,
                                                        enabled=self._half):
                fit = self._model.fit_global(ir_t, vi_t, valid).float()
            plausible = (_plausible_map(fit, ir_t.shape[2], ir_t.shape[3])
                         and not _featureless(ir_t, valid, pre_warp is not None)
                         and not _featureless(vi_t, valid))
        with self._global_lock:
            if due:
                self._global_age = 0
                if plausible:
                    self._global_fits.append(fit.cpu())
            self._global_age += 1
            fits = tuple(self._global_fits)
        return _median_map(torch.cat(fits)).to(ir_t.device) if fits else fit

    def _tracked_theta(self, ir_t, vi_t, valid, start, age, pre_warped=False):
        """Return a stream pair's ``(1, 2, 3)`` map with ``global_track`` (its docstring).

        ``start``: the previous pair's map or None; ``age``: pairs since the last full fit;
        ``pre_warped``: the IR was warped by a registration prior (zero borders).
        """
        featureless = _featureless(ir_t, valid, pre_warped) or _featureless(vi_t, valid)
        if featureless and start is not None:
            with self._global_lock:
                self._track_counts['held'] += 1
            return start.to(ir_t.device)
        height, width = ir_t.shape[2:]
        fit = None
        with torch.inference_mode(), torch.autocast('cuda', dtype=torch.float16,
                                                    enabled=self._half):
            if start is None or age + 1 >= self._global_track:
                fit = self._model.fit_global(ir_t, vi_t, valid).float()
            fit_plausible = fit is not None and _plausible_map(fit, height, width)
            if start is None:
                theta, kept, plausible = fit, False, fit_plausible
            else:
                # Only a plausible full fit may replace the tracked map.
                theta, kept = self._model.track_global(ir_t, vi_t, start.to(ir_t.device), valid,
                                                       fit if fit_plausible else None)
                theta, kept = theta.float(), bool(kept.all())
                plausible = kept or _plausible_map(theta, height, width)
                if not plausible:
                    if fit is None:
                        fit = self._model.fit_global(ir_t, vi_t, valid).float()
                        fit_plausible = _plausible_map(fit, height, width)
                    # Neither plausible: the previous map, which was (only such are kept).
                    theta, kept = (fit, True) if fit_plausible else (start.to(ir_t.device), False)
                    plausible = True
        with self._global_lock:
            counts = self._track_counts
            counts['fitted' if fit is not None else 'tracked'] += 1
            counts['fit_kept'] += int(start is not None and fit is not None and kept)
            self._global_age = 0 if fit is not None else self._global_age + 1
            self._track_theta = theta.cpu() if plausible and not featureless else None
        return theta

    def _to_tensors(self, items, net_size):
        """Stack same-size prepared pairs, resized to ``net_size``, into padded tensors."""
        vi_t = self._unit_tensor(resize_planes([item.vi_y for item in items], net_size))
        ir_t = self._unit_tensor(resize_planes([item.ir for item in items], net_size))
        vi_t, _ = images.pad_to_multiple(vi_t, 32, self._pad_mode, self._min_side)
        ir_t, _ = images.pad_to_multiple(ir_t, 32, self._pad_mode, self._min_side)
        return ir_t, vi_t

    def _forward(self, ir_t, vi_t, valid_size=None, global_theta=None):
        """``predict_raw`` with fp16 autocast when enabled (also the body of captured graphs)."""
        if self._half:
            with torch.autocast('cuda', dtype=torch.float16, cache_enabled=False):
                out = self._model.predict_raw(ir_t, vi_t, valid_size, global_theta)
            return {key: value.float() for key, value in out.items()
                    if key in ('fused', 'flow', 'registered_ir', 'det', 'global_theta')
                    and value is not None}
        return self._model.predict_raw(ir_t, vi_t, valid_size, global_theta)

    def _run_model(self, ir_t, vi_t, valid_size=None, global_theta=None):
        with torch.inference_mode(), cudnn_benchmark(self._cudnn_benchmark):
            valid_size = None if valid_size is None else tuple(int(v) for v in valid_size)
            if global_theta is not None:  # a stream's map: eager (graphs fit their own)
                return self._forward(ir_t, vi_t, valid_size, global_theta)
            # One graph per padded shape and valid region (the global stage crops to it).
            runner = self._graph_runner((tuple(ir_t.shape), valid_size))
            if runner is not None:
                return runner(ir_t, vi_t)
            return self._forward(ir_t, vi_t, valid_size)

    def _graph_runner(self, key):
        """Return the captured graph for ``key`` (input shape, valid size), per the mode."""
        if self._graph_mode == 'off' or key in self._graph_failed:
            return None
        runner = self._graphs.get(key)
        if runner is not None:
            return runner
        if self._graph_mode == 'auto' and key not in self._seen_shapes:
            self._seen_shapes.add(key)
            return None
        if len(self._graphs) >= _MAX_GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        shape, valid_size = key
        try:
            runner = _GraphRunner(functools.partial(self._forward, valid_size=valid_size),
                                  self._model, shape, self._device)
        except Exception as exc:  # noqa: BLE001 - 'auto' falls back to eager execution
            if self._graph_mode == 'on':
                raise RuntimeError(f'CUDA graph capture failed for input {shape}: {exc}') from exc
            _LOG.warning('CUDA graph capture failed for input %s (%s); running eagerly',
                         shape, exc)
            self._graph_failed.add(key)
            return None
        self._graphs[key] = runner
        return runner

    def _postprocess(self, raw, items, height, width, net_size):
        """Crop, NMS, to numpy, back to the visible frame: list of (fused, reg, flow, dets)."""
        from tarfuse_ros.core.model.yolo import non_max_suppression
        conf, iou, max_det, classes = self.thresholds
        net_h, net_w = net_size
        # The inputs are finite and in [0, 1], the weights were checked finite when loaded:
        # NaN here means weights so large that the network overflows (a diverged training run,
        # or fp16), and an all-NaN flow was published as it was.
        check_finite_outputs(
            raw, self._weights, 'its weights overflow'
            + (' in float16 (try half=False)' if self._half else
               ' (a training run that diverged?)')
            + '; use another checkpoint (an earlier epoch)')
        fused_y = images.to_uint8(images.unpad(raw['fused'], net_h, net_w)[:, 0])
        registered = images.to_uint8(images.unpad(raw['registered_ir'], net_h, net_w)[:, 0])
        flow = images.unpad(raw['flow'], net_h, net_w).permute(0, 2, 3, 1).float()
        if raw.get('det') is None:  # no detection head
            dets = [None] * raw['fused'].shape[0]
        else:
            dets = non_max_suppression(raw['det'].float(), conf, iou, classes, max_det,
                                       self._num_classes)
        fused_y = fused_y.cpu().numpy()
        registered = registered.cpu().numpy()
        flow = flow.cpu().numpy()
        outputs = []
        for b, (item, det) in enumerate(zip(items, dets)):
            rows = None if det is None else det[:, :6].detach().float().cpu().numpy()
            fused_b, registered_b, flow_b, rows = outputs_to_frame(
                fused_y[b], registered[b], flow[b], rows, height, width, item.ir, item.vi_y)
            crcb = item.crcb
            fused = fused_b if crcb is None else images.merge_luma_chroma(fused_b, crcb)
            flow_b, registered_b = published_outputs(item, flow_b, registered_b)
            outputs.append((fused, registered_b, flow_b,
                            self._detections(rows, height, width)))
        return outputs
