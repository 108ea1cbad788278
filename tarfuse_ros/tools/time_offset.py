"""Estimate the IR camera's time offset from a recording: ``tarfuse-time-offset``.

``tarfuse-time-offset --bag DIR [--infrared-topic T] [--visible-topic T] [--max-offset S]
[--windows N] [--min-correlation R] [--out OFFSET.yaml] [--plot CURVE.png]``

Reads every image of the two topics of a rosbag2 recording (``sensor_msgs/Image`` or
``CompressedImage``; a topic missing from the bag is looked up as ``<topic>/compressed``) with
its header stamp, and finds the offset that lines up how much each camera's view changes over
time (:mod:`tarfuse_ros.core.time_offset`): the node's ``sync.infrared_time_offset``, the
visible stamp of an instant minus the IR stamp of the same instant (-0.06 for an IR camera
stamped 60 ms late). Record the rig moving in a way that varies: turning and stopping, or
people and cars crossing both views; a still scene or a steady pan cannot be placed in time.

Prints the estimate, the peak correlation of the two cameras' motion signals, the estimate of
each of ``--windows`` parts of the recording on its own (how much it moves; the verdict and the
warnings compare three parts whatever ``--windows`` is), and how to pass
it to the node; with ``--out``, writes a node parameters file (``/**: ros__parameters: sync:
infrared_time_offset``); with ``--plot``, the correlation curve as an image. Warns when the
parts' offsets move one way through the recording, the first and the last part's more than
0.05 s (the node's default ``sync.slop``) apart, naming both and their times: stamps that
drift, which no fixed offset pairs (:func:`~tarfuse_ros.core.time_offset.estimate_warnings`);
parts of fewer than 40 frame intervals of the slower camera (a recording shorter than about
14 s of a 9 Hz camera) are too short to tell that from chance, and the warning says so.

Exit status: 0 with an estimate, 1 when the recording gives none to trust (too little shared
motion, a curve flat around its peak, two peaks, a peak at the edge of ``--max-offset``: the
reason is printed, no ``--out`` file written; the ``--plot`` curve is, to see why), 2 for
usage errors (bad options, a missing bag or topic, too few usable frames, cameras whose stamps
are more than 1 s apart: clocks apart, a camera whose stamps jump back more than 1 s: a driver
restarted, an ``--out`` file holding other node parameters, such as
``tarfuse-calibrate``'s prior, that it would replace), 130 on Ctrl-C.
"""

import argparse
from datetime import datetime, timezone
import heapq
from pathlib import Path
import sys

from tarfuse_ros.core.files import other_node_parameters, output_problem
# OpenCV and NumPy load here, as the other tools load their libraries before main runs (a
# Ctrl-C meanwhile: tarfuse_ros.console).
from tarfuse_ros.core.time_offset import ChangeLog, estimate_problem, estimate_time_offset
from tarfuse_ros.core.time_offset import estimate_warnings, frame_for_motion, MAX_SIDE
from tarfuse_ros.core.time_offset import MIN_CORRELATION, MIN_INTERVALS, rounded_offset
from tarfuse_ros.core.time_offset import signal_from_changes, STEP_S

__all__ = ['JUDGED_WINDOWS', 'build_parser', 'main', 'read_motion_signals',
           'write_offset_yaml']

PROG = 'tarfuse-time-offset'
DEFAULT_IR_TOPIC = '/infrared/image_raw'
DEFAULT_VI_TOPIC = '/visible/image_raw'
# s: the least --max-offset; the offsets are tried 2 ms apart, and a peak within 1.5 steps of
# the edge is refused, so a smaller search could find nothing
MIN_MAX_OFFSET_S = 0.01
_REORDER = 32  # images per camera held to put messages recorded out of stamp order back
# The parts of the recording whose estimates the verdict and the warnings compare, whatever
# --windows shows (as calibrate's auto and the node's check): with none or one, a chance peak
# was accepted; with twenty parts of 0.6 s, their chance peaks refused a good estimate.
JUDGED_WINDOWS = 3


class UsageError(ValueError):
    """The command cannot run at all (exit status 2); the message says why."""


