"""The onnxruntime backend: run a ``tarfuse-export`` ONNX file like :class:`FusionEngine`.

:class:`OnnxFusionEngine` takes the same numpy pairs and returns the same
:class:`~tarfuse_ros.core.engine.FusionResult` as the torch engine, computed by onnxruntime:

1. preprocess (numpy/OpenCV): :func:`~tarfuse_ros.core.images.prepare_pair` (the one preparation
   of training, evaluation and the torch engine), planes scaled by 1/255 and padded at the
   bottom/right to multiples of 32 (and the network's minimum size) as the torch engine pads;
2. model: one ``InferenceSession.run`` of the exported graph (inputs ``ir``, ``vi`` and
   ``valid_size``, the size before padding: :data:`ONNX_INPUT_MEANINGS`; outputs
   ``fused``, ``flow``, ``registered_ir``, ``det``: see :data:`ONNX_OUTPUTS`; no ``det`` for a
   checkpoint without detection head, whose detections are then always empty);
3. postprocess (numpy/OpenCV): crop to the visible frame, per-class NMS by OpenCV's
   ``cv2.dnn.NMSBoxesBatched`` with ultralytics' rules (best class per anchor,
   ``score > conf``, suppression when ``IoU > iou``, at most ``max_detections`` by score), boxes
   clipped to the image.

No torch operation runs in any of these steps, and torch is not imported: the export's model
config is parsed with :mod:`~tarfuse_ros.core.model_config` as the checkpoint loader parses a
checkpoint's (fields absent from the metadata at their defaults; an invalid value refused at
start-up, naming the field) and the device parsed with :mod:`~tarfuse_ros.core.devices`, both
torch-free. A float16 export (``tarfuse-export --half``) run on the CPU is said once at
start-up: onnxruntime runs it there no faster than the float32 file, and less exactly.

The exported file carries the checkpoint's JSON config in its ``metadata_props``
(:data:`CONFIG_KEY`: the safetensors header, class names included) and the export's own
description (:data:`ONNX_KEY`: format version, minimum input side, precision); a file without
them is refused with :class:`OnnxModelError`.
"""

import json
import logging
import numbers
from pathlib import Path
import re
import time

import cv2
import numpy as np
from tarfuse_ros.core.files import is_safetensors, is_torch_pickle, plain_zip_problem
from tarfuse_ros.core.fine_passes import BuiltInFinePassesError, check_fine_passes
from tarfuse_ros.core.fine_passes import NoFineStageError
from tarfuse_ros.core.global_stream import check_stream_settings
from tarfuse_ros.core.pair_engine import (check_finite_outputs, check_flags,
                                          check_ir_percentiles, outputs_to_frame, PairEngine,
                                          resize_planes)
from tarfuse_ros.core.sizes import enlarged_size, MAX_ENLARGED_LONG_SIDE

__all__ = ['CONFIG_KEY', 'FUSION_OUTPUTS', 'MIN_OPSET', 'ONNX_FORMAT_VERSION', 'ONNX_INPUTS',
           'ONNX_INPUT_MEANINGS', 'ONNX_KEY', 'ONNX_OUTPUTS', 'OnnxFusionEngine', 'OnnxModelError',
           'import_onnxruntime', 'nms_rows', 'read_onnx_metadata']

_LOG = logging.getLogger(__name__)

ONNX_FORMAT_VERSION = 2  # 2: the valid_size input
MIN_OPSET = 17
CONFIG_KEY = 'tarfuse_config'   # the checkpoint's JSON header, as in the .safetensors file
ONNX_KEY = 'tarfuse_onnx'       # this export: format version, sizes, precision, outputs
ONNX_INPUTS = ('ir', 'vi', 'valid_size')
# Input name -> meaning (also written into the file's metadata).
ONNX_INPUT_MEANINGS = {
    'ir': '(B, 1, H, W) float32 in [0, 1]; H, W multiples of size_multiple, >= min_side',
    'vi': '(B, 1, H, W) float32 in [0, 1], the same H, W',
    'valid_size': '(2,) int64: (h, w) of the images before padding at the bottom/right '
                  '(the global stage fits its map on that region); (H, W) when not padded; '
                  'absent from the export of a model without the orientation global stage',
}
# Output name -> meaning (also written into the file's metadata).
ONNX_OUTPUTS = {
    'fused': '(B, 1, H, W) float32 fused luma Y in [0, 1], visible frame',
    'flow': '(B, 2, H, W) float32 flow in pixels (dx, dy): registered_ir(p) = ir(p + flow(p))',
    'registered_ir': '(B, 1, H, W) float32 IR warped onto the visible frame, [0, 1]',
    'det': '(B, 4 + nc, anchors) float32, ultralytics Detect layout: cx, cy, w, h in input '
           'pixels, then nc class probabilities; needs NMS',
}
# The outputs of an export without detection head (``TarFuseConfig.detect`` false).
FUSION_OUTPUTS = ('fused', 'flow', 'registered_ir')
_PAD_MODES = {'replicate': 'edge', 'reflect': 'reflect', 'constant': 'constant'}
_PRECISIONS = ('float32', 'float16')


