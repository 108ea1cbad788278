"""The fusion node: synchronised IR + visible images in, fused image and detections out.

Data flow::

    infrared/image_raw --+  per-input checks     message_filters           keep-newest slot
                         +-> (zero stamp, out  --> approximate/exact  --> (overwritten pair =
    visible/image_raw ---+   of order; time        time synchroniser      dropped, counted)
                             jump -> reset)
    (or .../compressed per                                                       |
     camera: <cam>.transport;              one worker thread: cv_bridge decode, FusionEngine.infer
     IR: .../compressedDepth too)
                                                                                 |
    fused/image_raw (+ /compressed), fused/camera_info, detections, registered/image_raw,
    debug/image_raw (each with the visible image's header), /diagnostics

A message stamped before its input's newest is either out of order (delivered late: a driver
with several threads, a bridge) and ignored, counted in ``messages_rejected``, a copy from a
second publisher or delivered again late (ignored alike; on a topic of one publisher such an
image waits for the next to tell it from a short bag's loop), or a time jump (a bag loop, a
clock reset) that resets the synchroniser: one :class:`~tarfuse_ros.core.timeline.InputTimeline`
per input judges them.

``sync.infrared_time_offset`` is added to every IR stamp (on a copy of the message) as it comes
in, after the zero-stamp check: from there on, the order checks, the synchroniser and the
pairing diagnostics see the corrected stamps; the outputs carry the visible header. Each
accepted image's lag (the monotonic time the node took it minus its stamp, the IR's corrected)
is compared with the other camera's at the same time (:class:`LagCheck` of
:mod:`tarfuse_ros.core.input_lags`): lags more than 1 s apart (clocks apart, a camera stamping
since boot, a slow link) are warned of and turn /diagnostics WARN, even while the synchroniser
still pairs images of stamps a whole number of frame intervals apart. With
``max_rate``, pairs are let into the slot by their stamps (:class:`StampRateLimit`); the others
are skipped, counted apart from the pairs dropped while the worker was busy.

fused/camera_info republishes the visible camera's camera_info, read beside the visible image
topic as remapped (``/cam/image_raw`` -> ``/cam/camera_info``, as image_transport's
CameraSubscriber does) unless ``visible/camera_info`` is remapped itself.

Run it with ``ros2 run tarfuse_ros fuse_node --ros-args --params-file config/tarfuse.yaml`` or
``python -m tarfuse_ros.ros.fuse_node --ros-args ...``.  Parameters: ``config/tarfuse.yaml``.
"""

import collections
import contextvars
import copy
import functools
import logging
import math
import os
from pathlib import Path
import queue
import re
import signal
import sys
import tempfile
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import message_filters
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import InvalidQosOverridesError, QoSOverridingOptions
from rclpy.signals import install_signal_handlers, SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tarfuse_ros.core.checkpoint_header import CheckpointError, read_checkpoint_config
from tarfuse_ros.core.cpus import default_cpu_threads, default_threads_reason
from tarfuse_ros.core.drawing import draw_detections
from tarfuse_ros.core.fine_passes import BuiltInFinePassesError, NoFineStageError
from tarfuse_ros.core.global_stream import PARAMETERS, StreamSettingError
from tarfuse_ros.core.health import HealthSettings, RegistrationHealth
from tarfuse_ros.core.images import check_frame_size
from tarfuse_ros.core.input_lags import LagCheck, MAX_INFRARED_TIME_OFFSET_S
from tarfuse_ros.core.pairing import NearestPairCheck
from tarfuse_ros.core.rate import StampRateLimit
from tarfuse_ros.core.sizes import PORTRAIT_ADVICE, portrait_beside_landscape
from tarfuse_ros.core.time_offset import MAX_SIDE, OffsetMonitor
from tarfuse_ros.core.timeline import COPY, HOLD, InputTimeline, is_time_jump, JUMP
from tarfuse_ros.core.timeline import JUMP_FOLLOWED, LATE
from tarfuse_ros.core.timeline import median_interval_ns
from tarfuse_ros.core.topics import camera_info_topic
from tarfuse_ros.ros.conversions import array_to_compressed_msg, array_to_image_msg
from tarfuse_ros.ros.conversions import compressed_depth_msg_to_array
from tarfuse_ros.ros.conversions import compressed_msg_to_array, compressed_size
from tarfuse_ros.ros.conversions import detections_to_msg, image_msg_to_array
from tarfuse_ros.ros.conversions import image_msg_to_motion_array, jpeg_of_16_bit_image
from tarfuse_ros.ros.conversions import load_bridge, restamped, settle_stderr
from tarfuse_ros.ros.diagnostics import build_status, InputClock, NodeStats
from tarfuse_ros.ros.diagnostics import process_rss_mib
from tarfuse_ros.ros.diagnostics import WarningThrottle
from tarfuse_ros.ros.params import apply_updates, canonical_parameters
from tarfuse_ros.ros.params import command_line_type_errors, NodeParams
from tarfuse_ros.ros.params import decimal_numbers
from tarfuse_ros.ros.params import declare_node_parameters, fine_passes
from tarfuse_ros.ros.params import graph_fine_passes_problem, parameter_updates
from tarfuse_ros.ros.params import parameter_source, ParameterValueError
from tarfuse_ros.ros.params import params_files_for_other_nodes
from tarfuse_ros.ros.params import refinement_settings, registration_prior, reported_descriptor
from tarfuse_ros.ros.params import unknown_parameters, unknown_qos_overrides
from tarfuse_ros.ros.params import UNRECORDED_FINE_PASSES
from tarfuse_ros.ros.params import wrong_type_reason
from vision_msgs.msg import Detection2DArray

__all__ = ['StartupError', 'TarFuseNode', 'is_time_jump', 'main',
           'visible_camera_info_topic']

INFRARED, VISIBLE = 0, 1
_INPUT_NAMES = ('infrared', 'visible')
_INPUT_TOPICS = ('infrared/image_raw', 'visible/image_raw')
# The visible camera's camera_info when remapped; else the visible image topic's sibling.
_INFO_TOPIC = 'visible/camera_info'
_FUSED_TOPIC = 'fused/image_raw'
# Outputs that take REP-2003 QoS overrides (the fused image's compressed topic too).
_OUTPUT_TOPICS = (_FUSED_TOPIC, 'fused/camera_info', 'detections', 'registered/image_raw',
                  'debug/image_raw')
_RUNTIME_ENGINE_FIELDS = ('confidence_threshold', 'iou_threshold', 'max_detections', 'classes')
# camera_info messages kept to find the one stamped like a visible image (1 s at 30 Hz).
_CAMERA_INFO_BUFFER = 30
_HEALTH_FIELDS = ('health_window', 'health_every_n', 'health_max_side', 'health_min_alignment',
                  'health_max_flow_px')
# Images waiting for the time-offset check's thread (2 s of two 30 Hz cameras).
_OFFSET_QUEUE = 120
# A number in a problem's text (not a digit of a name: /cam0): masked in its throttle key.
_NUMBER = re.compile(r'(?<![\w/])\d+(\.\d+)?')
# s: the least difference from sync.infrared_time_offset the time-offset check warns of (the
# estimate's own error on simulated rigs reached 20 ms, benchmarks/time_offset.py).
_OFFSET_TOLERANCE_S = 0.02
# s: input stamps further than this from the node's clock are stamped by another clock (a bag
# played without its clock, a driver's clock years off), said after this many in a row (one
# image caught by a bag loop's step of /clock is no clock apart).
_CLOCK_APART_S = 10.0
_CLOCK_APART_MESSAGES = 3
# The IR and visible lags (arrival minus stamp) compared over this many images (about 0.4 s
# of a 30 Hz and a 9 Hz camera, 1.5 s of two 5 Hz ones); differing by more than
# MAX_INFRARED_TIME_OFFSET_S (what sync.infrared_time_offset cannot correct), the clocks are apart.
_LAG_WINDOW = 15


class StartupError(RuntimeError):
    """The node cannot start; the message says what to do."""


def _stamp_ns(stamp):
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _span(seconds):
    """Return a duration (s, >= 0) for a person: '42.0 s', '1.5 min', '5.1 h', '1.0 years'."""
    for unit, size in (('years', 365.25 * 86400), ('days', 86400), ('h', 3600), ('min', 60)):
        if seconds >= size:
            return f'{seconds / size:.1f} {unit}'
    return f'{seconds:.1f} s'


def _health_settings(params):
    """Return the :class:`HealthSettings` of a ``NodeParams`` (``registration_health.*``)."""
    return HealthSettings(window=params.health_window, every_n=params.health_every_n,
                          max_side_px=params.health_max_side,
                          min_alignment=params.health_min_alignment,
                          max_flow_px=params.health_max_flow_px)


def _problem_key(problem):
    """Return the throttle key of a problem: its text with the numbers in it masked.

    A problem states figures that change from one check to the next (seconds of silence, pair
    counts, a mean flow); a key holding them (the text's first 30 characters did, for a short
    topic such as /ir) was new at every check, and the warning came every 0.5 s.
    """
    return _NUMBER.sub('#', problem)


def _input_check_period(params):
    """Return the input checks' period (s): half ``diagnostics.input_timeout``, 0.5 s at most."""
    return min(0.5, params.input_timeout / 2.0)


def _restart(timer, period):
    """Give an rclpy ``timer`` a new ``period`` (s); its next call one new period from now."""
    timer.timer_period_ns = round(period * 1e9)
    timer.reset()


def visible_camera_info_topic(node):
    """Return ``(topic, origin)``: the visible camera_info topic ``node`` reads, and why that one.

    A remapping rule for visible/camera_info wins (``topic`` is then the name it remaps to);
    otherwise the camera_info follows the visible image (image_transport's CameraSubscriber,
    REP 104): the sibling of its base topic resolved with ``node``'s namespace and rules, so
    remapping only the image moves it too. The base topic on the compressed transport as well,
    never ``<base>/compressed``. ``origin`` says which, for the log. With an rclpy that cannot
    tell a remapped name from an expanded one, ``visible/camera_info`` (rules still apply).
    """
    try:
        expanded = node.resolve_topic_name(_INFO_TOPIC, only_expand=True)
    except (AttributeError, TypeError):  # an rclpy without only_expand
        return _INFO_TOPIC, f'{_INFO_TOPIC} as remapped'
    remapped = node.resolve_topic_name(_INFO_TOPIC)
    if remapped != expanded:
        return remapped, f'{_INFO_TOPIC} remapped'
    image = node.resolve_topic_name(_INPUT_TOPICS[VISIBLE])
    return camera_info_topic(image), (f'beside the visible image topic {image}; remap '
                                      f'{_INFO_TOPIC} to read another')


def _graph_count(fine_passes):
    """Return an ONNX graph's fine passes for the parameter checks (None: not recorded)."""
    return UNRECORDED_FINE_PASSES if fine_passes is None else fine_passes


def _class_ids(names, class_names):
    """Map class names to ids; raise ``ValueError`` listing the known names for unknown ones."""
    if names and not class_names:  # e.g. the medical model given to a camera rig
        raise ValueError(f'{list(names)} given, but the model has no detection head '
                         f'(model.detect: false) and no classes: leave classes unset or [], '
                         f'or check the weights parameter')
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f'unknown class names {unknown}; the model knows {list(class_names)}')
    return [list(class_names).index(n) for n in names]


def _checked_class_ids(names, class_names):
    """Return :func:`_class_ids`; raise :class:`StartupError` for an unknown class."""
    try:
        return _class_ids(names, class_names)
    except ValueError as exc:
        raise StartupError(f'invalid classes parameter: {exc}') from exc


def _model_file_error(exc, params):
    """Return the :class:`StartupError` of an unusable weights file (``exc`` says why)."""
    onnx = params.backend == 'onnxruntime'
    kind = '.onnx file from tarfuse-export' if onnx else '.safetensors checkpoint'
    example = 'model.onnx' if onnx else 'model.safetensors'
    return StartupError(f'cannot load the model: {exc}. Point the weights parameter at a '
                        f'valid {kind} (-p weights:=/path/{example})')


