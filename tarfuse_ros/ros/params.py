"""Parameters of the fusion node: declaration, validation and a frozen snapshot.

Every parameter is declared with a :class:`ParameterDescriptor` (description, range or allowed
values).  The node reads them once into :class:`NodeParams`; run-time changes go through
:func:`apply_updates`, which validates them and returns a new snapshot or raises ``ValueError``
with the reason (the node's on-set callback hands that reason back to the caller).
"""

import copy
from dataclasses import dataclass, fields, replace
import difflib
import math
import os
from pathlib import Path
import re

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.parameter import Parameter

from tarfuse_ros.core.backends import BACKENDS
from tarfuse_ros.core.fine_passes import MAX_FINE_PASSES
from tarfuse_ros.core.global_stream import check_stream_settings, MAX_GLOBAL_EVERY
from tarfuse_ros.core.global_stream import MAX_GLOBAL_TRACK, MAX_GLOBAL_WINDOW, PARAMETERS
from tarfuse_ros.core.input_lags import MAX_INFRARED_TIME_OFFSET_S
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.core.sizes import MAX_ENLARGED_LONG_SIDE, MIN_SHRUNK_LONG_SIDE

__all__ = [
    'INFRARED_TRANSPORT_VALUES', 'NodeParams', 'ParameterValueError', 'ParamSpec',
    'PARAMETER_SPECS', 'RELIABILITY_VALUES', 'TRANSPORT_VALUES', 'UNRECORDED_FINE_PASSES',
    'apply_updates', 'canonical_parameters', 'decimal_numbers', 'declare_node_parameters',
    'declared_descriptor', 'descriptor_for', 'fine_passes', 'graph_fine_passes_problem',
    'parameter_source',
    'parameter_updates', 'params_file_sections', 'params_files_for_other_nodes',
    'params_from_values',
    'refinement_settings', 'registration_prior', 'reported_descriptor', 'section_applies',
    'validate_params', 'wrong_type_reason',
]

RELIABILITY_VALUES = ('best_effort', 'reliable')
# image_transport's names: 'raw' subscribes sensor_msgs/Image on <base>, 'compressed'
# sensor_msgs/CompressedImage on <base>/compressed, 'compressedDepth' (infrared only: a 16UC1 /
# 32FC1 image, as a thermal camera's) sensor_msgs/CompressedImage on <base>/compressedDepth.
TRANSPORT_VALUES = ('raw', 'compressed')
INFRARED_TRANSPORT_VALUES = TRANSPORT_VALUES + ('compressedDepth',)
_DEVICE_PATTERN = re.compile(r'^(cpu|cuda|cuda:\d+)$')


@dataclass(frozen=True)
class NodeParams:
    """A validated snapshot of the node's parameters (see ``config/tarfuse.yaml``)."""

    weights: str
    backend: str = 'torch'
    device: str = 'cpu'
    half: bool = False
    allow_cpu_fallback: bool = False
    cpu_threads: int = 0
    max_rate: float = 0.0
    confidence_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    classes: tuple = ()
    sync_approximate: bool = True
    sync_slop: float = 0.05
    sync_queue_size: int = 10
    sync_infrared_time_offset: float = 0.0
    qos_reliability: str = 'best_effort'
    qos_depth: int = 5
    infrared_transport: str = 'raw'
    visible_transport: str = 'raw'
    registration_prior: tuple = ()
    registration_prior_ir_size: tuple = ()
    registration_prior_visible_size: tuple = ()
    registration_scale_search: bool = True
    registration_fine_passes: int = -1
    input_max_long_side: int = 0
    registration_global_every: int = 1
    registration_global_window: int = 1
    registration_global_track: int = 0
    refinement_enabled: bool = False
    refinement_alpha: float = 0.1
    refinement_max_step_px: float = 20.0
    refinement_min_alignment: float = 0.3
    refinement_every_n: int = 1
    publish_fused: bool = True
    publish_fused_compressed: bool = False
    publish_camera_info: bool = True
    publish_detections: bool = True
    publish_registered: bool = True
    publish_debug: bool = False
    diagnostics_period: float = 1.0
    input_timeout: float = 3.0
    time_offset_window: float = 0.0
    health_enabled: bool = True
    health_window: int = 10
    health_every_n: int = 1
    health_max_side: int = 160
    health_min_alignment: float = 0.2
    health_max_flow_px: float = 0.0


@dataclass(frozen=True)
class ParamSpec:
    """How one ROS parameter maps onto a :class:`NodeParams` field.

    ``kind`` is one of ``str``, ``bool``, ``int``, ``float``, ``str_array``, ``float_array``,
    ``int_array``; ``low``/``high``
    bound numbers (inclusive); ``allowed`` lists the allowed strings; ``runtime`` says whether
    the value may change while the node runs.
    """

    name: str
    field: str
    kind: str
    description: str
    low: float = None
    high: float = None
    allowed: tuple = ()
    runtime: bool = False