def _small_frame_warning(frame_hw, global_min_side):
    """Return the warning for a frame the graph runs below the global stage's min side.

    It names what a user can set: the node parameters ``backend`` and ``weights``, or the
    checkpoint's model field ``input_min_long_side`` (not a node parameter: it travels in the
    checkpoint and the exported graph's metadata), with the least value that lifts this
    frame's shorter side to ``global_min_side`` (:func:`~tarfuse_ros.core.sizes.enlarged_size`).

    Args:
        frame_hw: ``(height, width)`` of the visible frame, pixels.
        global_min_side: the checkpoint's ``global_min_side``, pixels.

    Returns:
        str: one line.

    """
    height, width = (int(v) for v in frame_hw)
    needed = max(height, width, int(global_min_side))
    while (min(enlarged_size(height, width, needed)) < global_min_side
           and needed < MAX_ENLARGED_LONG_SIDE):
        needed += 1
    text = (f"a {width}x{height} frame is below the global stage's min side "
            f'({global_min_side} px): the PyTorch engine enlarges such frames for the global '
            f"fit, the ONNX graph cannot, so its registration may differ from PyTorch's by tens "
            f'of pixels (said once); use backend torch (node parameters backend:=torch and '
            f'weights:=CHECKPOINT.safetensors; in the tools, the .safetensors checkpoint)')
    if min(enlarged_size(height, width, needed)) < global_min_side:
        return text  # no enlargement lifts so thin a frame
    return (f"{text}, or have such frames enlarged for the graph: set the checkpoint's model "
            f'field input_min_long_side (not a node parameter) to {needed} or more, e.g. '
            f'python benchmarks/set_inference_fields.py CHECKPOINT OUT --set '
            f'input_min_long_side={needed}, and export OUT again with tarfuse-export')


