"""Fuse your own IR/visible images or videos offline: the ``tarfuse-fuse`` console script.

``tarfuse-fuse --ir PATH --visible PATH --out DIR [--weights W] [--device D] [--threads N]
[--registered] [--detections] [--flow] [--ir-offset-ms MS] [--no-scale-search] [--fine-passes N]
[--global-every N] [--global-window W] [--global-track N] [--prior PRIOR.yaml]
[--input-max-long-side PX]``

Inputs (both PATHs of the same kind):

- two image files: one pair, named after the visible file's stem;
- two folders: pairs matched by file-name stem (``ir/0001.png`` with ``vi/0001.jpg``); stems
  found in one folder only are reported and left out, files that are not images (by suffix) are
  ignored, and a stem present twice in one folder (``a.png`` and ``a.jpg``) is a failure;
- two video files: each visible frame is paired with the IR frame nearest to it in time.

Video pairing rule: a frame's time is its container timestamp (``CAP_PROP_POS_MSEC``), counted
from the video's first frame (both recordings are taken to start together; ``--ir-offset-ms``
places the IR's first frame later on the visible clock); where the backend reports no increasing
timestamp, the previous frame's time plus one nominal period (``1 / CAP_PROP_FPS``) is used.
Each visible frame gets the IR frame whose time is nearest (the earlier one on a tie) if the two
are at most one IR frame period apart; visible frames outside the IR recording by more than that
are reported as unpaired and left out of the fused video. A slower IR camera thus serves one IR
frame to several visible frames, a faster one has frames skipped.

Images are read as stored (``cv2.IMREAD_UNCHANGED``, EXIF orientation not applied): 8- or 16-bit IR
(colour IR is reduced to grey), grey, colour or BGRA visible, any sizes (the IR is resized to the
visible frame); a pair whose two files carry different EXIF orientation tags is warned of once per
pair of tags (a viewer shows them turned against each other). Every pair goes through
:class:`~tarfuse_ros.core.engine.FusionEngine` with the node's default settings, so the outputs are
the node's for the same pair. Pairs are fused in order (folders: sorted by stem; videos: by time),
one at a time, so ``--global-every`` / ``--global-window`` (the node's
``registration.global_every`` / ``global_window``) keep the global stage's map over them as the
node does over a stream: for frames of one rigid rig; so does ``--global-track`` (the node's
``registration.global_track``: each frame's map refined from the previous one's, for a video or a
folder of frames of one rig). ``--prior`` takes the rig's calibration prior (the node parameters
file ``tarfuse-calibrate`` writes, as the node's ``prior_file:=``): the IR is pre-warped by it and
the flow is the composition, as in the node; a pair whose aspect ratio is not the prior's is
reported and left out.

Outputs in ``--out`` (created if needed); ``<name>`` is the stem for images and
``<visible stem>_<visible frame index, 6 digits>`` for video frames:

- ``fused/<name>.png``: the fused image, visible image size (BGR for a colour visible image, and
  for a grey one beside a colour IR image, whose colour it keeps; else grey); for videos instead
  ``<visible stem>_fused.mp4`` (MPEG-4 Part 2), or ``.avi`` (Motion JPEG) for an ``.avi`` input or
  a visible video of odd width or height (FFmpeg's encoders would crop it to even sizes), at the
  visible video's frame rate and size; written under a temporary name until the end, so a run that
  fuses no frame leaves no video file and an earlier run's video as it was;
- ``registered/<name>.png`` (``--registered``): the IR warped onto the visible frame, 8-bit;
- ``flow/<name>.npy`` (``--flow``): float32 ``HxWx2``, (dx, dy) in visible pixels,
  ``registered_ir(p) = ir(p + flow(p))``; ``flow/<name>.png``: the same colour-coded with
  torchvision's ``flow_to_image`` (Middlebury colour wheel: hue is the direction, saturation the
  magnitude relative to the frame's largest);
- ``detections/<name>.json`` (``--detections``): image size, sources (and frame times for
  videos) and one entry per box: ``class_id``, ``class_name``, ``score``, ``xyxy`` (visible
  pixels); ``labels/<name>.txt``: the boxes in YOLO format (``class cx cy w h``, normalised),
  with ``labels/classes.txt``. A model without detection head (``model.detect: false``)
  refuses ``--detections`` (empty files would read as "nothing found"), and so does an
  ``--out`` whose ``labels/`` holds label files tarfuse-fuse did not write (no
  ``detections/<name>.json`` beside them: e.g. a data set's human labels).

A progress bar runs on a terminal; a summary follows (pairs in and out, failures, after Ctrl-C
the pair whose fusion it stopped (``1 interrupted``), frames/s over the processing after the
model is loaded, mean engine time per pair). Exit status: 0 when every pair was fused and
written; 1 when some input could not be read or fused or an output not written (each named on
stderr and in the summary; the rest is still processed); 2 for usage errors (bad options,
missing paths, inputs of different kinds, a video that cannot be opened, no pair to fuse (for
videos: no visible frame with an IR frame near it), weights or device that cannot be loaded, an
``.onnx`` file, ``--detections`` with a model without detection head or into label files not
its own); 130 after Ctrl-C or SIGTERM (the pairs fused by then are written first).

Each output file is written under a temporary name beside it (``<name>.<8 hex digits>.tmp``,
for the video ``.tmp`` and its suffix: :func:`tarfuse_ros.core.files.atomic_output`) and renamed
once whole: a run killed outright (SIGKILL) leaves no file cut short under an output's name
(only such a temporary, which the next run writing into that folder, or writing that video,
removes), and of two runs into one folder at once each file is one run's whole.
"""

import argparse
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
import io
import json
import math
from pathlib import Path
import queue
import shutil
import signal
import sys
import threading
import time
import warnings

import cv2
import numpy as np
import PIL.Image
from tarfuse_ros.console import StopRequest
from tarfuse_ros.core.files import (atomic_output, is_truncated_jpeg_data, output_problem,
                                    remove_stale_outputs, remove_stale_temporaries)
from tarfuse_ros.core.fine_passes import check_fine_passes, fine_passes_option, OPTION_OWN
from tarfuse_ros.core.global_stream import check_stream_settings, OPTIONS, StreamSettingError
from tarfuse_ros.core.sizes import PORTRAIT_ADVICE, portrait_beside_landscape
from tqdm import tqdm