def read_motion_signals(bag_dir, ir_topic=DEFAULT_IR_TOPIC, vi_topic=DEFAULT_VI_TOPIC,
                        warn=None):
    """Return ``{'ir': (MotionSignal, frames, stamps, span_s), 'vi': (...)}`` of a rosbag2 bag.

    Every image of each topic is decoded as the node decodes it and shrunk for the motion
    signal (:func:`~tarfuse_ros.core.time_offset.frame_for_motion`); ``frames`` is how many
    were read, ``stamps`` how many distinct stamps they have (a driver that sends each frame
    twice: half as many), ``span_s`` the time from the first to the last of them (s). Images
    with a zero stamp (the node refuses them), that cannot be decoded, or recorded more than
    32 images after their place in stamp order are left out, and ``warn(text)`` is called once
    per topic naming how many and the first cause. The
    changes between consecutive images are kept, not the images (and 32 images per camera in
    flight): memory does not grow with the recording.

    Raises:
        UsageError: an unreadable bag, a missing topic, or a topic with too few usable images
            (fewer than :data:`~tarfuse_ros.core.time_offset.MIN_INTERVALS` frame intervals
            of motion signal, as the node's check asks).

    """
    from tarfuse_ros.ros.conversions import compressed_depth_msg_to_array
    from tarfuse_ros.ros.conversions import image_msg_to_motion_array
    from tarfuse_ros.tools.bagio import is_compressed_depth_topic
    from tarfuse_ros.tools.bagio import (bag_read_problem, camera_topics, clocks_apart_problem,
                                         header_stamp_ns, read_messages, stamp_jump_problem)

    try:
        ir_bag, vi_bag = camera_topics(bag_dir, ir_topic, vi_topic)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    topics = {'ir': ir_bag, 'vi': vi_bag}
    camera_of = {topic: camera for camera, topic in topics.items()}
    # Per camera: the changes between consecutive images (a few numbers per image, not the
    # images), fed in stamp order through a small buffer that puts a driver's reordered
    # messages back in order.
    logs = {'ir': ChangeLog(), 'vi': ChangeLog()}
    pending = {'ir': [], 'vi': []}  # heaps of (stamp_ns, arrival, frame)
    stamps = {'ir': set(), 'vi': set()}
    lags = {ir_bag: [], vi_bag: []}  # header stamp - time recorded (ns): clocks apart?
    recorded_stamps = {ir_bag: [], vi_bag: []}  # in the order recorded: a clock reset?
    counts = {'ir': 0, 'vi': 0}
    skipped = {'ir': [], 'vi': []}

    def feed(camera, keep):
        while len(pending[camera]) > keep:
            stamp_ns, _, frame = heapq.heappop(pending[camera])
            newest = logs[camera].newest
            if newest is not None and stamp_ns / 1e9 < newest[0]:
                skipped[camera].append(f'stamped {newest[0] - stamp_ns / 1e9:.3f} s before an '
                                       f'image recorded earlier (more than {_REORDER} images '
                                       f'late)')
                counts[camera] -= 1
                stamps[camera].discard(stamp_ns)
                continue
            logs[camera].add(stamp_ns / 1e9, frame)

    try:
        for arrival, (topic, _, recorded, raw, msg) in enumerate(
                read_messages(bag_dir, topics=list(camera_of))):
            camera = camera_of[topic]
            stamp = header_stamp_ns(raw)
            if stamp == 0:
                skipped[camera].append('a zero header stamp (the node refuses it)')
                continue
            lags[topic].append(stamp - recorded)
            recorded_stamps[topic].append(stamp)
            try:
                if is_compressed_depth_topic(topic):
                    frame = frame_for_motion(compressed_depth_msg_to_array(msg)[0])
                else:
                    frame = frame_for_motion(image_msg_to_motion_array(msg, MAX_SIDE))
            except ValueError as exc:
                skipped[camera].append(str(exc))
                continue
            counts[camera] += 1
            stamps[camera].add(stamp)
            heapq.heappush(pending[camera], (stamp, arrival, frame))
            feed(camera, _REORDER)
    except Exception as exc:  # noqa: BLE001 - rosbags raises several error types
        raise UsageError(bag_read_problem(bag_dir, exc)) from exc
    problem = clocks_apart_problem(lags, ir_bag, vi_bag) if all(lags.values()) else None
    for topic in (ir_bag, vi_bag):  # else two timelines merged by stamp, a wrong offset
        problem = problem or stamp_jump_problem(recorded_stamps[topic], topic)
    if problem is not None:  # else a peak by chance, or "too little motion"
        raise UsageError(problem)
    out = {}
    for camera, topic in topics.items():
        feed(camera, 0)
        total = len(skipped[camera]) + counts[camera]
        if skipped[camera] and warn is not None:
            warn(f'{topic}: {len(skipped[camera])} of {total} images left out (first: '
                 f'{skipped[camera][0]})')
        try:
            out[camera] = (signal_from_changes(logs[camera].changes), counts[camera],
                           len(stamps[camera]),
                           (max(stamps[camera]) - min(stamps[camera])) / 1e9)
        except ValueError as exc:
            exc = f'{counts[camera]} usable images, {len(stamps[camera])} distinct stamps: {exc}'
            if skipped[camera]:  # recorded, but the images could not be used
                raise UsageError(f'{topic}: {exc}: {len(skipped[camera])} of its {total} '
                                 f'images were left out ({skipped[camera][0]}); record '
                                 f'images the node takes') from None
            raise UsageError(f'{topic}: {exc}; record a few seconds of both cameras') from None
        intervals = len(out[camera][0].times_s)
        if intervals < MIN_INTERVALS:  # as the node's check: a chance peak looks sure
            raise UsageError(f'{topic}: {counts[camera]} usable images give {intervals} frame '
                             f'intervals, fewer than {MIN_INTERVALS}: too few to tell motion '
                             f'from noise; record 20 s or more of both cameras')
    return out