PARAMETER_SPECS = (
    ParamSpec('weights', 'weights', 'str',
              'Path of the .safetensors checkpoint (backend torch; empty = the shipped model) or '
              'of the .onnx file from tarfuse-export (backend onnxruntime). Restart to change.'),
    ParamSpec('backend', 'backend', 'str',
              "Inference backend: 'torch' (PyTorch, a .safetensors checkpoint) or 'onnxruntime' "
              '(an .onnx file from tarfuse-export, no PyTorch in the inference path). '
              'Restart to change.', allowed=BACKENDS),
    ParamSpec('device', 'device', 'str',
              "Torch device: 'cpu', 'cuda' or 'cuda:N'. Restart to change."),
    ParamSpec('half', 'half', 'bool',
              'Run the network in float16 (CUDA only). Restart to change.'),
    ParamSpec('allow_cpu_fallback', 'allow_cpu_fallback', 'bool',
              'Fall back to the CPU when the CUDA device is unavailable (else fail at start-up).'),
    ParamSpec('cpu_threads', 'cpu_threads', 'int',
              'Torch (or onnxruntime) intra-op threads on the CPU; 0 = the CPUs this process may '
              'use (their own default unless a CPU affinity or a container CPU limit '
              'allows fewer). Restart to change.',
              low=0, high=256),
    ParamSpec('max_rate', 'max_rate', 'float',
              "Run the model on at most this many pairs per second (Hz) of the pairs' stamps, "
              'to leave CPU to other processes; the pairs in between are skipped, counted in '
              '/diagnostics as pairs_skipped_max_rate; 0 = every pair the model has time for '
              '(changeable at run time).', low=0.0, high=1000.0, runtime=True),
    ParamSpec('input_max_long_side', 'input_max_long_side', 'int',
              'Large cameras: the network runs on frames shrunk so their longer side is at '
              'most this many pixels (area average), and the fused image, registered IR, flow '
              'and boxes are brought back to the camera resolution; a 1920x1080 camera at 1024 '
              'costs what a 1024x576 one does. 0 = never shrink; else 256-16384. Frames the '
              'network would run at more than 3840x2160 pixels are skipped (pairs_rejected). '
              'Restart to change.',
              low=0, high=MAX_ENLARGED_LONG_SIDE),
    ParamSpec('confidence_threshold', 'confidence_threshold', 'float',
              'Minimum detection score kept (changeable at run time).', low=0.0, high=1.0,
              runtime=True),
    ParamSpec('iou_threshold', 'iou_threshold', 'float',
              'IoU threshold of non-maximum suppression (changeable at run time).',
              low=0.0, high=1.0, runtime=True),
    ParamSpec('max_detections', 'max_detections', 'int',
              'Maximum detections per image (changeable at run time).', low=1, high=1000,
              runtime=True),
    ParamSpec('classes', 'classes', 'str_array',
              'Class names to keep; empty or unset = all classes (changeable at run time).',
              runtime=True),
    ParamSpec('sync.approximate', 'sync_approximate', 'bool',
              'Approximate-time synchronisation (true) or exact stamps (false). '
              'Restart to change.'),
    ParamSpec('sync.slop', 'sync_slop', 'float',
              'Stamps of an approximate pair differ by less than this (s); for identical '
              'stamps use sync.approximate false. Restart to change.',
              low=0.001, high=10.0),
    ParamSpec('sync.queue_size', 'sync_queue_size', 'int',
              'Messages per input kept by the synchroniser; also how many of its newest stamps '
              'tell a message out of order (ignored) from a time jump. Restart to change.',
              low=1, high=1000),
    ParamSpec('sync.infrared_time_offset', 'sync_infrared_time_offset', 'float',
              'Seconds added to the stamp of every infrared image before it is paired (on a '
              'copy of its header; the outputs keep the visible header): the stamp the visible '
              'driver gives an instant minus the stamp the infrared driver gives the same '
              'instant, e.g. -0.06 when the infrared driver stamps its frames 60 ms later. '
              'Restart to change.', low=-MAX_INFRARED_TIME_OFFSET_S,
              high=MAX_INFRARED_TIME_OFFSET_S),
    ParamSpec('qos.reliability', 'qos_reliability', 'str',
              'Reliability of the input subscriptions. Restart to change.',
              allowed=RELIABILITY_VALUES),
    ParamSpec('qos.depth', 'qos_depth', 'int',
              'History depth (keep last) of the input subscriptions. Restart to change.',
              low=1, high=100),
    ParamSpec('infrared.transport', 'infrared_transport', 'str',
              "Infrared input: 'raw' (sensor_msgs/Image on infrared/image_raw), 'compressed' "
              '(sensor_msgs/CompressedImage on infrared/image_raw/compressed, e.g. 16-bit '
              "PNG) or 'compressedDepth' (sensor_msgs/CompressedImage on "
              "infrared/image_raw/compressedDepth: image_transport's compressedDepth of a "
              '16UC1 / mono16 or 32FC1 image, PNG; RVL is refused). Restart to change.',
              allowed=INFRARED_TRANSPORT_VALUES),
    ParamSpec('visible.transport', 'visible_transport', 'str',
              "Visible input: 'raw' (sensor_msgs/Image on visible/image_raw) or 'compressed' "
              '(sensor_msgs/CompressedImage on visible/image_raw/compressed, JPEG or PNG; '
              'compressedDepth is for depth-like images, the infrared input only). '
              'Restart to change.', allowed=TRANSPORT_VALUES),
    ParamSpec('registration.prior', 'registration_prior', 'float_array',
              'Calibration prior: 9 numbers, a row-major 3x3 homography from IR pixels to '
              'visible pixels (tarfuse-calibrate writes it). The IR is warped by it before the '
              'network, which predicts the residual; empty = no prior. Restart to change.'),
    ParamSpec('registration.prior_ir_size', 'registration_prior_ir_size', 'int_array',
              '[width, height] of the IR images the prior was made for (other sizes of the same '
              'aspect ratio are scaled). Restart to change.'),
    ParamSpec('registration.prior_visible_size', 'registration_prior_visible_size', 'int_array',
              '[width, height] of the visible images the prior was made for. Restart to change.'),
    ParamSpec('registration.scale_search', 'registration_scale_search', 'bool',
              'Let the global stage try the IR / visible scales the model was saved with (the '
              'shipped one: 0.8, 1.0, 1.25) for thermal cameras with another field of view; '
              'false fits scale 1.0 only, about half the CPU time, for rigs whose fields of '
              'view match or that have a registration.prior. Backend torch only (an ONNX graph '
              'has its scales built in). Restart to change.'),
    ParamSpec('registration.fine_passes', 'registration_fine_passes', 'int',
              "How many fine passes (on 4 px cells) refine the global stage's map: a CPU speed "
              "knob, no retraining; -1 = the model's own (the shipped one: 4), 0 = none, else "
              '1-8. Fewer passes save CPU time and cost some accuracy (README, model card). '
              'With backend onnxruntime -1 or the count the ONNX graph was exported with '
              '(it has its passes built in: tarfuse-export --fine-passes). Restart to change.',
              low=-1, high=MAX_FINE_PASSES),
    ParamSpec('registration.global_every', 'registration_global_every', 'int',
              'For one rigid rig: once it holds global_window fits, the global stage fits '
              'its map on one pair in this many and the others skip it (they take about half '
              'of the time of a fitted pair); 1 = every pair. Above 1: not with '
              'registration.global_track, nor with registration.online_refinement.enabled. '
              'Backend torch only. Restart to change.',
              low=1, high=MAX_GLOBAL_EVERY),
    ParamSpec('registration.global_window', 'registration_global_window', 'int',
              'For one rigid rig: every pair starts from the elementwise median of the last '
              'this many global fits (scene-dependent fit errors average out; with 3 or more a '
              'failed fit is outvoted); 1 = the newest fit alone. Above 1: not with '
              'registration.global_track, nor with registration.online_refinement.enabled. '
              'Backend torch only. Restart to change.',
              low=1, high=MAX_GLOBAL_WINDOW),
    ParamSpec('registration.global_track', 'registration_global_track', 'int',
              'For one rig: the global stage refines the map of the previous pair with its '
              'fine passes alone (a map that follows the depth of the scene, at about half '
              'its CPU time) and fits a pair in full once in this many pairs, keeping the map '
              'that agrees better with the visible image; 0 = off (every pair fitted alone). '
              'Not with global_every / global_window above 1, nor with '
              'registration.online_refinement.enabled, nor with registration.fine_passes 0 '
              '(nothing to track with). '
              'Backend torch only. Restart to change.',
              low=0, high=MAX_GLOBAL_TRACK),
    ParamSpec('registration.online_refinement.enabled', 'refinement_enabled', 'bool',
              'Refine the registration prior online: fit a homography to the flow of every '
              'every_n-th pair, reject outliers, smooth the accepted fits (alpha) and use the '
              'result for the following pairs (starts from registration.prior, or none). '
              'Restart to change.'),
    ParamSpec('registration.online_refinement.alpha', 'refinement_alpha', 'float',
              'Smoothing factor per accepted pair, in (0, 1]: the IR corners move this share '
              'of the way to the fit of the pair. Restart to change.', low=0.0, high=1.0),
    ParamSpec('registration.online_refinement.max_step_px', 'refinement_max_step_px', 'float',
              'Reject a pair whose fit moves an IR corner more than this many visible pixels '
              'from the current estimate (> 0). Restart to change.', low=0.0, high=10000.0),
    ParamSpec('registration.online_refinement.min_alignment', 'refinement_min_alignment',
              'float', 'Reject a pair whose registered IR / visible edge alignment is below '
              'this, in [-1, 1]. Restart to change.', low=-1.0, high=1.0),
    ParamSpec('registration.online_refinement.every_n', 'refinement_every_n', 'int',
              'Use one pair in every_n for the refinement. Restart to change.', low=1,
              high=1000),
    ParamSpec('publish.fused', 'publish_fused', 'bool', 'Publish fused/image_raw.', runtime=True),
    ParamSpec('publish.fused_compressed', 'publish_fused_compressed', 'bool',
              'Also publish fused/image_raw/compressed (JPEG, sensor_msgs/CompressedImage).',
              runtime=True),
    ParamSpec('publish.camera_info', 'publish_camera_info', 'bool',
              'Republish the visible camera_info (beside the visible image topic, or '
              'visible/camera_info where remapped) as fused/camera_info.',
              runtime=True),
    ParamSpec('publish.detections', 'publish_detections', 'bool', 'Publish detections.',
              runtime=True),
    ParamSpec('publish.registered', 'publish_registered', 'bool',
              'Publish registered/image_raw (IR warped onto the visible frame).', runtime=True),
    ParamSpec('publish.debug', 'publish_debug', 'bool',
              'Publish debug/image_raw (fused image with boxes and labels).', runtime=True),
    ParamSpec('diagnostics.period', 'diagnostics_period', 'float',
              'Seconds between /diagnostics messages (run time).', low=0.05, high=60.0,
              runtime=True),
    ParamSpec('diagnostics.input_timeout', 'input_timeout', 'float',
              'Seconds without a pair (or one input) before warning (run time); with '
              'use_sim_time, of the ROS time while /clock runs.',
              low=0.1, high=3600.0, runtime=True),
    ParamSpec('diagnostics.time_offset_window', 'time_offset_window', 'float',
              'Estimate the infrared time offset from the last this many seconds of both '
              'cameras (every image decoded and shrunk: extra CPU) and report it in '
              '/diagnostics (sync_time_offset_check), warning when it differs from '
              'sync.infrared_time_offset; 0 = off. Restart to change.', low=0.0, high=600.0),
    ParamSpec('registration_health.enabled', 'health_enabled', 'bool',
              'Score the registration of every every_n-th pair (edge alignment of the '
              'registered IR and the visible image, residual flow) and report it in '
              '/diagnostics, warning when it degrades (run time).', runtime=True),
    ParamSpec('registration_health.window', 'health_window', 'int',
              'Scored pairs in the rolling summary; the verdict waits until it is full '
              '(run time).', low=1, high=1000, runtime=True),
    ParamSpec('registration_health.every_n', 'health_every_n', 'int',
              'Score one pair in every_n (run time).', low=1, high=1000, runtime=True),
    ParamSpec('registration_health.max_side', 'health_max_side', 'int',
              'Longer side (px) of the shrunk planes the score is computed on, also for '
              'the alignment check of the online refinement (run time).',
              low=16, high=4096, runtime=True),
    ParamSpec('registration_health.min_alignment', 'health_min_alignment', 'float',
              'Warn when the window mean edge alignment falls below this, in [-1, 1] '
              '(scene-dependent: set it well below what a good recording shows; run time).',
              low=-1.0, high=1.0, runtime=True),
    ParamSpec('registration_health.max_flow_px', 'health_max_flow_px', 'float',
              'Warn when the window mean |flow| (px, beyond the calibration prior) exceeds '
              'this; 0 = never (run time).', low=0.0, high=10000.0, runtime=True),
)
_BY_NAME = {spec.name: spec for spec in PARAMETER_SPECS}
_TYPES = {
    'str': ParameterType.PARAMETER_STRING,
    'bool': ParameterType.PARAMETER_BOOL,
    'int': ParameterType.PARAMETER_INTEGER,
    'float': ParameterType.PARAMETER_DOUBLE,
    'str_array': ParameterType.PARAMETER_STRING_ARRAY,
    'float_array': ParameterType.PARAMETER_DOUBLE_ARRAY,
    'int_array': ParameterType.PARAMETER_INTEGER_ARRAY,
}
_ARRAY_TYPES = {
    'str_array': Parameter.Type.STRING_ARRAY,
    'float_array': Parameter.Type.DOUBLE_ARRAY,
    'int_array': Parameter.Type.INTEGER_ARRAY,
}


