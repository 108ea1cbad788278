"""Fit a calibration prior for an IR/visible rig from a recording: ``tarfuse-calibrate``.

``tarfuse-calibrate (--pairs DIR | --bag DIR [--infrared-topic T --visible-topic T] [--slop S]
[--infrared-time-offset S|auto]) --out PRIOR.yaml [--weights W] [--pairs-count N] [--iterations K]
[--min-inliers F] [--max-side PX] [--device D] [--threads N]``

1. Reads ``N`` pairs spread evenly over the recording: from a folder in the data-set layout
   (``ir/`` and ``vi/`` matched by stem, :mod:`tarfuse_ros.core.data`; stems found in one
   folder only are left out with a warning naming them; ``--split`` picks a list file; images
   read as ``tarfuse-fuse`` reads them: 8- or 16-bit, or float such as a 32-bit TIFF) or
   from a rosbag2 directory (``sensor_msgs/Image`` or ``CompressedImage``; a topic missing
   from the bag is looked up as ``<topic>/compressed``). In a bag, each chosen visible
   image is paired with the IR image whose header stamp is nearest, at most ``--slop`` seconds
   away, the IR stamps first corrected by ``--infrared-time-offset`` (added to each, as the
   node's ``sync.infrared_time_offset`` does: give the node's value to pair the same frames;
   ``auto`` finds it from the recording's motion as ``tarfuse-time-offset`` does, exit 1 when
   the recording gives none to trust, and writes it to ``PRIOR.yaml`` too). The pairs are
   not held: each is read again (from its files, or from the bag where it was recorded)
   whenever it is used, so memory holds about one pair however many are chosen.
2. Runs the model (:class:`~tarfuse_ros.core.engine.FusionEngine`, or the onnxruntime backend
   for an ``.onnx`` file) on them and fits ONE homography to the predicted flows
   (:func:`tarfuse_ros.core.calibration.calibrate`: texture-weighted points, MAGSAC++); with
   ``--iterations K`` > 1 it runs again with the prior found so far and refits. ``--max-side``
   runs it on downscaled pairs (the network was trained on small deformations: a large offset
   is smaller in pixels of a smaller image) and scales the prior back to the recorded sizes.
3. Prints the residual of the fit per pair (median and 90th percentile in visible pixels, inlier
   share) and the edge alignment of the IR warped by the prior with the visible images, beside
   its chance level (:func:`tarfuse_ros.core.calibration.prior_alignment`: the prior shifted by
   an eighth of the frame), and, when the fit explains at least ``--min-inliers`` of the points
   (0.5: as the node's online refinement asks of one pair) and the alignment beats its chance
   level by ``--min-alignment-gain`` (0.05), writes ``PRIOR.yaml``, a node parameters file
   (``/**: ros__parameters: registration: prior, prior_ir_size, prior_visible_size``) to pass
   as it is to the launch file (``prior_file:=PRIOR.yaml``) or the node (``--params-file``),
   or to paste into the node's parameters file.

Exit status: 0 on success, 1 when no homography could be fitted, it explains less than
``--min-inliers`` of the points (pairs that disagree: a featureless or unrelated IR, pairs from
several rigs) or it lines the pairs up hardly better than by chance (cameras that do not see
one scene: any smooth flow is fitted well), 2 for usage errors (bad options, missing paths or
topics, fewer than 1 pair, an unreadable image, a constant image (a lens cap: nothing to
register), pairs of several image sizes, cameras whose stamps are more than 1 s apart (clocks
apart) or jump back more than 1 s (a driver restarted), a recording changed while it is read,
an ``--out`` that is a folder, cannot be written or holds other node parameters (a full
parameters file: they would be lost), weights or device that cannot be loaded).
"""

import argparse
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
import hashlib
from pathlib import Path
import sys

import cv2
import numpy as np
from tarfuse_ros.core.calibration import MIN_ALIGNMENT_GAIN
from tarfuse_ros.core.files import other_node_parameters, output_problem
from tarfuse_ros.core.prior import PARAMETER_NAMES

__all__ = ['LazyPairs', 'bag_pairs', 'build_parser', 'downscale_pairs', 'folder_pairs', 'main',
           'shrunk_size', 'spread_indices']

PROG = 'tarfuse-calibrate'
DEFAULT_IR_TOPIC = '/infrared/image_raw'
DEFAULT_VI_TOPIC = '/visible/image_raw'
_SHOWN_STEMS = 5  # unpaired stems named per folder


class UsageError(ValueError):
    """The command cannot run at all (exit status 2); the message says why."""