class TarFuseNode(Node):
    """Fuse synchronised infrared and visible images and detect objects in the fused image.

    Raises :class:`StartupError` (with what to do) for invalid parameters, missing or corrupt
    weights, or an unavailable CUDA device.
    """

    # The thread running __init__, while it runs (None once built): see get_logger.
    _builder = None

    def __init__(self, node_name='tarfuse', argv=(), given_argv=None, **kwargs):
        """Build the node; ``argv``: the arguments rcl read, ``given_argv``: as given.

        ``given_argv`` names the parameters files as the user gave them (``argv`` may name
        rewritten copies, gone once rcl read them: :func:`main`); None: ``argv``.
        """
        self._builder = threading.get_ident()
        try:
            super().__init__(node_name, **kwargs)
        except ParameterException as exc:  # rclpy's own parameters, e.g. use_sim_time:=1
            raise StartupError(f'invalid parameter: {exc}; fix it in the params file or on the '
                               f'command line') from exc
        # argv: the process arguments, whose -p values are checked (rcl drops a mistyped one
        # silently when a params file gave the parameter first).
        errors = command_line_type_errors(argv, self.get_name())
        if errors:
            raise StartupError(f'invalid parameter: {"; ".join(errors)}; fix it on the command '
                               f'line (see config/tarfuse.yaml)')
        me = self.get_fully_qualified_name()
        others = params_files_for_other_nodes(argv if given_argv is None else given_argv, me)
        if others:
            raise StartupError(f'parameters file {"; ".join(others)} sets nothing for this node '
                               f'({me}): rcl applies a section only to the nodes it names, so '
                               f'the node would run on its defaults; name the section {me!r} '
                               f"or '/**' (every node)")
        try:
            self._params = declare_node_parameters(self)
        except (ValueError, ParameterException) as exc:
            where = None
            if isinstance(exc, ParameterValueError):  # range, type: say where it was given
                where = parameter_source(argv if given_argv is None else given_argv, me,
                                         exc.name)
            where = where or 'in the params file or on the command line'
            raise StartupError(f'invalid parameter: {exc}; fix it {where} (see '
                               f'config/tarfuse.yaml)') from exc
        unknown = unknown_parameters(self)
        if unknown:
            raise StartupError(f'unknown parameter {", ".join(unknown)}: the node has no such '
                               f'parameter; correct or remove it in the params file or on the '
                               f'command line (see config/tarfuse.yaml)')
        # (topic, why that one): read by the start-up check and the subscription.
        self._info_topic = visible_camera_info_topic(self)
        self._check_topics_distinct()
        # Every check that needs no model runs before torch loads (about 2 s of CPU time): the
        # weights file, the classes, the outputs' QoS overrides.
        detects = self._check_weights(self._params)
        try:
            load_bridge()  # every image goes through cv_bridge: fail now, not on the first pair
        except RuntimeError as exc:
            raise StartupError(str(exc)) from exc
        # The core (engines, prior, refiner) warns through Python logging: to this node's ROS
        # log while this node's code calls it (here, and in the node's own threads).
        _CORE_LOG.attach()
        self._core_log_detached = False
        token = _CORE_LOG_TARGET.set(self.get_logger())
        try:
            if detects is None:  # an ONNX file says whether it detects once loaded (no torch)
                self._engine = self._load_engine(self._params)
                self._make_outputs(self._engine.detects)
            else:
                self._make_outputs(detects)
                self._engine = self._load_engine(self._params)
        finally:
            _CORE_LOG_TARGET.reset(token)
        self._params_lock = threading.Lock()
        # The time the inputs' silences (diagnostics.input_timeout) and rates are read in:
        # under use_sim_time the ROS time while /clock runs (a bag at any --rate).
        self._clock_publishers = 0  # on /clock under use_sim_time (the input checks count)
        self._input_time = InputClock(self._sim_time_ns)
        self._jump_handle = None
        self._watch_time_jumps(self._params.input_timeout)
        self._stats = NodeStats(clock=self._input_time)
        self._throttle = WarningThrottle(5.0)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._health = RegistrationHealth(_health_settings(self._params))
        self._prior_flows = {}  # (IR w, h, visible w, h) -> (prior, the prior's own flow)
        self._sizes_logged = set()  # (IR w, h, visible w, h) said to be resized, once each
        self._jpeg_16_said = set()  # (input, format) of 16-bit images in 8-bit JPEG, said once
        self._refiner = self._make_refiner(self._params)

        # Keep-newest slot between the synchroniser (executor thread) and the worker.
        self._slot = None
        # Which pairs may enter the slot under max_rate (executor thread; replaced, not
        # changed, when max_rate changes at run time and when the visible stamps jump back).
        self._rate_limit = StampRateLimit.for_rate(self._params.max_rate)
        # The visible stamp of the last pair the synchroniser gave (executor thread): a pair
        # not after it is one of the same image again. None on a new visible timeline.
        self._last_pair_visible_ns = None
        self._slot_cond = threading.Condition()
        self._stopping = False
        # diagnostics.time_offset_window: every image goes (by the executor thread) into a
        # bounded queue that a thread of its own decodes into the monitor; full, an image is
        # left out (the estimate reads gaps as gaps).
        self._offset_monitor = None
        self._offset_status = 'off'
        self._offset_problem = None
        self._offset_off = None  # the last check's offset (s) if it differed from the set one
        if self._params.time_offset_window > 0:
            self._offset_monitor = OffsetMonitor(self._params.time_offset_window)
            self._offset_status = (f'collecting: 0 of {self._params.time_offset_window:g} s of '
                                   f'both cameras')
            self._offset_queue = queue.Queue(maxsize=_OFFSET_QUEUE)

        # Added to every IR stamp before anything but the zero-stamp check reads it (fixed).
        self._ir_offset_ns = round(self._params.sync_infrared_time_offset * 1e9)
        # Per input: its timeline (the stamps it delivered since its last time jump, the IR's
        # with the offset, as everywhere below), which judges each new stamp: next, a copy,
        # out of order or a time jump. As many stamps as the synchroniser holds: a driver's
        # threads reorder a few messages, not more.
        self._timelines = [InputTimeline(self._params.sync_queue_size) for _ in _INPUT_NAMES]
        # Each input's newest and first message, in self._input_time.
        self._last_arrival = [None, None]
        self._first_arrival = [None, None]
        # The monotonic time of each input's newest message (camera_info kept at a jump).
        self._last_wall = [None, None]
        self._last_msg = [None, None]  # newest valid message per input (re-fed after a reset)
        self._silence_flushed = [False, False]  # an input's stale queue dropped in its silence
        self._zero_stamped = [False, False]  # whether each input's newest message had stamp 0
        # Per input: the newest stamp's distance from the node's clock (ns, + behind) and how
        # many messages in a row were further than _CLOCK_APART_S from it.
        self._clock_gap_ns = [None, None]
        self._clock_apart = [0, 0]
        # The newest visible camera_info messages as (stamp ns, message, monotonic arrival s),
        # oldest first.
        self._camera_infos = collections.deque(maxlen=_CAMERA_INFO_BUFFER)
        self._camera_infos_lock = threading.Lock()
        # camera_info messages received since start and the monotonic time of the newest, for
        # /diagnostics: a camera_info topic that never speaks (a misnamed one) shows there.
        self._camera_info_count = 0
        self._camera_info_arrival = None
        self._qos_events = {}  # input index -> (monotonic time, problem) from QoS events
        self._problems = []
        # The input checks run on a timer: the messages per input as the last check saw them
        # (_received), with the inputs each of its problems says are silent (a status
        # published after an input spoke again leaves those problems out).
        self._received_checked = [0, 0]
        self._silence_said = {}
        self._publishers_since = None  # when both inputs got publishers (none received yet)

        params = self._params
        self._input_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=params.qos_depth,
            reliability=(ReliabilityPolicy.RELIABLE if params.qos_reliability == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT),
            durability=DurabilityPolicy.VOLATILE)
        self._inputs = []
        transports = (params.infrared_transport, params.visible_transport)
        for index, (base, transport) in enumerate(zip(_INPUT_TOPICS, transports)):
            events = SubscriptionEventCallbacks(
                incompatible_qos=functools.partial(self._on_incompatible_qos, index))
            msg_type, topic = self._transport_topic(base, transport)
            sub = message_filters.Subscriber(self, msg_type, topic, qos_profile=self._input_qos,
                                             event_callbacks=events)
            sub.registerCallback(self._on_input, index)
            self._inputs.append(sub)
        self._topics = [self._resolved(sub, sub.getTopic()) for sub in self._inputs]
        self._relays = None
        self._sync = None
        # Whether each pair was the nearest in time (judged by each input's next message).
        self._nearest = NearestPairCheck()
        # The IR and visible lags (monotonic arrival minus stamp) compared: clocks apart by
        # seconds while pairs still form (started over with the synchroniser).
        self._lags = LagCheck(_LAG_WINDOW)
        self._make_synchroniser()
        info_topic, origin = self._info_topic
        self._info_sub = self.create_subscription(CameraInfo, info_topic, self._on_camera_info,
                                                  self._input_qos)
        self.get_logger().info(f'camera_info from {self._info_sub.topic_name} ({origin})')
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        if hasattr(self, 'add_pre_set_parameters_callback'):  # rclpy of Iron and newer
            # Stored as used: a set ' cpu' reads back as 'cpu' (on Humble, verbatim).
            self.add_pre_set_parameters_callback(canonical_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_timer = self.create_timer(params.diagnostics_period, self._publish_diagnostics,
                                             clock=self._steady)
        self._health_timer = self.create_timer(_input_check_period(params),
                                               self._check_health, clock=self._steady)

        self._worker = threading.Thread(target=self._worker_loop, name='tarfuse_worker',
                                        daemon=True)
        self._worker.start()
        self._offset_thread = None
        if self._offset_monitor is not None:
            self._offset_thread = threading.Thread(target=self._offset_loop,
                                                   name='tarfuse_time_offset', daemon=True)
            self._offset_thread.start()
        if not params.sync_approximate and params.sync_slop != NodeParams.sync_slop:
            self.get_logger().warning(
                f'sync.slop {params.sync_slop} s has no effect: sync.approximate is false, so '
                f'only images of identical stamps pair; set sync.approximate:=true to pair '
                f'stamps that differ by less than the slop')
        mode = (f'approximate (slop {params.sync_slop} s)' if params.sync_approximate
                else 'exact')
        if params.sync_infrared_time_offset:
            mode += f' on IR stamps {params.sync_infrared_time_offset:+} s'
        rate = f'; at most {params.max_rate} pairs/s (max_rate)' if params.max_rate else ''
        self.get_logger().info(
            f'ready: model {params.weights} ({len(self._engine.class_names)} classes) on '
            f'{self._engine.device} ({params.backend}); inputs {self._topics[0]} '
            f'({params.infrared_transport}) + {self._topics[1]} ({params.visible_transport}); '
            f'{params.qos_reliability}, depth '
            f'{params.qos_depth}, {mode} sync, queue {params.sync_queue_size}{rate}')
        if not self._engine.detects:
            self.get_logger().info(
                f'model {params.weights} has no detection head (model.detect: false): the '
                f'detections topic is not advertised and publish.detections has no effect')
        self._builder = None

    # -- start-up ------------------------------------------------------------------------------
    def get_logger(self):
        """Return the node's logger; while the node is built, stop if the context is shut down.

        In a program that builds the node under rclpy's signal handlers (not :func:`main`:
        :class:`_StartUpStop`), a SIGTERM or Ctrl-C shuts the context down from a thread of
        rclpy's without interrupting the constructor: each start-up line logged after it
        printed rcl's 'Failed to publish log message to rosout: publisher's context is
        invalid'. Raises :class:`rclpy.executors.ExternalShutdownException` (a requested stop)
        instead of returning the logger then.
        """
        if threading.get_ident() == self._builder and not self.context.ok():
            raise ExternalShutdownException()
        return super().get_logger()

    def _check_weights(self, params):
        """Check the weights file without loading a model; return whether the model detects.

        A checkpoint's header (its JSON config) is read without torch: the file is a TarFuse
        checkpoint and the classes parameter names classes it has. None for an ONNX file,
        which onnxruntime reads as it loads it.
        """
        onnx = params.backend == 'onnxruntime'
        path = Path(params.weights)
        kind = 'an .onnx file' if onnx else 'a .safetensors checkpoint'
        try:
            if path.is_dir():
                raise StartupError(f'weights {params.weights!r} is a directory, not a weights '
                                   f'file: pass {kind} with -p weights:=/path/to/file')
            if path.is_symlink() and not path.exists():  # said 'does not exist'
                raise StartupError(
                    f'weights {params.weights!r} is a symbolic link that leads to no file (to '
                    f'{os.readlink(path)!r}: missing, or links in a loop): point it at {kind}, '
                    f'or pass the file itself with -p weights:=/path/to/file')
            if path.exists() and not path.is_file():  # said 'does not exist'
                raise StartupError(f'weights {params.weights!r} is not a regular file (a device, '
                                   f'a pipe or a socket): pass {kind} with '
                                   f'-p weights:=/path/to/file')
            if not path.is_file():
                if onnx:
                    raise StartupError(
                        f'weights file {params.weights!r} does not exist: with backend '
                        f'onnxruntime pass an .onnx file with -p weights:=/path/model.onnx '
                        f'(export one with tarfuse-export WEIGHTS.safetensors --out model.onnx)')
                raise StartupError(
                    f'weights file {params.weights!r} does not exist: pass a .safetensors '
                    f'checkpoint with -p weights:=/path/model.safetensors (train one with '
                    f'tarfuse-train), or leave weights empty for the shipped model')
            with open(path, 'rb'):  # a file this user may not read
                pass
        except OSError as exc:  # a traceback, or 'cannot start the model on device' before
            raise StartupError(
                f'weights file {params.weights!r} cannot be read ({exc.strerror}): give the '
                f"node's user read access to it and its folders, or pass a copy it can read"
            ) from exc
        if onnx:
            return None
        try:
            model = read_checkpoint_config(params.weights)['model']
        except CheckpointError as exc:
            raise _model_file_error(exc, params) from exc
        detects = model.get('detect', True)  # TarFuseConfig's defaults
        if params.classes and 'class_names' in model:
            _checked_class_ids(params.classes, model['class_names'] if detects else ())
        return detects

    def _make_outputs(self, detects):
        """Create the output publishers (detections if ``detects``), checking the QoS overrides.

        Raises :class:`StartupError` for an override of a value, a topic or a policy that no
        output takes.
        """
        self._pub_fused = self._output(Image, _FUSED_TOPIC)
        self._pub_fused_compressed = self._output(
            CompressedImage, self._transport_topic(_FUSED_TOPIC, 'compressed')[1])
        self._pub_info = self._output(CameraInfo, 'fused/camera_info')
        # A model without detection head: no detections publisher, so the topic is absent
        # (not advertised with an always-empty array); said once in the log when ready.
        self._pub_detections = None
        if detects:
            self._pub_detections = self._output(Detection2DArray, 'detections')
        self._pub_registered = self._output(Image, 'registered/image_raw')
        self._pub_debug = self._output(Image, 'debug/image_raw')
        inputs = [*self._input_topics(), self._resolve(self._info_topic[0]),
                  *(self._resolve(base) for base in _INPUT_TOPICS)]
        absent = [] if detects else [self._resolve('detections')]
        unknown, ignored = unknown_qos_overrides(self, inputs, absent, self._remapped_outputs())
        if unknown:
            raise StartupError(f'unknown QoS override {", ".join(unknown)}: no output of this '
                               f'node takes it (outputs take history, depth and reliability); '
                               f'correct or remove it in the params file or on the command line')
        if ignored:
            self.get_logger().warning(
                f'QoS override {", ".join(repr(name) for name in ignored)} ignored: this '
                f'model does not detect, so the detections topic is not advertised')

    def _load_engine(self, params):
        onnx = params.backend == 'onnxruntime'
        # Imported here: the configuration is checked before torch loads (and the onnxruntime
        # backend does not load the torch engine).
        from tarfuse_ros.core.backends import create_engine, model_error
        # cpu_threads 0: the libraries' defaults, unless this process may use fewer CPUs than
        # the machine has (a container's CPU limit, which they do not count).
        try:
            threads = params.cpu_threads or default_cpu_threads()
        except (ValueError, ImportError) as exc:
            raise StartupError(f'cpu_threads 0: {exc}; or set cpu_threads') from exc
        if not onnx:
            self._check_torch_threads(threads)
        try:
            engine = create_engine(
                params.backend, weights=params.weights, device=params.device, half=params.half,
                threads=threads,
                conf_threshold=params.confidence_threshold, iou_threshold=params.iou_threshold,
                max_detections=params.max_detections,
                allow_cpu_fallback=params.allow_cpu_fallback,
                registration_prior=registration_prior(params),
                scale_search=params.registration_scale_search,
                fine_passes=fine_passes(params),
                global_every=params.registration_global_every,
                global_window=params.registration_global_window,
                global_track=params.registration_global_track,
                input_max_long_side=params.input_max_long_side)
        except model_error(params.backend) as exc:
            raise _model_file_error(exc, params) from exc
        except BuiltInFinePassesError as exc:  # checked once the ONNX graph's metadata is read
            problem = graph_fine_passes_problem(params, _graph_count(exc.built_in))
            raise StartupError(problem) from exc
        except NoFineStageError as exc:  # the engine's words name its argument, not ours
            raise StartupError(
                f'registration.fine_passes {params.registration_fine_passes}: {exc}; set '
                f"registration.fine_passes to 0 or -1 (the model's own)") from exc
        except StreamSettingError as exc:  # it named the engine's keywords: ours instead
            raise StartupError(f'cannot start the model with these parameters: '
                               f'{exc.named(PARAMETERS)}') from exc
        except ValueError as exc:
            raise StartupError(f'cannot start the model with these parameters: {exc}') from exc
        except (RuntimeError, OSError) as exc:
            raise StartupError(
                f'cannot start the model on device {params.device!r}: {exc}. Use -p device:=cpu '
                f'or -p allow_cpu_fallback:=true, or check the CUDA driver') from exc
        if not self.context.ok():
            # A SIGTERM (ros2 launch stopping) while the model loaded shut the context down
            # without interrupting the load: stop quietly here. The start-up lines logged next
            # each printed 'Failed to publish log message to rosout: publisher's context is
            # invalid'.
            raise ExternalShutdownException()
        if not onnx:  # running with them: a later node of this process must ask as many
            with _TORCH_THREADS_LOCK:
                _TORCH_THREADS[id(self)] = (self.get_fully_qualified_name(), threads)
        if threads and not params.cpu_threads:
            self.get_logger().info(
                f'cpu_threads 0: {threads} CPU thread(s), {default_threads_reason(threads)}; '
                f'set cpu_threads to choose')
        self._cpu_threads = threads
        if engine.registration_prior is not None:
            prior = engine.registration_prior
            self.get_logger().info(
                f'registration prior (IR {prior.ir_size[0]}x{prior.ir_size[1]} -> visible '
                f'{prior.visible_size[0]}x{prior.visible_size[1]}): '
                f'{prior.homography.ravel().round(6).tolist()}')
        scales = () if onnx else engine.scale_candidates
        if len(scales) > 1:
            self.get_logger().info(
                f'global stage scale search: IR / visible scales {list(scales)} '
                f'(-p registration.scale_search:=false for rigs with matching fields of view: '
                f'about half the CPU time)')
        elif not params.registration_scale_search and not scales:  # torch: onnx refused it
            self.get_logger().info('registration.scale_search false has no effect: the model '
                                   f'has no orientation global stage ({params.weights})')
        elif not params.registration_scale_search:
            self.get_logger().info('global stage scale search off '
                                   '(registration.scale_search false): scale 1.0 only')
        if fine_passes(params) is not None and onnx and not engine.fine_stage:  # 0, as torch's
            self.get_logger().info(
                f'registration.fine_passes {params.registration_fine_passes} has no effect: '
                f'the ONNX graph has no fine stage (no orientation global stage: '
                f'{params.weights})')
        elif fine_passes(params) is not None and onnx:  # another count was refused above
            self.get_logger().info(
                f"registration.fine_passes {params.registration_fine_passes}: the ONNX graph's "
                f'own count (it was exported with these fine passes built in)')
        elif fine_passes(params) is not None and not scales:  # 0: 1-8 were refused above
            self.get_logger().info(
                f'registration.fine_passes {params.registration_fine_passes} has no effect: '
                f'the model has no orientation global stage ({params.weights})')
        elif fine_passes(params) is not None:
            self.get_logger().info(
                f'global stage fine passes: {engine.fine_passes} (registration.fine_passes '
                f"{params.registration_fine_passes}; -1 runs the model's own)")
        if params.registration_global_track:
            self.get_logger().info(
                f"global stage tracking the rig: fine passes from the previous pair's map, a "
                f'full fit on one pair in {params.registration_global_track} '
                f'(registration.global_track)')
        elif engine.streams_global_map:
            self.get_logger().info(
                f'global stage over the stream (one rigid rig): a fit on one pair in '
                f'{params.registration_global_every}, each pair starts from the median of the '
                f'last {params.registration_global_window} fits')
        # A CPU fallback is logged by the core (forwarded above), once, with its cause.
        if params.classes:
            engine.set_thresholds(classes=_checked_class_ids(params.classes, engine.class_names))
        return engine

    def _check_torch_threads(self, threads):
        """Raise :class:`StartupError` where a running node of the process has other threads.

        PyTorch has one thread count per process (``torch.set_num_threads``): a second node
        of the process (a program serving two camera rigs) set its own for both, and the
        first ran with it while asking for another.
        """
        with _TORCH_THREADS_LOCK:
            for name, count in _TORCH_THREADS.values():
                if count != threads:
                    raise StartupError(
                        f'cpu_threads {self._params.cpu_threads}: {threads} PyTorch CPU '
                        f'thread(s), but {name} in this process runs PyTorch with {count}, and '
                        f'PyTorch has one thread count per process: give the nodes of one '
                        f'process the same cpu_threads, or start them in processes of their '
                        f'own (ros2 launch does)')

    def _make_refiner(self, params):
        """Return the online refiner of the prior (None unless enabled); log its settings."""
        if not params.refinement_enabled:
            return None
        from tarfuse_ros.core.refine import OnlinePriorRefiner
        settings = refinement_settings(params)
        self.get_logger().info(
            f'online refinement of the registration prior: from '
            f'{"registration.prior" if self._engine.registration_prior else "no prior"}, '
            f'alpha {settings.alpha}, max_step_px {settings.max_step_px}, min_alignment '
            f'{settings.min_alignment}, every_n {settings.every_n}')
        return OnlinePriorRefiner(settings, self._engine.registration_prior)

    def _output(self, msg_type, topic):
        """Create an output publisher (reliable, keep last 10) that takes REP-2003 overrides."""
        try:
            return self.create_publisher(
                msg_type, topic, 10,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        except (ParameterException, InvalidQosOverridesError, RuntimeError, ValueError) as exc:
            raise StartupError(
                f'invalid QoS override for {self._resolve(topic)!r}: {exc}; reliability takes '
                f'reliable, best_effort or system_default, history keep_last, keep_all or '
                f'system_default, depth an integer >= 1 (with keep_last)') from exc

    def _resolve(self, topic):
        """Return ``topic`` with namespace and remapping applied (as given without them)."""
        try:
            return self.resolve_topic_name(topic)
        except AttributeError:  # an rclpy without Node.resolve_topic_name
            return topic

    def _check_topics_distinct(self):
        """Raise :class:`StartupError` when two inputs, or an input and an output, share a topic.

        Remapping can do it; each image would then be fused with itself, or the node would
        read what it publishes. The visible camera_info counts as an input (it follows the
        visible image: remapping the image alone can put it onto fused/camera_info).
        """
        inputs = self._input_topics()
        if inputs[0] == inputs[1]:
            raise StartupError(f'the infrared and the visible input are both {inputs[0]!r}: '
                               f'remap infrared/image_raw and visible/image_raw to the '
                               f'topics of the two cameras')
        info, origin = self._info_topic
        info = self._resolve(info)  # as the subscription will resolve it
        for base in _OUTPUT_TOPICS:
            output = self._resolve(base)
            if output in inputs:
                raise StartupError(f'output {base} is remapped onto the input {output!r}: the '
                                   f'node would read what it publishes; remap it to another '
                                   f'topic')
            if output == info:
                raise StartupError(f'the visible camera_info is read from {info!r} ({origin}), '
                                   f'where the node publishes {base}: it would read what it '
                                   f'publishes; remap visible/camera_info to the camera_info '
                                   f'topic of the visible camera, or {base} to another topic')

    def _input_topics(self):
        """Return the topics the image inputs subscribe to (resolved, transport included)."""
        transports = (self._params.infrared_transport, self._params.visible_transport)
        return [self._resolve(self._transport_topic(base, transport)[1])
                for base, transport in zip(_INPUT_TOPICS, transports)]

    def _remapped_outputs(self):
        """Return ``{output name before remapping: after}`` for the outputs a rule renamed."""
        renamed = {}
        for base in _OUTPUT_TOPICS:
            try:
                before = self.resolve_topic_name(base, only_expand=True)
            except (AttributeError, TypeError):  # an rclpy without only_expand
                return {}
            after = self._resolve(base)
            if after != before:
                renamed[before] = after
                if base == _FUSED_TOPIC:
                    renamed[f'{before}/compressed'] = f'{after}/compressed'
        return renamed

    def _transport_topic(self, base, transport):
        """Return ``(message type, topic)`` of ``base`` for an image_transport name.

        Like image_transport, the base name is resolved first (namespace and remapping rules
        apply to ``<camera>/image_raw``), then ``/compressed`` (or ``/compressedDepth``) is
        appended.
        """
        if transport == 'raw':
            return Image, base
        return CompressedImage, f'{self._resolve(base)}/{transport}'

    @staticmethod
    def _resolved(sub, topic):
        try:
            return sub.sub.topic_name
        except AttributeError:
            return topic

    def _make_synchroniser(self):
        """(Re)build the synchroniser behind fresh relays; old queues are simply dropped."""
        params = self._params
        relays = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
        if params.sync_approximate:
            sync = message_filters.ApproximateTimeSynchronizer(
                relays, params.sync_queue_size, params.sync_slop)
        else:
            sync = message_filters.TimeSynchronizer(relays, params.sync_queue_size)
        sync.registerCallback(self._on_pair)
        self._relays, self._sync = relays, sync
        self._nearest.reset()  # the pair it held is no longer the synchroniser's
        self._lags.reset()  # a time jump or a silence: the lags across it mix two timelines

    # -- logging -------------------------------------------------------------------------------
    def _warn(self, key, message):
        held = self._throttle.admit(key)
        if held is not None:
            suffix = f' ({held} similar warnings suppressed)' if held else ''
            self.get_logger().warning(message + suffix)

    # -- input side (executor thread) ------------------------------------------------------
    def _on_input(self, msg, index):
        name, topic = _INPUT_NAMES[index], self._topics[index]
        self._stats.count(f'{name}_msgs')
        now = self._input_time()
        if self._first_arrival[index] is None:
            self._first_arrival[index] = now
        previous_arrival, self._last_arrival[index] = self._last_arrival[index], now
        previous_wall, self._last_wall[index] = self._last_wall[index], time.monotonic()
        self._silence_flushed[index] = False
        if (index == VISIBLE and previous_arrival is not None
                and now - previous_arrival > self._params.input_timeout):
            # Silent for longer than diagnostics.input_timeout: a new play of a bag (whose
            # stamps tarfuse-make-bag starts at one time) may repeat the last pair's stamp.
            self._last_pair_visible_ns = None
        other = 1 - index
        other_arrival = self._last_arrival[other]
        if (other_arrival is not None and now - other_arrival > self._params.input_timeout
                and not self._silence_flushed[other]):
            # The other input has been silent for longer than diagnostics.input_timeout: the
            # messages it left in the synchroniser are stale. Dropped, so that they never pair
            # with this input's (a bag replayed without that camera, same stamps, found a
            # previous bag's images).
            self._make_synchroniser()
            self._last_msg[other] = None
            self._silence_flushed[other] = True
        stamp = _stamp_ns(msg.header.stamp)
        self._zero_stamped[index] = stamp == 0
        if stamp == 0:  # the driver's own stamp, before any offset
            cause = f'zero stamp on {topic}: the driver does not stamp its images'
            self._stats.reject(cause, pair=False)
            self._warn(f'zero_stamp:{name}', f'message ignored: {cause}')
            return
        self._note_clock_gap(index, stamp)
        if self._offset_monitor is not None:  # the driver's own stamp: the offset is sought
            try:
                self._offset_queue.put_nowait((index, stamp, msg))
            except queue.Full:
                pass
        if index == INFRARED and self._ir_offset_ns:
            # From here on the IR stamp is the corrected one: the order checks of this input
            # (a constant offset changes none of its steps), the cross-input comparisons at a
            # time jump, the pairing check and the synchroniser all compare it with visible
            # stamps, which is what the offset is for.
            corrected = stamp + self._ir_offset_ns
            if corrected < 0:  # no time before 0: rclpy's Time refuses it
                cause = (f'{topic} stamped {stamp / 1e9:.3f} s, before time 0 with '
                         f'sync.infrared_time_offset '
                         f'{self._params.sync_infrared_time_offset} s')
                self._stats.reject(cause, pair=False)
                self._warn(f'negative_stamp:{name}', f'message ignored: {cause}')
                return
            stamp, msg = corrected, restamped(msg, corrected)
        timeline = self._timelines[index]
        last = timeline.newest
        settled = timeline.settle(stamp)  # the image held for this one to tell (HOLD, below)
        if settled is not None:
            self._take_held(index, *settled, last=last)
            last = timeline.newest
        verdict = timeline.receive(
            stamp, functools.partial(self.count_publishers, topic),
            after_silence=previous_arrival is not None
            and now - previous_arrival > self._params.input_timeout,
            item=(msg, previous_wall))
        if verdict == COPY:
            # A copy of an image just delivered, from a second publisher (a relay or a bridge
            # publishing the images again, a second driver): taken for a bag loop's replayed
            # stamp, each copy reset the synchroniser (and max_rate) and was fused again with
            # a stamp going back.
            self._reject_copy(index, last - stamp)
            return
        if verdict == LATE:
            # Delivered late, among stamps this input has just delivered: not a time jump (nor
            # the jump the other input made first and this one has still to make), so
            # no reset (which would lose the partners the synchroniser holds). Nor is it fed:
            # its pair would come after newer ones, take the keep-newest slot from a newer
            # pair and give the outputs a stamp going back. Duplicates of the newest stamp are
            # not behind it; they go on to the synchroniser, and a pair of a visible image
            # paired already is skipped there (_on_pair).
            cause = (f'out of order on {topic}: stamped {(last - stamp) / 1e9:.3f} s before '
                     f'the newest')
            self._stats.reject(cause, pair=False)
            self._warn(f'out_of_order:{name}', f'message ignored: {cause}')
            return
        if verdict == HOLD:
            # Stamped like an image just delivered, on a topic of one publisher: that image
            # again, late (a driver or bridge repeating its messages: it reset the
            # synchroniser and was fused again, its outputs going back in time), or a bag's
            # loop shorter than the window. Held: the other input's image stamped like it (a
            # loop moves both cameras back), held or already ignored as a copy (its images a
            # frame or more ahead of this one's: the whole round was lost), or this input's
            # next one tells.
            other_timeline = self._timelines[other]
            params = self._params
            slop_ns = round(params.sync_slop * 1e9) if params.sync_approximate else 0
            if any(abs(earlier - stamp) <= slop_ns for earlier in other_timeline.run):
                held = other_timeline.held
                order = [index, other]
                if held is not None and abs(held - stamp) <= slop_ns:
                    order.reverse()  # the other input's image came first: its jump first
                for which in order:
                    which_last = self._timelines[which].newest  # (before the jump)
                    if self._timelines[which].held is not None:
                        self._take_held(which, *self._timelines[which].replay_held(),
                                        last=which_last)
            return
        self._take(index, msg, stamp, verdict, last, previous_wall)

    def _take_held(self, index, verdict, stamp, item, last):
        """Feed an input's image held (HOLD) as a replay's first, or ignore it as a copy.

        ``last`` is the input's newest stamp before it was told (the jump's start).
        """
        msg, previous_wall = item
        if verdict == COPY:
            self._reject_copy(index, last - stamp)
        else:
            self._take(index, msg, stamp, verdict, last, previous_wall)

    def _drop_held(self, index, timeout):
        """Count and warn of an input's image held (HOLD) that no next image came to tell."""
        held = self._timelines[index].drop_held()
        if held is None:
            return
        name, topic = _INPUT_NAMES[index], self._topics[index]
        ago = (self._timelines[index].newest - held[0]) / 1e9
        cause = (f'held image on {topic}: stamped like one {ago:.3f} s before the newest '
                 f'(delivered again, or the start of a bag loop), it waited for the next image '
                 f'of its camera, and none came for {timeout:g} s (diagnostics.input_timeout): '
                 f'not fused')
        self._stats.reject(cause, pair=False)
        self._warn(f'held:{name}', f'message ignored: {cause}')

    def _reject_copy(self, index, ago):
        """Count and warn of an image ignored as a copy, ``ago`` ns before its input's newest."""
        name, topic = _INPUT_NAMES[index], self._topics[index]
        which = 'the newest' if not ago else f'one {ago / 1e9:.3f} s before the newest'
        publishers = self.count_publishers(topic)
        if publishers > 1:
            cause = (f'duplicate on {topic}: stamped like {which}, and the topic has '
                     f'{publishers} publishers (a relay or bridge publishing its images '
                     f'again, or a second driver)')
        else:
            cause = (f'duplicate on {topic}: stamped like {which}, delivered again (a driver '
                     f'or bridge repeating its messages)')
        self._stats.reject(cause, pair=False)
        self._warn(f'duplicate:{name}', f'message ignored: {cause}')

    def _take(self, index, msg, stamp, verdict, last, previous_wall):
        """Feed an input's accepted image to the synchroniser, after a jump's resets if one.

        ``verdict`` is its timeline's (NEXT, JUMP or JUMP_FOLLOWED); ``last`` the input's
        newest stamp before it, ``previous_wall`` the monotonic arrival of its image before.
        """
        topic, other = self._topics[index], 1 - index
        if verdict in (JUMP, JUMP_FOLLOWED):  # a time jump: this input's or the other's
            if index == VISIBLE:
                # The camera_info that came before the visible camera's last image of its old
                # timeline (a previous loop or bag) are never a new image's, by stamp or as the
                # newest; those since (this loop's, sent just before its first image) stay.
                with self._camera_infos_lock:
                    kept = [info for info in self._camera_infos if info[2] > previous_wall]
                    self._camera_infos.clear()
                    self._camera_infos.extend(kept)
                # max_rate goes by the visible stamps: it starts over on the new timeline (a
                # loop shorter than 1 / max_rate lies within the last pair's period and had
                # none of its pairs let through).
                self._rate_limit = StampRateLimit.for_rate(self._params.max_rate)
                self._last_pair_visible_ns = None
            # JUMP_FOLLOWED: the other input made this jump first (a bag loop moves both
            # cameras back): the synchroniser was reset then, and holds this input's partners.
            if verdict == JUMP:
                self._stats.count('sync_resets')
                self._warn('time_jump',
                           f'time jumped backwards by {(last - stamp) / 1e9:.3f} s on '
                           f'{topic} (bag loop or clock reset): synchroniser reset')
                self._make_synchroniser()
                other_last = self._timelines[other].newest
                params = self._params
                slop_ns = round(params.sync_slop * 1e9) if params.sync_approximate else 0
                if other_last is not None and other_last > stamp + slop_ns:
                    # The other input's newest stamp is of the old timeline (no partner of
                    # this one): its step back from it is this jump, not one to reset again.
                    self._timelines[other].expect_jump()
                elif self._last_msg[other] is not None:
                    # The other input's newest message may be this one's partner: keep it.
                    self._relays[other].signalMessage(self._last_msg[other])
            else:
                # The other input jumped first and reset the check: this input's images
                # since (of the old timeline) are left out with its own.
                self._lags.reset()
        self._lags.add(index, time.monotonic_ns(), stamp)
        self._timelines[other].other_passed(stamp)
        self._last_msg[index] = msg
        # Before the synchroniser, which may pair it: was the last pair the nearest?
        self._count_verdict(self._nearest.message(index, stamp))
        self._relays[index].signalMessage(msg)

    def _count_verdict(self, verdict):
        if verdict is not None and not verdict.nearest:
            self._stats.count('pairs_not_nearest')

    def _on_pair(self, ir_msg, vi_msg):
        """Store the newest pair; a pair still waiting for the worker is dropped and counted.

        Under ``max_rate``, a pair whose visible stamp is less than 1 / ``max_rate`` after the
        last pair let in (:class:`StampRateLimit`) is skipped first, counted apart (asked for,
        not an overload), so the worker starts pairs at most that often; ``ir_msg`` carries
        the corrected IR stamp.
        """
        self._stats.count('pairs_received')
        stamps = (_stamp_ns(ir_msg.header.stamp), _stamp_ns(vi_msg.header.stamp))
        last = self._last_pair_visible_ns
        if last is not None and stamps[VISIBLE] <= last:
            # The same visible image again (delivered twice by a bridge or a recorder, a
            # driver repeating its last frame), paired with its IR copy or the IR camera's
            # next image: its outputs went out already, and a second set with the same header
            # is no new frame to a tracker downstream. Or an older visible image the
            # synchroniser held and paired after a newer one: its outputs would go back.
            topic = self._topics[VISIBLE]
            stamp = f'{vi_msg.header.stamp.sec}.{vi_msg.header.stamp.nanosec:09d}'
            if stamps[VISIBLE] == last:
                cause = (f'{topic}: the image stamped {stamp} was paired already (delivered '
                         f'twice: a driver or bridge repeating messages, or a bag of one pair '
                         f'in a loop); each visible image is fused once')
            else:
                cause = (f'{topic}: the image stamped {stamp} was paired after a newer one, '
                         f'stamped {(last - stamps[VISIBLE]) / 1e9:.3f} s later: the outputs '
                         f'would go back in time')
            self._stats.reject(cause)
            self._warn('stale_pair', f'pair skipped: {cause}')
            return
        self._last_pair_visible_ns = stamps[VISIBLE]
        self._stats.record_pair_gap(abs(stamps[INFRARED] - stamps[VISIBLE]) / 1e6)
        self._count_verdict(self._nearest.paired(stamps))
        # By the outputs' stamp, not a clock: the same pairs under use_sim_time and at any
        # playback speed of a bag (tarfuse_ros.core.rate).
        if not self._rate_limit.admit(stamps[VISIBLE]):
            self._stats.count('pairs_skipped_max_rate')
            return
        with self._slot_cond:
            if self._slot is not None:
                self._stats.count('pairs_dropped')
            self._slot = (ir_msg, vi_msg)
            self._slot_cond.notify()

    def _on_camera_info(self, msg):
        arrival = time.monotonic()
        with self._camera_infos_lock:
            self._camera_infos.append((_stamp_ns(msg.header.stamp), msg, arrival))
            self._camera_info_count += 1
            self._camera_info_arrival = arrival

    def _camera_info_status(self):
        """Return the diagnostics value of the visible camera_info input (README, Topics).

        ``'off'`` without ``publish.camera_info``; else ``'<topic>: none received'`` or
        ``'<topic>: N received, newest S s ago'``. Informational: camera_info is optional.
        """
        if not self._params.publish_camera_info:
            return 'off'
        with self._camera_infos_lock:
            count, arrival = self._camera_info_count, self._camera_info_arrival
        topic = self._info_sub.topic_name
        if not count:
            return f'{topic}: none received'
        return f'{topic}: {count} received, newest {time.monotonic() - arrival:.1f} s ago'

    def _camera_info_for(self, stamp):
        """Return the camera_info stamped ``stamp`` (image_transport's pairing), else the newest.

        The newest stands in for drivers that stamp their camera_info otherwise; None before
        the first camera_info, and after the visible images' time jumped back until one comes
        again (those held were of the old timeline).
        """
        with self._camera_infos_lock:
            infos = list(self._camera_infos)
        if not infos:
            return None
        return next((msg for info_stamp, msg, _ in reversed(infos) if info_stamp == stamp),
                    infos[-1][1])

    def _on_incompatible_qos(self, index, info):
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        problem = (f'a publisher on {self._topics[index]} has QoS incompatible with the '
                   f'subscription ({policy} policy; subscription: {self._params.qos_reliability})')
        self._qos_events[index] = (time.monotonic(), problem)
        self._warn(f'qos:{index}', problem + '; set qos.reliability to match the publisher')

    # -- worker thread ---------------------------------------------------------------------
    def _worker_loop(self):
        _CORE_LOG_TARGET.set(self.get_logger())  # the core's records from this thread: ours
        while True:
            with self._slot_cond:
                while self._slot is None and not self._stopping:
                    self._slot_cond.wait()
                if self._stopping:
                    return
                pair, self._slot = self._slot, None
            try:
                self._process(*pair)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any one pair
                if self._stopping:
                    return
                self._stats.reject(f'processing failed: {exc!r}')
                self._warn('processing', f'pair skipped, processing failed: {exc!r}')

    def _offset_loop(self):
        """Decode every image into the time-offset monitor; judge it every half window."""
        window = self._params.time_offset_window
        cameras = ('ir', 'vi')
        next_check = None  # by the visible stamps (s), as bag playback at any speed gives
        _CORE_LOG_TARGET.set(self.get_logger())
        while not self._stopping:
            try:
                index, stamp_ns, msg = self._offset_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                # A damaged payload's codec warning: said by the pairing path.
                if self._depth_transport(index):
                    array = compressed_depth_msg_to_array(msg, codec_warnings=[])[0]
                else:
                    array = image_msg_to_motion_array(msg, MAX_SIDE, codec_warnings=[])
            except ValueError:
                continue  # the pairing path refuses it and says why
            stamp_s = stamp_ns / 1e9
            if self._offset_monitor.add(cameras[index], stamp_s, array):
                next_check = None  # a time jump back: the monitor started over
            if index != VISIBLE:
                continue
            if next_check is None:
                next_check = stamp_s
            if stamp_s < next_check:
                continue
            next_check = stamp_s + window / 2
            try:
                self._judge_time_offset()
            except Exception as exc:  # noqa: BLE001 - a check must not stop the node
                self._offset_status = f'failed: {exc!r}'

    def _judge_time_offset(self):
        """Set the /diagnostics status of the time-offset check (and its warning)."""
        window = self._params.time_offset_window
        result = self._offset_monitor.check()
        if result is None:
            held = min(self._offset_monitor.span_s().values())
            self._offset_status = f'collecting: {held:.0f} of {window:g} s of both cameras'
            self._offset_problem = self._offset_off = None
            return
        estimate, problem = result
        if problem is not None:
            self._offset_status = f'no offset to trust over the last {window:g} s: {problem}'
            self._offset_problem = self._offset_off = None
            return
        found = estimate.offset_s
        configured = self._params.sync_infrared_time_offset
        self._offset_status = (f'{found:+.3f} s over the last {window:g} s (motion '
                               f'correlation {estimate.correlation:.2f}; set '
                               f'{configured:g} s)')
        difference = found - configured
        # Half a frame interval of the slower camera: the stamps then pair other frames. One
        # window with little motion can be off by a few tens of ms (benchmarks/time_offset.py),
        # so the warning waits for two checks in a row that both find the offset off.
        off = abs(difference) > max(0.5 * estimate.separation_s, _OFFSET_TOLERANCE_S)
        if off and self._offset_off is not None:
            self._offset_problem = (
                f'the IR stamps look {1000 * abs(difference):.0f} ms '
                f'{"late" if difference < 0 else "early"} against the visible ones over the '
                f'last {window:g} s (motion correlation {estimate.correlation:.2f}; the check '
                f'before found {self._offset_off:+.3f} s): set sync.infrared_time_offset to '
                f'{found:.3f} (it is {configured:g})')
            self._warn('time_offset', self._offset_problem)
        else:
            self._offset_problem = None
        self._offset_off = found if off else None

    def _read_image(self, index, msg, size_checked=False):
        """Convert one message of input ``index``; raise ``ValueError`` naming the topic and cause.

        ``size_checked``: ``msg`` is a ``CompressedImage`` whose header
        :meth:`_check_compressed_visible` has checked (it is not read again). A damaged JPEG
        (or a PNG with a flawed ancillary chunk) that the codec decodes all the same is used,
        counted and said in a throttled warning (the codec's own line kept off stderr).
        """
        topic = self._topics[index]
        damage = []
        try:
            if self._depth_transport(index):
                array, encoding = compressed_depth_msg_to_array(msg, codec_warnings=damage)
            elif isinstance(msg, CompressedImage):
                array, encoding = compressed_msg_to_array(msg, size_checked=size_checked,
                                                          codec_warnings=damage)
            else:
                array, encoding = image_msg_to_array(msg)
            check_frame_size(array, 'the image')
        except ValueError as exc:
            raise ValueError(f'{topic}: {exc}') from exc
        if self._depth_transport(index) and encoding == 'gray16':
            self._check_depth_zeros(topic, array)
        if damage:
            self._stats.count('codec_warnings')
            if damage[0].startswith('libpng'):
                said = (f'PNG ({len(msg.data)} B) decoded with a warning and fused '
                        f'({damage[0]}): check what writes it')
            else:
                said = (f'damaged JPEG ({len(msg.data)} B), decoded all the same and fused '
                        f'(libjpeg: {damage[0]}): parts of the frame may be grey or garbled; '
                        f'check the camera and its link')
            self._warn(f'damaged_compressed:{index}', f'{topic}: {said}')
        return array, encoding

    def _check_depth_zeros(self, topic, counts):
        """Warn (throttled) of a compressedDepth 16-bit IR frame with many zero counts.

        image_transport's compressedDepth publisher sends every count above its ``depth_max``
        x 1000 as 0, and ``depth_max`` defaults to 10.0: a radiometric camera's centi-kelvin
        (29315 at 20 degC), or 14-bit counts above 10000, arrive as 0 and the IR is flat. The
        frame is fused as received.
        """
        zeros = int((counts == 0).sum())
        if zeros * 100 < counts.size:  # under 1 %: a dead pixel or two, not the publisher's cap
            return
        self._warn('depth_zeros', (
            f'{topic}: {100.0 * zeros / counts.size:.0f} % of the 16-bit IR pixels are 0 '
            f"(fused as received): image_transport's compressedDepth publisher sends every "
            f'count above its depth_max x 1000 as 0, and depth_max defaults to 10.0 (10000 '
            f"counts; a radiometric camera's centi-kelvin are all above it): raise the "
            f"publisher's <image topic>.compressedDepth.depth_max, e.g. "
            f'image_raw.compressedDepth.depth_max: 65.5'))

    def _depth_transport(self, index):
        """Return whether input ``index`` is on image_transport's compressedDepth transport."""
        return index == INFRARED and self._params.infrared_transport == 'compressedDepth'

    def _check_compressed_visible(self, msg):
        """
        Refuse a compressed visible frame by the size its header states, before any decoding.

        The size (:func:`~tarfuse_ros.ros.conversions.compressed_size`, which refuses more
        than ``MAX_DECODED_PIXELS``, 66.4 Mpx, and a payload whose size Pillow cannot read)
        goes through the engine's network-size check (3840x2160 after
        ``input_max_long_side``), which would refuse the frame once decoded: a 7680x4320 JPEG
        is refused without spending 0.24 s and 100 MB on it. The IR is resized to the visible
        frame, so only the decode cap applies to it. A raw frame is left to the checks after
        decoding.
        Returns whether the header was checked (a compressed frame), so that decoding does not
        read it again. Raises ``ValueError`` naming the topic, the size and that nothing was
        decoded.
        """
        if not isinstance(msg, CompressedImage):
            return False
        topic = self._topics[VISIBLE]
        try:
            size = compressed_size(msg)
        except ValueError as exc:
            raise ValueError(f'{topic}: {exc}') from exc
        if size is None:
            return True
        try:
            self._engine.check_network_size(size)
        except ValueError as exc:
            raise ValueError(f'{topic}: {exc} (size from the compressed header; not '
                             f'decoded)') from exc
        return True

    def _process(self, ir_msg, vi_msg):
        params = self._params
        header = vi_msg.header
        for index, msg in ((INFRARED, ir_msg), (VISIBLE, vi_msg)):
            self._check_jpeg_of_16_bit(index, msg)
        try:
            checked = self._check_compressed_visible(vi_msg)
            ir, _ = self._read_image(INFRARED, ir_msg)
            vi, _ = self._read_image(VISIBLE, vi_msg, size_checked=checked)
            sizes = (ir.shape[1], ir.shape[0], vi.shape[1], vi.shape[0])
            if ir.shape[:2] != vi.shape[:2] and sizes not in self._sizes_logged:
                # Most rigs pair cameras of different sizes: normal, so said once per sizes.
                self._sizes_logged.add(sizes)
                said = (f'IR {sizes[0]}x{sizes[1]} and visible {sizes[2]}x{sizes[3]} differ: the '
                        f'IR images are resized to the visible frame (said once for these sizes)')
                if portrait_beside_landscape(sizes[:2], sizes[2:]):
                    self.get_logger().warning(
                        f'{said}; one is portrait, the other landscape: {PORTRAIT_ADVICE}: '
                        f'rotate it before the node (its driver, or an image_rotate node)')
                else:
                    self.get_logger().info(said)
            if self._refiner is not None and self._refiner.start_over_for(
                    (ir.shape[1], ir.shape[0]), (vi.shape[1], vi.shape[0])):
                self._engine.set_registration_prior(None)
                self._warn('refinement_start_over',
                           f'online refinement starts over from no prior: the images are now '
                           f'IR {ir.shape[1]}x{ir.shape[0]}, visible {vi.shape[1]}x'
                           f'{vi.shape[0]}, an aspect ratio the estimate cannot be scaled to')
            result = self._engine.infer(ir, vi)
        except ValueError as exc:
            cause = str(exc)
            self._stats.reject(cause)
            self._warn('bad_input:' + ' '.join(cause.split()[:3]),
                       f'pair at {header.stamp.sec}.{header.stamp.nanosec:09d} skipped: {cause}')
            return
        if params.publish_registered:
            self._pub_registered.publish(array_to_image_msg(result.registered_ir, 'mono8',
                                                            header))
        if params.publish_debug:
            debug = draw_detections(result.fused, result.detections)
            self._pub_debug.publish(array_to_image_msg(debug, 'bgr8', header))
        info = (self._camera_info_for(_stamp_ns(header.stamp)) if params.publish_camera_info
                else None)
        if info is not None:
            self._publish_camera_info(info, header, vi.shape)
        if params.publish_fused:
            encoding = 'bgr8' if result.fused.ndim == 3 else 'mono8'
            self._pub_fused.publish(array_to_image_msg(result.fused, encoding, header))
        if params.publish_fused_compressed:
            self._pub_fused_compressed.publish(
                array_to_compressed_msg(result.fused, header, fmt='jpeg'))
        if params.publish_detections and self._pub_detections is not None:
            self._pub_detections.publish(detections_to_msg(result.detections, header))
        clock = self.get_clock()
        now_ns = clock.now().nanoseconds
        latency_ms = (now_ns - _stamp_ns(header.stamp)) / 1e6 if now_ns else float('nan')
        if not now_ns:
            self._warn('no_clock', 'latency not measured: use_sim_time is true but no /clock '
                                   'message has arrived (play the bag with its clock)')
        elif latency_ms < 0 and clock.ros_time_is_active:
            # /clock went back behind the pair while it was processed (a bag loop): the
            # difference (minus the bag's length) is no latency.
            latency_ms = float('nan')
        self._stats.record_output(latency_ms, result.timings_ms.get('total', float('nan')))
        score = None
        if params.health_enabled and self._health.due():
            score = self._score_registration(ir, vi, result)
        if self._refiner is not None and self._refiner.due():
            self._refine_prior(ir, vi, result, score)

    def _check_jpeg_of_16_bit(self, index, msg):
        """Warn, once per input and format, of 16-bit images that came as 8-bit JPEG."""
        source = jpeg_of_16_bit_image(msg)
        if source is None or (index, msg.format) in self._jpeg_16_said:
            return
        self._jpeg_16_said.add((index, msg.format))
        self.get_logger().warning(
            f'{self._topics[index]}: 16-bit images ({source}) compressed as 8-bit JPEG '
            f"({msg.format!r}), their values scaled by 255/65535: a thermal camera's counts "
            f'keep a few grey levels, and the {_INPUT_NAMES[index]} image is nearly flat. '
            f"Set the camera's compressed format to png, which keeps 16 bits (its "
            f'image_transport parameter <image topic>.compressed.format, e.g. '
            f'image_raw.compressed.format: png); said once')

    def _publish_camera_info(self, info, header, shape):
        """Republish ``info`` with ``header`` when it describes a frame of ``shape``.

        The image a camera_info describes (REP 104) is its ROI, if set, else width x height,
        divided by the binning; 0 x 0 (unknown) fits any frame. Otherwise it is not published
        (another camera mode, or a calibration of another camera) and a warning names both.
        """
        roi = info.roi.width and info.roi.height
        width, height = ((info.roi.width, info.roi.height) if roi else (info.width, info.height))
        width //= max(info.binning_x, 1)
        height //= max(info.binning_y, 1)
        if (width or height) and (width, height) != (shape[1], shape[0]):
            self._warn('camera_info_size',
                       f'fused/camera_info not published: {self._info_sub.topic_name} '
                       f'describes {width}x{height} images but the visible image is '
                       f'{shape[1]}x{shape[0]}')
            return
        info = copy.copy(info)  # the buffered message keeps its own header (and stamp)
        info.header = header
        self._pub_info.publish(info)

    def _score_registration(self, ir, vi, result):
        """Add one pair to the registration health (after its outputs went out).

        Returns the pair's ``FrameScore``, or None when it could not be scored.
        """
        try:
            return self._health.observe(result.registered_ir, vi, result.flow_px,
                                        self._prior_flow(ir.shape, vi.shape))
        except ValueError as exc:
            self._warn('registration_health', f'registration health not scored: {exc}')
            return None

    def _refine_prior(self, ir, vi, result, score):
        """Feed one pair to the online refiner; the engine takes an accepted estimate."""
        try:
            update = self._refiner.observe(
                result.flow_px, result.registered_ir, vi, (ir.shape[1], ir.shape[0]),
                alignment=None if score is None else score.alignment)
        except ValueError as exc:
            self._warn('refinement', f'online refinement skipped a pair: {exc}')
            return
        if update.accepted:
            self._engine.set_registration_prior(self._refiner.prior)

    def _prior_flow(self, ir_shape, vi_shape):
        """Return the calibration prior's own flow for these sizes (None without a prior)."""
        prior = getattr(self._engine, 'registration_prior', None)
        if prior is None:
            return None
        key = (ir_shape[1], ir_shape[0], vi_shape[1], vi_shape[0])
        cached = self._prior_flows.get(key)
        if cached is None or cached[0] is not prior:  # new sizes, or the refiner moved it
            from tarfuse_ros.core.prior import prior_flow
            cached = (prior, prior_flow(prior.pre_warp_for(key[:2], key[2:]), key[3], key[2]))
            self._prior_flows[key] = cached
        return cached[1]

    # -- parameters ------------------------------------------------------------------------
    def describe_parameter(self, name):
        """Return the descriptor of ``name``: read-only for the parameters fixed at start-up.

        rclpy's parameter services (``ros2 param describe``, rqt_reconfigure) ask here; a set
        is checked against the declared descriptor, so the on-set callback still refuses a
        change with its reason (:func:`~tarfuse_ros.ros.params.reported_descriptor`).
        """
        return reported_descriptor(name, super().describe_parameter(name))

    def set_parameters_atomically(self, parameter_list):
        """Set ``parameter_list``, refusing a value of another type in the node's words.

        rclpy's parameter services (``ros2 param set``, ``load``, rqt_reconfigure) set through
        here; rclpy's own type check names no parameter
        (:func:`~tarfuse_ros.ros.params.wrong_type_reason`).
        """
        reason = wrong_type_reason(canonical_parameters(parameter_list))
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, parameters):
        with self._params_lock:
            old = self._params
            try:
                # Everything that can refuse the update first, so a refusal changes nothing.
                onnx = old.backend == 'onnxruntime'
                new = apply_updates(old, parameter_updates(parameters),
                                    _graph_count(self._engine.fine_passes) if onnx else None,
                                    self._engine.fine_stage)
                changed = {f for f in _RUNTIME_ENGINE_FIELDS + _HEALTH_FIELDS
                           if getattr(new, f) != getattr(old, f)}
                ids = (_class_ids(new.classes, self._engine.class_names)
                       if changed & set(_RUNTIME_ENGINE_FIELDS) else None)
                health = _health_settings(new) if changed & set(_HEALTH_FIELDS) else None
                # The refinement scores the pairs the health did not at this size too.
                refine = (refinement_settings(new) if self._refiner is not None
                          and new.health_max_side != old.health_max_side else None)
                if ids is not None:
                    self._engine.set_thresholds(
                        conf_threshold=new.confidence_threshold,
                        iou_threshold=new.iou_threshold,
                        max_detections=new.max_detections, classes=ids)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if health is not None:
                self._health.settings = health
            if refine is not None:
                self._refiner.settings = refine
            if new.health_enabled and not old.health_enabled:
                self._health.reset()  # scores from before it was switched off are stale
            if new.diagnostics_period != old.diagnostics_period:
                _restart(self._diag_timer, new.diagnostics_period)
            if new.input_timeout != old.input_timeout:
                _restart(self._health_timer, _input_check_period(new))
                self._watch_time_jumps(new.input_timeout)
            if new.max_rate != old.max_rate:
                # Starts over from the next pair (this callback and _on_pair both run on the
                # executor thread).
                self._rate_limit = StampRateLimit.for_rate(new.max_rate)
            self._params = new
        return SetParametersResult(successful=True)

    # -- health and diagnostics ------------------------------------------------------------
    def _check_health(self):
        params = self._params
        problems = self._check_clock_publishers()
        silence_said = {}  # problem -> the inputs it says are silent
        now = self._input_time()
        timeout = params.input_timeout
        fresh = [t is not None and now - t < timeout for t in self._last_arrival]
        counts = [self.count_publishers(topic) for topic in self._topics]
        for index in (INFRARED, VISIBLE):
            other = 1 - index
            if not fresh[index]:
                self._drop_held(index, timeout)
            if fresh[other] and not fresh[index]:
                problem = (f'no messages on {self._topics[index]} '
                           f'{self._silent_for(index, now)} while {self._topics[other]} flows: '
                           f'{self._why_silent(index, counts[index])}')
                problems.append(problem)
                silence_said[problem] = {index}
        if not any(fresh) and any(t is not None for t in self._last_arrival):
            # Both cameras stopped after images came: nothing is fused any more.
            if all(counts):
                why = (f'{sum(counts)} publisher(s) still there send nothing: hung camera '
                       f'drivers, unplugged cameras, a paused bag?')
            elif any(counts):  # one driver crashed, the other hangs: each said for its own
                gone = counts.index(0)
                why = (f'the publisher of {self._topics[gone]} is gone (its camera driver '
                       f'stopped or crashed?), the {counts[1 - gone]} of '
                       f'{self._topics[1 - gone]} still there send nothing (a hung driver, an '
                       f'unplugged camera?)')
            else:
                why = ('their publishers are gone: the camera drivers stopped or crashed, or a '
                       'bag ended')
            problem = (
                f'both inputs stopped, nothing is fused: no messages on '
                f'{self._topics[INFRARED]} {self._silent_for(INFRARED, now)} nor on '
                f'{self._topics[VISIBLE]} {self._silent_for(VISIBLE, now)} ({why})')
            problems.append(problem)
            silence_said[problem] = {INFRARED, VISIBLE}
        last_pair = self._stats.last_pair_time
        # Pairs arrive, none was fused for a while and the newest outcome was a rejection (none
        # fused since start: pairs have come for that while, not only since the first one).
        stats = self._stats
        output, rejected = stats.last_output_time, stats.last_rejection_time
        since = stats.first_pair_time if output is None else output
        if (last_pair is not None and now - last_pair < timeout and rejected is not None
                and now - since > timeout and (output is None or rejected > output)):
            problems.append(f'pairs arrive but none was fused for {timeout} s; the last was '
                            f'rejected: {stats.last_rejection}')
        zero = [self._topics[i] for i in (INFRARED, VISIBLE) if self._zero_stamped[i]]
        # No pair for that long: since the last pair, or since both inputs came (none yet).
        unpaired = all(fresh) and now - (last_pair if last_pair is not None
                                         else max(self._first_arrival)) > timeout
        if unpaired and zero:
            problems.append(f'both inputs flow but no pair was synchronised for {timeout} s: '
                            f'the messages on {" and ".join(zero)} have zero stamps (the '
                            f'driver does not stamp its images)')
        elif unpaired:
            problems.append(f'both inputs flow but no pair was synchronised for {timeout} s: '
                            f'{self._stamps_apart(params)}')
        problems.extend(self._check_clock_apart(fresh, now, timeout))
        if not unpaired:  # else the stamps' distance is said above, with its causes
            problems.extend(self._check_lags(fresh))
        problems.extend(self._check_pairing(params))
        type_problems = self._check_publisher_types()
        problems.extend(type_problems)
        if type_problems or not all(counts) or any(t is not None for t in self._last_arrival):
            self._publishers_since = None
        elif self._publishers_since is None:
            self._publishers_since = now
        elif now - self._publishers_since > timeout:
            problem = (
                f'{counts[0]} + {counts[1]} publishers on {self._topics[0]} + '
                f'{self._topics[1]} but no image received for {timeout} s: check their QoS '
                f'and the DDS transport (large images over best-effort DDS need the shipped '
                f'Fast DDS profile, see the README)')
            problems.append(problem)
            silence_said[problem] = {INFRARED, VISIBLE}
        problems.extend(self._check_publisher_qos())
        problems.extend(self._check_other_fused_publishers())
        silent_before = set().union(*self._silence_said.values())
        self._problems = problems
        self._silence_said = silence_said
        self._received_checked = self._received()
        for problem in problems:
            self._warn('health:' + _problem_key(problem), problem)
        if set().union(*silence_said.values()) - silent_before:
            # An input newly silent: said now, not at the next status (diagnostics.period
            # later), as diagnostic_updater's force_update.
            self._publish_diagnostics()
        self._schedule_input_check(now, fresh)

    def _schedule_input_check(self, now, fresh):
        """Run the next input check when a flowing input would pass the input timeout.

        Checked every min(0.5 s, input_timeout/2) alone, a stop was said up to that long after
        the timeout; the next check now runs 1 ms after the first flowing input's timeout
        would end, if that comes sooner (20 ms at least). Timed by the steady clock: under
        use_sim_time a bag played slower than the wall is checked again until its time has
        come, one played faster is said up to a period late.
        """
        period = _input_check_period(self._params)
        waits = [arrival + self._params.input_timeout - now + 0.001
                 for arrival, flows in zip(self._last_arrival, fresh) if flows]
        wait = max(min([period, *waits]), 0.02)
        if abs(wait * 1e9 - self._health_timer.timer_period_ns) >= 1e6:
            _restart(self._health_timer, wait)

    def _check_pairing(self, params):
        """Return a problem when a quarter or more of the last pairs were not the nearest.

        The approximate synchroniser pairs an image with the first partner within sync.slop,
        so a slop above half the faster camera's frame interval pairs images before the
        nearest one came (:mod:`tarfuse_ros.core.pairing`).
        """
        not_nearest, judged = self._nearest.share_not_nearest()
        if not params.sync_approximate or judged < 8 or 4 * not_nearest < judged:
            return []
        worst = max(self._nearest.verdicts, key=lambda verdict: verdict.nearer_ns)
        problem = (f'{not_nearest} of the last {judged} pairs were not the nearest images in '
                   f'time: a {_INPUT_NAMES[worst.index]} image up to '
                   f'{worst.nearer_ns / 1e6:.1f} ms nearer came after the pair was made (the '
                   f'synchroniser takes the first partner within sync.slop={params.sync_slop} s)')
        intervals = [median_interval_ns(timeline.stamps) for timeline in self._timelines
                     if len(timeline.stamps) >= 3]
        intervals = [interval for interval in intervals if interval]
        if intervals:
            slop = math.ceil(min(intervals) / 2e6) / 1e3  # above half the interval: no loss
            if slop < params.sync_slop:
                problem += (f'; set sync.slop to {slop:.3f} s, just over half the frame '
                            f'interval of the faster camera ({min(intervals) / 1e6:.1f} ms)')
        return [problem]

    def _stamps_apart(self, params):
        """Return why no pair forms while both cameras flow (a sentence for the warning)."""
        newest = [timeline.newest for timeline in self._timelines]
        gap = abs(newest[0] - newest[1]) / 1e9 if None not in newest else float('nan')
        rule = (f'a pair needs less than sync.slop={params.sync_slop} s'
                if params.sync_approximate
                else 'exact sync needs identical stamps')
        if params.sync_infrared_time_offset:
            rule += (f'; the IR stamps with sync.infrared_time_offset='
                     f'{params.sync_infrared_time_offset} s')
        said = f'latest stamps differ by {gap:.3f} s'
        if gap > MAX_INFRARED_TIME_OFFSET_S:
            return (f"{said} ({rule}): the drivers' clocks are that far apart (two computers "
                    f"whose clocks are not synchronised, a driver stamping with the camera's own "
                    f'clock): synchronise them (chrony, PTP) or stamp with the system time; '
                    f'sync.infrared_time_offset corrects at most {MAX_INFRARED_TIME_OFFSET_S:g} s')
        late = self._partners_gone(params)
        if late is not None:
            return f'{said} ({rule}): {late}'
        if not params.sync_infrared_time_offset:
            rule += ('; an IR driver that stamps a constant time later or earlier is '
                     'corrected by sync.infrared_time_offset')
        return f'{said} ({rule})'

    def _partners_gone(self, params):
        """Return why no pair forms when one camera's partners left the queue, else None.

        The synchroniser keeps ``sync.queue_size`` images of each camera. When one camera's
        newest stamp lies before every image the other's queue still holds, its partner was
        pushed out before it came: its images arrive later than the queue holds (a slow link
        or pipeline: a larger queue pairs them), or its driver stamps them that much earlier
        (``sync.infrared_time_offset``). Stamps alone cannot tell the two apart, so both are
        named.
        """
        newest = [timeline.newest for timeline in self._timelines]
        if None in newest:
            return None
        behind = INFRARED if newest[INFRARED] < newest[VISIBLE] else VISIBLE
        ahead = 1 - behind
        stamps = self._timelines[ahead].stamps
        held = stamps[-params.sync_queue_size:]
        interval = median_interval_ns(stamps)
        if len(held) < 2 or not interval or newest[behind] >= held[0]:
            return None
        gap_ns = newest[ahead] - newest[behind]
        needed = min(-(-gap_ns // interval) + 2, 1000)  # the partner and one image to spare
        stamping = 'earlier' if behind == INFRARED else 'later'
        return (f'the newest {self._topics[behind]} image is stamped before every '
                f'{self._topics[ahead]} image the synchroniser still holds (sync.queue_size='
                f'{params.sync_queue_size} keeps {(held[-1] - held[0]) / 1e9:.3f} s of them); '
                f'if the {_INPUT_NAMES[behind]} images arrive that late (a slow link or '
                f'pipeline), set sync.queue_size to {needed} or more, so that the '
                f'{_INPUT_NAMES[ahead]} images wait for them; if instead the IR driver stamps '
                f'its images that much {stamping} than the visible driver stamps the same '
                f'instant, correct it with sync.infrared_time_offset (tarfuse-time-offset '
                f'measures it)')

    def _note_clock_gap(self, index, stamp):
        """Note how far input ``index``'s stamp (ns) lies from the node's clock now."""
        now_ns = self.get_clock().now().nanoseconds
        if not now_ns:  # use_sim_time before the first /clock: no time to compare with
            self._clock_apart[index] = 0
            return
        gap = now_ns - stamp
        self._clock_gap_ns[index] = gap
        apart = abs(gap) > _CLOCK_APART_S * 1e9
        self._clock_apart[index] = self._clock_apart[index] + 1 if apart else 0

    def _check_clock_apart(self, fresh, now, timeout):
        """Return a problem when the flowing inputs' stamps lie far from the node's clock.

        Or when there is no clock: use_sim_time and no /clock message while images came for
        ``timeout`` s (``now`` in the inputs' clock; the first may come before the first /clock).

        A bag played into a node not on sim time without ``--restamp``, or a driver whose
        clock is off, gives latencies of years; the latency stays as measured, and this says
        why and what to do.
        """
        clock = self.get_clock()
        first = [t for t in self._first_arrival if t is not None]
        if (any(fresh) and first and now - min(first) > timeout and clock.ros_time_is_active
                and not clock.now().nanoseconds):
            # Said in the log as each pair came; a monitor reading /diagnostics saw 'fusing'.
            return ['use_sim_time is true but no /clock message has arrived: the latency is '
                    'not measured (nan), diagnostics.input_timeout and the rates are read in '
                    'wall time; play the bag with its clock (tarfuse-play --clock, ros2 bag '
                    'play --clock), or set use_sim_time:=false']
        apart = [index for index in (INFRARED, VISIBLE)
                 if fresh[index] and self._clock_apart[index] >= _CLOCK_APART_MESSAGES]
        if not apart:
            return []
        gaps = [self._clock_gap_ns[index] / 1e9 for index in apart]
        said = ', '.join(
            f'{self._topics[index]} {_span(abs(gap))} {"behind" if gap > 0 else "ahead of"} it'
            for index, gap in zip(apart, gaps))
        if clock.ros_time_is_active:
            return [f'images stamped far from the ROS time /clock gives (use_sim_time; {said}), '
                    f'so the latency reads that much: they are not stamped in the time of '
                    f"/clock's publisher (a live camera beside a bag's clock, a bag played with "
                    f'--clock whose images carry other stamps); play the bag they come from '
                    f'with its clock, or set use_sim_time:=false and play it with tarfuse-play '
                    f"--restamp; a driver's clock: synchronise it (chrony, PTP)"]
        return [f"images stamped far from this computer's clock ({said}), so the latency "
                f'reads that much: a bag played without its clock (play it with tarfuse-play '
                f'--clock or ros2 bag play --clock and set use_sim_time:=true, or restamp it '
                f'with tarfuse-play --restamp), or a camera driver whose clock is off '
                f'(synchronise it: chrony, PTP)']

    def _check_lags(self, fresh):
        """Return a problem when the IR and visible stamps run seconds apart, pairs or none.

        Compared by their lags (:mod:`tarfuse_ros.core.input_lags`): the time the node took
        each image minus its stamp (the IR's with sync.infrared_time_offset). The synchroniser
        still pairs images stamped a whole number of frame intervals apart, of other instants.
        Said only while both inputs flow (``fresh``), beyond what the offset can correct.
        """
        difference = self._lags.difference_s()
        if not all(fresh) or difference is None or abs(difference) <= MAX_INFRARED_TIME_OFFSET_S:
            return []
        ir, visible = self._topics
        ahead, behind = (ir, visible) if difference < 0 else (visible, ir)
        offset = self._params.sync_infrared_time_offset
        with_offset = f' (with sync.infrared_time_offset={offset:g} s)' if offset else ''
        return [f'the {ir} stamps{with_offset} run {abs(difference):.3f} s '
                f'{"ahead of" if difference < 0 else "behind"} the {visible} stamps against the '
                f'times this node receives them (IR lag minus visible lag {difference:+.3f} s, '
                f'median of the last {self._lags.window} images; lag = receive time - stamp): '
                f'images paired by stamp were taken seconds apart, though pairs form. Likely '
                f"the drivers' clocks are that far apart (two computers whose clocks are not "
                f'synchronised, a camera stamping with its time since boot), or the {behind} '
                f'images reach this node seconds later than the {ahead} ones (a slow link); '
                f'synchronise the clocks (chrony, PTP) or stamp with the system time '
                f'(sync.infrared_time_offset corrects a constant offset of at most '
                f'{MAX_INFRARED_TIME_OFFSET_S:g} s)']

    def _lag_difference_status(self):
        """Return the lags' difference for /diagnostics ('+0.012'), or how many are held."""
        difference = self._lags.difference_s()
        if difference is None:
            return f'collecting: {self._lags.count} of {self._lags.window} images'
        return f'{difference:+.3f}'

    def _check_clock_publishers(self):
        """Count the publishers on /clock under use_sim_time; return a problem for two or more.

        The ROS time takes every /clock message: with two publishers (two bags played with
        --clock) it goes back and forth between their times, and each step forward to the
        later one was a jump of the inputs' clock, all inputs said to have stopped at each
        check. Their silences and rates are read in wall time while it lasts.
        """
        count = self.count_publishers('/clock') if self.get_clock().ros_time_is_active else 0
        self._clock_publishers = count
        if count < 2:
            return []
        return [f'{count} publishers on /clock (two bags played with --clock, a bag beside a '
                f'simulator?): the ROS time (use_sim_time) goes back and forth between their '
                f'times, so the latencies are wrong, and diagnostics.input_timeout and the rates '
                f'are read in wall time until one is left; play one with its clock (the others '
                f'without --clock)']

    def _watch_time_jumps(self, timeout):
        """Tell the inputs' clock of each jump forward of the ROS time beyond ``timeout`` s.

        Under use_sim_time a player seeking ahead moves /clock forward at once; read as time
        passed, every input was silent that long (:class:`InputClock`). A step of /clock above
        the input timeout from a bag played very fast is taken for one too: its silences are
        read in wall time meanwhile, where its images come faster still.
        """
        if self._jump_handle is not None:
            self._jump_handle.unregister()
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(nanoseconds=round(timeout * 1e9)),
                          min_backward=None, on_clock_change=False),
            post_callback=lambda jump: self._input_time.jumped())

    def _sim_time_ns(self):
        """Return the ROS time (ns) where /clock sets it (use_sim_time), else None.

        None too while /clock has several publishers (:meth:`_check_clock_publishers`).
        """
        clock = self.get_clock()
        if not clock.ros_time_is_active or self._clock_publishers > 1:
            return None
        return clock.now().nanoseconds or None  # 0: no /clock message yet

    def _received(self):
        """Return the messages received per input since start (IR, visible)."""
        return [self._stats.totals[f'{name}_msgs'] for name in _INPUT_NAMES]

    def _why_silent(self, index, publishers):
        """Return what to check for input ``index``, silent while the other flows.

        ``publishers``: how many publishers its topic has now.

        It had said to check the topic name/remapping and QoS whatever the case. Where nothing
        ever came: the topic name where it has no publisher, else what keeps the publishers'
        images from arriving. Where images came (the name was right): whether its publisher
        left (the driver stopped or crashed) or is there and sends nothing.
        """
        if self._last_arrival[index] is None:
            if not publishers:
                return 'no publisher on it: check its topic name/remapping'
            return (f'its {publishers} publisher(s) sent nothing that arrived: check their '
                    f'QoS and the DDS transport (large images over best-effort DDS need the '
                    f'shipped Fast DDS profile, see the README), and that the camera streams')
        if not publishers:
            return 'its publisher is gone (the camera driver stopped or crashed?)'
        return (f'its {publishers} publisher(s) still there send nothing (a hung driver, an '
                f'unplugged camera, a stopped trigger?)')

    def _silent_for(self, index, now):
        """Return how long input ``index`` has been silent at ``now``, for a warning."""
        if self._last_arrival[index] is None:
            return 'since the node started'
        return f'for {now - self._last_arrival[index]:.1f} s'

    def _check_other_fused_publishers(self):
        """Return the problems when another node also publishes this node's fused image topic.

        Two fusion nodes in one namespace (a launch file started twice) both publish every
        output, so subscribers get each frame twice. One of this node's very name (the same
        launch started twice) is told apart by its publisher, this node having one.
        """
        topic = self._resolve(_FUSED_TOPIC)
        me = (self.get_namespace().rstrip('/'), self.get_name())
        publishers = [(info.node_namespace.rstrip('/'), info.node_name)
                      for info in self.get_publishers_info_by_topic(topic)]
        others = sorted({f'{namespace}/{name}' for namespace, name in publishers
                         if (namespace, name) != me})
        problems = []
        if publishers.count(me) > 1:  # this node has one: another node of its very name
            problems.append(
                f'another node named {self.get_fully_qualified_name()} also publishes {topic} '
                f'(the node started twice?): subscribers get images from both, and parameter '
                f'requests reach either; stop one, or give each its own namespace')
        if others:
            problems.append(
                f'{", ".join(others)} also publish(es) {topic}: subscribers get images from '
                f'both (two fusion nodes in one namespace?); give each its own namespace')
        return problems

    def _check_publisher_types(self):
        """Return a problem per input topic whose publisher sends another message type.

        DDS does not match a subscription with a publisher of another type, so nothing
        arrives; the usual cause is a compressed topic given as a raw one (or the reverse).
        """
        problems = []
        for index, (topic, sub) in enumerate(zip(self._topics, self._inputs)):
            wanted = _type_name(sub.sub.msg_type)
            for info in self.get_publishers_info_by_topic(topic):
                if info.topic_type == wanted:
                    continue
                camera = ('infrared', 'visible')[index]
                if info.topic_type == 'sensor_msgs/msg/CompressedImage' and (
                        index == INFRARED and topic.endswith('/compressedDepth')):
                    hint = (f'set {camera}.transport:=compressedDepth and give the base topic '
                            f'(without /compressedDepth)')
                elif info.topic_type == 'sensor_msgs/msg/CompressedImage':
                    hint = (f'set {camera}.transport:=compressed and give the base topic '
                            f'(without /compressed)')
                elif info.topic_type == 'sensor_msgs/msg/Image':
                    hint = f'set {camera}.transport:=raw'
                else:
                    hint = f'give a topic of {wanted}'
                problems.append(
                    f'publisher {info.node_namespace.rstrip("/")}/{info.node_name} on {topic} '
                    f'sends {info.topic_type} but the node subscribes {wanted} there: nothing '
                    f'is received from it; {hint}')
                break
        return problems

    def _check_publisher_qos(self):
        """Return QoS problems: best-effort publishers a reliable subscription cannot match.

        Recent ``incompatible_qos`` events (any policy) are reported too, for the topics where
        the publisher check found nothing.
        """
        problems = {}
        if self._params.qos_reliability == 'reliable':
            for index, topic in enumerate(self._topics):
                for info in self.get_publishers_info_by_topic(topic):
                    if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT:
                        problems[index] = (
                            f'publisher {info.node_namespace.rstrip("/")}/{info.node_name} on '
                            f'{topic} is best_effort but qos.reliability is reliable: '
                            f'incompatible QoS, nothing is received from it; set '
                            f'qos.reliability:=best_effort')
                        break
        now = time.monotonic()
        for index, (when, problem) in list(self._qos_events.items()):
            if now - when > max(10.0, self._params.input_timeout):
                del self._qos_events[index]
            elif index not in problems:
                problems[index] = problem
        return [problems[i] for i in sorted(problems)]

    def _cpu_threads_used(self):
        """Return the CPU threads the model runs with, for /diagnostics (int or a phrase)."""
        if self._params.backend == 'torch':
            import torch
            return torch.get_num_threads()
        return self._cpu_threads or 'onnxruntime default'

    def _publish_diagnostics(self):
        snapshot = self._stats.snapshot()
        extra = {
            'device': self._engine.device,
            'backend': self._params.backend,
            'model': self._params.weights,
            'half': self._engine.half,
            'sync': 'approximate' if self._params.sync_approximate else 'exact',
            # As set ('g': the 3 decimals of other values showed -0.0625 as -0.062 and a
            # max_rate of 0.0004 as 0.000).
            'sync_infrared_time_offset_s': f'{self._params.sync_infrared_time_offset:g}',
            'max_rate_hz': f'{self._params.max_rate:g}' if self._params.max_rate else 'off',
            'transports': f'infrared {self._params.infrared_transport}, visible '
                          f'{self._params.visible_transport}',
            'rss_mib': round(process_rss_mib(), 1),
            'cpu_threads': self._cpu_threads_used(),
            'camera_info': self._camera_info_status(),
            'sync_time_offset_check': self._offset_status,
            # IR lag minus visible lag (s; lag = receive time - stamp), the clocks-apart check.
            'input_lag_difference_s': self._lag_difference_status(),
        }
        offset_problem = self._offset_problem
        arrival = self._last_arrival[VISIBLE]
        if self._offset_monitor is not None and arrival is not None:
            silent = self._input_time() - arrival
            if silent > self._params.input_timeout:
                # The check runs on the visible images: without them its last verdict is old.
                extra['sync_time_offset_check'] = (f'paused: no visible image for '
                                                   f'{silent:.0f} s')
                offset_problem = None
        if self._engine.device.startswith('cuda') and self._params.backend == 'torch':
            import torch
            extra['cuda_memory_mib'] = round(torch.cuda.memory_allocated() / 2**20, 1)
        # The input checks' problems, less those saying that an input which spoke since the
        # check is silent: the cameras resumed, a status said 'both inputs stopped' until the
        # next check (up to 0.5 s, several statuses at a short diagnostics.period).
        received = self._received()
        spoke = {index for index in (INFRARED, VISIBLE)
                 if received[index] != self._received_checked[index]}
        problems = [problem for problem in self._problems
                    if not self._silence_said.get(problem, set()) & spoke]
        if offset_problem is not None:
            problems.append(offset_problem)
        if self._params.health_enabled:
            health = self._health.summary()
            extra.update(health.as_dict())
            problems.extend(health.problems)
            for problem in health.problems:
                self._warn('registration_health:' + _problem_key(problem), problem)
        else:
            extra['registration_health'] = 'off'
        if self._refiner is not None:
            extra.update(self._refiner.summary().as_dict())
        else:
            extra['registration_refinement'] = 'off'
        streams = self._engine.streams_global_map
        track = self._params.registration_global_track
        if track:
            extra['registration_global_map'] = f'tracked, a full fit every {track} pairs'
            counts = self._engine.global_track_state()
            extra.update({f'registration_global_{key}': value
                          for key, value in counts.items()})
        elif streams:
            extra['registration_global_map'] = (
                f'every {self._params.registration_global_every} pairs, median of '
                f'{self._params.registration_global_window} fits')
        else:
            extra['registration_global_map'] = 'per pair'
        if streams and not track:
            fits, spread = self._engine.global_map_state()
            extra['registration_global_fits'] = fits
            extra['registration_global_spread_px'] = 'n/a' if spread is None else round(
                spread, 2)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        # Named by the node's namespace and name ('front/tarfuse: fusion'; in / 'tarfuse:
        # fusion'), as ROS 1's diagnostic_updater did: one node per rig, each its own namespace,
        # and the rigs' statuses must not merge into one in rqt_robot_monitor or the aggregator.
        name = f'{self.get_fully_qualified_name().lstrip("/")}: fusion'
        array.status = [build_status(name, self._engine.device, snapshot, problems, extra)]
        self._pub_diag.publish(array)

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self, timeout=10.0):
        """Stop the worker thread and wait for it; return True if it ended."""
        with self._slot_cond:
            self._stopping = True
            self._slot_cond.notify_all()
        self._worker.join(timeout)
        if self._offset_thread is not None:
            self._offset_thread.join(timeout)
        if not self._core_log_detached:
            self._core_log_detached = True
            _CORE_LOG.detach()
        with _TORCH_THREADS_LOCK:
            _TORCH_THREADS.pop(id(self), None)
        return not self._worker.is_alive()


