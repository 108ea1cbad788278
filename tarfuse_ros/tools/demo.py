"""tarfuse-demo: the README's main job, end to end on the shipped sample pairs.

1. builds a rosbag2 (MCAP) from ``samples/`` (real RoadScene pairs; the IR is the synthetically
   deformed, i.e. unregistered, version) with ``tarfuse-make-bag``;
2. starts the fusion node as its own process (``python -m tarfuse_ros.ros.fuse_node --ros-args
   --params-file config/tarfuse.yaml -p weights:=...``) on a private ROS domain (never the
   shell's ``ROS_DOMAIN_ID``, nor one where DDS participants run on this machine: other nodes
   there would be fed the sample images), discovered on this machine only
   (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless the environment sets a range);
3. plays the bag into it over DDS with ``tarfuse-play``, recording ``fused/image_raw``,
   ``detections``, ``registered/image_raw`` and ``/diagnostics`` into another bag;
4. stops the node cleanly (SIGINT, or SIGTERM where the demo was started with SIGINT ignored
   as a shell's background job, which its node then ignores too; before its
   ``diagnostics.input_timeout`` runs out after the bag's end: no warning of stopped cameras)
   and writes ``summary.json``, ``summary.md`` and a few fused PNGs (decoded from the recorded
   bag) under the output folder, and prints the summary.
"""

import argparse
import json
import math
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np

from tarfuse_ros.console import HelpFormatter, StopRequest
from tarfuse_ros.core import paths
from tarfuse_ros.core.files import output_problem
from tarfuse_ros.core.layout import read_text_lines
from tarfuse_ros.tools.bagio import image_to_array, read_messages
from tarfuse_ros.tools.make_bag import make_bag
from tarfuse_ros.tools.play_bag import BagPlayer, PlayError

__all__ = ['build_parser', 'main', 'run_demo', 'summarize']

RECORD_TOPICS = ('fused/image_raw', 'detections', 'registered/image_raw', '/diagnostics')
VI_TOPIC, IR_TOPIC = '/visible/image_raw', '/infrared/image_raw'
# Written into --out first: a folder holding it is one the demo wrote, whose outputs
# (input_bag/, recorded_bag/, node.log, summary.json, summary.md, fused_*.png) a later run
# replaces. A non-empty folder without it is refused: those files are someone else's.
MARKER = '.tarfuse-demo'
NODE_NAME = '/tarfuse'  # the fusion node's default name, as the demo starts it


class DemoError(RuntimeError):
    """The demo ran and failed (no quiet ROS domain, the node failed, no output).

    Refused options and inputs (missing weights or samples, a bad ``--out``) are
    ``ValueError``s: usage errors, said before any work.
    """


def default_samples_dir():
    """Return the shipped sample pairs (share/tarfuse_ros/samples or the source tree's)."""
    for base in (paths.share_dir(), Path(__file__).resolve().parents[2]):
        if (base / 'samples' / 'vi').is_dir():
            return base / 'samples'
    return paths.share_dir() / 'samples'