def descriptor_for(spec):
    """Return the :class:`ParameterDescriptor` (description, range, allowed values) of a spec."""
    descriptor = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind],
                                     description=spec.description)
    if spec.kind == 'float' and spec.low is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    elif spec.kind == 'int' and spec.low is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    if spec.allowed:
        descriptor.additional_constraints = 'one of: ' + ', '.join(spec.allowed)
    if spec.kind in ('float_array', 'str_array'):
        # Dynamically typed so that integers ([1, 0, 0, ...]) are accepted in a number list,
        # and any empty list in a name list: an empty list has no element type, and
        # `ros2 param set NODE classes "[]"` sends a bool list. The value is checked (numbers
        # only, names only) when it is read.
        descriptor.type = ParameterType.PARAMETER_NOT_SET
        descriptor.dynamic_typing = True
    if not spec.runtime:
        descriptor.additional_constraints = ' '.join(
            filter(None, [descriptor.additional_constraints, '(fixed while the node runs)']))
    return descriptor


def declared_descriptor(spec):
    """Return the descriptor a spec's parameter is declared with: :func:`descriptor_for`, no range.

    rclpy checks a declared range before the node sees the value, and refuses with its own
    words: at start-up an ``InvalidParameterValueException`` ('Invalid parameter value (99)
    for parameter. Reason: Parameter registration.fine_passes out of range. Min: -1, Max: 8,
    value: 99: registration.fine_passes'), at run time a reason the node's callback never
    gave. Declared without it, the node checks the range (:func:`validate_params`,
    :func:`apply_updates`) and says which value is outside which range, and where to fix it;
    the range is still reported (:func:`reported_descriptor`).
    """
    descriptor = descriptor_for(spec)
    descriptor.floating_point_range = []
    descriptor.integer_range = []
    return descriptor


def reported_descriptor(name, descriptor):
    """Return the descriptor of parameter ``name`` as the node reports it: range, read-only.

    The range of :func:`descriptor_for`, which the parameter is declared without
    (:func:`declared_descriptor`). A parameter fixed at start-up is declared without rclpy's
    read-only flag, whose check refuses every set with 'Trying to set a read-only parameter'
    before the node's callback can say why and which restart to make (and refuses the current
    value too: ``ros2 param load`` of a dump). Reported read-only, ``ros2 param describe`` and
    ``describe_parameters`` say it cannot change while the node runs, and rqt_reconfigure does
    not offer to edit it.
    """
    spec = _BY_NAME.get(name)
    if spec is None:
        return descriptor
    reported = copy.deepcopy(descriptor)
    full = descriptor_for(spec)
    reported.floating_point_range = full.floating_point_range
    reported.integer_range = full.integer_range
    reported.read_only = descriptor.read_only or not spec.runtime
    # rclpy writes the type of every value tried into a dynamically typed parameter's
    # descriptor, a refused one too: `classes` was described as an integer list after a
    # refused [1]. Its type is the one the node reads it as.
    reported.type = _TYPES[spec.kind]
    return reported


def _coerce(spec, value):
    """Return ``value`` as the Python type of ``spec`` or raise ``ValueError``."""
    if spec.kind == 'str_array':
        if value is None:
            return ()
        if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
            raise ParameterValueError(
                spec.name, f'{spec.name} must be a list of strings, got {value!r}')
        items = list(value)  # an empty list of any element type is the empty list
        if not all(isinstance(v, str) for v in items):
            raise ParameterValueError(
                spec.name, f'{spec.name} must be a list of strings, got {items!r}')
        return tuple(v.strip() for v in items if v.strip())
    if spec.kind in ('float_array', 'int_array'):
        return _coerce_numbers(spec, value)
    if spec.kind == 'bool':
        if not isinstance(value, bool):
            raise ParameterValueError(spec.name, f'{spec.name} must be a bool, got {value!r}')
        return value
    if spec.kind == 'str':
        if not isinstance(value, str):
            raise ParameterValueError(spec.name, f'{spec.name} must be a string, got {value!r}')
        if spec.name == 'weights':
            # Neither the shell (in -p weights:=~/m.safetensors), YAML nor rcl expands '~'.
            return os.path.expanduser(value.strip())
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterValueError(spec.name, f'{spec.name} must be a number, got {value!r}')
    if spec.kind == 'int':
        if int(value) != value:
            raise ParameterValueError(spec.name, f'{spec.name} must be an integer, got {value!r}')
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ParameterValueError(spec.name, f'{spec.name} must be finite, got {value!r}')
    return value