class _CoreLogRouter(logging.Handler):
    """Forward the core's Python log records (``tarfuse_ros.*`` loggers) to the ROS log.

    A record goes to the ROS logger in :data:`_CORE_LOG_TARGET`, that of the node whose code
    made the call (its start-up, its worker and time-offset threads), once. One handler for
    the process: with a handler per node, each forwarding every record, one node's warning was
    logged under the names of all the nodes in the process. A record made outside a node's
    call goes to the ROS logger named after its Python logger (``tarfuse_ros.core.engine``).
    On the ``tarfuse_ros`` logger while a node runs (:meth:`attach`, :meth:`detach`: counted).
    """

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._nodes = 0

    def attach(self):
        with self._lock:
            self._nodes += 1
            if self._nodes == 1:
                logging.getLogger('tarfuse_ros').addHandler(self)

    def detach(self):
        with self._lock:
            self._nodes -= 1
            if self._nodes == 0:
                logging.getLogger('tarfuse_ros').removeHandler(self)

    def emit(self, record):
        try:
            message = self.format(record)
            ros_logger = _CORE_LOG_TARGET.get() or rclpy.logging.get_logger(record.name)
            if record.levelno >= logging.ERROR:
                ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                ros_logger.warning(message)
            else:
                ros_logger.info(message)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