class LazyPairs(Sequence):
    """The chosen ``(name, ir, vi)`` pairs, each read when it is asked for and not kept.

    ``read(index)`` returns pair ``index`` (0 <= index < ``count``). The model runs on every
    pair once per ``--iterations`` and its images are checked and scored besides: holding them
    all took 6.5 MB a 1080p pair, so each use reads the pair again, and memory holds about one.
    A digest of each pair's images is kept instead: a pair read again must be the pair first
    read, else :class:`UsageError` says that ``source`` (the recording, as the user gave it)
    changed while calibrating (a bag recorded again into its folder, an image replaced).
    """

    def __init__(self, count, read, source):
        self._count, self._read, self._source = int(count), read, source
        self._digests = {}

    def __len__(self):
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError(f'pair {index} of {self._count}')
        pair = self._read(position)
        digest = _pair_digest(*pair[1:])
        if self._digests.setdefault(position, digest) != digest:
            raise UsageError(f'pair {pair[0]!r} changed since it was first read: {self._source} '
                             f'was changed while calibrating (recorded again, an image '
                             f'replaced?); calibrate again on a recording left alone meanwhile')
        return pair


def _pair_digest(ir, vi):
    """Return a digest of two images: their shapes, dtypes and pixels."""
    digest = hashlib.blake2b(digest_size=16)
    for image in (ir, vi):
        image = np.ascontiguousarray(image)
        digest.update(f'{image.shape} {image.dtype}'.encode())
        digest.update(image.data)
    return digest.digest()


