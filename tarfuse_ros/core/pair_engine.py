"""What the torch engine and the onnxruntime backend share: results, NMS settings, batching.

:class:`PairEngine` is the base of :class:`~tarfuse_ros.core.engine.FusionEngine` and
:class:`~tarfuse_ros.core.onnx_backend.OnnxFusionEngine`. It holds the class names, the NMS
settings (changed atomically from any thread) and the registration prior, and runs
:meth:`PairEngine.infer_batch`: prepare every pair, group the pairs by visible frame size, run
each group as one batch (cut into several where it would hold more network pixels than one
frame may, :data:`~tarfuse_ros.core.sizes.MAX_NETWORK_PIXELS`: memory stays that of the largest
frame), restore the IR chroma where the visible image is grey. A backend
implements two steps:

- ``_prepare(ir, vi, index)``: one pair -> a :class:`~tarfuse_ros.core.images.PreparedPair`
  (normalised, IR resized to the visible frame, warped by the prior);
- ``_run_group(items, height, width, stream_key)``: same-size prepared pairs -> ``(outputs,
  seconds)``, where ``outputs`` holds one ``(fused, registered_ir, flow_px, detections)`` per
  pair and ``seconds`` is ``(preprocess, model, postprocess)`` for the whole group;
  ``stream_key`` is the IR input's shape when the call held one pair (a stream's pair), else
  None.

Frame sizes: a checkpoint's ``input_min_long_side`` (``TarFuseConfig``) has both backends
enlarge the network's input planes (:func:`resize_planes`, bilinear) until the longer side
reaches it, and the engines' ``input_max_long_side`` shrinks them (area average) until it is
at most that; the outputs are brought back to the visible frame (:func:`outputs_to_frame`)
before the prior and the chroma are applied, so results are in the visible frame either way.

This module imports no torch at load time (the prior and chroma modules it uses are imported
when first needed).
"""

from dataclasses import dataclass, field
import math
import numbers
import threading
import time

import numpy as np
from tarfuse_ros.core.sizes import (check_input_max_long_side, check_network_size,
                                    enlarged_size, MAX_ENLARGED_LONG_SIDE, MAX_NETWORK_PIXELS,
                                    shrunk_size)

__all__ = ['Detection', 'FusionResult', 'PairEngine', 'check_finite_outputs', 'check_flags',
           'check_ir_percentiles', 'outputs_to_frame', 'resize_planes', 'validate_thresholds']