# The nodes of this process on the torch backend: id -> (name, PyTorch CPU threads).
_TORCH_THREADS = {}
_TORCH_THREADS_LOCK = threading.Lock()
# The ROS logger of the node whose code runs in this thread (None: no node's): where the
# core's Python log records go (_CoreLogRouter). Set by each node in its own threads.
_CORE_LOG_TARGET = contextvars.ContextVar('tarfuse_core_log_target', default=None)
_CORE_LOG = _CoreLogRouter()


def _type_name(msg_class):
    """Return the ROS name of a message class: ``sensor_msgs/msg/Image``."""
    return f'{msg_class.__module__.split(".")[0]}/msg/{msg_class.__name__}'


def _argument_hint(message):
    """Return what to fix for rcl's argument-parsing error ``message``."""
    if "Couldn't parse params file" in message:
        return ('check that each --params-file names a readable YAML file (<node name or /**>: '
                'ros__parameters: ...)')
    return ('fix them (e.g. a -p list holds one type: numbers or strings, not both: '
            '[1.0, 0.0], not [1.0, a])')


def _as_given(message, argv, given):
    """Return rcl's ``message`` about ``argv`` naming the arguments as ``given`` instead.

    ``argv`` names the rewritten copies of parameters files (:func:`decimal_numbers`), gone
    once the node stops: a message naming one pointed at no file.
    """
    for used, original in zip(argv, given):
        if used != original:
            message = message.replace(used, original)
    return message