def import_onnxruntime():
    """Return the ``onnxruntime`` module, or raise ``ValueError`` saying how to install it.

    It was a ``ModuleNotFoundError`` traceback (the node stopped with one at start-up).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError(f'the onnxruntime backend needs the onnxruntime package, which cannot '
                         f'be imported ({error}): install it in this Python environment (pip '
                         f'install onnxruntime; onnxruntime-gpu for CUDA), or run the '
                         f'.safetensors checkpoint with the torch backend') from None
    return onnxruntime


class OnnxModelError(ValueError):
    """An ONNX file is missing, unreadable, or not a TarFuse export of a known format."""


def _missing_file_error(path):
    """Return the error for an ONNX path that is not a file (missing, or a folder)."""
    what = 'is a folder, not an ONNX file' if path.is_dir() else 'does not exist'
    return OnnxModelError(f'ONNX file {str(path)!r} {what}; export one with tarfuse-export '
                          f'WEIGHTS.safetensors --out MODEL.onnx')


def _session_error(path, error):
    zipped = plain_zip_problem(path, 'an ONNX model', '.onnx')
    if zipped is not None:  # it was called a PyTorch checkpoint
        return OnnxModelError(zipped)
    if is_torch_pickle(path):
        return OnnxModelError(
            f'{path} is a PyTorch pickle/zip checkpoint, not an ONNX model: export a '
            f'.safetensors checkpoint with tarfuse-export WEIGHTS.safetensors --out MODEL.onnx')
    if is_safetensors(path):
        return OnnxModelError(
            f'{path} is a .safetensors checkpoint, not an ONNX model: run it with the torch '
            f'backend, or export it with tarfuse-export {path} --out MODEL.onnx')
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # onnxruntime's words follow the C++ source line and signature it failed in (over 300
    # characters, which cut the reason off): 'failed:/onnxruntime_src/...model.cc:256
    # onnxruntime::Model::Model(...&) Unsupported model IR version: 11, ...'.
    reason = re.sub(r'^\[ONNXRuntimeError\] : \d+ : \w+ : Load model from .*? failed:', '',
                    first)
    reason = re.sub(r'^\S+\.(?:cc|cpp|h):\d+ .*?\) (?=[A-Z])', '', reason)
    if re.search(r'IR version|opset', reason, re.IGNORECASE):
        # An export of a newer opset (--opset 23) than the robot's onnxruntime loads: a file
        # of tarfuse-export all the same, which 'export one with tarfuse-export' did not fix.
        version = getattr(import_onnxruntime(), '__version__', '?')
        return OnnxModelError(
            f'{path} was written for a newer onnxruntime than this one ({version}): '
            f'{reason[:600]}; export it again with an opset this onnxruntime loads '
            f'(tarfuse-export WEIGHTS.safetensors --out MODEL.onnx, opset {MIN_OPSET} by '
            f'default), or install a newer onnxruntime')
    return OnnxModelError(
        f'{path} is not a loadable ONNX model ({reason[:300]}); export one with '
        f'tarfuse-export WEIGHTS.safetensors --out MODEL.onnx')


def _graph_fine_passes(model, recorded=True):
    """Return the fine passes an exported graph of the parsed config ``model`` runs (0: none).

    As :func:`~tarfuse_ros.core.engine.fine_passes_of` counts them on the torch model: only an
    orientation global stage with a fine cell has them (an export with ``--fine-passes 0``
    records ``global_fine_cell`` 0). None where the graph has them but ``recorded`` is False
    (its metadata has no ``global_fine_passes``: the parsed default is not the graph's count).
    """
    orientation = (model.registration == 'match' and model.global_stage
                   and model.global_features == 'orientation')
    if not orientation or model.global_fine_cell <= 0:
        return 0
    return int(model.global_fine_passes) if recorded else None


def _metadata(path, session):
    """Return ``(checkpoint config dict, export dict, TarFuseConfig)`` from a session, checked.

    The ``TarFuseConfig`` is the model config parsed as the checkpoint loader parses a
    checkpoint's (fields absent from the metadata at their defaults).
    """
    props = session.get_modelmeta().custom_metadata_map or {}
    if CONFIG_KEY not in props or ONNX_KEY not in props:
        raise OnnxModelError(
            f'{path} has no {CONFIG_KEY!r}/{ONNX_KEY!r} metadata, so it was not written by '
            f'tarfuse-export; export the checkpoint with tarfuse-export WEIGHTS.safetensors '
            f'--out MODEL.onnx')
    try:
        config, export = json.loads(props[CONFIG_KEY]), json.loads(props[ONNX_KEY])
    except json.JSONDecodeError as error:
        raise OnnxModelError(f'{path}: its TarFuse metadata is not valid JSON ({error}); '
                             f're-export it with tarfuse-export') from None
    if not isinstance(config, dict) or not isinstance(config.get('model'), dict) or not (
            isinstance(export, dict)):
        raise OnnxModelError(f'{path}: its TarFuse metadata has no model config; re-export it '
                             f'with tarfuse-export')
    if export.get('format_version') != ONNX_FORMAT_VERSION:
        raise OnnxModelError(
            f'{path} has ONNX format_version {export.get("format_version")!r} but this '
            f'tarfuse_ros reads version {ONNX_FORMAT_VERSION}; re-export it with this release')
    model_config = _check_metadata_values(path, config['model'], export)
    inputs = tuple(arg.name for arg in session.get_inputs())
    outputs = tuple(arg.name for arg in session.get_outputs())
    if inputs not in (ONNX_INPUTS, ONNX_INPUTS[:2]) or set(outputs) not in (
            set(ONNX_OUTPUTS), set(FUSION_OUTPUTS)):
        raise OnnxModelError(
            f'{path} has inputs {inputs} and outputs {outputs}; a TarFuse export has inputs '
            f'{ONNX_INPUTS} (without valid_size for a model without the orientation global '
            f'stage) and outputs {tuple(ONNX_OUTPUTS)} (without det for a model without '
            f'detection head); re-export it with tarfuse-export')
    if model_config.detect != ('det' in outputs):  # each frame failed, or detected nothing
        raise OnnxModelError(
            f'{path}: its metadata says detect {str(model_config.detect).lower()} but its graph '
            f'has {"a" if "det" in outputs else "no"} det output: the metadata was edited; '
            f're-export the checkpoint with tarfuse-export')
    return config, export, model_config


def _check_metadata_values(path, model, export):
    """Parse the metadata's model config; raise :class:`OnnxModelError` where it is no export's.

    Args:
        path: the ONNX file (named in the message).
        model: the checkpoint's model config from the metadata (a dict).
        export: the export's description from the metadata (a dict).

    Returns:
        :class:`~tarfuse_ros.core.model_config.TarFuseConfig`: ``model`` parsed as
        :func:`~tarfuse_ros.core.checkpoint.load_checkpoint` parses a checkpoint's (absent
        fields at their defaults, a missing ``registration`` the paper's MSRB). The engine
        reads it, never ``model`` raw: a config without ``class_names`` named no class and
        failed every frame as 'edited metadata', one without ``global_stage`` ran without the
        small-frame warning, where the checkpoint loader gives both their defaults.

    Raises:
        OnnxModelError: a model config that ``TarFuseConfig`` refuses (as a checkpoint's is
            refused by :func:`~tarfuse_ros.core.checkpoint.load_checkpoint`: class names and
            number of classes, ``input_min_long_side``, ...), or a ``size_multiple`` other
            than 32 or a ``min_side`` that is not an integer >= 0 (pixels).

    """
    from tarfuse_ros.core.model_config import SIZE_MULTIPLE, TarFuseConfig

    values = dict(model)
    # As load_checkpoint: configs written before the matching registration hold the MSRB.
    values.setdefault('registration', 'paper')
    try:
        parsed = TarFuseConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OnnxModelError(f'{path}: the checkpoint config in its metadata is invalid '
                             f'({error}); re-export the checkpoint with tarfuse-export') from None
    multiple, min_side = export.get('size_multiple'), export.get('min_side')
    if type(multiple) is not int or multiple != SIZE_MULTIPLE or type(min_side) is not int \
            or min_side < 0:
        raise OnnxModelError(
            f'{path}: its export metadata has size_multiple {multiple!r} and min_side '
            f'{min_side!r}, not {SIZE_MULTIPLE} and an integer >= 0 (pixels) as tarfuse-export '
            f'writes them; re-export the checkpoint with tarfuse-export')
    if export.get('precision') not in _PRECISIONS:
        raise OnnxModelError(
            f'{path}: its export metadata has precision {export.get("precision")!r}, not one '
            f'of {_PRECISIONS} as tarfuse-export writes it; re-export the checkpoint with '
            f'tarfuse-export')
    return parsed


def read_onnx_metadata(path):
    """Return the TarFuse metadata of an exported file, checked.

    Args:
        path: an ``.onnx`` file written by ``tarfuse-export``.

    Returns:
        ``(config, export)``: the checkpoint's JSON header (``format_version``, ``model`` with
        ``class_names``, ``input``, ``provenance``) and the export's description
        (``format_version``, ``min_side``, ``size_multiple``, ``precision``, ``opset``,
        ``outputs``, ``source``).

    Raises:
        OnnxModelError: missing or unloadable file, not a TarFuse export, or metadata whose
            values an export does not hold (a model config the checkpoint loader refuses).
        ValueError: onnxruntime not installed (:func:`import_onnxruntime`).

    """
    ort = import_onnxruntime()

    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path)
    # No graph rewrites: the session is opened for its metadata and input / output names only
    # (with onnxruntime's default ones, the shipped model's export took 8 s of CPU time
    # instead of 2.6 s on a 2-core VM, to say what is in its metadata).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
        raise _session_error(path, error) from None
    return _metadata(path, session)[:2]


def _providers(device, allow_cpu_fallback):
    """Return ``(providers, device string)`` for ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    ort = import_onnxruntime()

    from tarfuse_ros.core.devices import DeviceUnavailableError, parse_device
    kind, index = parse_device(device)
    if kind == 'cpu':
        return ['CPUExecutionProvider'], 'cpu'
    if 'CUDAExecutionProvider' in ort.get_available_providers():
        return ([('CUDAExecutionProvider', {'device_id': index}), 'CPUExecutionProvider'],
                f'cuda:{index}')
    problem = (f'device {device!r} was requested but this onnxruntime '
               f'({ort.__version__}) has no CUDAExecutionProvider (install onnxruntime-gpu)')
    if allow_cpu_fallback:
        _LOG.warning('%s; falling back to the CPU (allow_cpu_fallback is true; much slower)',
                     problem)
        return ['CPUExecutionProvider'], 'cpu'
    raise DeviceUnavailableError(problem)