__all__ = ['EXIF_TURNS', 'IMAGE_SUFFIXES', 'Summary', 'UsageError', 'VIDEO_SUFFIXES',
           'VideoFrames', 'build_parser', 'exif_orientation', 'flow_to_colour', 'input_kind',
           'main', 'match_stems', 'pair_by_time', 'plan_inputs', 'read_image', 'run']

PROG = 'tarfuse-fuse'
IMAGE_SUFFIXES = frozenset({
    '.png', '.jpg', '.jpeg', '.jpe', '.bmp', '.dib', '.tif', '.tiff', '.webp', '.jp2', '.pbm',
    '.pgm', '.ppm', '.pnm', '.pfm', '.exr', '.hdr', '.sr', '.ras'})
VIDEO_SUFFIXES = frozenset({
    '.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.wmv', '.flv', '.mts',
    '.m2ts', '.3gp', '.ogv', '.mjpeg', '.mjpg', '.y4m'})
_PREFETCH = 4  # pairs decoded ahead of the engine
_WRITE_QUEUE = 8  # results waiting to be encoded
_EXIF_ORIENTATION = 0x0112
# EXIF orientation tag -> what viewers do to the stored image to show it.
EXIF_TURNS = {1: 'shown as stored', 2: 'shown mirrored left-right',
              3: 'shown turned 180 degrees', 4: 'shown mirrored top-bottom',
              5: 'shown mirrored across the main diagonal',
              6: 'shown turned 90 degrees clockwise',
              7: 'shown mirrored across the other diagonal',
              8: 'shown turned 90 degrees counter-clockwise'}
# Output folder -> the suffixes of the files written there for each pair.
_OUTPUT_SUFFIXES = {'fused': ('.png',), 'registered': ('.png',), 'flow': ('.npy', '.png'),
                    'detections': ('.json',), 'labels': ('.txt',)}


class UsageError(ValueError):
    """The command cannot run at all (exit status 2); the message says why."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def input_kind(path):
    """Return ``'folder'``, ``'video'`` or ``'image'`` for ``path`` (videos/images by suffix).

    Raises:
        UsageError: ``path`` does not exist or has a suffix of neither kind.

    """
    path = Path(path)
    if path.is_dir():
        return 'folder'
    if not path.exists():
        raise UsageError(f'{str(path)!r} does not exist')
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return 'video'
    if suffix in IMAGE_SUFFIXES:
        return 'image'
    raise UsageError(
        f'{str(path)!r} is neither a folder, an image ({" ".join(sorted(IMAGE_SUFFIXES))}) nor '
        f'a video ({" ".join(sorted(VIDEO_SUFFIXES))}) by its suffix')


def read_image(path):
    """Read an image file as stored (bit depth and channels kept).

    Raises:
        OSError: the file cannot be read or decoded (the message names the file and why).

    """
    path = Path(path)
    data = path.read_bytes()  # once: checked for a cut JPEG, then decoded
    if not data:
        raise OSError(f'{path}: empty file')
    if is_truncated_jpeg_data(data):
        raise OSError(f'{path}: truncated JPEG (the file ends before the image does)')
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise OSError(f'{path}: cannot decode ({exc.err or exc})') from exc
    if img is None or img.size == 0:
        raise OSError(f'{path}: not a readable image (corrupt, truncated or unsupported)')
    return img


def _images_by_stem(folder):
    """Map stem -> image files of ``folder`` (top level, by suffix); count the others."""
    found, ignored = {}, 0
    for path in sorted(Path(folder).iterdir()):
        # A broken symbolic link is kept, so that its pair is named as unreadable (not
        # reported as an image without a partner).
        dangling = path.is_symlink() and not path.exists()
        if path.name.startswith('.') or not (path.is_file() or dangling):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            ignored += 1
            continue
        found.setdefault(path.stem, []).append(path)
    return found, ignored


def match_stems(ir_stems, vi_stems):
    """Split two collections of stems into ``(common, ir_only, vi_only)``, each sorted."""
    ir_stems, vi_stems = set(ir_stems), set(vi_stems)
    return (sorted(ir_stems & vi_stems), sorted(ir_stems - vi_stems),
            sorted(vi_stems - ir_stems))


class VideoFrames:
    """The frames of a video file with their times, read once in order.

    Iterating yields ``(index, time_ms, frame)``: ``frame`` as OpenCV decodes it (BGR uint8),
    ``time_ms`` the container timestamp counted from the first frame, or the previous time plus
    one nominal period where the backend reports no increasing timestamp.

    Raises:
        OSError: the file cannot be opened as a video or reports no frame rate.

    """

    def __init__(self, path):
        self.path = Path(path)
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise OSError(f'{self.path}: cannot open the video (corrupt or unsupported)')
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and fps > 0):
            self.release()
            raise OSError(f'{self.path}: the video reports no frame rate')
        self.fps = float(fps)
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None
        self.size = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.frames_read = 0

    @property
    def period_ms(self):
        """Nominal frame period in milliseconds."""
        return 1000.0 / self.fps

    def __iter__(self):
        origin, previous = 0.0, None
        while self._capture is not None:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                return
            stamp = self._capture.get(cv2.CAP_PROP_POS_MSEC)
            if previous is None:
                origin, time_ms = (stamp if math.isfinite(stamp) else 0.0), 0.0
            else:
                time_ms = stamp - origin if math.isfinite(stamp) else -math.inf
                if not time_ms > previous:  # no usable timestamp: one nominal period on
                    time_ms = previous + self.period_ms
            index, previous = self.frames_read, time_ms
            self.frames_read += 1
            yield index, time_ms, frame

    def release(self):
        """Close the file (iteration stops)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def pair_by_time(visible, infrared, max_gap_ms):
    """Pair each visible frame with the infrared frame nearest to it in time.

    Both inputs are read once, in step (memory stays at two IR frames).

    Args:
        visible, infrared: iterables of ``(index, time_ms, frame)`` with increasing times.
        max_gap_ms: largest accepted ``|t_ir - t_visible|``.

    Yields:
        ``(vi, ir)``: the visible tuple and the nearest IR tuple (the earlier one on a tie),
        or ``None`` for ``ir`` when no IR frame lies within ``max_gap_ms``.

    """
    ir_frames = iter(infrared)
    current = next(ir_frames, None)
    upcoming = next(ir_frames, None)
    for vi in visible:
        t = vi[1]
        # |t_ir - t| decreases then increases along the IR frames: step while it decreases.
        while upcoming is not None and abs(upcoming[1] - t) < abs(current[1] - t):
            current, upcoming = upcoming, next(ir_frames, None)
        if current is None or abs(current[1] - t) > max_gap_ms:
            yield vi, None
        else:
            yield vi, current