def _coerce_numbers(spec, value):
    """Return a number list parameter as a tuple (of floats or ints) or raise ``ValueError``."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
        raise ParameterValueError(
            spec.name, f'{spec.name} must be a list of numbers, got {value!r}')
    items = list(value)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise ParameterValueError(
            spec.name, f'{spec.name} must be a list of numbers, got {items!r}')
    if spec.kind == 'int_array':
        if any(int(v) != v for v in items):
            raise ParameterValueError(
                spec.name, f'{spec.name} must be a list of integers, got {items!r}')
        return tuple(int(v) for v in items)
    return tuple(float(v) for v in items)


def fine_passes(params):
    """Return the engines' ``fine_passes`` of ``params``: None for -1 (the model's own)."""
    passes = params.registration_fine_passes
    return None if passes == -1 else passes


def registration_prior(params):
    """Return the :class:`~tarfuse_ros.core.prior.RegistrationPrior` of ``params``, or None.

    Raises ``ValueError`` naming the parameter when the prior is invalid (not 9 finite numbers,
    not invertible, sizes missing or not positive, the IR frame mapped outside the visible
    frame: :func:`~tarfuse_ros.core.prior.make_prior`).
    """
    from tarfuse_ros.core.prior import make_prior
    return make_prior(params.registration_prior, params.registration_prior_ir_size,
                      params.registration_prior_visible_size)


def refinement_settings(params):
    """Return the :class:`~tarfuse_ros.core.refine.RefinementSettings` of ``params``.

    ``registration.online_refinement.*``, with the alignment scored at
    ``registration_health.max_side``. Raises ``ValueError`` naming the parameter when a value
    is out of range (e.g. ``alpha`` 0: the estimate would never move).
    """
    from tarfuse_ros.core.refine import RefinementSettings
    try:
        return RefinementSettings(
            alpha=params.refinement_alpha, max_step_px=params.refinement_max_step_px,
            min_alignment=params.refinement_min_alignment, every_n=params.refinement_every_n,
            max_side_px=params.health_max_side)
    except ValueError as exc:
        raise ValueError(f'registration.online_refinement.{exc}') from None


class ParameterValueError(ValueError):
    """A value outside a parameter's range or values, or of another type (``name``: its name)."""

    def __init__(self, name, message):
        """Say ``message`` about the parameter ``name``."""
        super().__init__(message)
        self.name = name


def _check_value(spec, value):
    """Raise :class:`ParameterValueError` for a ``value`` outside the range or values of a spec."""
    if spec.low is not None and not spec.low <= value <= spec.high:
        raise ParameterValueError(
            spec.name, f'{spec.name}={value!r} is outside [{spec.low}, {spec.high}]')
    if spec.name == 'visible.transport' and value == 'compressedDepth':
        raise ParameterValueError(
            spec.name,
            "visible.transport='compressedDepth' is not allowed: compressedDepth carries "
            'one-channel 16-bit or float depth-like images (16UC1 / 32FC1; a thermal camera '
            "may send them: infrared.transport: compressedDepth), and a visible camera's "
            "image is no such image; use 'raw' or 'compressed'")
    if spec.allowed and value not in spec.allowed:
        raise ParameterValueError(
            spec.name,
            f'{spec.name}={value!r} is not allowed; use one of: {", ".join(spec.allowed)}')


# graph_fine_passes of an ONNX graph whose metadata does not record its count: -1 only applies.
UNRECORDED_FINE_PASSES = 'unrecorded'


def graph_fine_passes_problem(params, built_in, fine_stage=True):
    """Return why the loaded model cannot run ``registration.fine_passes`` of ``params``, or None.

    ``fine_stage`` False: the model (the checkpoint, or the ONNX graph) has no fine stage (no
    orientation global stage, or a checkpoint's ``global_fine_cell`` 0), so no fine passes
    apply: 0 or -1 only (said instead of an export to make), with either backend.
    ``built_in``: with backend onnxruntime, the count the graph was exported with (0-8; it has
    them built in), so -1 or that count only; :data:`UNRECORDED_FINE_PASSES` where its metadata
    does not record the count (the engine's ``fine_passes`` None), so -1 only; None: not
    checked (backend torch).
    """
    passes = params.registration_fine_passes
    onnx = params.backend == 'onnxruntime'
    if passes > 0 and not fine_stage:
        model = 'ONNX graph' if onnx else 'model'
        return (f'registration.fine_passes {passes}: the {model} {params.weights} has no '
                f'fine stage (no orientation global stage), so no fine passes apply; set '
                f"registration.fine_passes to 0 or -1 (the model's own)")
    if not onnx or built_in is None or passes in (-1, built_in):
        return None
    if built_in == UNRECORDED_FINE_PASSES:
        return (f'registration.fine_passes {passes}: the metadata of the ONNX graph '
                f'{params.weights} does not record how many fine passes it runs (no '
                f"global_fine_passes), so only -1 (the graph's own) applies; set "
                f'registration.fine_passes to -1, or export the graph again with tarfuse-export '
                f'WEIGHTS.safetensors --out MODEL.onnx to record its count')
    return (f'registration.fine_passes {passes}: the ONNX graph {params.weights} runs the '
            f'{built_in} fine passes it was exported with, built in; export one with {passes} '
            f'(tarfuse-export WEIGHTS.safetensors --out MODEL.onnx --fine-passes {passes}) and '
            f"run it, or set registration.fine_passes to {built_in} or -1 (the graph's own)")


def validate_params(params, graph_fine_passes=None, fine_stage=True):
    """Check every field of a :class:`NodeParams`; raise ``ValueError`` naming the bad one.

    Known once the model loaded (:func:`graph_fine_passes_problem`): ``graph_fine_passes``,
    with backend onnxruntime the fine passes the ONNX graph runs (its metadata; None: not
    known, not checked); ``fine_stage``, whether the model has a fine stage (True: not
    checked).
    """
    # Said as FusionEngine and tarfuse-fuse say them, with the parameters' names (their ranges
    # too: they are the engine's).
    check_stream_settings(params.registration_global_every, params.registration_global_window,
                          params.registration_global_track, params.registration_fine_passes,
                          PARAMETERS)
    for spec in PARAMETER_SPECS:
        _check_value(spec, getattr(params, spec.field))
    if not _DEVICE_PATTERN.match(params.device):
        raise ValueError(f"device={params.device!r} is not valid; use 'cpu', 'cuda' or 'cuda:N'")
    if params.half and params.device == 'cpu':
        raise ValueError('half=true needs a CUDA device; set half:=false for device cpu')
    if not params.weights:
        raise ValueError('weights is empty')
    if 0 < params.input_max_long_side < MIN_SHRUNK_LONG_SIDE:
        raise ValueError(f'input_max_long_side={params.input_max_long_side} is not valid: 0 '
                         f'(never shrink) or {MIN_SHRUNK_LONG_SIDE}-{MAX_ENLARGED_LONG_SIDE} px')
    registration_prior(params)
    refinement_settings(params)
    if params.backend == 'onnxruntime' and not params.registration_scale_search:
        raise ValueError(
            'registration.scale_search=false needs backend torch: an ONNX graph has the '
            'scales it was exported with built in; use backend torch, or export the graph '
            'without the search (tarfuse-export WEIGHTS --out MODEL.onnx --no-scale-search) '
            'and leave this parameter true')
    problem = graph_fine_passes_problem(params, graph_fine_passes, fine_stage)
    if problem:
        raise ValueError(problem)
    stream = params.registration_global_every > 1 or params.registration_global_window > 1
    if params.backend == 'onnxruntime' and stream:
        raise ValueError(
            'registration.global_every / registration.global_window above 1 need backend '
            'torch: an ONNX graph runs its global stage on every pair; use backend torch, or '
            'leave both at 1')
    track = params.registration_global_track
    if track and params.backend == 'onnxruntime':
        raise ValueError(
            f'registration.global_track={track} needs backend torch: an ONNX graph runs its '
            f'whole global stage on every pair; use backend torch, or leave it 0')
    if track and params.refinement_enabled:
        raise ValueError(
            f'registration.global_track={track} and registration.online_refinement.enabled '
            f'both follow the rig over the stream, and each refined prior would make the '
            f'tracking start over: enable one of them')
    if params.refinement_enabled and stream:
        raise ValueError(
            'registration.global_every / registration.global_window above 1 and '
            'registration.online_refinement.enabled both keep the rig transform over the '
            'stream, and each refined prior would make the global fits start over: enable '
            'one of them')
    if params.backend == 'onnxruntime' and params.weights.endswith('.safetensors'):
        raise ValueError(
            f'backend onnxruntime runs an .onnx file but weights is the checkpoint '
            f'{params.weights!r}; export it with tarfuse-export {params.weights} --out '
            f'MODEL.onnx and pass -p weights:=MODEL.onnx (or use backend torch)')
    return params