def _params_file_values(path):
    """
    Return ``{dotted name: value}``: the parameters a node parameters file gives the node.

    Read as rcl reads the file for the demo's node: the ``ros__parameters`` of every entry whose
    node name matches it (``/**``, ``/tarfuse``, ``/**/tarfuse``; a namespace may nest), later
    ones winning; nested keys (``visible: {transport: ...}``) come back dotted. A file that
    cannot be read gives {} (the node then says why).
    """
    from tarfuse_ros.ros.params import params_file_sections, section_applies

    values = {}

    def flatten(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                flatten(value, f'{prefix}{key}.')
            else:
                values[f'{prefix}{key}'] = value

    for section, parameters in params_file_sections(path) or ():
        if isinstance(parameters, dict) and section_applies(section, NODE_NAME):
            flatten(parameters, '')
    return values


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def _round(value, digits=1):
    return None if value is None else round(float(value), digits)


def _log_tail(path, lines=15):
    try:
        return '\n'.join(Path(path).read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


def _diagnostic_values(msg, node_name=NODE_NAME):
    """Return ``{key: value}`` of the fusion status in a rosbags DiagnosticArray (or {}).

    Only the status of the node the demo started (``'<name>: fusion'``): another fusion node
    that shares the domain publishes on ``/diagnostics`` too.
    """
    wanted = f'{node_name.rsplit("/", 1)[-1]}: fusion'
    for status in msg.status:
        if status.name == wanted:
            return {kv.key: kv.value for kv in status.values}
    return {}


def _draw(image, detections):
    """Return a BGR copy of ``image`` with the Detection2D boxes and labels drawn."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    for det in detections:
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        x1, y1 = int(round(cx - det.bbox.size_x / 2)), int(round(cy - det.bbox.size_y / 2))
        x2, y2 = int(round(cx + det.bbox.size_x / 2)), int(round(cy + det.bbox.size_y / 2))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), 1)
        if det.results:
            best = max(det.results, key=lambda r: r.hypothesis.score)
            label = f'{best.hypothesis.class_id} {best.hypothesis.score:.2f}'
            cv2.putText(canvas, label, (x1, max(y1 - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (0, 255, 0), 1, cv2.LINE_AA)
    return canvas


def _stamp(msg):
    """Return the header stamp of a rosbags message in nanoseconds."""
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _count_labels(samples, stems):
    # Read as the other tools read a data set's text files: one class name a line (names
    # may hold spaces), a byte-order mark dropped.
    names = []
    classes_file = Path(samples) / 'labels' / 'classes.txt'
    if classes_file.is_file():
        names = [line.strip() for line in read_text_lines(classes_file) if line.strip()]
    counts = {}
    for stem in stems:
        label_file = Path(samples) / 'labels' / f'{stem}.txt'
        if not label_file.is_file():
            continue
        for line in read_text_lines(label_file):
            if line.strip():
                index = int(line.split()[0])
                name = names[index] if index < len(names) else str(index)
                counts[name] = counts.get(name, 0) + 1
    return counts


def summarize(recorded_bag, stats, stems, out_dir, png_count=4, samples=None, extra=None):
    """
    Read the recorded bag and the player's statistics; write PNGs and return the summary dict.

    ``stems`` are the pair names in playback order (the k-th visible message is pair k).
    Latency is end to end: receipt of an output minus the publish time of the visible image
    with the same stamp (both on this machine's clock). The ground-truth boxes are counted
    over the pairs whose detections were received, as the detections are.
    """
    out_dir = Path(out_dir)
    vi_stamps = [stamp for topic, stamp, _wall in stats.published
                 if topic in (VI_TOPIC, f'{VI_TOPIC}/compressed')]
    stem_of = {stamp: stems[k % len(stems)] for k, stamp in enumerate(vi_stamps)} if stems \
        else {}
    fused, detections, registered, diagnostics, windows = [], [], 0, {}, []
    per_class, scores = {}, []
    if recorded_bag is not None and Path(recorded_bag).exists():
        for topic, _msgtype, _bag_ns, _raw, msg in read_messages(recorded_bag):
            if msg is None:
                continue
            if topic.endswith('fused/image_raw'):
                fused.append(msg)
            elif topic.endswith('registered/image_raw'):
                registered += 1
            elif topic.endswith('detections'):
                detections.append(msg)
                for det in msg.detections:
                    if det.results:
                        best = max(det.results, key=lambda r: r.hypothesis.score)
                        cls = best.hypothesis.class_id
                        per_class[cls] = per_class.get(cls, 0) + 1
                        scores.append(best.hypothesis.score)
            elif topic.endswith('diagnostics'):
                values = _diagnostic_values(msg)
                if values:
                    diagnostics = values
                    windows.append(values)
    boxes_of = {_stamp(m): m.detections for m in detections}
    pngs = []
    if fused and png_count > 0:
        picks = sorted(set(np.linspace(0, len(fused) - 1, min(png_count, len(fused)))
                           .round().astype(int).tolist()))
        for index in picks:
            msg = fused[index]
            image, _kind = image_to_array(msg)  # colour comes back in BGR order
            stamp = _stamp(msg)
            name = f'fused_{index:03d}_{stem_of.get(stamp, "unknown")}'
            cv2.imwrite(str(out_dir / f'{name}.png'), image)
            pngs.append(f'{name}.png')
            boxes = boxes_of.get(stamp)
            if boxes:
                cv2.imwrite(str(out_dir / f'{name}_detections.png'), _draw(image, boxes))
                pngs.append(f'{name}_detections.png')
    latencies = stats.latencies_ms('/fused/image_raw')
    pairs_in = len(vi_stamps)
    answered = {_stamp(m) for m in fused}

    def number(key, values=None):
        try:
            value = float((diagnostics if values is None else values)[key])
        except (KeyError, ValueError):
            return None
        return None if np.isnan(value) else value

    def window_median(key):
        # The node's figures are per diagnostics window (reset each period): take the median
        # over the windows that saw outputs.
        values = [v for v in (number(key, w) for w in windows) if v is not None]
        return _round(float(np.median(values))) if values else None

    dropped = number('pairs_dropped')
    # The pairs whose detections arrived: a dropped pair's ground truth has nothing to meet.
    detected = [stem_of[_stamp(m)] for m in detections if _stamp(m) in stem_of]
    summary = {
        'pairs_in': pairs_in,
        'pairs_out': len(fused),
        'pairs_unanswered': len(set(vi_stamps) - answered),
        'detection_arrays': len(detections),
        'registered_images': registered,
        'dropped_by_node': None if dropped is None else int(dropped),
        'rejected_by_node': None if number('pairs_rejected') is None
        else int(number('pairs_rejected')),
        'pairs_synchronised_by_node': None if number('pairs_received') is None
        else int(number('pairs_received')),
        'latency_ms': {
            'definition': 'output receipt - publish time of the visible input (same stamp)',
            'count': len(latencies),
            'median': _round(_percentile(latencies, 50)),
            'p90': _round(_percentile(latencies, 90)),
            'max': _round(max(latencies) if latencies else None),
        },
        'node_inference_ms_median': window_median('inference_ms_median'),
        'node_latency_ms_median': window_median('latency_ms_median'),
        'detections_per_class': dict(sorted(per_class.items())),
        'detections_total': sum(per_class.values()),
        'mean_score': _round(float(np.mean(scores)) if scores else None, 3),
        'ground_truth_boxes_per_class': _count_labels(samples, detected) if samples else {},
        'fused_pngs': pngs,
        'node_diagnostics': diagnostics,
    }
    summary.update(extra or {})
    return summary


def summary_markdown(summary):
    """Return the summary as a short Markdown report."""
    lat = summary['latency_ms']
    classes = summary['detections_per_class']
    truth = summary.get('ground_truth_boxes_per_class') or {}
    played = _pairs_played(summary.get('bag_pairs', summary['pairs_in']), summary.get('loops', 1),
                           ' (', ')')
    lines = [
        '# tarfuse_ros demo',
        '',
        f"- weights: `{summary.get('weights', '')}` on `{summary.get('device', '')}`",
        f"- input: {played} from `{summary.get('samples', '')}` at "
        f"{summary.get('rate_hz', '')} Hz, "
        f"size {summary.get('size', 'as stored')}, IR `{summary.get('ir_dir', '')}`",
        '',
        '| figure | value |',
        '|---|---|',
        f"| pairs in (visible images published) | {summary['pairs_in']} |",
        f"| pairs out (fused images received) | {summary['pairs_out']} |",
        f"| detection arrays received | {summary['detection_arrays']} |",
        '| pairs dropped by the node (stale, replaced by newer) | '
        f"{_dash(summary['dropped_by_node'])} |",
        f"| pairs rejected by the node (bad input) | {_dash(summary['rejected_by_node'])} |",
        f"| latency median / p90 / max (ms, {lat['count']} outputs) | {_dash(lat['median'])} / "
        f"{_dash(lat['p90'])} / {_dash(lat['max'])} |",
        '| node: inference / latency (now - stamp), median of '
        f"{summary.get('node_diagnostics_period_s', 1.0):g} s windows (ms) | "
        f"{_dash(summary['node_inference_ms_median'])} / "
        f"{_dash(summary['node_latency_ms_median'])} |",
        f"| clean node shutdown | {summary.get('node_clean_shutdown', '')} |",
        '',
        'Detections per class (ground-truth boxes in the pairs with detections in brackets):',
        '',
    ]
    for name in sorted(set(classes) | set(truth)):
        lines.append(f'- {name}: {classes.get(name, 0)} ({truth.get(name, 0)})')
    if not classes and not truth:
        lines.append('- none')
    lines += ['', f"Latency: {lat['definition']}.", '',
              'Fused images: ' + (', '.join(f'`{p}`' for p in summary['fused_pngs']) or 'none'),
              '']
    return '\n'.join(lines)


def _pairs_played(pairs, loops, lead, end=''):
    """Return ``'10 pairs'``, or over loops ``'10 pairs<lead>the 5 sample pairs 2 times<end>'``.

    '6 pairs' for --max-pairs 3 said nothing of the (default) two loops.
    """
    if loops <= 1:
        return f'{pairs} pairs'
    return f'{pairs} pairs{lead}the {pairs // loops} sample pairs {loops} times{end}'


def _dash(value):
    return '-' if value is None else value


def _domain_in_use(domain_id, participants=10):
    """Return whether a DDS participant of ``domain_id`` runs on this machine.

    Each participant binds its unicast discovery port, 7400 + 250 x domain + 10 + 2 x its
    index on the machine (the RTPS port mapping, Fast DDS and Cyclone DDS alike); a port of the
    first ``participants`` indices that cannot be bound is taken by one. Immediate, where
    listening to the graph takes up to the others' announcement period (3 s) to see them.
    """
    import socket
    base = 7400 + 250 * int(domain_id) + 10
    for index in range(participants):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(('', base + 2 * index))
            except OSError:
                return True
    return False


def _quiet_domain(exclude, candidates=None, tries=20):
    """Return a ROS domain id (1-100, not ``exclude``) in which nothing runs on this machine.

    The shell's domain is not the only one in use: a robot's nodes on this machine may run in
    another, and a fusion node there would be fed the sample images. ``tries`` of 1-100 in
    random order (or ``candidates``) are looked at with :func:`_domain_in_use`.

    Raises:
        DemoError: every candidate is in use.

    """
    if candidates is None:
        pool = [d for d in range(1, 101) if str(d) != str(exclude).strip()]
        candidates = random.SystemRandom().sample(pool, tries)
    for domain_id in candidates:
        if not _domain_in_use(domain_id):
            return domain_id
    raise DemoError(f'no quiet ROS domain found: DDS participants run on this machine in every '
                    f'domain tried ({", ".join(map(str, candidates))}); stop them or run the '
                    f'demo elsewhere')


def _stop_node(process, sig=signal.SIGINT, timeout=20.0):
    """Send ``sig`` to the node; escalate to SIGTERM / SIGKILL; return (code, clean)."""
    if process.poll() is not None:
        return process.returncode, False
    process.send_signal(sig)
    try:
        return process.wait(timeout), True
    except subprocess.TimeoutExpired:
        pass
    process.terminate()
    try:
        return process.wait(5.0), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), False


def run_demo(out='output/demo', weights=None, device='cpu', samples=None,
             ir_dir='synthetic_misaligned/ir_warp', size='512x288', rate=2.0, loops=2,
             max_pairs=None, params_file=None, startup_timeout=180.0, png_count=4,
             linger=3.0, node_params=(), log=print, interrupted=None, ir_encoding='mono8'):
    """
    Run the whole demo; return the summary dict.

    Raises ``ValueError`` for a refused option or input (before the node starts; the outputs
    of an earlier run as they were), :class:`DemoError` when the demo ran and failed.

    ``node_params`` are extra ``name:=value`` node parameters (after the params file; a
    ``<camera>.transport`` there or in the params file sets that camera's topic in the bag
    too);
    ``ir_encoding`` is the IR camera's (``mono8``, or ``mono16`` for 16-bit IR images).
    ``interrupted``: None, or a callable that says whether a stop signal reached this process
    (then a node that exits is one stopped by the same Ctrl-C: ``KeyboardInterrupt``, not
    ``DemoError``).
    """
    for item in node_params:
        if ':=' not in item:
            raise ValueError(f'node parameter must look like name:=value, got {item!r}')
    # Before the bag is built and the node started: the player named its own wait_timeout
    # after that, and a negative count of PNGs wrote none without a word.
    if not 0 < startup_timeout < math.inf:  # NaN too
        raise ValueError(f'--startup-timeout must be a number of seconds > 0, got '
                         f'{startup_timeout}')
    if png_count < 0:
        raise ValueError(f'--pngs must be >= 0, got {png_count}')
    if size is not None:  # the node refuses such frames: refused before any output changes
        from tarfuse_ros.core.images import check_frame_size
        from tarfuse_ros.tools.make_bag import parse_size
        width, height = parse_size(size) if isinstance(size, str) else size
        check_frame_size(np.empty((height, width), np.uint8), '--size')
    weights = Path(weights) if weights else paths.default_weights_path()
    if not weights.is_file():
        raise ValueError(f'no weights at {weights}: pass --weights PATH.safetensors, or train '
                         'the default model (tarfuse-train, see models/MODEL_CARD.md)')
    samples = Path(samples) if samples else default_samples_dir()
    for folder in (samples / ir_dir, samples / 'vi'):
        if not folder.is_dir():
            raise ValueError(f'{folder} is not a folder: --samples needs vi/ and the IR folder '
                             f'--ir-dir ({ir_dir}; --ir-dir ir for a folder of ir/ and vi/)')
    params_file = Path(params_file) if params_file else paths.config_path('tarfuse.yaml')
    if not params_file.is_file():
        raise ValueError(f'node parameters file {params_file} not found')
    out = Path(out)
    problem = output_problem(out, folder=True)
    if problem:
        raise ValueError(f'--out {str(out)!r} cannot be used ({problem})')
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f'--out {str(out)!r} is not empty and no earlier demo wrote it (no '
                         f'{MARKER} file in it): pass a new or empty folder, or the folder of '
                         'an earlier demo run (whose outputs are replaced)')
    # Discovery on this machine only, unless the shell chose a range: the default one reaches
    # the local network, where a robot's nodes may use the same domain. Set in this process's
    # environment too, which the player and recorder read when they start.
    if not os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').strip():
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env = os.environ.copy()
    # A private domain, never the shell's ROS_DOMAIN_ID nor one where other nodes run: a fusion
    # node there (a robot's, a launch file's) would be fed the sample images too, and its
    # outputs counted as the demo's.
    domain_id = _quiet_domain(env.get('ROS_DOMAIN_ID', ''))
    env['ROS_DOMAIN_ID'] = str(domain_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text('tarfuse-demo wrote this folder; a later tarfuse-demo --out here '
                              'replaces its outputs\n')
    input_bag, recorded_bag = out / 'input_bag', out / 'recorded_bag'
    # The bag is built aside first: make_bag checks the options (--rate, --size, ...) and reads
    # every image, so a bad one leaves an earlier run's outputs as they were.
    staging = out / '.tarfuse-demo-new'
    if staging.is_dir():  # left by a run stopped while building its bag
        shutil.rmtree(staging)

    # Each camera on the transport the node reads (visible.transport: compressed in the
    # params file, or --param visible.transport:=compressed, which wins).
    given = {**_params_file_values(params_file),
             **dict(item.split(':=', 1) for item in node_params)}
    bag = make_bag(samples, staging / 'input_bag', rate=rate, ir_encoding=ir_encoding,
                   offset_ms=4.0, jitter_ms=1.0, loops=loops, size=size, ir_dir=ir_dir,
                   max_pairs=max_pairs,
                   ir_transport=str(given.get('infrared.transport', 'raw')).strip(),
                   vi_transport=str(given.get('visible.transport', 'raw')).strip())
    # Results of an earlier run in this folder (new, empty or marked: the demo's) are replaced.
    for old in [input_bag, recorded_bag]:
        if old.is_dir():
            shutil.rmtree(old)
    for old in [*out.glob('fused_*.png'), out / 'summary.json', out / 'summary.md']:
        if old.is_file():
            old.unlink()
    (staging / 'input_bag').rename(input_bag)
    staging.rmdir()
    log(f'tarfuse-demo: built {input_bag} ({_pairs_played(bag.pairs, loops, ": ")}, at '
        f'{rate} Hz)')

    command = [sys.executable, '-m', 'tarfuse_ros.ros.fuse_node', '--ros-args',
               '--params-file', str(params_file), '-p', f'weights:={weights}',
               '-p', f'device:={device}']
    for item in node_params:
        command += ['-p', item]
    log_path = out / 'node.log'
    discovery = env['ROS_AUTOMATIC_DISCOVERY_RANGE']
    where = 'this machine only' if discovery == 'LOCALHOST' else 'as set in the environment'
    log(f'tarfuse-demo: starting the node (on a private ROS_DOMAIN_ID={domain_id}, '
        f'ROS_AUTOMATIC_DISCOVERY_RANGE={discovery}: {where}; log {log_path})')
    started = time.monotonic()
    # Ctrl-C stops the node (as it would); a SIGINT this process ignores (a shell's background
    # job) the node inherits and ignores too: SIGTERM then, which it stops on as cleanly.
    stop_signal = (signal.SIGTERM if signal.getsignal(signal.SIGINT) is signal.SIG_IGN
                   else signal.SIGINT)
    with open(log_path, 'w') as node_log:
        process = subprocess.Popen(command, stdout=node_log, stderr=subprocess.STDOUT, env=env)

    def node_died():
        if process.poll() is not None:
            if interrupted is not None and interrupted():
                # The terminal's Ctrl-C reached the node too and it stopped first.
                raise KeyboardInterrupt
            tail = _log_tail(log_path)
            # The node's error names its own command line ('Use -p device:=cpu'), which
            # tarfuse-demo refuses: its options are --param, --device and --weights.
            fixes = [line for line in tail.splitlines()
                     if ('[FATAL]' in line or '[ERROR]' in line) and '-p ' in line]
            hint = ("\n(the node's -p NAME:=VALUE is tarfuse-demo's --param NAME:=VALUE; "
                    '-p device:=... and -p weights:=... are its --device and --weights)'
                    if fixes else '')
            return (f'the node exited with code {process.returncode} during the demo; '
                    f'its log ({log_path}) ends with:\n{tail}{hint}')
        return None

    # A node on simulated time (use_sim_time true, by --param or in the params file) takes its
    # time from /clock: the bag is played with it, as ros2 bag play --clock (the node's time
    # stood at 0, so its latency was never measured and it said to play the bag with its clock).
    sim_time = str(given.get('use_sim_time', False)).strip().lower() in ('true', 'yes', 'y', 'on')
    # The node warns diagnostics.input_timeout after its inputs stop, as it should for cameras
    # that do: the recording, and so the node, stops a second before that after the bag's last
    # message (at half a shorter timeout), else every demo's node.log ended with a warning of
    # hung cameras for the bag's end. The node's last answers and diagnostics come before (a
    # node slower than that per pair: raise diagnostics.input_timeout).
    from tarfuse_ros.ros.params import NodeParams
    try:
        input_timeout = float(given.get('diagnostics.input_timeout', NodeParams.input_timeout))
    except (TypeError, ValueError):
        input_timeout = math.nan
    if not 0 < input_timeout < math.inf:  # the node refuses it, saying why
        input_timeout = NodeParams.input_timeout
    max_linger = max(input_timeout - 1.0, input_timeout / 2)
    code, clean = None, False
    try:
        player = BagPlayer(input_bag, rate=1.0, wait_for_subscribers=1,
                           wait_timeout=startup_timeout, restamp=True, record=recorded_bag,
                           record_topics=RECORD_TOPICS, linger=linger, max_linger=max_linger,
                           domain_id=domain_id, node_name='tarfuse_demo_player',
                           should_abort=node_died, log=log, clock=sim_time)
        stats = player.run()
    except PlayError as error:
        if interrupted is not None and interrupted():
            raise KeyboardInterrupt from None
        raise DemoError(str(error)) from None
    finally:
        code, clean = _stop_node(process, stop_signal)
        clean = clean and code == 0
    if stats.interrupted:  # Ctrl-C / SIGTERM: the player stopped early; no summary of a part
        raise KeyboardInterrupt
    wall_s = time.monotonic() - started
    # The node's figures are per diagnostics window: one diagnostics.period each.
    period = float(given.get('diagnostics.period', 1.0))
    summary = summarize(recorded_bag, stats, bag.stems, out, png_count=png_count,
                        samples=samples, extra={
                            'weights': str(weights), 'device': device, 'samples': str(samples),
                            'ir_dir': ir_dir, 'size': size, 'rate_hz': rate,
                            'bag_pairs': bag.pairs, 'loops': loops,
                            'ros_domain_id': domain_id,
                            'ros_automatic_discovery_range': discovery,
                            'node_exit_code': code, 'node_clean_shutdown': clean,
                            'node_params': list(node_params),
                            'node_diagnostics_period_s': period,
                            'wall_time_s': round(wall_s, 1), 'input_bag': str(input_bag),
                            'recorded_bag': str(recorded_bag), 'node_log': str(log_path)})
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    (out / 'summary.md').write_text(summary_markdown(summary))
    if summary['pairs_out'] == 0:
        raise DemoError(f'the node published no fused image for {summary["pairs_in"]} pairs; '
                        f'see {log_path}:\n{_log_tail(log_path)}')
    return summary


def build_parser():
    parser = argparse.ArgumentParser(
        prog='tarfuse-demo', description=__doc__.split('\n\n')[0],
        formatter_class=HelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('output/demo'),
                        help='output folder (summary.md, summary.json, PNGs, bags, node log): '
                        f'new, empty, or one an earlier demo run wrote (it holds {MARKER}), '
                        'whose outputs are replaced; a folder of other files is refused')
    parser.add_argument('--weights', type=Path, default=None,
                        help='checkpoint (.safetensors); default: the shipped model')
    parser.add_argument('--device', default='cpu', help='torch device: cpu, cuda or cuda:N')
    parser.add_argument('--samples', type=Path, default=None,
                        help='pair folder (ir/, vi/); default: the shipped samples/')
    parser.add_argument('--ir-dir', default='synthetic_misaligned/ir_warp',
                        help='IR sub-folder of --samples (ir for the aligned originals)')
    parser.add_argument('--ir-encoding', choices=('mono8', 'mono16'), default='mono8',
                        help='encoding of the IR camera (mono16 for 16-bit IR images)')
    parser.add_argument('--size', default='512x288',
                        help='camera resolution WIDTHxHEIGHT the pairs are resized to')
    parser.add_argument('--rate', type=float, default=2.0, help='camera frame rate (Hz)')
    parser.add_argument('--loops', type=int, default=2, help='rounds over the sample pairs')
    parser.add_argument('--max-pairs', type=int, default=None,
                        help='use the first N pairs (default: all)')
    parser.add_argument('--params-file', type=Path, default=None,
                        help='node parameters; default: config/tarfuse.yaml')
    parser.add_argument('--startup-timeout', type=float, default=180.0,
                        help='seconds to wait for the node to subscribe')
    parser.add_argument('--pngs', type=int, default=4, help='fused PNGs to write')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter, e.g. confidence_threshold:=0.4 (repeatable)')
    return parser


def main(argv=None):
    """Entry point of ``tarfuse-demo``; return the exit status.

    0 done, 1 the demo ran and failed (:class:`DemoError`), 2 a refused option or input (as
    argparse's own refusals and every other tool's usage errors), 130 stopped (Ctrl-C, SIGTERM).
    """
    args = build_parser().parse_args(argv)
    # A Ctrl-C reaches the node as well (one process group) and may stop it before this
    # process handles its own: remember the stop so a node that exits then is no error.
    # SIGTERM (timeout, kill, a CI job cancelled) reaches this process only: it stops the demo
    # as Ctrl-C does, node included (else the node was left running, orphaned).
    stop = StopRequest()
    previous = stop.install((signal.SIGINT, signal.SIGTERM))
    try:
        run_demo(out=args.out, weights=args.weights, device=args.device, samples=args.samples,
                 ir_dir=args.ir_dir, ir_encoding=args.ir_encoding, size=args.size,
                 rate=args.rate, loops=args.loops, max_pairs=args.max_pairs,
                 params_file=args.params_file, startup_timeout=args.startup_timeout,
                 png_count=args.pngs,
                 node_params=args.param, interrupted=lambda: stop.requested)
    except ValueError as error:  # refused before the node started
        print(f'tarfuse-demo: error: {error}', file=sys.stderr)
        return 2
    except DemoError as error:
        print(f'tarfuse-demo: error: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('tarfuse-demo: interrupted; the node was stopped, no summary written',
              file=sys.stderr)
        return 130
    finally:
        stop.restore(previous)
    print((args.out / 'summary.md').read_text())
    print(f'tarfuse-demo: wrote {args.out}/summary.md, summary.json and the fused PNGs')
    return 0


if __name__ == '__main__':
    sys.exit(main())