@dataclass
class _Item:
    """One pair to fuse, or why there is none."""

    name: str
    ir: np.ndarray = None
    vi: np.ndarray = None
    error: str = None  # the pair could not be read: a failure
    unpaired: bool = False  # a visible video frame without an IR frame near it: left out
    info: dict = field(default_factory=dict)  # sources, recorded in the detections JSON
    orientations: tuple = (1, 1)  # EXIF orientation tags of the IR and visible files


@dataclass
class _Plan:
    """What to read, and what was found before reading anything."""

    kind: str
    items: object  # iterable of _Item
    total: int = None
    failures: list = field(default_factory=list)  # (name, reason)
    failed_pairs: int = 0  # pairs among ``failures``
    notes: list = field(default_factory=list)  # lines for the summary
    videos: tuple = ()  # (visible, infrared) VideoFrames
    pair_word: str = 'pair'


def exif_orientation(path):
    """Return the EXIF orientation tag of an image file: 1-8 (1: as stored, also untagged).

    Images are fused as stored; viewers show a tagged one turned or mirrored
    (:data:`EXIF_TURNS`). A tag that cannot be read counts as none.
    """
    try:
        with warnings.catch_warnings():
            # Of a large frame's file (above 89 Mpx): read its tags, print no warning.
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                tag = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many error types; no tag read
        return 1
    return tag if tag in EXIF_TURNS else 1


def _image_items(pairs):
    for name, ir_path, vi_path in pairs:
        info = {'ir': str(ir_path), 'visible': str(vi_path)}
        try:
            ir, vi = read_image(ir_path), read_image(vi_path)
        except OSError as exc:
            yield _Item(name, error=str(exc), info=info)
            continue
        yield _Item(name, ir, vi, info=info,
                    orientations=(exif_orientation(ir_path), exif_orientation(vi_path)))


def _video_items(vi_video, ir_video, ir_offset_ms):
    ir_frames = ((index, t + ir_offset_ms, frame) for index, t, frame in ir_video)
    for (index, t_vi, vi), ir in pair_by_time(vi_video, ir_frames, ir_video.period_ms):
        name = f'{vi_video.path.stem}_{index:06d}'
        info = {'visible': str(vi_video.path), 'frame': index, 'time_s': round(t_vi / 1e3, 6)}
        if ir is None:
            yield _Item(name, unpaired=True, info=info)
            continue
        info.update({'ir': str(ir_video.path), 'ir_frame': ir[0],
                     'ir_time_s': round(ir[1] / 1e3, 6)})
        yield _Item(name, ir[2], vi, info=info)


def _shorten(names, limit=10):
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def plan_inputs(ir_path, vi_path, ir_offset_ms=0.0):
    """Inspect both inputs and return the lazy list of pairs (nothing decoded yet).

    Raises:
        UsageError: missing paths, one path given twice, inputs of different kinds, an
            ``ir_offset_ms`` for inputs that are not videos, a video that cannot be opened, or
            no pair to fuse.

    """
    ir_path, vi_path = Path(ir_path), Path(vi_path)
    kinds = input_kind(ir_path), input_kind(vi_path)
    if ir_path.resolve() == vi_path.resolve():  # each image would be fused with itself
        raise UsageError(f'--ir and --visible are the same {kinds[0]} ({str(ir_path)!r}): give '
                         f'the infrared and the visible input')
    if kinds[0] != kinds[1]:
        named = {'folder': 'a folder', 'image': 'an image file', 'video': 'a video file'}
        raise UsageError(f'--ir is {named[kinds[0]]} but --visible is {named[kinds[1]]}: give '
                         f'two image files, two folders or two videos')
    kind = kinds[0]
    if kind != 'video' and ir_offset_ms:  # else it would be left unused without a word
        paired = 'two image files are one pair' if kind == 'image' else \
            'folders are paired by file name'
        raise UsageError(f'--ir-offset-ms places the IR video on the clock of the visible one, '
                         f'but {paired}: leave it out or give two videos')
    if kind == 'image':
        return _Plan(kind, _image_items([(vi_path.stem, ir_path, vi_path)]), total=1)
    if kind == 'folder':
        return _plan_folders(ir_path, vi_path)
    plan = _Plan(kind, iter(()), pair_word='frame')
    # Before the model loads and the outputs are made: without both videos nothing is fused.
    try:
        vi_video = VideoFrames(vi_path)
    except OSError as exc:
        raise UsageError(f'--visible {exc}: no frame can be fused') from exc
    try:
        ir_video = VideoFrames(ir_path)
    except OSError as exc:
        vi_video.release()
        raise UsageError(f'--ir {exc}: no frame can be fused') from exc
    plan.videos = (vi_video, ir_video)
    plan.items = _video_items(vi_video, ir_video, float(ir_offset_ms))
    plan.total = vi_video.frame_count
    return plan


def _plan_folders(ir_dir, vi_dir):
    ir_files, ir_ignored = _images_by_stem(ir_dir)
    vi_files, vi_ignored = _images_by_stem(vi_dir)
    common, ir_only, vi_only = match_stems(ir_files, vi_files)
    plan = _Plan('folder', iter(()))
    pairs = []
    for stem in common:
        duplicates = [paths for paths in (ir_files[stem], vi_files[stem]) if len(paths) > 1]
        if duplicates:
            names = ', '.join(str(path) for paths in duplicates for path in paths)
            plan.failures.append((stem, f'ambiguous, several images of this stem: {names}'))
            plan.failed_pairs += 1
            continue
        pairs.append((stem, ir_files[stem][0], vi_files[stem][0]))
    if ir_only:
        plan.notes.append(f'{len(ir_only)} IR image(s) without a visible image of the same '
                          f'stem, left out: {_shorten(ir_only)}')
    if vi_only:
        plan.notes.append(f'{len(vi_only)} visible image(s) without an IR image of the same '
                          f'stem, left out: {_shorten(vi_only)}')
    if ir_ignored or vi_ignored:
        plan.notes.append(f'ignored {ir_ignored + vi_ignored} file(s) that are not images '
                          f'(by suffix)')
    if not common:
        raise UsageError(f'no image stem is in both {str(ir_dir)!r} ({len(ir_files)} images) and '
                         f'{str(vi_dir)!r} ({len(vi_files)} images)')
    plan.items = _image_items(pairs)
    plan.total = len(pairs)
    return plan