def params_from_values(values):
    """Build a validated :class:`NodeParams` from ``{parameter name: value}``.

    Missing names take their defaults; an empty ``weights`` means the shipped model.
    """
    unknown = set(values) - set(_BY_NAME)
    if unknown:
        raise ValueError(f'unknown parameters: {sorted(unknown)}')
    kwargs = {}
    for name, value in values.items():
        spec = _BY_NAME[name]
        if value is None and not spec.kind.endswith('_array'):
            continue
        kwargs[spec.field] = _coerce(spec, value)
    if not kwargs.get('weights'):
        kwargs['weights'] = str(default_weights_path())
    return validate_params(NodeParams(**kwargs))


def apply_updates(current, updates, graph_fine_passes=None, fine_stage=True):
    """Return ``current`` with ``{parameter name: value}`` applied, or raise ``ValueError``.

    Only parameters marked as run-time changeable may change; setting a fixed parameter to its
    current value is accepted; a value of None (``ros2 param delete``) is refused.  Names that
    are not ours (``use_sim_time``, ``qos_overrides.*``) are ignored. ``graph_fine_passes``,
    ``fine_stage``: as :func:`validate_params` (the refusal of a fixed parameter says when
    a restart with the new value would fail too).
    """
    changes = {}
    for name, value in updates.items():
        spec = _BY_NAME.get(name)
        if spec is None:
            continue
        if value is None:  # no value: ros2 param delete; rclpy would undeclare the parameter
            raise ValueError(f'{name} cannot be deleted while the node runs; set a value '
                             f'instead')
        value = _value_in_use(spec, value)
        if value == getattr(current, spec.field):
            continue
        if not spec.runtime:
            problem = _start_up_problem(current, spec, value, graph_fine_passes,
                                        fine_stage)
            if problem:  # a restart with it would fail too: say why, not how to restart
                raise ValueError(f'{name} cannot change while the node runs, and {value!r} '
                                 f'would be refused at start-up too (with the other parameters '
                                 f'as they are): {problem}')
            raise ValueError(
                f'{name} cannot change while the node runs (the model, device, synchroniser '
                f'and subscriptions are built at start-up); restart the node with '
                f'-p {name}:={_command_line_value(value)} instead')
        _check_value(spec, value)
        changes[spec.field] = value
    return (validate_params(replace(current, **changes), graph_fine_passes, fine_stage)
            if changes else current)


def _value_in_use(spec, value):
    """Return ``value`` as the node uses it: coerced, an empty ``weights`` the shipped file."""
    value = _coerce(spec, value)
    if spec.name == 'weights' and not value:
        value = str(default_weights_path())
    return value


def _start_up_problem(current, spec, value, graph_fine_passes=None, fine_stage=True):
    """Return why the node would refuse ``value`` for ``spec`` at start-up, or None.

    The other parameters keep their current values (a value valid only with others changed
    too, e.g. ``backend`` onnxruntime with an ``.onnx`` file as ``weights``, says so);
    ``graph_fine_passes``, ``fine_stage``: as :func:`validate_params`.
    """
    try:
        _check_value(spec, value)
        validate_params(replace(current, **{spec.field: value}), graph_fine_passes,
                        fine_stage)
    except ValueError as exc:
        return str(exc)
    return None


def _command_line_value(value):
    """Return ``value`` written as a ``-p name:=value`` that rcl reads with its type.

    One shell word: a list as ``[640,512]``, a bool as ``true``, a string quoted only where
    rcl would read it as another type (``"1"``) or the shell would split it (``'a b'``).
    """
    if isinstance(value, tuple):
        return '[' + ','.join(_command_line_value(v) for v in value) + ']'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and _rcl_scalar_type(value) != Parameter.Type.STRING:
        return f'"{value}"'
    if isinstance(value, str) and value.split() != [value]:
        return f"'{value}'"
    return str(value)


def declare_node_parameters(node):
    """Declare every parameter on ``node`` and return the validated :class:`NodeParams`.

    Raises ``ValueError`` with the offending name and value when an override is invalid.
    """
    defaults = {f.name: f.default for f in fields(NodeParams) if f.name != 'weights'}
    defaults['weights'] = str(default_weights_path())
    values, declared = {}, []
    for spec in PARAMETER_SPECS:
        descriptor = declared_descriptor(spec)
        if spec.kind in _ARRAY_TYPES:
            # An empty list has no inferable type: declare the parameter, then give it the
            # empty list. Left without a value, rclpy's get_parameters service answers nothing
            # for a request naming it (ros2 param dump, rqt_reconfigure ask for every name), or
            # a value of no type, which ros2 param dump writes as null: rcl reads that back
            # as the string 'null' (registration.prior), so the dump could not start a node.
            parameter = node.declare_parameter(
                spec.name, None if descriptor.dynamic_typing else _ARRAY_TYPES[spec.kind],
                descriptor)
            if parameter.type_ == Parameter.Type.NOT_SET:
                parameter = Parameter(spec.name, _ARRAY_TYPES[spec.kind], [])
                node.set_parameters([parameter])
        else:
            try:
                parameter = node.declare_parameter(spec.name, defaults[spec.field], descriptor)
            except InvalidParameterTypeException:
                raise _type_error(node, spec) from None
        values[spec.name] = parameter.value
        declared.append(parameter)
    params = params_from_values(values)
    # The node's parameter store holds the values in use (ros2 param get / dump show them).
    changed = [new for new, old in zip(canonical_parameters(declared), declared) if new is not old]
    if changed:
        node.set_parameters(changed)
    return params


def _type_error(node, spec):
    """Return the :class:`ParameterValueError` of a value of another type given to ``spec``.

    rclpy's words named no fix: "Trying to set parameter 'max_rate' to '2' of type 'INTEGER',
    expecting type 'DOUBLE'" (an integer in a parameters file for a decimal parameter).
    """
    # rclpy keeps the overrides (params files and -p, for this node) in this attribute.
    given = (getattr(node, '_parameter_overrides', None) or {}).get(spec.name)
    if given is None:
        expected = _TYPE_WORDS[Parameter.Type(_TYPES[spec.kind])]
        return ParameterValueError(spec.name, f'{spec.name} must be {expected}')
    return ParameterValueError(spec.name, _type_words(spec, given))


def _type_words(spec, given):
    """Return that rclpy's ``given`` has a type ``spec`` refuses, with the fix where plain."""
    expected = _TYPE_WORDS[Parameter.Type(_TYPES[spec.kind])]
    value = given.value
    if given.type_.name.endswith('_ARRAY'):
        value = list(value)  # the service gives array('d', [...])
    said = f'{spec.name}={value!r} is {_TYPE_WORDS[given.type_]} where {expected} is expected'
    if spec.kind == 'float' and given.type_ == Parameter.Type.INTEGER:
        said += f': write {float(given.value)!r}'
    elif spec.kind == 'int' and given.type_ == Parameter.Type.DOUBLE \
            and math.isfinite(given.value) and int(given.value) == given.value:
        said += f': write {int(given.value)}'
    return said