def spread_indices(total, count):
    """Return up to ``count`` distinct indices in ``range(total)`` spread evenly, ends included."""
    if total <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def folder_pairs(pairs_dir, count, split='all'):
    """Return :class:`LazyPairs` of ``(stem, ir, vi)``: ``count`` pairs over a folder's split.

    The images are as stored (``tarfuse-fuse``'s :func:`~tarfuse_ros.tools.fuse.read_image`:
    8- or 16-bit, or float such as a 32-bit TIFF), read from their files each time a pair is
    asked for; the engine normalises them. With split ``'all'``, images whose stem is in only
    one of ``ir/`` and ``vi/`` are left out with a warning on stderr (how many per folder, the
    first few stems).

    Raises:
        UsageError: not a data-set folder, unknown split, a split file listing a stem twice,
            or no pair (the unpaired stems are named); when a pair is read, an unreadable
            image (or one the engine does not take).

    """
    from tarfuse_ros.core import data
    from tarfuse_ros.core.images import prepare_pair
    from tarfuse_ros.tools.fuse import read_image
    try:
        stems = data.read_split(pairs_dir, split, unique=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    unpaired = data.unpaired_notes(pairs_dir, _SHOWN_STEMS) if split == 'all' else []
    if not stems:
        raise UsageError(f'no IR/visible pair in {str(pairs_dir)!r} (split {split!r})'
                         + ''.join(f'; {note}' for note in unpaired))
    for note in unpaired:
        print(f'{PROG}: warning: {note}', file=sys.stderr, flush=True)
    chosen = [stems[index] for index in spread_indices(len(stems), count)]

    def read(index):
        try:
            # As stored, as tarfuse-fuse reads them (8/16-bit, float TIFF...): the engine
            # normalises them; its own preparation refuses here what it could not run.
            paths = data.pair_files(pairs_dir, chosen[index])
            ir, vi = read_image(paths[0]), read_image(paths[1])
            prepare_pair(ir, vi, names=tuple(str(path) for path in paths))
        except (OSError, ValueError) as exc:  # the input's fault, not the fit's
            raise UsageError(f'pair {chosen[index]!r}: {exc}; remove or replace it') from exc
        return chosen[index], ir, vi
    return LazyPairs(len(chosen), read, f'the folder {str(pairs_dir)!r}')


def bag_pairs(bag_dir, count, ir_topic=DEFAULT_IR_TOPIC, vi_topic=DEFAULT_VI_TOPIC,
              slop_s=0.05, ir_offset_s=0.0):
    """Return :class:`LazyPairs` of ``(name, ir, vi)``: ``count`` pairs over a rosbag2 recording.

    Visible images are chosen evenly over the recording (by header stamp); each is paired with
    the IR image of nearest header stamp plus ``ir_offset_s`` (the node's
    ``sync.infrared_time_offset``: the visible stamp of an instant minus the IR stamp of the
    same instant), at most ``slop_s`` away (else it is left out, with a warning on stderr
    giving how many and how far their nearest IR images are). ``name`` is the visible stamp
    as ``sec.nanosec``. A pair's two messages are read from the bag (at the times they were
    recorded) each time the pair is asked for.

    Raises:
        UsageError: unreadable bag, missing topics, one topic given for both cameras, or no
            pair within ``slop_s``; when a pair is read, an image that cannot be decoded.

    """
    from rosbags.rosbag2 import Reader
    from tarfuse_ros.tools.bagio import (bag_read_problem, camera_topics, clocks_apart_problem,
                                         header_stamp_ns, image_to_array, jazzy_typestore,
                                         stamp_jump_problem)

    try:
        ir_bag, vi_bag = camera_topics(bag_dir, ir_topic, vi_topic)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        with Reader(Path(bag_dir)) as reader:
            # Per topic: each header stamp and when its first message was recorded (ns), to
            # read a chosen image again there.
            stamps = {ir_bag: {}, vi_bag: {}}
            lags = {ir_bag: [], vi_bag: []}  # header stamp - time recorded (ns)
            zero = {ir_bag: 0, vi_bag: 0}  # messages stamped 0 (the node refuses them)
            recorded_stamps = {ir_bag: [], vi_bag: []}  # in the order recorded: a clock reset?
            wanted = [c for c in reader.connections if c.topic in stamps]
            for connection, recorded, raw in reader.messages(connections=wanted):
                stamp = header_stamp_ns(raw)
                if not stamp:
                    zero[connection.topic] += 1
                    continue
                stamps[connection.topic].setdefault(stamp, recorded)
                lags[connection.topic].append(stamp - recorded)
                recorded_stamps[connection.topic].append(stamp)
    except Exception as exc:  # noqa: BLE001 - rosbags raises several error types
        raise UsageError(bag_read_problem(bag_dir, exc)) from exc
    vi_stamps = sorted(stamps[vi_bag])
    ir_stamps = np.array(sorted(stamps[ir_bag]), dtype=np.int64)
    for topic, zeros in zero.items():
        if zeros and stamps[topic]:
            print(f'{PROG}: warning: {zeros} of {zeros + len(lags[topic])} images on {topic!r} '
                  f'have a zero header stamp (the node refuses them), left out',
                  file=sys.stderr, flush=True)
    empty = [topic for topic in (ir_bag, vi_bag) if not stamps[topic]]
    if empty:  # named: a camera that never sent, a topic recorded under another name
        stamped_zero = [f'{zero[topic]} on {topic!r}' for topic in empty if zero[topic]]
        raise UsageError(f'the bag has no message on {" nor on ".join(map(repr, empty))} ('
                         + (f'its images all have a zero header stamp, which the node '
                            f'refuses: {", ".join(stamped_zero)}; stamp them' if stamped_zero
                            else 'its topic is recorded, but empty') + '); record both cameras')
    problem = clocks_apart_problem(lags, ir_bag, vi_bag) if all(lags.values()) else None
    for topic in (ir_bag, vi_bag):
        problem = problem or stamp_jump_problem(recorded_stamps[topic], topic)
    if problem is not None:  # the nearest stamps would be images of other instants
        raise UsageError(problem)
    offset_ns = round(ir_offset_s * 1e9)  # as the node rounds sync.infrared_time_offset
    corrected = ir_stamps + offset_ns
    chosen, gaps = {}, []
    slop_ns = int(round(slop_s * 1e9))
    indices = spread_indices(len(vi_stamps), count)
    for index in indices:
        stamp = vi_stamps[index]
        nearest = int(np.argmin(np.abs(corrected - stamp)))
        if abs(int(corrected[nearest]) - stamp) <= slop_ns:
            chosen[stamp] = int(ir_stamps[nearest])  # the IR image's own stamp, to read it
        else:
            gaps.append(abs(int(corrected[nearest]) - stamp) / 1e9)
    corrected_by = (f', the IR stamps moved {ir_offset_s:+} s by --infrared-time-offset'
                    if offset_ns else '')
    hint = ('raise --slop if the cameras stamp that far apart, or give --infrared-time-offset '
            '(the node parameter sync.infrared_time_offset) if the IR driver stamps a constant '
            'time later or earlier')
    if not chosen:
        raise UsageError(f'no IR image within --slop {slop_s} s of the chosen visible images '
                         f'(the nearest IR images are {min(gaps):.3f}-{max(gaps):.3f} s '
                         f'away{corrected_by}); {hint}')
    if gaps:
        print(f'{PROG}: warning: {len(gaps)} of {len(indices)} chosen visible images have no '
              f'IR image within --slop {slop_s} s (nearest {min(gaps):.3f}-{max(gaps):.3f} s '
              f'away{corrected_by}), left out; {hint}',
              file=sys.stderr, flush=True)
    chosen = sorted(chosen.items())
    typestore = jazzy_typestore()

    def image(reader, topic, stamp):
        """Return the image of the first message of ``topic`` stamped ``stamp``."""
        at = stamps[topic][stamp]
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, _, raw in reader.messages(connections=connections, start=at,
                                                  stop=at + 1):
            if header_stamp_ns(raw) == stamp:
                try:
                    return image_to_array(typestore.deserialize_cdr(raw, connection.msgtype),
                                          topic)[0]
                except ValueError as exc:
                    raise UsageError(f'{topic} at {stamp} ns: {exc}') from exc
        raise UsageError(f'{topic} at {stamp} ns: no longer in the bag {str(bag_dir)!r} (was '
                         f'it changed while calibrating?)')

    def read(index):
        stamp, ir_stamp = chosen[index]
        sec, nanosec = divmod(stamp, 1_000_000_000)
        try:
            with Reader(Path(bag_dir)) as reader:
                return (f'{sec}.{nanosec:09d}', image(reader, ir_bag, ir_stamp),
                        image(reader, vi_bag, stamp))
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - rosbags raises several error types
            raise UsageError(bag_read_problem(bag_dir, exc)) from exc
    return LazyPairs(len(chosen), read, f'the bag {str(bag_dir)!r}')


def shrunk_size(width, height, max_side):
    """Return ``(width, height)`` shrunk so that the longer side is at most ``max_side`` (px).

    The aspect ratio is kept (rounded to whole pixels); a smaller size is returned as it is.
    """
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale_pairs(pairs, max_side):
    """Return the pairs with each image shrunk (``INTER_AREA``) so its longer side <= max_side.

    Both sizes keep their aspect ratio (:func:`shrunk_size`), so a prior fitted on the result
    scales back to the recorded sizes (:meth:`RegistrationPrior.homography_for`). The result
    is :class:`LazyPairs`: each pair is shrunk when it is asked for (read from ``pairs`` then).
    """
    def shrink(img):
        size = shrunk_size(img.shape[1], img.shape[0], max_side)
        if size == (img.shape[1], img.shape[0]):
            return img
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA)

    def read(index):
        name, ir, vi = pairs[index]
        return name, shrink(ir), shrink(vi)
    return LazyPairs(len(pairs), read, 'the recording')