def nms_rows(det, conf, iou, max_det, classes=None):
    """Non-maximum suppression of one image's raw detections (ultralytics' rules, OpenCV NMS).

    Each anchor keeps its best class; anchors with ``score > conf`` (and a class in
    ``classes``) go through per-class NMS (``cv2.dnn.NMSBoxesBatched``: a box is suppressed by
    a higher-scoring box of its class with ``IoU > iou``); the ``max_det`` best remain.

    Args:
        det: ``(4 + nc, anchors)`` float array: ``cx, cy, w, h`` in pixels, then the class
            probabilities (one image of the ``det`` output).
        conf, iou: thresholds in [0, 1].
        max_det: the most detections kept (``>= 1``).
        classes: class ids to keep, or None for all.

    Returns:
        float32 ``(N, 6)``: ``x1, y1, x2, y2, score, class_id`` by decreasing score, in pixels
        of the network input.

    """
    det = np.asarray(det, dtype=np.float32)
    scores_all = det[4:]
    class_ids = scores_all.argmax(axis=0)
    scores = scores_all.max(axis=0)
    keep = scores > conf
    if classes is not None:
        keep &= np.isin(class_ids, np.asarray(classes))
    if not keep.any():
        return np.zeros((0, 6), np.float32)
    centre, size = det[:2, keep].T, det[2:4, keep].T
    corners = np.concatenate((centre - size / 2, centre + size / 2), axis=1)
    scores, class_ids = scores[keep], class_ids[keep]
    rects = np.concatenate((corners[:, :2], corners[:, 2:] - corners[:, :2]), axis=1)
    # score_threshold 0: the conf filter above already applied ultralytics' strict '>'.
    chosen = cv2.dnn.NMSBoxesBatched(rects.astype(np.float64).tolist(), scores.tolist(),
                                     class_ids.tolist(), 0.0, float(iou))
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    # OpenCV returns survivors in decreasing score; a stable sort keeps that among equal scores.
    chosen = chosen[np.argsort(-scores[chosen], kind='stable')][:max_det]
    return np.concatenate((corners[chosen], scores[chosen, None],
                           class_ids[chosen, None].astype(np.float32)), axis=1)