def wrong_type_reason(parameters):
    """Return why one of rclpy ``parameters`` is refused for its type, in the node's words.

    rclpy checks a value's type against the declared one before the node's on-set callback
    sees it, and refused in words naming no parameter: `ros2 param set /tarfuse max_detections
    2.0` got "Wrong parameter type, expected 'Type.INTEGER' got 'Type.DOUBLE'"; a parameter
    without a value (``ros2 param delete``) "Static parameter cannot be undeclared". Give the
    parameters as the pre-set callback makes them (:func:`canonical_parameters`: an integer for
    a decimal is that decimal). None when every type fits (the dynamically typed lists are
    checked by :func:`apply_updates`); other nodes' parameters are left to rclpy.
    """
    for parameter in parameters:
        spec = _BY_NAME.get(parameter.name)
        if spec is None or descriptor_for(spec).dynamic_typing:
            continue
        if parameter.type_ == Parameter.Type.NOT_SET:
            return f'{spec.name} cannot be deleted while the node runs; set a value instead'
        if parameter.type_.value != _TYPES[spec.kind]:
            return _type_words(spec, parameter)
    return None


def canonical_parameters(parameters):
    """Return rclpy ``parameters`` with our string values written as the node uses them.

    A string loses its surrounding whitespace, a string list its blank items, and an empty
    ``weights`` becomes the shipped weights' path: otherwise ``ros2 param set ... device ' cpu'``
    (or ``-p``) would leave ``' cpu'`` in the node's parameter store while the node runs on
    ``'cpu'``. An integer given to a decimal parameter becomes that decimal: ``ros2 param set
    /tarfuse max_rate 2`` sends an integer, which rclpy refused in words naming no parameter
    ("Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER'"). An empty list of any
    type becomes the list parameter's own (``ros2 param set`` and ``ros2 param load`` send
    ``[]`` as a bool list, which ``registration.prior_ir_size`` refused: a dump could not be
    loaded back), an integer list a decimal one. Other parameters,
    values of another type and parameters without a value (the set callback refuses those) are
    passed on unchanged (the same objects). Usable as rclpy's pre-set parameters callback.
    """
    result = []
    for parameter in parameters:
        spec = _BY_NAME.get(parameter.name)
        if spec is not None and spec.kind == 'float' \
                and parameter.type_ == Parameter.Type.INTEGER:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE, float(parameter.value))
        if spec is not None and spec.kind in _ARRAY_TYPES \
                and parameter.type_.name.endswith('_ARRAY') and not len(parameter.value):
            # `ros2 param set` / `ros2 param load` send [] as a bool list.
            parameter = Parameter(parameter.name, _ARRAY_TYPES[spec.kind], [])
        elif spec is not None and spec.kind == 'float_array' \
                and parameter.type_ == Parameter.Type.INTEGER_ARRAY:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE_ARRAY,
                                  [float(v) for v in parameter.value])
        # No value (ros2 param delete) passes as it is: the set callback refuses it.
        if spec is not None and spec.kind in ('str', 'str_array') \
                and parameter.type_ != Parameter.Type.NOT_SET:
            try:
                value = _value_in_use(spec, parameter.value)
            except ValueError:
                value = None
            if spec.kind == 'str_array' and value is not None:
                value = list(value)
            kind = Parameter.Type.STRING if spec.kind == 'str' else Parameter.Type.STRING_ARRAY
            # An empty list of another type (`ros2 param set ... classes "[]"` sends a bool
            # list) is stored as the empty name list it is.
            if value is not None and (value != parameter.value or parameter.type_ != kind):
                parameter = Parameter(parameter.name, kind, value)
        result.append(parameter)
    return result


def unknown_parameters(node):
    """Return one line per parameter given to ``node`` that it never declared.

    rclpy ignores a parameter set for a node (params file or ``-p``) that the node does not
    declare, so a misspelt name would silently keep the default. Call this after
    :func:`declare_node_parameters`. ``qos_overrides.*`` names are left out (rclpy declares
    them when the publishers are made; :func:`unknown_qos_overrides` checks them). Each line
    names the parameter and, where one is close, the declared name it was probably meant to be.
    """
    # rclpy keeps the overrides (params files and -p, for this node) in this attribute on
    # Humble and Jazzy; without it there is nothing to check.
    given = getattr(node, '_parameter_overrides', None) or {}
    declared = [spec.name for spec in PARAMETER_SPECS]
    lines = []
    for name in sorted(given):
        if node.has_parameter(name) or name.startswith('qos_overrides.'):
            continue
        lines.append(_with_closest(name, declared))
    return lines


def _with_closest(name, names):
    """Return ``'name'`` quoted, with ``(did you mean 'x'?)`` where one of ``names`` is close."""
    close = difflib.get_close_matches(name, names, n=1)
    return f'{name!r}' + (f' (did you mean {close[0]!r}?)' if close else '')


_OVERRIDABLE_POLICIES = ('depth', 'history', 'reliability')
# QoS policies that rclpy's overriding options know but the node does not let change.
_FIXED_POLICIES = frozenset(('durability', 'deadline', 'lifespan', 'liveliness',
                             'liveliness_lease_duration'))


def unknown_qos_overrides(node, input_topics=(), absent_topics=(), remapped=None):
    """Return ``(errors, ignored)`` for the ``qos_overrides.*`` names that nothing took.

    rclpy declares ``qos_overrides.<topic>.<publisher|subscription>.<policy>`` (REP-2003) for
    the publishers made with QoS overriding options, and ignores the other names given: a
    misspelt topic or policy would silently keep the default. Call this after the publishers
    exist. ``input_topics``: the resolved names of the inputs, whose QoS comes from the node's
    own ``qos.reliability`` / ``qos.depth`` parameters. ``absent_topics``: resolved names of
    outputs this configuration does not advertise (e.g. detections of a model without a
    detection head); their overrides are returned in ``ignored``, not as errors.
    ``remapped``: output topic names before remapping -> after (only those a ``-r`` rule
    changed); rclpy declares the overrides under the remapped name. Each error line names the
    parameter and why it is refused (an input, a remapped output, a policy that cannot be
    overridden, or the closest overridable name).
    """
    given = getattr(node, '_parameter_overrides', None) or {}
    declared = node.list_parameters(['qos_overrides'], 0).names
    remapped = remapped or {}
    errors, ignored = [], []
    for name in sorted(given):
        if not name.startswith('qos_overrides.') or node.has_parameter(name):
            continue
        topic, _, policy = name[len('qos_overrides.'):].rpartition('.')
        topic = topic.rpartition('.')[0]  # drop publisher / subscription
        if topic in absent_topics:
            ignored.append(name)
        elif topic in input_topics:
            errors.append(f'{name!r} (the inputs take their QoS from qos.reliability and '
                          f'qos.depth)')
        elif topic in remapped:
            suffix = name[len('qos_overrides.') + len(topic):]  # .publisher.<policy>
            errors.append(f'{name!r} (that output is remapped to {remapped[topic]!r}; overrides '
                          f'take the remapped name: '
                          f'{"qos_overrides." + remapped[topic] + suffix!r})')
        elif topic == '/diagnostics':
            errors.append(f'{name!r} (/diagnostics keeps the default QoS)')
        elif policy in _FIXED_POLICIES:
            errors.append(f'{name!r} ({policy!r} cannot be overridden: only '
                          f'{", ".join(_OVERRIDABLE_POLICIES)})')
        else:
            errors.append(_with_closest(name, declared))
    return errors, ignored


# How rcl types a ``-p`` value (rcl_yaml_param_parser, parse.c ``get_value``): a quoted scalar
# is a string; unquoted, these words are bools, then what C ``strtol`` (base 0: decimal, 0x hex,
# 0 octal) reads whole within int64 is an integer, what ``strtod`` reads whole (or .inf / .nan)
# is a double, anything else a string. A flow sequence takes its first item's type.
_RCL_BOOLS = frozenset('y Y yes Yes YES true True TRUE on On ON '
                       'n N no No NO false False FALSE off Off OFF'.split())