def _offset_or_auto(text):
    """Parse ``--infrared-time-offset``: a number of seconds or ``auto``."""
    if text.strip().lower() == 'auto':
        return 'auto'
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'give a number of seconds or auto, got {text!r}') from None


def _found_time_offset(args):
    """Return the IR time offset (s) of ``--bag`` found from its motion (``auto``).

    Raises:
        UsageError: the bag cannot be read (see ``tarfuse-time-offset``).
        ValueError: the recording gives no offset to trust (the reason).

    """
    from tarfuse_ros.core.time_offset import (estimate_problem, estimate_time_offset,
                                              estimate_warnings, rounded_offset)
    from tarfuse_ros.tools import time_offset as tool

    def warn(text):
        print(f'{PROG}: warning: {text}', file=sys.stderr, flush=True)

    try:
        signals = tool.read_motion_signals(args.bag, args.infrared_topic, args.visible_topic,
                                           warn)
    except tool.UsageError as exc:
        raise UsageError(str(exc)) from exc
    estimate = estimate_time_offset(signals['vi'][0], signals['ir'][0], max_offset_s=1.0)
    problem = estimate_problem(estimate, 1.0)
    if problem is not None:
        raise ValueError(f'--infrared-time-offset auto found no offset to trust: {problem}; '
                         f'give the offset in seconds instead (0 if the cameras are stamped '
                         f'alike)')
    for note in estimate_warnings(estimate):  # as tarfuse-time-offset warns (drifting stamps)
        warn(note)
    value = rounded_offset(estimate.offset_s)
    print(f'IR time offset found from the recording: {value:g} s (motion correlation '
          f'{estimate.correlation:.2f}); pairing with it', flush=True)
    return value