def write_offset_yaml(path, offset_s, comments=()):
    """Write a node parameters file setting ``sync.infrared_time_offset`` (s)."""
    import yaml
    text = yaml.safe_dump({'/**': {'ros__parameters': {
        'sync': {'infrared_time_offset': float(offset_s)}}}}, sort_keys=False)
    from tarfuse_ros.core.files import write_text_atomic
    lines = [f'# {line}'.rstrip() for line in comments]
    write_text_atomic(Path(path), '\n'.join(lines + [text]))  # a Ctrl-C leaves no half file


def _signed(value, digits=3):
    """Return ``value`` with its sign and ``digits`` decimals; one that rounds to 0 unsigned."""
    text = f'{value:+.{digits}f}'
    return text[1:] if float(text) == 0 else text


def _plot(path, estimate):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    figure, axes = pyplot.subplots(figsize=(7, 3.2), dpi=100)
    axes.plot(1000 * estimate.offsets_s, estimate.correlations, lw=1.2)
    if estimate.offset_s is not None:
        axes.axvline(1000 * estimate.offset_s, color='C3', lw=1,
                     label=f'estimate {_signed(1000 * estimate.offset_s, 0)} ms')
        axes.legend(loc='lower right')
    axes.set_xlabel('IR time offset (ms): sync.infrared_time_offset')
    axes.set_ylabel('motion correlation')
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def build_parser():
    """Return the ``tarfuse-time-offset`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Estimate the IR camera's time offset (the node's "
                    'sync.infrared_time_offset) from a recording of a moving scene: the '
                    "offset that lines up when each camera's view changes.")
    parser.add_argument('--bag', required=True, type=Path,
                        help='rosbag2 directory (MCAP or sqlite3) with both cameras')
    parser.add_argument('--infrared-topic', default=DEFAULT_IR_TOPIC,
                        help=f'IR topic in the bag (default {DEFAULT_IR_TOPIC}; '
                             '<topic>/compressed is used when only that is recorded)')
    parser.add_argument('--visible-topic', default=DEFAULT_VI_TOPIC,
                        help=f'visible topic in the bag (default {DEFAULT_VI_TOPIC})')
    parser.add_argument('--max-offset', type=float, default=0.5, metavar='SECONDS',
                        help='largest offset tried either way, in [0.01, 1] s (the node '
                             'takes up to 1 s; default 0.5)')
    parser.add_argument('--windows', type=int, default=JUDGED_WINDOWS,
                        help='parts of the recording also estimated on their own and printed, '
                             'to see how much the estimate moves (0: none; default '
                             f'{JUDGED_WINDOWS}); whether the estimate is trusted and the '
                             f'warnings of drifting stamps compare {JUDGED_WINDOWS} parts, '
                             'whatever this is')
    parser.add_argument('--min-correlation', type=float, default=MIN_CORRELATION,
                        help='least peak correlation of the motion signals to accept, in '
                             f'[0, 1] (default {MIN_CORRELATION:g})')
    parser.add_argument('--out', type=Path, default=None,
                        help='write a node parameters file setting sync.infrared_time_offset')
    parser.add_argument('--plot', type=Path, default=None,
                        help='write the correlation curve as an image (.png)')
    return parser


def _check_args(args):
    if not MIN_MAX_OFFSET_S <= args.max_offset <= 1:  # NaN too
        raise UsageError(f'--max-offset must be in [{MIN_MAX_OFFSET_S:g}, 1] s (the node '
                         f'parameter sync.infrared_time_offset takes up to 1 s; the offsets '
                         f'are tried {1000 * STEP_S:g} ms apart), got {args.max_offset}')
    if not 0 <= args.windows <= 20:
        raise UsageError(f'--windows must be in [0, 20], got {args.windows}')
    if not 0 <= args.min_correlation <= 1:
        raise UsageError(f'--min-correlation must be in [0, 1], got {args.min_correlation}')
    from tarfuse_ros.tools.bagio import bag_folder_problem
    problem = None if args.bag.is_dir() else bag_folder_problem(args.bag)  # a folder: when read
    if problem is not None:
        raise UsageError(f'--bag: {problem}')
    for option, path in (('--out', args.out), ('--plot', args.plot)):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f'{option} {str(path)!r} is a folder; give the file to write')
        if not path.parent.is_dir():
            raise UsageError(f'the folder of {option} {str(path)!r} does not exist')
        problem = output_problem(path)
        if problem:  # checked now, not after reading the whole recording
            raise UsageError(f'{option} {str(path)!r} cannot be written ({problem})')
    others = [] if args.out is None else other_node_parameters(args.out,
                                                               ['sync.infrared_time_offset'])
    if others:  # the prior file of tarfuse-calibrate, to add the offset to: lost
        shown = ', '.join(others[:4]) + (f' and {len(others) - 4} more' if len(others) > 4
                                         else '')
        raise UsageError(f'--out {str(args.out)!r} holds other node parameters ({shown}) that '
                         f'writing the offset would replace; give another file, and pass the '
                         f'offset with infrared_time_offset:= (or paste it into that file)')
    if (args.out is not None and args.plot is not None
            and args.out.resolve() == args.plot.resolve()):
        raise UsageError(f'--out and --plot name one file ({str(args.out)!r}); give each its '
                         f'own')
    if args.plot is not None and args.plot.suffix.lower() not in ('.png', '.svg', '.pdf'):
        raise UsageError(f'--plot {str(args.plot)!r}: give a .png, .svg or .pdf file')


def _images(signal, frames, stamps, span_s):
    """Return how many images a camera gave at what rate (Hz, of its distinct stamps)."""
    # Not from the signal's times: they are the intervals' midpoints, an interval short.
    rate = f'{(stamps - 1) / span_s:.1f} Hz' if span_s > 0 else 'rate unknown'
    repeated = '' if stamps == frames else f', {frames - stamps} with a stamp repeated'
    return f'{frames} images ({rate}{repeated})'


def main(argv=None):
    """Entry point of ``tarfuse-time-offset``; return the exit status (0, 1 none, 2 usage).

    Ctrl-C: one line, no traceback, nothing written, exit status 130.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted; no offset estimated'
              f'{"" if args.out is None else f", {args.out} not written"}', file=sys.stderr)
        return 130