_RCL_INT = re.compile(r'[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)')
_RCL_DOUBLE = re.compile(r'[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)',
                         re.IGNORECASE)
_RCL_DOUBLE_WORDS = frozenset(sign + word for sign in ('', '+', '-')
                              for word in ('.inf', '.Inf', '.INF')) | {'.nan', '.NaN', '.NAN'}
_ARRAY_OF = {
    Parameter.Type.BOOL: Parameter.Type.BOOL_ARRAY,
    Parameter.Type.INTEGER: Parameter.Type.INTEGER_ARRAY,
    Parameter.Type.DOUBLE: Parameter.Type.DOUBLE_ARRAY,
    Parameter.Type.STRING: Parameter.Type.STRING_ARRAY,
}


def _rcl_scalar_type(text):
    """Return the :class:`Parameter.Type` rcl gives one scalar (the rules above)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
        return Parameter.Type.STRING
    if text in _RCL_BOOLS:
        return Parameter.Type.BOOL
    if _RCL_INT.fullmatch(text):
        digits = text.lstrip('+-')
        base = 16 if digits[:2] in ('0x', '0X') else 8 if digits.startswith('0') else 10
        value = int(digits, base) * (-1 if text.startswith('-') else 1)
        if -2 ** 63 <= value < 2 ** 63:
            return Parameter.Type.INTEGER
        return Parameter.Type.DOUBLE  # strtol overflows, strtod reads it
    if text in _RCL_DOUBLE_WORDS or _RCL_DOUBLE.fullmatch(text):
        return Parameter.Type.DOUBLE
    return Parameter.Type.STRING


def _rcl_type(text):
    """Return the type rcl gives a ``-p name:=text`` value; NOT_SET for ``[]``, None if mixed."""
    text = text.strip()
    if not (text.startswith('[') and text.endswith(']')):
        return _rcl_scalar_type(text)
    if not text[1:-1].strip():
        return Parameter.Type.NOT_SET  # rcl passes an empty list as unset
    types = {_rcl_scalar_type(item) for item in text[1:-1].split(',')}
    return _ARRAY_OF[types.pop()] if len(types) == 1 else None


def _float_text(text):
    """Return an integer scalar as rcl reads it (``_rcl_scalar_type``) written as a double."""
    text = text.strip()
    digits = text.lstrip('+-')
    base = 16 if digits[:2] in ('0x', '0X') else 8 if digits.startswith('0') else 10
    return repr(float(int(digits, base) * (-1 if text.startswith('-') else 1)))


def _mixed_number_list(types):
    """Return whether rcl types of a list's items are integers and doubles together."""
    return set(types) == {Parameter.Type.INTEGER, Parameter.Type.DOUBLE}


def _decimal_params_file(path):
    """Return ``(text, names)``: a parameters file with its integers for decimals as doubles.

    The file is composed (``yaml.compose``: node positions, no value conversion) and only the
    integer items of lists that mix integers and doubles, and the integer values of the node's
    decimal parameters (``max_rate: 2``), are rewritten in place, so every other byte, and rcl's
    reading of it, stays as it was; a ``registration.prior`` written as a list of rows (``[[1, 0,
    5], ...]``) is written as one flat list of doubles. ``names``: ``(name, what was done)`` of
    those lists (names: the keys below ``ros__parameters``, dotted). ``text`` is None when nothing
    was rewritten (also for a file that cannot be read or parsed: rcl then reports it).
    """
    import yaml

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None, []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None, []
    edits, names = [], []

    def scalar_type(node):
        if not isinstance(node, yaml.ScalarNode):
            return None
        return Parameter.Type.STRING if node.style else _rcl_scalar_type(node.value)

    def visit(node, keys):
        inside = keys[keys.index('ros__parameters') + 1:] if 'ros__parameters' in keys else keys
        if isinstance(node, yaml.ScalarNode):
            spec = _BY_NAME.get('.'.join(inside))
            if spec is not None and spec.kind == 'float' \
                    and scalar_type(node) == Parameter.Type.INTEGER:
                edits.append((node.start_mark.index, node.end_mark.index,
                              _float_text(node.value)))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                visit(value, keys + [key.value if isinstance(key, yaml.ScalarNode) else '?'])
        elif isinstance(node, yaml.SequenceNode):
            rows = [row.value for row in node.value if isinstance(row, yaml.SequenceNode)]
            if '.'.join(inside) == 'registration.prior' and rows and len(rows) == len(node.value) \
                    and all(isinstance(item, yaml.ScalarNode) for row in rows for item in row):
                # A 3x3 homography written as rows (numpy's tolist()): rcl takes flat lists only
                # ("Sequences cannot be key"), the tools read rows too. Joined, as doubles.
                items = [item for row in rows for item in row]
                edits.append((node.start_mark.index, node.end_mark.index, '[' + ', '.join(
                    _float_text(item.value) if scalar_type(item) == Parameter.Type.INTEGER
                    else text[item.start_mark.index:item.end_mark.index] for item in items)
                    + ']'))
                names.append(('.'.join(inside), 'is a list of rows, which rcl refuses (it takes '
                                                'flat lists only); its rows were joined into '
                                                'one list'))
                return
            types = [scalar_type(item) for item in node.value]
            if _mixed_number_list(types):
                for item, kind in zip(node.value, types):
                    if kind == Parameter.Type.INTEGER:
                        edits.append((item.start_mark.index, item.end_mark.index,
                                      _float_text(item.value)))
                names.append(('.'.join(inside), 'mixes integers and decimals, which rcl '
                                                'refuses in one list; its integers were read '
                                                'as decimals'))
            else:
                for item in node.value:
                    visit(item, keys)

    if root is not None:
        visit(root, [])
    for start, end, value in sorted(edits, reverse=True):
        text = text[:start] + value + text[end:]
    return (text if edits else None), names


def _ros_arguments(argv):
    """Yield ``(option, i)`` for the parameter options of ``argv``'s ``--ros-args`` sections.

    ``option`` is ``'--params-file'`` or ``'-p'`` (also for ``--param``), ``i`` the index of its
    value in ``argv``. A section runs from ``--ros-args`` to ``--`` or the end, as rcl reads.
    """
    in_ros_args = False
    for i, arg in enumerate(argv):
        if arg == '--ros-args':
            in_ros_args = True
        elif arg == '--':
            in_ros_args = False
        elif in_ros_args and arg in ('--params-file', '-p', '--param') and i + 1 < len(argv):
            yield ('--params-file' if arg == '--params-file' else '-p'), i + 1