@dataclass
class Detection:
    """One detected object, in pixels of the original visible image (x right, y down)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    class_name: str


@dataclass
class FusionResult:
    """Everything an engine returns for one IR/visible pair (all in the visible frame).

    ``fused``: uint8 ``HxWx3`` BGR for a colour visible image (its chroma around the fused
    luma) and for a grey (or neutral-chroma) visible image with a colour uint8 IR image (the
    IR's chroma, registered by the flow: :mod:`~tarfuse_ros.core.chroma`); else ``HxW``.
    ``registered_ir``: uint8 ``HxW``, the IR warped onto the visible frame.
    ``flow_px``: float32 ``HxWx2``, the predicted field (dx, dy) in pixels.
    ``detections``: list of :class:`Detection`.
    ``timings_ms``: ``preprocess``, ``model``, ``postprocess``, ``total`` in milliseconds (for a
    batch, the batch's times divided by the number of pairs in it).
    """

    fused: np.ndarray
    registered_ir: np.ndarray
    flow_px: np.ndarray
    detections: list = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)


def resize_planes(planes, size):
    """Resize ``HxW`` planes to the network frame ``size`` = ``(height, width)``.

    Planes already of that size are returned as they are. Enlarged by OpenCV ``INTER_LINEAR``
    (half-pixel centres, as ``torch.nn.functional.interpolate(mode='bilinear',
    align_corners=False)``), shrunk by ``INTER_AREA`` (an area average: no aliasing).
    """
    import cv2
    height, width = size
    out = []
    for plane in planes:
        if plane.shape[:2] != (height, width):
            shrink = height * width < plane.shape[0] * plane.shape[1]
            plane = cv2.resize(plane, (width, height),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out.append(plane)
    return out


def outputs_to_frame(fused, registered, flow, rows, height, width, ir=None, vi_y=None):
    """Bring one pair's outputs from the network frame back to ``height x width``.

    Args:
        fused, registered: ``H'xW'`` uint8 planes in the network frame.
        flow: ``H'xW'x2`` float32 field (dx, dy) in network-frame pixels.
        rows: ``(N, 6)`` NMS rows ``x1, y1, x2, y2, score, class`` in network-frame pixels, or
            None.
        height, width: the visible frame.
        ir, vi_y: the pair's IR and visible luma planes in the visible frame as the network
            was given them before resizing (uint8, or float32 in [0, 1]), or None. Used when
            the network frame is smaller (``input_max_long_side``): see below.

    Returns:
        ``(fused, registered, flow, rows)`` in the visible frame. The field's vectors and the
        boxes are scaled by the frame's ratio per axis. From an enlarged network frame
        (``input_min_long_side``) the field and the registered IR are averaged down (OpenCV
        ``INTER_AREA``) and the fused image resampled bilinearly (``INTER_LINEAR``: an area
        average softens the edges the fusion keeps; RoadScene test Qabf 0.445 against 0.443).
        From a shrunk one the field is resampled bilinearly; with ``ir`` and ``vi_y`` the
        registered IR is the frame's IR warped by it (``cv2.remap``, bilinear, zeros outside)
        and the fused image gets back the band of detail the shrink removed, fused by the
        maximum-absolute rule of Laplacian-pyramid fusion (Burt and Kolczynski, ICCV 1993):
        ``up(fused') + d`` where ``d`` is, per pixel, whichever of ``X - up(down(X))`` for the
        visible luma and the registered IR is larger in magnitude (``down``: ``INTER_AREA`` to
        the network frame, ``up``: ``INTER_LINEAR``); without them both are resampled
        bilinearly. Inputs already of the frame's size are returned as they are.

    """
    import cv2
    net_h, net_w = fused.shape[:2]
    if (net_h, net_w) == (height, width):
        return fused, registered, flow, rows
    sx, sy = width / net_w, height / net_h
    size = (width, height)
    shrunk = net_h * net_w < height * width
    down = cv2.INTER_LINEAR if shrunk else cv2.INTER_AREA
    flow = (cv2.resize(flow, size, interpolation=down) * np.float32([sx, sy])).astype(np.float32)
    fused = cv2.resize(fused, size, interpolation=cv2.INTER_LINEAR)
    if shrunk and ir is not None and vi_y is not None:
        from tarfuse_ros.core.prior import remap_by_flow
        registered = remap_by_flow(_grey_levels(ir), flow)
        details = []
        for plane in (_grey_levels(vi_y), registered):
            small = cv2.resize(plane, (net_w, net_h), interpolation=cv2.INTER_AREA)
            details.append(plane - cv2.resize(small, size, interpolation=cv2.INTER_LINEAR))
        detail = np.where(np.abs(details[0]) >= np.abs(details[1]), details[0], details[1])
        fused = np.clip(fused.astype(np.float32) + detail + 0.5, 0, 255).astype(np.uint8)
        registered = np.clip(registered + 0.5, 0, 255).astype(np.uint8)
    else:
        registered = cv2.resize(registered, size, interpolation=down)
    if rows is not None:
        rows = np.asarray(rows, np.float64) * np.array([sx, sy, sx, sy, 1.0, 1.0])
    return fused, registered, flow, rows


def _grey_levels(plane):
    """Return an ``HxW`` uint8 or [0, 1] float plane as float32 grey levels (0-255)."""
    if plane.dtype == np.uint8:
        return plane.astype(np.float32)
    return np.asarray(plane, np.float32) * np.float32(255.0)


def check_finite_outputs(raw, weights, cause, error=ValueError):
    """Raise ``error`` naming the image outputs in ``raw`` that hold NaN or infinite values.

    Both engines check the network's ``fused``, ``flow`` and ``registered_ir`` before anything
    is published: their inputs are finite and in [0, 1], so NaN there comes from the weights.

    Args:
        raw: the network's outputs by name, NumPy arrays or torch tensors (any device).
        weights: the model file, named first in the message.
        cause: what that means for this model file and what to do, ending the message.
        error: the exception class raised.

    """
    broken = [name for name in ('fused', 'flow', 'registered_ir')
              if not _all_finite(raw[name])]
    if broken:
        raise error(f'{weights}: the network gave NaN or infinite {", ".join(broken)} for '
                    f'finite inputs: {cause}')


def _all_finite(values):
    """Return whether a NumPy array or a torch tensor holds finite values only."""
    if isinstance(values, np.ndarray):
        return bool(np.isfinite(values).all())
    return bool(values.isfinite().all())  # a torch tensor, on its device


def check_flags(**flags):
    """Raise ``ValueError`` naming the first of ``flags`` (name=value) that is not a bool.

    NumPy bools count as bools. A string such as ``'false'`` (read from a file or the
    environment) is refused: ``bool('false')`` is true, so it switched the setting on.
    """
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f'{name} must be True or False, got {value!r}')


def check_ir_percentiles(ir_low, ir_high):
    """Raise ``ValueError`` unless ``ir_low`` and ``ir_high`` are numbers, 0 <= low < high <= 100.

    They are the percentiles of a 16-bit (or float) IR frame mapped to 0 and 1
    (:func:`~tarfuse_ros.core.images.to_unit_gray`).
    """
    for value in (ir_low, ir_high):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # None, '1'
            raise ValueError(f'ir_low and ir_high must be numbers (percentiles, 0-100), got '
                             f'{ir_low!r}, {ir_high!r}')
    if not 0.0 <= ir_low < ir_high <= 100.0:
        raise ValueError(f'need 0 <= ir_low < ir_high <= 100, got {ir_low}, {ir_high}')


def validate_thresholds(conf, iou, max_det, classes, num_classes):
    """Check NMS settings; return them as ``(float, float, int, tuple of ids or None)``.

    ``classes``: None or a sequence of class ids in ``[0, num_classes)``; an empty sequence means
    no filter (ROS parameters cannot express None). Raises ``ValueError`` naming the bad value.
    """
    # numbers.Real: NumPy scalars too (np.float32 was refused as 'not a number').
    if isinstance(conf, bool) or not isinstance(conf, numbers.Real) or not 0.0 <= conf <= 1.0:
        raise ValueError(f'conf_threshold must be a number in [0, 1], got {conf!r}')
    if isinstance(iou, bool) or not isinstance(iou, numbers.Real) or not 0.0 <= iou <= 1.0:
        raise ValueError(f'iou_threshold must be a number in [0, 1], got {iou!r}')
    if isinstance(max_det, bool) or not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise ValueError(f'max_detections must be an integer >= 1, got {max_det!r}')
    if classes is None:
        return float(conf), float(iou), int(max_det), None
    try:
        ids = tuple(classes)
    except TypeError:
        raise ValueError(f'classes must be None or a sequence of class ids, got {classes!r}')
    if ids and num_classes == 0:  # it said 'integer ids in [0, 0)'
        raise ValueError(f'classes {classes!r}: this model has no detection head, so there '
                         f'are no classes to keep; leave classes None (or empty)')
    for cid in ids:
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or not (
                0 <= cid < num_classes):
            raise ValueError(
                f'classes must hold integer ids in [0, {num_classes}), got {classes!r}')
    return float(conf), float(iou), int(max_det), (tuple(int(c) for c in ids) or None)


class PairEngine:
    """Base of the engines: settings, the batching loop and detections in image pixels.

    Args:
        class_names: the checkpoint's class names (classes beyond them are named by index).
        num_classes: the detection head's number of classes.
        registration_prior: a :class:`~tarfuse_ros.core.prior.RegistrationPrior` or None.
        conf_threshold, iou_threshold, max_detections, classes: NMS settings (see
            :meth:`set_thresholds`).

    Raises:
        ValueError: a bad prior or NMS setting.

    """

    def __init__(self, class_names, num_classes, registration_prior, conf_threshold,
                 iou_threshold, max_detections, classes):
        self.set_registration_prior(registration_prior)
        self._num_classes = int(num_classes)
        names = tuple(str(n) for n in class_names)
        # Unnamed classes get their index as a name.
        self._class_names = names + tuple(str(i) for i in range(len(names), self._num_classes))
        self._settings_lock = threading.Lock()
        self._thresholds = validate_thresholds(
            conf_threshold, iou_threshold, max_detections, classes, self._num_classes)

    @property
    def class_names(self):
        """Class names, index = class id (empty without a detection head)."""
        return self._class_names

    @property
    def registration_prior(self):
        """The :class:`~tarfuse_ros.core.prior.RegistrationPrior` in use, or None."""
        return self._prior

    def set_registration_prior(self, prior):
        """Use another registration prior (or None) from the next pair on.

        Each pair is prepared with the prior in effect when its preparation starts, and its
        flow is composed with that same prior (``PreparedPair.pre_warp``). Raises
        ``ValueError`` for anything but a ``RegistrationPrior`` or None.
        """
        from tarfuse_ros.core.prior import check_prior
        self._prior = check_prior(prior)

    def _set_input_min_long_side(self, value, checkpoint_value):
        """Resolve the engine's ``input_min_long_side`` argument (None: ``checkpoint_value``).

        Raises ``ValueError`` for anything but None or an integer in
        ``[0, MAX_ENLARGED_LONG_SIDE]`` (16384).
        """
        if value is None:
            value = int(checkpoint_value or 0)
        elif (isinstance(value, bool) or not isinstance(value, numbers.Integral)
              or not 0 <= value <= MAX_ENLARGED_LONG_SIDE):
            raise ValueError(f'input_min_long_side must be None (the checkpoint value) or an '
                             f'integer in [0, {MAX_ENLARGED_LONG_SIDE}] (pixels; 0: never '
                             f'enlarge), got {value!r}')
        self._min_long_side = int(value)

    def _set_input_max_long_side(self, value):
        """Resolve the engine's ``input_max_long_side`` argument (0: never shrink).

        Raises ``ValueError`` for anything but 0 or an integer in ``[MIN_SHRUNK_LONG_SIDE,
        MAX_ENLARGED_LONG_SIDE]`` (256-16384) that is not below ``input_min_long_side``.
        """
        value = check_input_max_long_side(value)
        if 0 < value < self._min_long_side:
            raise ValueError(f'input_max_long_side ({value}) must be 0 or at least '
                             f"input_min_long_side ({self._min_long_side}: the checkpoint's "
                             f'model field unless the engine is given another)')
        self._max_long_side = value

    @property
    def input_min_long_side(self):
        """Frames with a shorter longer side are enlarged to it for the network (0: never)."""
        return self._min_long_side

    @property
    def input_max_long_side(self):
        """Frames with a longer longer side are shrunk to it for the network (0: never)."""
        return self._max_long_side

    def network_size(self, height, width):
        """Return the ``(height, width)`` the network runs a visible frame of this size at."""
        height, width = enlarged_size(height, width, self._min_long_side)
        return shrunk_size(height, width, self._max_long_side)

    def check_network_size(self, frame_size, name='input_max_long_side'):
        """Raise ``ValueError`` for a visible frame the network would run above 3840x2160.

        ``frame_size``: the visible frame's ``(height, width)``, pixels; ``name``: what to call
        ``input_max_long_side`` in the message (a tool's option, e.g.
        ``--input-max-long-side``). :func:`~tarfuse_ros.core.sizes.check_network_size` at
        :meth:`network_size`.
        """
        check_network_size(frame_size, self.network_size(*frame_size), name,
                           self._max_long_side)

    @property
    def thresholds(self):
        """``(conf_threshold, iou_threshold, max_detections, classes)`` now in effect."""
        with self._settings_lock:
            return self._thresholds

    def set_thresholds(self, conf_threshold=None, iou_threshold=None, max_detections=None,
                       classes=None):
        """Change NMS settings atomically; ``None`` keeps a setting.

        ``classes``: a sequence of class ids to keep; an empty sequence removes the filter.
        Raises ``ValueError`` (and changes nothing) for a value out of range.
        """
        with self._settings_lock:
            conf, iou, max_det, cls = self._thresholds
            self._thresholds = validate_thresholds(
                conf if conf_threshold is None else conf_threshold,
                iou if iou_threshold is None else iou_threshold,
                max_det if max_detections is None else max_detections,
                cls if classes is None else classes,
                self._num_classes)

    def infer(self, ir, vi):
        """Fuse one pair.

        Args:
            ir: IR image ``HxW`` or ``HxWx1``, or ``HxWx3`` BGR / ``HxWx4`` BGRA (fused as its
                luma); uint8, uint16, float16, float32 or float64 (how each is scaled to
                [0, 1]: :mod:`~tarfuse_ros.core.images`); resized to the visible frame.
            vi: visible image ``HxW`` or ``HxWx1`` grey, ``HxWx3`` BGR or ``HxWx4`` BGRA
                (alpha dropped); the same dtypes. Each image's sides must be at least
                :data:`~tarfuse_ros.core.images.MIN_SIDE` (16) pixels, the longer at most
                :data:`~tarfuse_ros.core.images.MAX_ASPECT` (8) times the shorter.

        Returns:
            :class:`FusionResult` in the visible frame.

        Raises:
            ValueError: as :meth:`infer_batch` (not an array, empty, another shape or dtype
                (signed integers, bool), NaN or infinite values, outside the size limits).

        """
        return self.infer_batch([ir], [vi])[0]

    __call__ = infer

    def infer_batch(self, irs, vis):
        """Fuse several pairs; pairs whose visible frames share a size run as one batch.

        A batch holds at most :data:`~tarfuse_ros.core.sizes.MAX_NETWORK_PIXELS` network pixels
        (3840x2160: 27 pairs at 640x480); more pairs of a size run as several, one after the
        other, so that memory stays bounded as for one frame.

        Args:
            irs: sequence of IR images (as :meth:`infer`).
            vis: sequence of visible images, same length.

        Returns:
            list of :class:`FusionResult`, in input order.

        Raises:
            TypeError: ``irs`` or ``vis`` is one image (an ``HxW`` or ``HxWxC`` array with C
                1, 3 or 4) instead of a sequence of them (a stacked ``NxHxW`` or ``NxHxWxC``
                array is a sequence).
            ValueError: different lengths, an image that
                :func:`~tarfuse_ros.core.images.prepare_pair` refuses (empty, wrong shape or
                dtype), or a visible frame the network would run at more than
                :data:`~tarfuse_ros.core.sizes.MAX_NETWORK_PIXELS` (3840x2160; then nothing
                runs: set ``input_max_long_side``).

        """
        from tarfuse_ros.core.chroma import ir_chroma_for, restore_ir_chroma

        for label, given in (('irs', irs), ('vis', vis)):
            if isinstance(given, np.ndarray) and (
                    given.ndim <= 2 or (given.ndim == 3 and given.shape[2] in (1, 3, 4))):
                # list() of one image would give its rows, refused later as 1-D images.
                raise TypeError(f'infer_batch takes lists of images; {label} is one array of '
                                f'shape {given.shape}: pass [image] (or call infer for one pair)')
        irs, vis = list(irs), list(vis)
        if len(irs) != len(vis):
            raise ValueError(f'got {len(irs)} IR images but {len(vis)} visible images')
        # Every visible frame size before anything of the batch is prepared or runs: preparing
        # a 7680x4320 frame first took about 1 s and two to five times its own memory, only
        # to refuse it (an empty image or one of another shape is left to _prepare's message).
        sizes = (np.shape(vi)[:2] for vi in vis if np.ndim(vi) in (2, 3))
        for size in dict.fromkeys(size for size in sizes if min(size) > 0):
            self.check_network_size(size)
        start = time.perf_counter()
        prepared = [self._prepare(ir, vi, i) for i, (ir, vi) in enumerate(zip(irs, vis))]
        # A grey visible image with a colour IR image: the fused image takes the IR chroma.
        chromas = [ir_chroma_for(ir, item.crcb, *item.vi_y.shape[:2])
                   for ir, item in zip(irs, prepared)]
        prep_s = (time.perf_counter() - start) / max(1, len(prepared))
        groups = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.vi_y.shape[:2], []).append(index)
        results = [None] * len(prepared)
        # One pair per call is a stream's pair (its IR's own size is part of the stream's key:
        # another IR camera geometry is another rig); a batch never touches the stream.
        stream_key = tuple(np.shape(irs[0])) if len(prepared) == 1 else None
        # A forward pass holds at most MAX_NETWORK_PIXELS (as one frame may): a batch of 50
        # 640x512 pairs ran as one, about 15 GB of memory on a CPU (0.3 GB a pair).
        runs = []
        for (height, width), indices in groups.items():
            net_h, net_w = self.network_size(height, width)
            per_run = max(1, MAX_NETWORK_PIXELS // (net_h * net_w))
            runs.extend(((height, width), indices[start:start + per_run])
                        for start in range(0, len(indices), per_run))
        for (height, width), indices in runs:
            outputs, seconds = self._run_group([prepared[i] for i in indices], height, width,
                                               stream_key)
            n = len(indices)
            for i, (fused, registered, flow, dets) in zip(indices, outputs):
                if chromas[i] is not None:
                    fused = restore_ir_chroma(fused, chromas[i], flow)
                timings = {name: 1e3 * value / n for name, value in
                           zip(('preprocess', 'model', 'postprocess'), seconds)}
                timings['preprocess'] += 1e3 * prep_s
                timings['total'] = sum(timings.values())
                results[i] = FusionResult(fused, registered, flow, dets, timings)
        return results

    def _prepare(self, ir, vi, index):
        raise NotImplementedError

    def _run_group(self, items, height, width, stream_key=None):
        """Same-size prepared pairs -> ``(outputs, (preprocess, model, postprocess) s)``.

        ``stream_key``: the IR input's shape when the call held this one pair alone (a
        stream's pair, :attr:`streams_global_map`), else None.
        """
        raise NotImplementedError

    @property
    def streams_global_map(self):
        """True when the global stage's map is kept over a stream (torch engine only)."""
        return False

    def global_map_state(self):
        """Return ``(fits held, spread px or None)`` of the stream (``(0, None)``: none)."""
        return 0, None

    def reset_global_maps(self):
        """Forget the stream's global fits (nothing to forget without a stream)."""

    def _detections(self, rows, height, width):
        """NMS rows ``(x1, y1, x2, y2, score, class)`` in padded-input px -> :class:`Detection`.

        Padding is bottom/right only, so network-input pixels are visible-image pixels: boxes
        are clipped to the ``height x width`` image, and dropped when nothing of them is left
        (entirely inside the padding) or their score is not finite. ``rows`` None (no detection
        head) gives an empty list.
        """
        if rows is None:
            return []
        found = []
        for x1, y1, x2, y2, score, cls in rows:
            x1, x2 = (float(min(max(x, 0.0), width)) for x in (x1, x2))
            y1, y2 = (float(min(max(y, 0.0), height)) for y in (y1, y2))
            if not (x2 > x1 and y2 > y1) or not math.isfinite(score):
                continue
            class_id = int(cls)
            found.append(Detection(x1, y1, x2, y2, float(score), class_id,
                                   self._class_names[class_id]))
        return found