class _Prefetch:
    """Iterate ``items`` in a background thread, a few ahead: decoding overlaps inference."""

    _END = object()

    def __init__(self, items, depth=_PREFETCH):
        self._items = items
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name='fuse-read', daemon=True)
        self._thread.start()

    def _put(self, value):
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = exc
        self._put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self):
        """Stop reading ahead and wait for the thread."""
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def flow_to_colour(flow_px):
    """Colour-code a flow field with torchvision's ``flow_to_image`` (Middlebury colour wheel).

    Args:
        flow_px: float ``HxWx2`` array, (dx, dy) in pixels.

    Returns:
        uint8 ``HxWx3`` BGR image; hue is the direction, saturation the magnitude relative to
        the largest in this field.

    """
    import torch
    from torchvision.utils import flow_to_image
    flow = torch.from_numpy(np.ascontiguousarray(flow_px, dtype=np.float32)).permute(2, 0, 1)
    rgb = flow_to_image(flow).permute(1, 2, 0).numpy()
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


# Every output file is written whole (atomic_output): a run stopped meanwhile (SIGKILL, a power
# cut) leaves no cut file under the output's name, and of two runs writing into one folder at
# once each file is one run's whole (written in place, a PNG was cut short or held the end of
# the other run's).
def _write_file(path, data):
    """Write the bytes ``data`` to the output file ``path`` whole (:func:`atomic_output`).

    Raises:
        OSError: naming ``path`` and the cause (``'<path>: No space left on device'``; the
            error of the write names no file, that of the temporary's creation the
            temporary's name).

    """
    try:
        with atomic_output(path) as temporary:
            temporary.write_bytes(data)
    except OSError as exc:
        raise OSError(f'{path}: {exc.strerror or exc}') from exc


def _imwrite(path, img):
    ok, data = cv2.imencode(Path(path).suffix, img)
    if not ok:
        raise OSError(f'{path}: OpenCV could not encode the image')
    _write_file(path, data.tobytes())


class _NoFrame(Exception):
    """Leaves the fused video's :func:`atomic_output` without a video: no frame was written."""


def _drop(output):
    """Close ``output`` (an ``ExitStack`` holding an :func:`atomic_output`) writing nothing."""
    with suppress(_NoFrame), output:
        raise _NoFrame


def _video_problem(path, frames):
    """Return why the video file ``path`` does not hold its ``frames`` frames, or None.

    OpenCV's ``VideoWriter`` reports no failed write (a full disk, a file size limit): it
    leaves a file cut short, an MPEG-4 without its index (unreadable) or an AVI whose header
    counts no frame. The file is opened, its frame count read from the container and its last
    frame decoded (not every frame: a long video would be read again whole).
    """
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 'cannot be opened'
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        if count != frames:
            return f'holds {count:g} of them'
        capture.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        if not capture.read()[0]:
            return 'ends before its last frame'
    finally:
        capture.release()
    return None


def _yolo_lines(detections, height, width):
    """Return the YOLO label file of detections (boxes of no area at 6 decimals left out)."""
    from tarfuse_ros.core.data import yolo_label_text
    rows = [(det.class_id, (det.x1 + det.x2) / 2.0 / width, (det.y1 + det.y2) / 2.0 / height,
             (det.x2 - det.x1) / width, (det.y2 - det.y1) / height) for det in detections]
    return yolo_label_text(rows)[0]


def _detections_record(name, result, info):
    height, width = result.fused.shape[:2]
    return {
        'image': name, 'width': int(width), 'height': int(height), **info,
        'detections': [
            {'class_id': det.class_id, 'class_name': det.class_name,
             'score': round(float(det.score), 6),
             'xyxy': [round(float(v), 3) for v in (det.x1, det.y1, det.x2, det.y2)]}
            for det in result.detections],
    }