def decimal_numbers(argv, folder):
    """Return ``(argv, notes)`` with the integers given for decimals made doubles.

    rcl refuses a number list that mixes integers and doubles (``[1, 0.02, 5.0, ...]``, a
    hand-edited ``registration.prior``) in a parameters file or a ``-p`` value at start-up
    ("Sequence should be of same type"), so the node cannot even read it; and an integer for
    a decimal parameter (``max_rate: 2``, ``-p max_rate:=2``) has another type than its
    declaration, where ``ros2 param set /tarfuse max_rate 2`` is taken as 2.0
    (:func:`canonical_parameters`). Written as a double it is also what rcl merges with the
    other sources: after an integer, rcl drops a later double silently (``max_rate: 2`` in a
    file, then ``-p max_rate:=3.5``, kept 2). For every ``--params-file`` holding either, a
    copy with those integers written as doubles is put in ``folder`` and named instead; a
    ``-p`` value is rewritten in place. Nothing else changes; argv without such a value comes
    back equal.

    Args:
        argv: the process arguments (``sys.argv``).
        folder: an existing folder for the rewritten copies (they must exist until ``rclpy.init``
            has read them).

    Returns:
        ``(argv, notes)``: the arguments to give ``rclpy.init``, and one line per rewritten
        list (``"--params-file F: registration.prior ..."``) to log (an integer for a decimal
        parameter is taken without a word, as at run time).

    """
    argv, notes = list(argv), []
    for option, i in _ros_arguments(argv):
        if option == '--params-file':
            text, names = _decimal_params_file(argv[i])
            if text is not None:
                rewritten = Path(folder) / f'{i}_{Path(argv[i]).name}'
                rewritten.write_text(text)
                notes += [f'--params-file {argv[i]}: {name} {reason} (write a flat list of '
                          f'decimals, 1.0 for 1, to keep the file valid for other ROS tools)'
                          for name, reason in names]
                argv[i] = str(rewritten)
        else:
            name, sep, text = argv[i].partition(':=')
            value = text.strip()
            spec = _BY_NAME.get(name.rpartition(':')[2])
            if sep and spec is not None and spec.kind == 'float' \
                    and _rcl_scalar_type(value) == Parameter.Type.INTEGER:
                argv[i] = f'{name}:={_float_text(value)}'
                continue
            if not (sep and value.startswith('[') and value.endswith(']')):
                continue
            items = value[1:-1].split(',')
            types = [_rcl_scalar_type(item) for item in items]
            if _mixed_number_list(types):
                items = [_float_text(item) if kind == Parameter.Type.INTEGER else item.strip()
                         for item, kind in zip(items, types)]
                argv[i] = f'{name}:=[{", ".join(items)}]'
                notes.append(f'-p {name}:={text}: mixes integers and decimals, which rcl refuses '
                             f'in one list; its integers were read as decimals')
    return argv, notes


def params_file_sections(path):
    """Return ``[(section, ros__parameters)]`` of a parameters file, or None if unreadable.

    In file order; ``section`` is the node name a section is keyed by, with its namespaces
    nested as rcl reads them (``front: {tarfuse: {ros__parameters: ...}}`` is
    ``/front/tarfuse``), and ``ros__parameters`` its value as parsed (a dict, unless the file
    is malformed). Whether a section applies to a node: :func:`section_applies`.
    """
    import yaml

    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # rcl reports it
    sections = []

    def visit(node, keys):
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key == 'ros__parameters':
                sections.append((re.sub('/+', '/', '/' + '/'.join(keys)), value))
            else:
                visit(value, keys + [str(key)])

    visit(tree, [])
    return sections


def section_applies(section, node_name):
    """Return whether rcl applies a parameters file's ``section`` to the node ``node_name``.

    ``node_name`` is fully qualified (``/front/tarfuse``); in ``section`` ``*`` stands for one
    name and ``**`` for any number of them (``/**`` every node, ``/**/tarfuse`` every node
    named tarfuse).
    """
    pattern = ''.join('(/[^/]+)*' if token == '**' else '/[^/]+' if token == '*'
                      else '/' + re.escape(token) for token in section.split('/') if token)
    return re.fullmatch(pattern, node_name) is not None


def params_files_for_other_nodes(argv, node_name):
    """Return one line per ``--params-file`` in ``argv`` that has no section for ``node_name``.

    rcl applies a file's section only to the nodes it names: a file keyed by another node
    (the executable ``fuse_node``, a ``ros2 param dump`` of the node in another namespace)
    sets nothing, silently, and the node would run on its defaults. ``node_name`` is the
    fully qualified name (``/front/tarfuse``). Each line names the file and its sections.
    """
    lines = []
    for option, i in _ros_arguments(argv):
        if option == '--params-file':
            names = [name for name, _ in params_file_sections(argv[i]) or ()]
            if names and not any(section_applies(name, node_name) for name in names):
                lines.append(f'{argv[i]} (sections {", ".join(map(repr, names))})')
    return lines


def _dotted_names(tree, prefix=''):
    """Return the dotted parameter names of a ``ros__parameters`` mapping (nested keys)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]} if prefix else set()
    names = set()
    for key, value in tree.items():
        names |= _dotted_names(value, f'{prefix}{key}.')
    return names


def parameter_source(argv, node_name, name):
    """Return where ``argv`` gives parameter ``name`` to the node ``node_name``, or None.

    The last ``-p`` value or parameters file that sets it (rcl applies them in order, a later
    one winning), said for a message: ``"on the command line (-p max_rate:=-1.0)"`` or ``"in
    the parameters file PATH"``. ``node_name`` is fully qualified (``/front/tarfuse``).
    """
    where = None
    short = node_name.rpartition('/')[2]
    for option, i in _ros_arguments(argv):
        if option == '-p':
            given, sep, _ = argv[i].partition(':=')
            node, _, given = given.rpartition(':')
            if sep and given == name and node in ('', short):
                where = f'on the command line (-p {argv[i]})'
            continue
        for section, values in params_file_sections(argv[i]) or ():
            if section_applies(section, node_name) and name in _dotted_names(values):
                where = f'in the parameters file {argv[i]}'
    return where


def command_line_type_errors(argv, node_name):
    """Return one line per ``-p name:=value`` in ``argv`` whose type the parameter refuses.

    rcl merges the sources of a parameter in order and silently drops a later value whose type
    differs from an earlier one's (``--params-file f.yaml -p confidence_threshold:=abc`` keeps
    the file's 0.25), so such a value never reaches the node to be refused there. This reads
    the ``-p`` / ``--param`` arguments of every ``--ros-args`` section, types each value by
    rcl's rules (``_rcl_scalar_type``: ``y`` is a bool, ``0x1F`` an integer, ``1_000`` a
    string; ``node:name:=value`` applies only to ``node_name``) and compares the type with the
    declared one (a number list also takes integers; ``[]``, unset, fits any list).

    Args:
        argv: the process arguments (``sys.argv``).
        node_name: the node's name (without namespace).

    Returns:
        Lines such as ``"-p confidence_threshold:=abc: a string where a double is expected"``;
        empty when every value fits.

    """
    lines, argv = [], list(argv)
    for option, i in _ros_arguments(argv):
        if option == '-p':
            name, sep, text = argv[i].partition(':=')
            if not sep:
                continue
            node, _, name = name.rpartition(':')
            spec = _BY_NAME.get(name)
            if spec is None or node not in ('', node_name):
                continue
            given = _rcl_type(text)
            if spec.kind == 'float_array':
                fits = given in (Parameter.Type.DOUBLE_ARRAY, Parameter.Type.INTEGER_ARRAY,
                                 Parameter.Type.NOT_SET)
            elif spec.kind in _ARRAY_TYPES and given == Parameter.Type.NOT_SET:
                fits = True
            else:
                fits = given is not None and given.value == _TYPES[spec.kind]
            if not fits:
                given_name = 'a list of mixed types' if given is None else _TYPE_WORDS[given]
                lines.append(f'-p {argv[i]}: {given_name} where '
                             f'{_TYPE_WORDS[Parameter.Type(_TYPES[spec.kind])]} is expected')
    return lines


_TYPE_WORDS = {
    Parameter.Type.NOT_SET: 'an empty list',
    Parameter.Type.BOOL: 'a bool',
    Parameter.Type.INTEGER: 'an integer',
    Parameter.Type.DOUBLE: 'a double',
    Parameter.Type.STRING: 'a string',
    Parameter.Type.BYTE_ARRAY: 'a byte list',
    Parameter.Type.BOOL_ARRAY: 'a bool list',
    Parameter.Type.INTEGER_ARRAY: 'an integer list',
    Parameter.Type.DOUBLE_ARRAY: 'a double list',
    Parameter.Type.STRING_ARRAY: 'a string list',
}


def parameter_updates(parameters):
    """Turn a list of rclpy :class:`Parameter` into ``{name: value}`` for our parameters."""
    return {p.name: p.value for p in parameters if p.name in _BY_NAME}