def build_parser():
    """Return the ``tarfuse-calibrate`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Fit one IR -> visible homography (the registration prior of the node) to '
                    "the model's flows on pairs spread over a recording, and write it as a node "
                    'parameters file.')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--pairs', type=Path,
                        help='folder of pairs in the data-set layout (ir/, vi/ matched by stem)')
    source.add_argument('--bag', type=Path, help='rosbag2 directory (MCAP or sqlite3)')
    parser.add_argument('--infrared-topic', default=DEFAULT_IR_TOPIC,
                        help=f'IR topic in the bag (default {DEFAULT_IR_TOPIC}; '
                             '<topic>/compressed is used when only that is recorded)')
    parser.add_argument('--visible-topic', default=DEFAULT_VI_TOPIC,
                        help=f'visible topic in the bag (default {DEFAULT_VI_TOPIC})')
    parser.add_argument('--slop', type=float, default=0.05,
                        help='bag: largest IR/visible stamp difference of a pair in seconds '
                             '(default 0.05)')
    parser.add_argument('--infrared-time-offset', type=_offset_or_auto, default=0.0,
                        metavar='SECONDS|auto',
                        help='bag: seconds added to every IR stamp before pairing, as the '
                             "node's sync.infrared_time_offset (the visible stamp of an "
                             'instant minus the IR stamp of the same instant: -0.06 for IR '
                             'stamped 60 ms later; in [-1, 1]; default 0); auto: found from '
                             "the recording's motion as tarfuse-time-offset finds it, and "
                             'written to --out as well')
    parser.add_argument('--split', default='all',
                        help='--pairs: split name or list file (default all)')
    parser.add_argument('--out', required=True, type=Path,
                        help='output node parameters file (PRIOR.yaml)')
    parser.add_argument('--weights', default=None,
                        help='checkpoint (.safetensors, default: the shipped model) or an .onnx '
                             'file from tarfuse-export (runs with onnxruntime)')
    parser.add_argument('--pairs-count', type=int, default=20,
                        help='pairs spread over the recording (default 20)')
    parser.add_argument('--iterations', type=int, default=2,
                        help='model runs per pair; each after the first uses the prior fitted '
                             'so far (default 2)')
    parser.add_argument('--threshold-px', type=float, default=3.0,
                        help='inlier threshold of the robust fit, visible pixels (default 3)')
    parser.add_argument('--min-inliers', type=float, default=0.5,
                        help='write the prior only if it explains at least this share of the '
                             'points within --threshold-px, in [0, 1] (default 0.5)')
    parser.add_argument('--min-alignment-gain', type=float, default=MIN_ALIGNMENT_GAIN,
                        help='write the prior only if the IR warped by it lines up with the '
                             'visible images (edge alignment, mean over the pairs) by at least '
                             'this much better than shifted by an eighth of the frame; about 0 '
                             'for cameras that do not see one scene; in [-2, 1] (default '
                             f'{MIN_ALIGNMENT_GAIN:g}; -2: off)')
    parser.add_argument('--max-side', type=int, default=None,
                        help="run the model on pairs downscaled so that each image's longer "
                             'side is at most this (px); the prior is scaled back to the '
                             'recorded sizes (default: native size)')
    parser.add_argument('--initial-prior', type=Path, default=None,
                        help='start from this prior file (e.g. a previous calibration)')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N (default cpu)')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for torch and OpenCV (default: their own defaults)')
    return parser


def _engine_factory(weights, device):
    """Return ``make_engine(prior)`` for :func:`~tarfuse_ros.core.calibration.calibrate`."""
    from tarfuse_ros.core.backends import backend_for_weights, create_engine, model_error
    from tarfuse_ros.core.runtime import DeviceUnavailableError
    backend = backend_for_weights(weights)
    extra = {'cuda_graph': 'off'} if backend == 'torch' else {}

    engines = {}

    def make_engine(prior):
        if prior is None and None in engines:
            return engines[None]
        try:
            return create_engine(backend, weights=weights, device=device,
                                 registration_prior=prior, **extra)
        except model_error(backend) as exc:
            raise UsageError(f'cannot load the weights: {exc}') from exc
        except DeviceUnavailableError as exc:
            raise UsageError(f'{exc}; use --device cpu') from exc
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f'cannot start the model on device {device!r}: {exc}') from exc

    # Fail on bad weights or device before reading the recording; reused for a first run
    # without a prior.
    engines[None] = make_engine(None)
    return make_engine


def _check_args(args):
    if args.pairs_count < 1:
        raise UsageError(f'--pairs-count must be >= 1, got {args.pairs_count}')
    if args.iterations < 1:
        raise UsageError(f'--iterations must be >= 1, got {args.iterations}')
    if not 0 < args.threshold_px < float('inf'):
        raise UsageError(f'--threshold-px must be a finite number > 0, got {args.threshold_px}')
    if not 0 <= args.min_inliers <= 1:
        raise UsageError(f'--min-inliers must be in [0, 1], got {args.min_inliers}')
    if not -2 <= args.min_alignment_gain <= 1:
        raise UsageError(f'--min-alignment-gain must be in [-2, 1], got '
                         f'{args.min_alignment_gain}')
    if not 0 < args.slop < float('inf'):
        raise UsageError(f'--slop must be a finite number > 0 s, got {args.slop}')
    if args.infrared_time_offset != 'auto' and not -1.0 <= args.infrared_time_offset <= 1.0:
        raise UsageError(f'--infrared-time-offset must be in [-1, 1] s (as the node parameter '
                         f'sync.infrared_time_offset), got {args.infrared_time_offset}')
    if args.threads is not None and args.threads < 1:
        raise UsageError(f'--threads must be >= 1, got {args.threads}')
    # Options of the other source would be left unused without a word.
    parser = build_parser()
    unused = (('--infrared-topic', '--visible-topic', '--slop', '--infrared-time-offset')
              if args.pairs is not None else ('--split',))
    given = [option for option in unused
             if getattr(args, option[2:].replace('-', '_')) !=
             parser.get_default(option[2:].replace('-', '_'))]
    if given:
        uses = ('--bag only (a --pairs folder pairs its images by file name)'
                if args.pairs is not None else '--pairs only')
        raise UsageError(f'{", ".join(given)} appl{"ies" if len(given) == 1 else "y"} to '
                         f'{uses}')
    if args.max_side is not None and args.max_side < 64:
        raise UsageError(f'--max-side must be >= 64 px, got {args.max_side}')
    if args.pairs is not None and not args.pairs.is_dir():
        raise UsageError(f'--pairs {str(args.pairs)!r} is not a folder')
    from tarfuse_ros.tools.bagio import bag_folder_problem
    # A folder's bag is named when it is read, after the outputs are checked.
    problem = None if args.pairs is not None or args.bag.is_dir() else \
        bag_folder_problem(args.bag)
    if problem is not None:
        raise UsageError(f'--bag: {problem}')
    if not args.out.parent.is_dir():
        raise UsageError(f'the folder of --out {str(args.out)!r} does not exist')
    if args.out.is_dir():
        raise UsageError(f'--out {str(args.out)!r} is a folder; give the file to write (e.g. '
                         f'{str(args.out / "rig_prior.yaml")!r})')
    problem = output_problem(args.out)
    if problem:  # checked now: it would fail only when writing, after the whole calibration
        raise UsageError(f'--out {str(args.out)!r} cannot be written ({problem}); give a path '
                         f'in a folder you can write to')
    others = other_node_parameters(args.out, PARAMETER_NAMES + ('sync.infrared_time_offset',))
    if others:  # config/tarfuse.yaml given as --out: its other parameters would be lost
        raise UsageError(f'--out {str(args.out)!r} holds other node parameters '
                         f'({_listed(others)}) that writing the prior would replace; give '
                         f'another file and pass both to the node (params_file:= and '
                         f'prior_file:=), or paste the prior into it')


def _listed(names, shown=4):
    """Return up to ``shown`` names joined, and how many more."""
    more = f' and {len(names) - shown} more' if len(names) > shown else ''
    return ', '.join(names[:shown]) + more


def _survey(pairs):
    """Return ``[(name, ir_wh, visible_wh, constant)]`` of the pairs, reading each once.

    Sizes as ``(width, height)``; ``constant`` names the images of one value everywhere
    (``'IR'``, ``'visible'``).
    """
    return [(name, (ir.shape[1], ir.shape[0]), (vi.shape[1], vi.shape[0]),
             [label for label, image in (('IR', ir), ('visible', vi))
              if np.ptp(np.asarray(image)) == 0])
            for name, ir, vi in pairs]


def _rig_sizes(survey):
    """Return the pairs' ``(IR, visible)`` sizes as ``(width, height)``; UsageError if several.

    Of :func:`_survey`'s rows; checked at the recorded sizes, before ``--max-side`` could make
    two sizes one.
    """
    sizes = {}
    for name, ir_wh, vi_wh, _ in survey:
        sizes.setdefault((ir_wh, vi_wh), name)
    if len(sizes) > 1:
        listed = '; '.join(f'{name!r}: IR {ir[0]}x{ir[1]}, visible {vi[0]}x{vi[1]}'
                           for (ir, vi), name in sizes.items())
        raise UsageError(f'the pairs hold several image sizes ({listed}); calibrate one rig '
                         f'(one size per camera) at a time')
    return next(iter(sizes))


def _constant_images(survey):
    """Raise UsageError naming the pairs that hold a constant image (nothing to register).

    Of :func:`_survey`'s rows. A lens cap, a closed shutter or a dead camera: the flow there
    follows the frame's border only, and a prior fitted to it is nonsense.
    """
    constant = [f'{name!r} ({label})' for name, _, _, labels in survey for label in labels]
    if constant:
        raise UsageError(f'constant image (one value everywhere: a lens cap, a closed shutter?) '
                         f'in pair(s) {", ".join(constant)}: nothing to register; calibrate on '
                         f'pairs of a scene with structure')


def _report_lines(result, iterations, run_wh=None):
    """Return the report; ``run_wh``: visible size the model ran at, if not the recorded one."""
    lines = [f'{"pair":<28} {"median px":>9} {"p90 px":>8} {"inliers":>8} {"points":>7}']
    for r in result.residuals:
        lines.append(f'{r.name:<28} {r.median_px:>9.2f} {r.p90_px:>8.2f} '
                     f'{r.inlier_fraction:>8.1%} {r.points:>7d}')
    prior = result.prior
    lines.append(f'fitted on {result.points} points of {len(result.residuals)} pairs '
                 f'({iterations} iteration(s)), inliers {result.inlier_fraction:.1%}')
    if run_wh is not None and tuple(run_wh) != tuple(prior.visible_size):
        lines.append(f'residuals and --threshold-px in pixels of the {run_wh[0]}x{run_wh[1]} '
                     f'visible images the model ran on (--max-side); times '
                     f'{prior.visible_size[0] / run_wh[0]:.3g} at '
                     f'{prior.visible_size[0]}x{prior.visible_size[1]}')
    lines.append(f'IR {prior.ir_size[0]}x{prior.ir_size[1]} -> visible '
                 f'{prior.visible_size[0]}x{prior.visible_size[1]}, homography (row-major):')
    lines += ['  ' + ' '.join(f'{v:+.6g}' for v in row) for row in prior.homography]
    return lines


def main(argv=None):
    """Entry point of ``tarfuse-calibrate``; return the exit status (0, 1 no fit, 2 usage)."""
    args = build_parser().parse_args(argv)
    from tarfuse_ros.core.calibration import calibrate, prior_alignment
    from tarfuse_ros.core.prior import load_prior_yaml, make_prior, write_prior_yaml
    from tarfuse_ros.core.sizes import PORTRAIT_ADVICE, portrait_beside_landscape
    try:
        _check_args(args)
        initial = None
        if args.initial_prior is not None:
            try:
                initial = load_prior_yaml(args.initial_prior)
            except ValueError as exc:
                raise UsageError(f'--initial-prior: {exc}') from exc
            if initial is None:  # else it would silently start from no prior
                raise UsageError(f'--initial-prior {str(args.initial_prior)!r} sets no '
                                 f'registration.prior; give a file from tarfuse-calibrate')
        if args.threads is not None:  # a program sets the process-wide thread counts
            import torch
            torch.set_num_threads(args.threads)
            cv2.setNumThreads(args.threads)
        make_engine = _engine_factory(args.weights, args.device)
        found_offset = None
        if args.pairs is not None:
            pairs = folder_pairs(args.pairs, args.pairs_count, args.split)
            source = f'--pairs {args.pairs} (split {args.split})'
        else:
            found_offset = (_found_time_offset(args) if args.infrared_time_offset == 'auto'
                            else None)
            pairs = bag_pairs(args.bag, args.pairs_count, args.infrared_topic,
                              args.visible_topic, args.slop,
                              args.infrared_time_offset if found_offset is None
                              else found_offset)
            source = f'--bag {args.bag} ({args.infrared_topic}, {args.visible_topic})'

        def progress(iteration, index, name):
            print(f'{PROG}: iteration {iteration + 1}/{args.iterations}, pair {index + 1}/'
                  f'{len(pairs)} ({name})', file=sys.stderr, flush=True)

        survey = _survey(pairs)
        ir_wh, vi_wh = _rig_sizes(survey)
        if initial is None and portrait_beside_landscape(ir_wh, vi_wh):
            # The network finds small misalignments: a quarter turn is beyond any flow it
            # predicts, and the pairs' fits only disagreed (exit 1, "featureless IR?").
            raise UsageError(f'the IR images are {ir_wh[0]}x{ir_wh[1]} and the visible '
                             f'{vi_wh[0]}x{vi_wh[1]}, one portrait, the other landscape: '
                             f'{PORTRAIT_ADVICE}, and no flow of the model turns it; rotate '
                             f'the images of that camera first (its driver, an image_rotate '
                             f'node), or give an --initial-prior that turns it')
        _constant_images(survey)
        if initial is not None:  # the recording's fault, found before the model runs
            try:
                initial.homography_for(ir_wh, vi_wh)
            except ValueError as exc:
                raise UsageError(f'--initial-prior {str(args.initial_prior)!r}: {exc} (or '
                                 f'leave --initial-prior out)') from exc
        if args.max_side is not None:
            pairs = downscale_pairs(pairs, args.max_side)
            run_ir_wh = shrunk_size(*ir_wh, args.max_side)
            run_wh = shrunk_size(*vi_wh, args.max_side)
            if initial is not None:
                initial = make_prior(initial.homography_for(run_ir_wh, run_wh), run_ir_wh,
                                     run_wh)
        result = calibrate(pairs, make_engine, iterations=args.iterations,
                           threshold_px=args.threshold_px, initial_prior=initial,
                           progress=progress)
        # At the sizes the model ran at, as the prior is before it is scaled back.
        alignment = np.mean([prior_alignment(ir, vi, result.prior.homography)
                             for _, ir, vi in pairs], axis=0)
        if args.max_side is not None:  # the prior at the recorded sizes
            result = replace(result, prior=make_prior(
                result.prior.homography_for(ir_wh, vi_wh), ir_wh, vi_wh))
    except UsageError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f'{PROG}: no prior fitted: {exc}', file=sys.stderr)
        return 1
    lines = _report_lines(result, args.iterations,
                          run_wh if args.max_side is not None else None)
    lines.append(f'edge alignment of the IR warped by the prior with the visible images '
                 f'{alignment[0]:.3f}, shifted by an eighth of the frame {alignment[1]:.3f} '
                 f'(mean over the pairs)')
    for line in lines:
        print(line)
    if result.inlier_fraction < args.min_inliers:
        low = [r.name for r in result.residuals if not r.inlier_fraction >= args.min_inliers]
        print(f'{PROG}: no prior written: the fit explains {result.inlier_fraction:.1%} of the '
              f'points within --threshold-px {args.threshold_px:g} (< --min-inliers '
              f'{args.min_inliers:g}): the pairs disagree (featureless or unrelated IR, pairs '
              f'of several rigs?); check the pairs of low inlier share ({", ".join(low)}) and '
              f'calibrate without them', file=sys.stderr)
        return 1
    gain = alignment[0] - alignment[1]
    if gain < args.min_alignment_gain:
        # Any smooth flow fits a homography: the flows of unrelated scenes pass the inliers.
        print(f'{PROG}: no prior written: the IR warped by the fitted prior lines up with the '
              f'visible images hardly better than shifted by an eighth of the frame (edge '
              f'alignment {alignment[0]:.3f} against {alignment[1]:.3f}, a gain of {gain:.3f} '
              f'< --min-alignment-gain {args.min_alignment_gain:g}): the two cameras do not '
              f'seem to see one scene (the topic of another camera, a covered lens, pairs of '
              f'another time?); check the pairs, and calibrate on a scene with structure that '
              f'both cameras see', file=sys.stderr)
        return 1
    # The share over all points hides a pair the prior does not explain: of two pairs that
    # disagree, the one the fit follows gives 50 % alone.
    low = [r.name for r in result.residuals if not r.inlier_fraction >= args.min_inliers]
    if low:
        print(f'{PROG}: warning: the prior explains less than --min-inliers '
              f'{args.min_inliers:g} of the points of {len(low)} of {len(result.residuals)} '
              f'pairs ({", ".join(low)}): they disagree with it (featureless or unrelated IR, '
              f'another rig?); check them, and calibrate without them or on more pairs',
              file=sys.stderr, flush=True)
    stamp = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    comments = [f'Registration prior written by {PROG} on {stamp}',
                f'from {source}, weights {args.weights or "(shipped model)"}.',
                'Pass it as it is: ros2 launch tarfuse_ros fuse.launch.py prior_file:=THIS.yaml',
                ''] + lines
    if found_offset is not None:
        comments += ['', f'sync.infrared_time_offset {found_offset:g} s: found from the '
                         f'recording (--infrared-time-offset auto)']
    write_prior_yaml(args.out, result.prior, comments, infrared_time_offset_s=found_offset)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