class _StartUpStop:
    """SIGINT / SIGTERM handler of :func:`main`: ``KeyboardInterrupt`` while the node starts.

    Python runs it in the main thread between two statements, so the node's construction
    stops where it is, its context still valid. rclpy's own handlers, installed once the node
    runs, shut the context down from a thread of their own while the constructor ran on: each
    start-up line logged after it printed rcl's 'Failed to publish log message to rosout:
    publisher's context is invalid', and an executor built then a traceback. They call this one
    after theirs (rclpy chains the handler it replaced), which then does nothing: the stop is
    theirs, and one stop only (a second signal must not interrupt the clean-up).
    """

    def __init__(self):
        self.starting = True

    def __call__(self, signum, frame):
        if self.starting:
            self.starting = False
            raise KeyboardInterrupt


def main(args=None):
    """Run the node until Ctrl-C / SIGTERM; return the process exit code."""
    argv = given = sys.argv if args is None else args
    logger = rclpy.logging.get_logger('tarfuse')
    node = None
    code = 0
    stop = _StartUpStop()
    before = {number: signal.signal(number, stop)
              for number in (signal.SIGINT, signal.SIGTERM)
              if signal.getsignal(number) is not signal.SIG_IGN}  # a background job's SIGINT
    try:
        with tempfile.TemporaryDirectory(prefix='tarfuse_params_') as folder:
            # A hand-edited number list ([1, 0.02, ...]) would stop rcl itself, an integer for a
            # decimal (max_rate: 2) the declaration: made doubles.
            argv, notes = decimal_numbers(argv, folder)
            for note in notes:
                logger.warning(note)
            try:
                # rclpy's signal handlers once the node runs (_StartUpStop).
                rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
            except Exception as exc:  # noqa: BLE001 - rcl refuses the arguments (RCLError)
                said = _as_given(str(exc), argv, given)
                raise StartupError(f'the ROS arguments cannot be parsed: {said}; '
                                   f'{_argument_hint(said)}') from exc
        node = TarFuseNode(argv=argv, given_argv=given)
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        # A SIGINT ignored from the start (a shell's background job) stays ignored once the
        # node runs, as while it started: rclpy's handlers took it over.
        install_signal_handlers(SignalHandlerOptions.ALL if signal.SIGINT in before
                                else SignalHandlerOptions.SIGTERM)
        stop.starting = False
        executor.spin()
    except StartupError as exc:
        # The start is over: a stop now (one who read the line, ros2 launch) must not raise
        # KeyboardInterrupt out of this handler, a traceback under the FATAL line.
        stop.starting = False
        logger.fatal(str(exc))
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # A signal shut the context down while the node spun up: a requested stop, not a
        # failure.
    finally:
        # Shutting down already (the stop is bounded): a second Ctrl-C, which ros2 launch and a
        # terminal both send, must not interrupt the worker's join and abort the process.
        stop.starting = False
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        stopped = node is None or node.stop()
        if not stopped:
            logger.warning('the worker was still inside the model 10 s after the stop: '
                           'exiting without waiting for it')
        elif node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        if not stopped:
            # Tearing the interpreter down under a thread inside PyTorch aborts the process.
            sys.stdout.flush()
            sys.stderr.flush()
            settle_stderr()  # the codec capture's relay has passed the warning above on
            os._exit(code)
        for number, handler in before.items():  # a SIGINT ignored from the start stays so
            signal.signal(number, handler)
    return code


if __name__ == '__main__':
    sys.exit(main())