class OnnxFusionEngine(PairEngine):
    """Run a ``tarfuse-export`` ONNX file on numpy IR/visible pairs with onnxruntime.

    The interface of :class:`~tarfuse_ros.core.engine.FusionEngine` (``infer``,
    ``infer_batch``, ``set_thresholds``, ``thresholds``, ``set_registration_prior``,
    ``registration_prior``, ``class_names``, ``device``, ``half``)
    with the same outputs within float tolerance.

    Args:
        weights: path of an ``.onnx`` file written by ``tarfuse-export``.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (CUDA needs ``onnxruntime-gpu``).
        half: ignored (with a warning when true): the precision is the file's
            (``tarfuse-export --half``).
        threads: onnxruntime intra-op threads of this session (None: onnxruntime's default).
        conf_threshold, iou_threshold, max_detections, classes: NMS settings (see
            :meth:`set_thresholds`).
        allow_cpu_fallback: use the CPU with a warning when CUDA is asked for but absent.
        ir_norm, ir_low, ir_high, pad_mode, registration_prior: as :class:`FusionEngine`
            (the prior's pre-warp and flow composition are the same NumPy/OpenCV code).
        scale_search: True only: the graph runs the scales it was exported with
            (``ValueError`` for False: export with ``tarfuse-export WEIGHTS --out MODEL.onnx
            --no-scale-search``).
        fine_passes: None or the graph's own count (:attr:`fine_passes`, from its metadata):
            the graph runs the global stage's fine passes it was exported with built in
            (:class:`~tarfuse_ros.core.fine_passes.BuiltInFinePassesError` for another count
            in [0, 8]: export with ``tarfuse-export WEIGHTS --out MODEL.onnx --fine-passes
            N``; :class:`~tarfuse_ros.core.fine_passes.NoFineStageError` for 1-8 of a graph
            without an orientation global stage, as ``FusionEngine``). None only where the
            metadata does not record the count (``BuiltInFinePassesError`` with ``built_in``
            None for 0-8: export again to record it).
        global_every, global_window: 1 only, global_track: 0 only (``ValueError`` otherwise):
            the graph runs its global stage on every pair (the stream settings are the torch
            engine's).
        input_min_long_side: as :class:`~tarfuse_ros.core.engine.FusionEngine`'s (None: the
            checkpoint's value in the export's metadata).
        input_max_long_side: as :class:`~tarfuse_ros.core.engine.FusionEngine`'s.

    Raises:
        OnnxModelError: missing, unloadable or foreign ONNX file, or metadata whose values
            an export does not hold (:func:`read_onnx_metadata`); from ``infer``, a ``det``
            output whose number of classes is not the metadata's (edited metadata), or NaN or
            infinite ``fused``, ``flow`` or ``registered_ir`` (damaged weights).
        tarfuse_ros.core.runtime.DeviceUnavailableError: (a ``RuntimeError``) CUDA
            unavailable (without ``allow_cpu_fallback``).
        ValueError: bad settings; onnxruntime not installed (:func:`import_onnxruntime`).

    """

    backend = 'onnxruntime'

    def __init__(self, weights, device='cpu', half=False, threads=None, conf_threshold=0.25,
                 iou_threshold=0.45, max_detections=100, classes=None, allow_cpu_fallback=False,
                 ir_norm='percentile', ir_low=0.5, ir_high=99.5, pad_mode='replicate',
                 registration_prior=None, scale_search=True, global_every=1, global_window=1,
                 input_min_long_side=None, input_max_long_side=0, fine_passes=None,
                 global_track=0):
        ort = import_onnxruntime()
        from tarfuse_ros.core import images, prior

        if weights is None or (isinstance(weights, str) and not weights.strip()):
            raise OnnxModelError('the onnxruntime backend needs an .onnx file: export one with '
                                 'tarfuse-export WEIGHTS.safetensors --out MODEL.onnx')
        check_flags(half=half, allow_cpu_fallback=allow_cpu_fallback, scale_search=scale_search)
        if not scale_search:
            raise ValueError('scale_search=False needs the torch engine: an ONNX graph has the '
                             'scales it was exported with built in; export one without the '
                             'search instead (tarfuse-export WEIGHTS --out MODEL.onnx '
                             '--no-scale-search)')
        check_fine_passes(fine_passes)  # compared with the graph's own once it is read
        check_stream_settings(global_every, global_window, global_track, None)
        if (global_every, global_window, global_track) != (1, 1, 0):
            raise ValueError('global_every / global_window other than 1 and global_track other '
                             'than 0 need the torch engine: an ONNX graph runs its global stage '
                             'on every pair')
        if ir_norm not in images.IR_NORMS:
            raise ValueError(f'ir_norm must be one of {images.IR_NORMS}, got {ir_norm!r}')
        check_ir_percentiles(ir_low, ir_high)
        if pad_mode not in _PAD_MODES:
            raise ValueError(f'pad_mode must be one of {tuple(_PAD_MODES)}, got {pad_mode!r}')
        prior.check_prior(registration_prior)  # fail before loading the graph
        self._prior_module = prior
        # numbers.Integral: NumPy integers too (np.int64(2) was 'not an integer').
        if threads is not None and (isinstance(threads, bool)
                                    or not isinstance(threads, numbers.Integral) or threads < 1):
            raise ValueError(f'threads must be None or an integer >= 1, got {threads!r}')
        if half:
            _LOG.warning('half=True is ignored by the onnxruntime backend: the precision is '
                         "the ONNX file's (tarfuse-export --half)")
        self._weights = Path(weights)
        if not self._weights.is_file():
            raise _missing_file_error(self._weights)
        providers, self._device = _providers(device, allow_cpu_fallback)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # onnxruntime's default graph rewrites (all levels), layout ones included. With the
        # basic ones only, the session opened in about half the time (2-core VM, 1 thread, the
        # shipped model's export without the scale search: 3.3-3.5 s instead of 6.3 s); where
        # the matching is close to a tie (a CVC-14 pair at 641x481) the outputs then drifted
        # from PyTorch's by 0.42 px of flow instead of 0.06 on that VM, but by 0.21 instead of
        # 0.28 on another CPU (AVX-512): the drift is the CPU's kernels' (test_onnx.py).
        try:
            self._session = ort.InferenceSession(str(self._weights), options,
                                                 providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
            raise _session_error(self._weights, error) from None
        self._checkpoint_config, self._export, self._model_config = _metadata(
            self._weights, self._session)
        self._input_names = tuple(arg.name for arg in self._session.get_inputs())
        # A tarfuse-export graph takes any batch and size; a file whose sizes were fixed later
        # (e.g. for TensorRT) runs frames of those sizes only (checked per call).
        self._input_shapes = {arg.name: tuple(arg.shape) for arg in self._session.get_inputs()
                              if arg.name in ('ir', 'vi')}
        if self._device != 'cpu' and 'CUDAExecutionProvider' not in (
                self._session.get_providers()):
            raise RuntimeError(f'onnxruntime could not start CUDA for device {device!r} '
                               f'(providers in use: {self._session.get_providers()})')
        if self._device == 'cpu' and self._export['precision'] == 'float16':
            # Measured (2-core VM, 1 thread, the shipped model, a 507x346 pair): 0.93 s a pair
            # instead of 0.86 s, the session opened in 9.8 s instead of 6.2 s, the fused image
            # up to 8 grey levels off; nothing said so.
            _LOG.warning('%s is a float16 export (tarfuse-export --half) run on the CPU, where '
                         'onnxruntime runs it no faster than a float32 export and less exactly; '
                         'for the CPU, export without --half', self._weights)
        model = self._model_config  # parsed: absent fields at the checkpoint loader's defaults
        orientation = (model.registration == 'match' and model.global_stage
                       and model.global_features == 'orientation')
        self._orientation_stage = bool(orientation)
        self._fine_passes = _graph_fine_passes(
            model, 'global_fine_passes' in self._checkpoint_config['model'])
        if fine_passes and not orientation:  # as FusionEngine: no export would run them
            raise NoFineStageError(
                f'{fine_passes} fine passes asked for, but the ONNX graph {self._weights} has '
                f'no fine stage (no orientation global stage: registration '
                f'{model.registration!r}, global_stage {model.global_stage}, global_features '
                f"{model.global_features!r}): only 0 or the graph's own count apply")
        if fine_passes is not None and self._fine_passes is None:
            raise BuiltInFinePassesError(
                f'{fine_passes} fine passes asked for, but the metadata of the ONNX graph '
                f'{self._weights} does not record how many it runs (no global_fine_passes): '
                f'only its own count applies (None); export it again with tarfuse-export '
                f'WEIGHTS.safetensors --out MODEL.onnx to record it', None)
        if fine_passes is not None and fine_passes != self._fine_passes:
            raise BuiltInFinePassesError(
                f'{fine_passes} fine passes asked for, but the ONNX graph {self._weights} runs '
                f'the {self._fine_passes} fine passes it was exported with, built in: export '
                f'one with {fine_passes} (tarfuse-export WEIGHTS.safetensors --out MODEL.onnx '
                f'--fine-passes {fine_passes}), or ask for its own count',
                self._fine_passes)
        self._detects = 'det' in [arg.name for arg in self._session.get_outputs()]
        super().__init__(model.class_names, model.num_classes, registration_prior,
                         conf_threshold, iou_threshold, max_detections, classes)
        self._images = images
        self._ir_norm, self._ir_low, self._ir_high = ir_norm, float(ir_low), float(ir_high)
        self._pad_mode = pad_mode
        self._multiple = self._export['size_multiple']
        self._min_side = self._export['min_side']
        # PyTorch enlarges frames below the global stage's min side for its fit, the graph
        # cannot (README, ONNX): such frames get other maps here, said once per engine.
        # (The torch model has that stage, and enlarges, only with these three fields.)
        self._global_min_side = model.global_min_side if orientation else 0
        self._small_frame_warned = False
        # Small frames are enlarged for the graph as the torch engine does (the checkpoint's
        # input_min_long_side, kept in the export's metadata, unless overridden).
        self._set_input_min_long_side(input_min_long_side, model.input_min_long_side)
        self._set_input_max_long_side(input_max_long_side)

    # -- properties -------------------------------------------------------------------------
    @property
    def detects(self):
        """Whether the export has a ``det`` output (False: detections are always empty)."""
        return self._detects

    @property
    def fine_passes(self):
        """How many fine passes the graph's global stage runs (0: none, or no such stage).

        Built in at the export (``tarfuse-export --fine-passes``), read from its metadata;
        None where a graph with an orientation global stage and a fine cell has no
        ``global_fine_passes`` in its metadata (the count is not known).
        """
        return self._fine_passes

    @property
    def fine_stage(self):
        """Whether fine passes 1-8 may apply to the graph (as ``FusionEngine.fine_stage``).

        Whether the graph has the orientation global stage: an export of its checkpoint may run
        them (one exported with ``--fine-passes 0`` records no fine cell, so the graph cannot
        tell more).
        """
        return self._orientation_stage

    @property
    def device(self):
        """``'cpu'`` or ``'cuda:N'``: where onnxruntime runs the graph."""
        return self._device

    @property
    def half(self):
        """Whether the ONNX file computes in float16 (``tarfuse-export --half``)."""
        return self._export.get('precision') == 'float16'

    @property
    def config(self):
        """Return the model config, parsed, as a dict (``TarFuseConfig.to_dict``).

        Every field, those absent from the metadata at the defaults the checkpoint loader
        gives them (the metadata as written: :attr:`checkpoint_config`).
        """
        return self._model_config.to_dict()

    @property
    def checkpoint_config(self):
        """The checkpoint's whole JSON header (model, input conventions, provenance)."""
        return self._checkpoint_config

    @property
    def export_info(self):
        """The export's description (format version, min side, precision, opset, outputs)."""
        return dict(self._export)

    # -- inference ---------------------------------------------------------------------------
    def _prepare(self, ir, vi, index):
        """Prepare one pair as the torch engine does (same NumPy/OpenCV code)."""
        suffix = f' #{index}' if index else ''
        pair = self._images.prepare_pair(
            ir, vi, self._ir_norm, self._ir_low, self._ir_high, keep_uint8=True,
            names=('IR image' + suffix, 'visible image' + suffix))
        return self._prior_module.apply_prior(self._prior, pair, (ir.shape[1], ir.shape[0]))

    def _run_group(self, items, height, width, stream_key=None):
        """Same-size prepared pairs -> ``(outputs, (preprocess, model, postprocess) s)``."""
        t0 = time.perf_counter()
        net_size = self.network_size(height, width)
        if min(net_size) < self._global_min_side and not self._small_frame_warned:
            self._small_frame_warned = True
            if min(height, width) >= self._global_min_side:  # input_max_long_side shrank it
                _LOG.warning(f'input_max_long_side {self._max_long_side} shrinks a {width}x'
                             f"{height} frame below the global stage's min side "
                             f'({self._global_min_side} px), which the ONNX graph cannot '
                             f'enlarge for its fit (said once): raise input_max_long_side')
            else:
                _LOG.warning(_small_frame_warning((height, width), self._global_min_side))
        feeds = {'ir': self._batch(resize_planes([item.ir for item in items], net_size)),
                 'vi': self._batch(resize_planes([item.vi_y for item in items], net_size)),
                 'valid_size': np.array(net_size, dtype=np.int64)}
        feeds = {name: feeds[name] for name in self._input_names}
        self._check_fixed_size(feeds['ir'].shape, height, width)
        t1 = time.perf_counter()
        raw = dict(zip([o.name for o in self._session.get_outputs()],
                       self._session.run(None, feeds)))
        t2 = time.perf_counter()
        outputs = self._postprocess(raw, items, height, width, net_size)
        return outputs, (t1 - t0, t2 - t1, time.perf_counter() - t2)

    def _check_fixed_size(self, shape, height, width):
        """Raise ValueError when the graph's inputs have fixed sizes other than ``shape``."""
        for name, fixed in self._input_shapes.items():
            if all(not isinstance(want, int) or want == got for want, got in zip(fixed, shape)):
                continue
            wanted = 'x'.join(str(want) if isinstance(want, int) else '?' for want in fixed)
            raise ValueError(
                f'{self._weights} takes {name} inputs of the fixed shape {wanted} only, but this '
                f'{width}x{height} frame needs {"x".join(str(v) for v in shape)} (a batch of '
                f'{shape[0]}, padded to multiples of {self._multiple}): its sizes were fixed '
                f'after tarfuse-export, whose graphs take any batch and size; export the '
                f'checkpoint again with tarfuse-export WEIGHTS.safetensors --out MODEL.onnx')

    def _batch(self, planes):
        """Stack ``HxW`` planes into a padded ``(B, 1, H', W')`` float32 array in [0, 1]."""
        unit = np.stack([self._images.unit_plane(p) for p in planes])[:, None]
        height, width = unit.shape[2:]
        side = -(-self._min_side // self._multiple) * self._multiple
        pad_h = max((-height) % self._multiple, side - height)
        pad_w = max((-width) % self._multiple, side - width)
        if pad_h or pad_w:
            if self._pad_mode == 'reflect' and (pad_h >= height or pad_w >= width):
                raise ValueError(
                    f'reflect padding of {height}x{width} by ({pad_h}, {pad_w}) needs pads '
                    f'smaller than the image; use pad_mode="replicate"')
            unit = np.pad(unit, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)),
                          mode=_PAD_MODES[self._pad_mode])
        return np.ascontiguousarray(unit, dtype=np.float32)

    def _postprocess(self, raw, items, height, width, net_size):
        """Crop, NMS, 8-bit, back to the frame: list of ``(fused, registered, flow, dets)``."""
        conf, iou, max_det, classes = self.thresholds
        to_uint8 = self._images.to_uint8
        net_h, net_w = net_size
        fused_y = to_uint8(raw['fused'][:, 0, :net_h, :net_w])
        registered = to_uint8(raw['registered_ir'][:, 0, :net_h, :net_w])
        flow = raw['flow'][:, :, :net_h, :net_w].astype(np.float32).transpose(0, 2, 3, 1)
        if 'det' in raw and raw['det'].shape[1] != 4 + self._num_classes:
            raise OnnxModelError(
                f'{self._weights}: its det output holds {raw["det"].shape[1] - 4} classes but '
                f'its metadata names {self._num_classes} (num_classes {self._num_classes}, '
                f'class_names {self.class_names}): the metadata was edited; re-export the '
                f'checkpoint with tarfuse-export')
        # The inputs are finite and in [0, 1]: NaN out means damaged weights (a file whose
        # bytes changed still loads), which would be published as the flow.
        check_finite_outputs(
            raw, self._weights, 'its weights are damaged (a corrupt copy?); copy it again or '
            're-export it with tarfuse-export WEIGHTS.safetensors --out MODEL.onnx',
            OnnxModelError)
        outputs = []
        for b, item in enumerate(items):
            rows = (nms_rows(raw['det'][b], conf, iou, max_det, classes) if 'det' in raw
                    else None)
            fused_b, registered_b, flow_b, rows = outputs_to_frame(
                fused_y[b], registered[b], flow[b], rows, height, width, item.ir, item.vi_y)
            crcb = item.crcb
            fused = (fused_b if crcb is None
                     else self._images.merge_luma_chroma(fused_b, crcb))
            prior = self._prior_module
            flow_b, registered_b = prior.published_outputs(item, flow_b, registered_b)
            outputs.append((fused, registered_b, flow_b,
                            self._detections(rows, height, width)))
        return outputs