class _Outputs:
    """Write each fused pair's files in a background thread (encoding overlaps inference)."""

    def __init__(self, out, registered=False, flow=False, detections=False, class_names=(),
                 video=None, report=print):
        self.out = Path(out)
        self.registered, self.flow, self.detections = registered, flow, detections
        self.video_path = None
        self.video_failed = False  # frames were written, but the video file is not whole
        self._video = None
        self._report = report
        self.written = 0
        self.failures = []
        self.out.mkdir(parents=True, exist_ok=True)
        if video is not None:
            self._open_video(*video)
        for wanted, folder in ((video is None, 'fused'), (registered, 'registered'),
                               (flow, 'flow'), (detections, 'detections'),
                               (detections, 'labels')):
            if wanted:
                (self.out / folder).mkdir(parents=True, exist_ok=True)
                # A killed run's temporaries (<name>.<hex>.tmp) stayed for good, a flow's as
                # large as its .npy.
                remove_stale_temporaries(self.out / folder, _OUTPUT_SUFFIXES[folder])
        if detections:
            _write_file(self.out / 'labels' / 'classes.txt',
                        ''.join(f'{name}\n' for name in class_names).encode('utf-8'))
        self._queue = queue.Queue(maxsize=_WRITE_QUEUE)
        self._thread = threading.Thread(target=self._run, name='fuse-write', daemon=True)
        self._thread.start()

    def _open_video(self, visible_path, fps, size):
        avi = Path(visible_path).suffix.lower() == '.avi'
        choices = [('.avi', 'MJPG', cv2.CAP_ANY), ('.mp4', 'mp4v', cv2.CAP_ANY)]
        if not avi:
            choices = choices[::-1]
        if size[0] % 2 or size[1] % 2:
            # OpenCV's FFmpeg writers crop an odd width or height to an even one; its own
            # Motion JPEG writer keeps the visible size.
            choices = [('.avi', 'MJPG', cv2.CAP_OPENCV_MJPEG)]
        stem = Path(visible_path).stem
        for suffix in ('.avi', '.mp4'):  # a killed run's temporary video, as large as a video
            remove_stale_outputs(self.out / f'{stem}_fused{suffix}')
        for suffix, fourcc, api in choices:
            # Written under a temporary name of its own (two runs into one folder wrote into
            # one file, and the second to finish stopped with a traceback: its temporary was
            # gone), with the same suffix (it picks the container), that replaces the video of
            # an earlier run only once a frame is in it (close).
            path = self.out / f'{stem}_fused{suffix}'
            output = ExitStack()
            temporary = output.enter_context(atomic_output(path, keep_suffix=True))
            writer = cv2.VideoWriter(str(temporary), api, cv2.VideoWriter_fourcc(*fourcc), fps,
                                     size)
            if writer.isOpened():
                self._video, self._video_size = writer, size
                self.video_path, self._video_output = path, output
                self._video_temporary = temporary
                return
            writer.release()
            _drop(output)
        names = ' nor '.join(fourcc for _, fourcc, _ in choices)
        raise OSError(f'OpenCV cannot write a {size[0]}x{size[1]} video into {self.out} '
                      f'(neither {names})')

    def submit(self, name, result, info):
        """Queue one pair's :class:`FusionResult` for writing."""
        self._queue.put((name, result, info))

    def close(self):
        """Write what is queued, then close the video.

        The video is dropped (an earlier run's stays) if it holds no frame, or not every frame
        written (a failure: :func:`_video_problem`; no pair counts as written then).
        """
        self._queue.put(None)
        self._thread.join()
        if self._video is None:
            return
        self._video.release()
        self._video = None
        problem = _video_problem(self._video_temporary, self.written) if self.written else None
        if self.written and problem is None:
            self._video_output.close()  # the whole video replaces an earlier run's
            return
        _drop(self._video_output)  # a container without frames does not even open
        path, self.video_path = self.video_path, None
        if problem:
            free = shutil.disk_usage(self.out).free / 1e6
            reason = (f'cannot write the fused video {path}: of the {self.written} frames '
                      f'written, the file OpenCV left {problem} (a full disk? {free:.1f} MB '
                      f'free in {self.out}); no video was put in place')
            self.failures.append((path.name, reason))
            self._report(f'{PROG}: {reason}')
            self.written, self.video_failed = 0, True

    def _run(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            name = job[0]
            try:
                self._write(*job)
                self.written += 1
            except (OSError, cv2.error, ValueError) as exc:
                reason = f'cannot write its outputs: {exc}'
                self.failures.append((name, reason))
                self._report(f'{PROG}: {name}: {reason}')

    def _write(self, name, result, info):
        fused = result.fused
        if self._video is not None:
            if fused.ndim == 2:
                fused = cv2.cvtColor(fused, cv2.COLOR_GRAY2BGR)
            if (fused.shape[1], fused.shape[0]) != self._video_size:
                raise ValueError(f'frame size {fused.shape[1]}x{fused.shape[0]} differs from the '
                                 f'video size {self._video_size[0]}x{self._video_size[1]}')
            self._video.write(fused)
        else:
            _imwrite(self.out / 'fused' / f'{name}.png', fused)
        if self.registered:
            _imwrite(self.out / 'registered' / f'{name}.png', result.registered_ir)
        if self.flow:
            # Saved to memory first: np.save's failed write said '307832 requested and 26592
            # written', naming neither the file nor the cause (a full disk).
            npy = io.BytesIO()
            np.save(npy, result.flow_px.astype(np.float32))
            _write_file(self.out / 'flow' / f'{name}.npy', npy.getvalue())
            _imwrite(self.out / 'flow' / f'{name}.png', flow_to_colour(result.flow_px))
        if self.detections:
            record = _detections_record(name, result, info)
            _write_file(self.out / 'detections' / f'{name}.json',
                        json.dumps(record, indent=2).encode('utf-8'))
            _write_file(self.out / 'labels' / f'{name}.txt', _yolo_lines(
                result.detections, record['height'], record['width']).encode('utf-8'))


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """What one run did."""

    pairs_in: int = 0  # pairs that were read or failed to be read (unmatched/unpaired excluded)
    pairs_out: int = 0  # pairs whose outputs were all written
    unpaired: int = 0  # visible video frames without an IR frame near them
    failures: list = field(default_factory=list)  # (name, reason)
    elapsed_s: float = 0.0  # from the first read to the last write (model loading excluded)
    engine_ms: list = field(default_factory=list)  # FusionEngine total time per pair
    interrupted: bool = False
    pairs_interrupted: int = 0  # pairs in whose fusion Ctrl-C stopped: neither out nor failed

    @property
    def frames_per_s(self):
        """Fused pairs written per second of processing."""
        return self.pairs_out / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run(plan, engine, outputs, report, show_progress=None):
    """Fuse every pair of ``plan`` with ``engine`` and hand the results to ``outputs``.

    Unreadable pairs and engine errors (``ValueError``) are passed to ``report`` (a function
    taking one line) and skipped. ``show_progress``: ``None`` shows a progress bar on a
    terminal only. Returns a :class:`Summary`.
    """
    summary = Summary(pairs_in=plan.failed_pairs, failures=list(plan.failures))
    bar = tqdm(total=plan.total, unit=plan.pair_word, desc=PROG, file=sys.stderr,
               disable=None if show_progress is None else not show_progress, dynamic_ncols=True)
    start = time.perf_counter()
    reader = _Prefetch(plan.items)
    pending = 0  # the pair counted in and not yet failed or handed to the outputs
    warned_shapes, warned_orientations = set(), set()
    try:
        for item in reader:
            bar.update(1)
            if item.unpaired:
                summary.unpaired += 1
                continue
            summary.pairs_in += 1
            pending = 1
            if item.error is not None:
                summary.failures.append((item.name, item.error))
                pending = 0
                report(f'{PROG}: skipped {item.name}: {item.error}')
                continue
            _warn_portrait_beside_landscape(item, warned_shapes, report)
            _warn_exif_orientations(item, warned_orientations, report)
            try:
                engine.check_network_size(item.vi.shape[:2], '--input-max-long-side')
                result = engine.infer(item.ir, item.vi)
            except (ValueError, cv2.error) as exc:
                reason = f'the engine rejected the pair: {exc}'
                summary.failures.append((item.name, reason))
                pending = 0
                report(f'{PROG}: skipped {item.name}: {reason}')
                continue
            summary.engine_ms.append(result.timings_ms['total'])
            outputs.submit(item.name, result, item.info)
            pending = 0
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.pairs_interrupted = pending
    finally:
        reader.close()
        outputs.close()
        bar.close()
        for video in plan.videos:
            video.release()
    summary.elapsed_s = time.perf_counter() - start
    summary.pairs_out = outputs.written
    summary.failures += outputs.failures
    return summary


def _warn_portrait_beside_landscape(item, warned, report):
    """Warn once per pair of frame sizes where one image is portrait, the other landscape."""
    sizes = ((item.ir.shape[1], item.ir.shape[0]), (item.vi.shape[1], item.vi.shape[0]))
    if sizes in warned or not portrait_beside_landscape(*sizes):
        return
    warned.add(sizes)
    (ir_w, ir_h), (vi_w, vi_h) = sizes
    report(f'{PROG}: warning: {item.name}: IR {ir_w}x{ir_h} and visible {vi_w}x{vi_h}, one '
           f'portrait, the other landscape: {PORTRAIT_ADVICE}; rotate those images first '
           f'(said once for these sizes)')


def _warn_exif_orientations(item, warned, report):
    """Warn once per pair of EXIF orientation tags where the IR's and the visible's differ.

    Both images are fused as stored (as the node receives them); a viewer shows the tagged one
    turned, so a pair that looks right there was fused turned against each other, without a
    word where both frames are landscape (a JPEG tagged 'turned 180 degrees').
    """
    ir_tag, vi_tag = item.orientations
    if ir_tag == vi_tag or item.orientations in warned:
        return
    warned.add(item.orientations)
    report(f'{PROG}: warning: {item.name}: EXIF orientation {ir_tag} in the IR file '
           f'({EXIF_TURNS[ir_tag]}), {vi_tag} in the visible file ({EXIF_TURNS[vi_tag]}): '
           f'images are fused as stored, not as viewers show them: if the two look aligned '
           f'in a viewer, they are fused turned against each other; write the tagged image '
           f'turned first (e.g. exiftran -ai FILE) (said once for these tags)')


def _summary_lines(plan, summary, outputs, engine, threads):
    lines = []
    if plan.videos:
        vi_video, ir_video = plan.videos
        lines.append(f'visible video: {vi_video.frames_read} frames at {vi_video.fps:.3f} fps; '
                     f'IR video: {ir_video.frames_read} frames read at {ir_video.fps:.3f} fps')
        if summary.unpaired:
            lines.append(f'{summary.unpaired} visible frame(s) without an IR frame within '
                         f'{ir_video.period_ms:.1f} ms (one IR period), left out')
    lines += plan.notes
    word = plan.pair_word
    mean_ms = float(np.mean(summary.engine_ms)) if summary.engine_ms else float('nan')
    interrupted = f', {summary.pairs_interrupted} interrupted' if summary.interrupted else ''
    lines.append(
        f'{summary.pairs_in} {word}(s) in, {summary.pairs_out} fused out, '
        f'{len(summary.failures)} failed{interrupted}; {summary.frames_per_s:.2f} {word}s/s '
        f'({summary.elapsed_s:.1f} s); engine {mean_ms:.1f} ms/{word} mean '
        f'({engine.device}, torch threads {threads})')
    if engine.global_track:
        counts = engine.global_track_state()
        lines.append(f'global map tracked (--global-track {engine.global_track}): '
                     f'{counts["tracked"]} {word}(s) tracked, {counts["fitted"]} fitted in full '
                     f'({counts["fit_kept"]} of which replaced the tracked map), '
                     f'{counts["held"]} held (a constant image)')
    if summary.failures:
        lines.append('failed: ' + '; '.join(
            f'{name} ({reason})' for name, reason in summary.failures))
    if not plan.videos:
        written = [str(outputs.out / 'fused')]
    elif outputs.video_path is not None:
        written = [str(outputs.video_path)]
    else:
        why = 'not written whole' if outputs.video_failed else 'no frame fused'
        written = [f'no video ({why})']
    written += [str(outputs.out / name) for wanted, name in (
        (outputs.registered, 'registered'), (outputs.flow, 'flow'),
        (outputs.detections, 'detections'), (outputs.detections, 'labels')) if wanted]
    lines.append('outputs: ' + ', '.join(written))
    if summary.interrupted:
        lines.append('interrupted: the outputs above are complete up to the last pair written')
    return [f'{PROG}: {line}' for line in lines]


def build_parser():
    """Return the ``tarfuse-fuse`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Fuse IR/visible image pairs, folders of pairs or two videos with a TarFuse '
                    'checkpoint; write the fused images (visible frame and size) and optionally '
                    'the registered IR, the flow and the detections.')
    parser.add_argument('--ir', required=True, type=Path,
                        help='infrared image file, folder of images, or video file')
    parser.add_argument('--visible', required=True, type=Path,
                        help='visible image file, folder (pairs matched by file-name stem), or '
                             'video (each frame paired with the IR frame nearest in time)')
    parser.add_argument('--out', required=True, type=Path, help='output folder (created)')
    parser.add_argument('--weights', default=None,
                        help='checkpoint (.safetensors; default: the shipped '
                             'models/tarfuse_default.safetensors)')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N (default cpu)')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for torch and OpenCV (default: the CPUs this process '
                             'may use, a container CPU limit counted)')
    parser.add_argument('--registered', action='store_true',
                        help='also write the IR registered onto the visible frame (PNG)')
    parser.add_argument('--detections', action='store_true',
                        help='also write detections: JSON per frame and YOLO txt')
    parser.add_argument('--flow', action='store_true',
                        help='also write the flow: .npy (float32 HxWx2, pixels) and a colour PNG')
    parser.add_argument('--no-scale-search', dest='scale_search', action='store_false',
                        help='fit the 1.0 IR / visible scale only in the global stage (about '
                             'half the CPU time; for cameras of the same field of view)')
    parser.add_argument('--fine-passes', type=fine_passes_option, default=None, metavar='N',
                        help="fine passes of the global stage, 0-8 (-1 or left out: the model's "
                             'own count, 4 in the shipped one; fewer are faster, README '
                             '"registration.fine_passes"; 0: none)')
    parser.add_argument('--global-every', type=int, default=1, metavar='N',
                        help='one rigid rig: once --global-window fits are held, fit the global '
                             'stage on one pair in N (the others skip it; default 1: every pair)')
    parser.add_argument('--global-window', type=int, default=1, metavar='W',
                        help='one rigid rig: each pair starts from the median of the last W '
                             'global fits (default 1: its own fit; README, "One rig, many '
                             'frames")')
    parser.add_argument('--global-track', type=int, default=0, metavar='N',
                        help="one rig: each pair's global map is the previous pair's refined "
                             'by the fine passes alone, with a full fit on one pair in N '
                             '(1-10000), the better-agreeing map kept (default 0: off; not with '
                             '--global-every/--global-window above 1 or --fine-passes 0; '
                             'README, "Tracking the map")')
    parser.add_argument('--prior', type=Path, default=None,
                        help="the rig's calibration prior: the node parameters file that "
                             'tarfuse-calibrate writes (registration.prior; the launch file '
                             'takes it as prior_file:=)')
    parser.add_argument('--input-max-long-side', type=int, default=0, metavar='PX',
                        help='large cameras: run the network on frames shrunk so their longer '
                             'side is at most PX (256-16384; outputs at the frame size; README, '
                             '"Large cameras"; default 0: never shrink)')
    parser.add_argument('--ir-offset-ms', type=float, default=0.0,
                        help='videos: time of the first IR frame on the visible video clock '
                             '(default 0: both start together)')
    return parser


def _inputs_among_outputs(args, kind):
    """Return why ``args.out`` would write over the inputs, or None.

    A folder of inputs that is one of the output folders (``--ir out/registered`` with
    ``--registered``) had its images replaced as they were fused, or, of other suffixes, a PNG
    of the same stem added beside each, which made the next run of the command fail on every
    pair ('ambiguous, several images of this stem'); an input image that is an output file
    was replaced by it.
    """
    written = [name for wanted, name in (
        (kind != 'video', 'fused'), (args.registered, 'registered'), (args.flow, 'flow'),
        (args.detections, 'detections'), (args.detections, 'labels')) if wanted]
    for option, given in (('--ir', args.ir), ('--visible', args.visible)):
        if kind == 'folder':
            for name in written:
                if (args.out / name).resolve() == given.resolve():
                    return (f'{option} {str(given)!r} is the folder tarfuse-fuse writes its '
                            f'{name} outputs into (--out {str(args.out)!r}): they would be '
                            f'written among the inputs')
        elif kind == 'image':
            stem = args.visible.stem  # a pair of images is named after the visible one
            for name in written:
                for suffix in _OUTPUT_SUFFIXES[name]:
                    if (args.out / name / f'{stem}{suffix}').resolve() == given.resolve():
                        return (f'{option} {str(given)!r} is an output file of tarfuse-fuse '
                                f'(--out {str(args.out)!r}): it would be replaced')
    return None


def _unwritable_output(args, kind):
    """Return why ``args.out`` or an output folder of this run cannot be written, or None.

    Checked before the model loads (:func:`~tarfuse_ros.core.files.output_problem`): a
    read-only ``--out`` (or ``fused/`` in it) had every pair fused, then each named as failed.
    """
    folders = [args.out] + [args.out / name for wanted, name in (
        (kind != 'video', 'fused'), (args.registered, 'registered'), (args.flow, 'flow'),
        (args.detections, 'detections'), (args.detections, 'labels')) if wanted]
    for folder in folders:
        problem = output_problem(folder, folder=True)
        if problem:
            return problem
    return None


def _foreign_labels(out):
    """Return the label files in ``out/labels`` that tarfuse-fuse did not write.

    Each label file it writes has ``detections/<name>.json`` beside it; one without is someone
    else's (e.g. the human labels of a data set given as ``--out``).
    """
    labels = Path(out) / 'labels'
    if not labels.is_dir():
        return []
    return sorted(path.name for path in labels.glob('*.txt') if path.name != 'classes.txt'
                  and not (Path(out) / 'detections' / f'{path.stem}.json').is_file())


def _load_prior(path):
    """Return the :class:`~tarfuse_ros.core.prior.RegistrationPrior` of ``--prior`` (or None)."""
    if path is None:
        return None
    from tarfuse_ros.core.prior import load_prior_yaml
    try:
        prior = load_prior_yaml(path)
    except ValueError as exc:
        raise UsageError(f'--prior: {exc}') from exc
    if prior is None:  # else it would silently fuse without a prior
        raise UsageError(f'--prior {str(path)!r} sets no registration.prior; give a file from '
                         f'tarfuse-calibrate')
    return prior


def _load_engine(weights, device, threads, scale_search=True, global_every=1, global_window=1,
                 prior=None, input_max_long_side=0, fine_passes=None, global_track=0):
    # Imported here so that usage errors are reported before torch is loaded.
    from tarfuse_ros.core.backends import backend_for_weights
    from tarfuse_ros.core.checkpoint import CheckpointError
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.runtime import DeviceUnavailableError
    import torch
    if threads is not None:  # a program sets the process-wide thread counts, not the engine
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    if backend_for_weights(weights) == 'onnxruntime':
        raise UsageError(f'--weights {weights}: an ONNX file (tarfuse-export); tarfuse-fuse runs '
                         f'.safetensors checkpoints (the file that was exported)')
    try:
        return FusionEngine(weights, device=device, scale_search=scale_search,
                            global_every=global_every, global_window=global_window,
                            registration_prior=prior, input_max_long_side=input_max_long_side,
                            fine_passes=fine_passes, global_track=global_track)
    except CheckpointError as exc:
        raise UsageError(f'cannot load the weights: {exc}') from exc
    except StreamSettingError as exc:  # it named the engine's keywords (leave global_track...)
        raise UsageError(f'cannot start the model with these options: '
                         f'{exc.named(OPTIONS)}') from exc
    except ValueError as exc:
        raise UsageError(f'cannot start the model with these options: {exc}') from exc
    except DeviceUnavailableError as exc:
        raise UsageError(f'{exc}; use --device cpu') from exc
    except RuntimeError as exc:
        raise UsageError(f'cannot start the model on device {device!r}: {exc}') from exc


def main(argv=None):
    """Entry point of ``tarfuse-fuse``; returns the exit status (0, 1 some failed, 2 usage).

    SIGTERM (``timeout``, kill, a job scheduler) stops it as Ctrl-C does, and only the first
    of these signals stops it: the pairs fused by then are still written, and the summary
    printed, before it exits with status 130 (SIGTERM killed it with the PNG being written
    cut short and the pairs waiting to be written lost).
    """
    args = build_parser().parse_args(argv)
    previous = {}
    stop = StopRequest(once=True)
    if threading.current_thread() is threading.main_thread():  # else signals are not ours
        previous = stop.install((signal.SIGINT, signal.SIGTERM))
    try:
        return _main(args)
    finally:
        stop.restore(previous)


def _main(args):
    """Run ``tarfuse-fuse`` with the parsed ``args``; return the exit status."""

    def report(line):
        tqdm.write(line, file=sys.stderr)

    plan = None
    try:
        if args.threads is not None and args.threads < 1:
            raise UsageError(f'--threads must be >= 1, got {args.threads}')
        try:  # said with the options' names (the engine's would name its keywords)
            check_stream_settings(args.global_every, args.global_window, args.global_track,
                                  args.fine_passes, OPTIONS)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            check_fine_passes(args.fine_passes, '--fine-passes', OPTION_OWN)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not math.isfinite(args.ir_offset_ms):
            raise UsageError('--ir-offset-ms must be a finite number')
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f'--out {str(args.out)!r} is a file; give a folder (created if '
                             f'needed)')
        foreign = _foreign_labels(args.out) if args.detections else []
        if foreign:
            raise UsageError(f'--detections would write into {str(args.out / "labels")!r}, '
                             f'which holds {len(foreign)} label file(s) tarfuse-fuse did not '
                             f'write ({_shorten(foreign, 3)}; e.g. human labels); give '
                             f'another --out')
        prior = _load_prior(args.prior)
        plan = plan_inputs(args.ir, args.visible, args.ir_offset_ms)
        overwritten = _inputs_among_outputs(args, plan.kind)
        if overwritten:
            raise UsageError(f'{overwritten}; give another --out')
        unwritable = _unwritable_output(args, plan.kind)
        if unwritable:
            raise UsageError(f'--out {str(args.out)!r} cannot be written ({unwritable}); give '
                             f'another --out')
        from tarfuse_ros.core.images import check_frame_size
        for each in plan.videos:  # every frame would be refused: say it once, before the model
            width, height = each.size
            try:
                check_frame_size(np.empty((height, width), np.uint8), str(each.path))
            except ValueError as exc:
                raise UsageError(f'{exc}: no frame of it can be fused') from exc
        threads = args.threads if args.threads is not None else _default_threads()
        engine = _load_engine(args.weights, args.device, threads, args.scale_search,
                              args.global_every, args.global_window, prior,
                              args.input_max_long_side, args.fine_passes, args.global_track)
        unused = [option for option, given in (('--no-scale-search', not args.scale_search),
                                               ('--fine-passes', args.fine_passes is not None))
                  if given]
        if unused and not engine.scale_candidates:  # as tarfuse-export and tarfuse-eval say
            report(f'{PROG}: note: {" and ".join(unused)} had no effect: the model has no '
                   f'orientation global stage')
        for each in plan.videos[:1]:  # the visible video's frames run the network: all or none
            width, height = each.size
            try:
                engine.check_network_size((height, width), '--input-max-long-side')
            except ValueError as exc:
                raise UsageError(f'{each.path}: {exc}: no frame of it can be fused') from exc
        if args.detections and not engine.detects:
            raise UsageError(f'--detections: the model {args.weights or "(shipped)"} has no '
                             f'detection head (model.detect: false), so it detects nothing; '
                             f'leave out --detections')
        video = None
        if plan.videos:
            vi_video = plan.videos[0]
            video = (vi_video.path, vi_video.fps, vi_video.size)
        try:
            outputs = _Outputs(args.out, registered=args.registered, flow=args.flow,
                               detections=args.detections, class_names=engine.class_names,
                               video=video, report=report)
        except OSError as exc:
            raise UsageError(f'cannot write into {str(args.out)!r}: {exc}') from exc
    except (UsageError, KeyboardInterrupt) as exc:  # Ctrl-C while the model loads, too
        if plan is not None:
            for video in plan.videos:
                video.release()
        if isinstance(exc, KeyboardInterrupt):
            print(f'{PROG}: interrupted before the first pair: nothing was fused',
                  file=sys.stderr)
            return 130
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    for name, reason in plan.failures:
        report(f'{PROG}: skipped {name}: {reason}')
    threads = args.threads if args.threads is not None else _torch_threads()
    summary = run(plan, engine, outputs, report)
    for line in _summary_lines(plan, summary, outputs, engine, threads):
        print(line)
    if summary.interrupted:
        return 130
    if plan.videos and summary.pairs_in == 0:
        print(f'{PROG}: error: no visible frame has an IR frame within '
              f'{plan.videos[1].period_ms:.1f} ms (one IR period), nothing was fused: the IR '
              f'video starts {args.ir_offset_ms / 1e3:g} s into the visible one '
              f'(--ir-offset-ms); give two recordings that overlap in time', file=sys.stderr)
        return 2
    return 1 if summary.failures else 0


def _default_threads():
    """Return the threads without ``--threads``: None (the libraries') or the CPUs usable."""
    from tarfuse_ros.core.cpus import default_cpu_threads
    try:
        return default_cpu_threads()
    except (ValueError, ImportError) as exc:
        raise UsageError(f'{exc}; or give --threads N') from exc


def _torch_threads():
    import torch
    return torch.get_num_threads()


if __name__ == '__main__':
    sys.exit(main())