def _run(args):

    def warn(text):
        print(f'{PROG}: warning: {text}', file=sys.stderr, flush=True)

    try:
        _check_args(args)
        signals = read_motion_signals(args.bag, args.infrared_topic, args.visible_topic, warn)
    except UsageError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    ir, vi = signals['ir'][0], signals['vi'][0]
    print(f'IR: {_images(*signals["ir"])}, visible: {_images(*signals["vi"])}, '
          f'{signals["vi"][3]:.1f} s of visible stamps')
    estimate = estimate_time_offset(vi, ir, max_offset_s=args.max_offset,
                                    windows=JUDGED_WINDOWS)
    shown = estimate if args.windows == JUDGED_WINDOWS else estimate_time_offset(
        vi, ir, max_offset_s=args.max_offset, windows=args.windows)
    if args.plot is not None:
        _plot(args.plot, estimate)
        print(f'wrote {args.plot}')
    problem = estimate_problem(estimate, args.max_offset, args.min_correlation)
    if estimate.offset_s is not None:
        value = rounded_offset(estimate.offset_s)
        timing = ('IR and visible stamped alike, to the millisecond' if value == 0 else
                  f'IR stamped {abs(1000 * value):.0f} ms '
                  f'{"later" if value < 0 else "earlier"} than the visible camera')
        print(f'best offset {_signed(value)} s ({timing}), correlation '
              f'{estimate.correlation:.2f}, sharpness {estimate.sharpness:.2f}')
    if shown.window_offsets_s:
        parts = ', '.join('none' if offset is None else f'{_signed(offset)} s (r {value:.2f})'
                          for offset, value in zip(shown.window_offsets_s,
                                                   shown.window_correlations))
        print(f'the {len(shown.window_offsets_s)} parts of the recording alone: {parts}')
    if problem is not None:
        print(f'{PROG}: no offset to trust: {problem}', file=sys.stderr)
        return 1
    for note in estimate_warnings(estimate, args.min_correlation):
        warn(note)
    value = rounded_offset(estimate.offset_s)
    print(f'set it: ros2 launch tarfuse_ros fuse.launch.py infrared_time_offset:={value:g}\n'
          f'    or: the node parameter sync.infrared_time_offset: {value:g}')
    if args.out is not None:
        stamp = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        write_offset_yaml(args.out, value, [
            f'IR time offset written by {PROG} on {stamp}',
            f'from --bag {args.bag} ({args.infrared_topic}, {args.visible_topic}): '
            f'correlation {estimate.correlation:.2f}.',
            'Pass it with --ros-args --params-file THIS.yaml, or copy the value into the '
            'node parameters file.', ''])
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
