r"""tarfuse-play: publish a rosbag2's topics with their timing, optionally recording other topics.

Works without rosbag2: the bag is read with ``rosbags`` and each message is published as the
raw CDR bytes stored in the bag (``rclpy`` publishers accept ``bytes``), so stamps and data are
exactly the recorded ones. Recording subscribes with ``raw=True`` and writes the received bytes
into a new MCAP bag whose type definitions come from the Jazzy typestore plus vision_msgs.
On a ROS install, ``ros2 bag play`` plays the same bags.

Example (play the sample bag into a running node and record what it publishes)::

    tarfuse-play /tmp/sample_bag --wait-for-subscribers 1 --record /tmp/out_bag \\
        --record-topics fused/image_raw detections registered/image_raw /diagnostics
"""

import argparse
from dataclasses import dataclass, field
import importlib
import inspect
import json
import math
from pathlib import Path
import shutil
import signal
import statistics
import sys
import threading
import time

from rosbags.rosbag2 import Reader

from tarfuse_ros.console import HelpFormatter, install_handler
from tarfuse_ros.core.files import output_problem
from tarfuse_ros.tools.bagio import (
    bag_folder_problem, check_topic_name, header_stamp_ns, jazzy_typestore, offered_qos,
    open_writer, replace_header_stamp, type_has_header, unfinished_mcap_problem)

__all__ = ['BagPlayer', 'PlayError', 'PlayStats', 'build_parser', 'main', 'message_class']

# Types of the node's outputs (and common companions), used when --record-topics gives none.
KNOWN_TYPES = {
    'image_raw': 'sensor_msgs/msg/Image',
    'compressed': 'sensor_msgs/msg/CompressedImage',
    'compressedDepth': 'sensor_msgs/msg/CompressedImage',
    'camera_info': 'sensor_msgs/msg/CameraInfo',
    'detections': 'vision_msgs/msg/Detection2DArray',
    'label_info': 'vision_msgs/msg/LabelInfo',
    'diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
}


# /clock rate of --clock without a value (Hz), as ros2 bag play --clock.
DEFAULT_CLOCK_HZ = 40.0


class PlayError(RuntimeError):
    """Playback could not start or finish (no subscribers, missing message type, ...)."""


@dataclass
class PlayStats:
    """
    What was published and received: lists of ``(topic, stamp_ns or None, wall_ns)``.

    ``started_ns`` is the wall time (ns) the playback schedule starts from: the first message is
    due then and a message recorded ``t`` s after the bag's start is due ``t / rate`` s later (it
    is never published earlier; late where the machine is busy). 0 until playback begins.
    """

    published: list = field(default_factory=list)
    received: list = field(default_factory=list)
    started_ns: int = 0
    record_path: str = ''
    loops: int = 0  # rounds over the bag begun
    interrupted: bool = False
    unacknowledged: list = field(default_factory=list)  # topics not acked within ack_timeout

    def counts(self, which='published'):
        """Return ``{topic: message count}`` of the published or received messages."""
        result = {}
        for topic, _stamp, _wall in getattr(self, which):
            result[topic] = result.get(topic, 0) + 1
        return result

    def latencies_ms(self, topic):
        """
        Return latencies (ms) of the messages received on ``topic`` that answer an input.

        An output answers an input when its header stamp equals a published stamp; the latency
        is its receipt time minus the latest publish time of an input with that stamp.
        """
        published_at = {}
        for _topic, stamp, wall in self.published:
            if stamp is not None:
                published_at[stamp] = max(wall, published_at.get(stamp, wall))
        return [(wall - published_at[stamp]) / 1e6 for name, stamp, wall in self.received
                if name == topic and stamp in published_at]

    def to_dict(self):
        return {'published': self.published, 'received': self.received,
                'started_ns': self.started_ns, 'record_path': self.record_path,
                'loops': self.loops,
                'interrupted': self.interrupted, 'unacknowledged': self.unacknowledged}


def message_class(msgtype):
    """Return the rclpy message class for ``pkg/msg/Name`` (ValueError if not importable)."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise ValueError(f'message type must look like pkg/msg/Name, got {msgtype!r}')
    try:
        return getattr(importlib.import_module(f'{parts[0]}.msg'), parts[2])
    except (ImportError, AttributeError) as error:
        raise ValueError(f'message type {msgtype} is not importable here ({error}); source the '
                         'ROS environment that provides it (tools/ros_env/env.sh)') from None


def event_callback_classes():
    """Return ``(PublisherEventCallbacks, SubscriptionEventCallbacks, matched)`` of this rclpy.

    Iron moved them from ``rclpy.qos_event`` to ``rclpy.event_handler`` and added the
    ``matched`` events (rclpy 4.0.0, ros2/rclpy#1083); Humble's rclpy (3.3.x) has neither, so
    there ``matched`` is False and the player waits on the graph's counts alone.
    """
    try:
        from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
    except ImportError:  # Humble
        from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks
    return (PublisherEventCallbacks, SubscriptionEventCallbacks,
            takes_matched(PublisherEventCallbacks) and takes_matched(SubscriptionEventCallbacks))


def takes_matched(callbacks_class):
    """Return whether an rclpy ``*EventCallbacks`` class takes a ``matched`` callback."""
    try:
        return 'matched' in inspect.signature(callbacks_class).parameters
    except (TypeError, ValueError):  # no signature to read: assume the older API
        return False


def _qos(reliability, depth, transient_local=False):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    if reliability not in ('reliable', 'best_effort'):
        raise ValueError(f'QoS reliability must be reliable or best_effort, got {reliability!r}')
    policy = ReliabilityPolicy.RELIABLE if reliability == 'reliable' \
        else ReliabilityPolicy.BEST_EFFORT
    durability = DurabilityPolicy.TRANSIENT_LOCAL if transient_local \
        else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=durability)


def _recorded_transient_local(connections, topic):
    """Return whether every publisher recorded on ``topic`` offered transient local.

    As ``ros2 bag play`` adapts to the recorded offers: a latched topic (/tf_static) played
    volatile matched no subscriber asking for transient local (tf2's). Offers mixed, or not
    recorded, are volatile.
    """
    from rosbags.interfaces import QosDurability
    offers = [offer for c in connections if c.topic == topic
              for offer in (getattr(c.ext, 'offered_qos_profiles', None) or [])]
    return bool(offers) and all(getattr(offer, 'durability', None)
                                == QosDurability.TRANSIENT_LOCAL for offer in offers)


def _parse_remaps(remaps):
    result = {}
    for item in remaps or ():
        if ':=' not in item:
            raise ValueError(f'remap must look like FROM:=TO, got {item!r}')
        source, target = item.split(':=', 1)
        if result.get(source, target) != target:  # the first was silently dropped
            raise ValueError(f'--remap: {source} given twice, as {result[source]} and '
                             f'{target}; give one')
        result[source] = target
    return result


def _bag_topics(bag):
    """Return ``({topic: message count}, bag length in ns)`` of a rosbag2.

    Raises ValueError naming why the bag cannot be read.
    """
    import yaml
    from rosbags.rosbag2 import ReaderError
    try:
        with Reader(bag) as reader:
            counts = {}
            for connection in reader.connections:
                counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
            return counts, max(0, reader.end_time - 1 - reader.start_time)
    except (ReaderError, yaml.YAMLError, OSError, KeyError, ValueError) as exc:
        unfinished = unfinished_mcap_problem(bag)
        if unfinished:
            raise ValueError(unfinished) from None
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f'{bag} cannot be read as a rosbag2 ({problem})') from None


class BagPlayer:
    """
    Publish a bag's messages with their recorded timing; optionally record other topics.

    Runs in its own rclpy context (so it can share a process with other ROS code) with a
    background executor thread for the recorder. ``run()`` returns a :class:`PlayStats`.

    Parameters: ``rate`` (time factor, 2 = twice as fast), ``loop`` (repeat until
    ``duration`` or Ctrl-C), ``start_delay`` (s, after waiting for subscribers),
    ``start_offset`` (s of bag time to leave out at the start of each round, as
    ``ros2 bag play --start-offset``),
    ``duration`` (s of playback, None = the whole bag), ``wait_for_subscribers`` (wait until
    every played topic has that many matched subscribers, at most ``wait_timeout`` s, then
    ``settle`` s more so the subscribers' side has matched too), ``topics``
    (bag topics to play, None = all), ``remap`` ({bag topic: published topic}), ``restamp``
    (shift header stamps so each message is stamped when it is played, 'now': offsets scaled by
    1 / ``rate``; also stamps of another clock than the bag's, e.g. a camera's since boot),
    ``qos_reliability`` of the publishers, ``record`` (bag directory to create),
    ``record_topics`` (names, ``name:pkg/msg/Type`` to give a type), ``linger`` (s to keep
    recording after the last answer to a published input arrived), ``max_linger`` (cap),
    ``domain_id`` (ROS domain, None = $ROS_DOMAIN_ID), ``should_abort`` (callable returning a
    reason string to stop early, e.g. a dead node), ``clock`` (publish ``/clock`` for nodes
    with ``use_sim_time``, at this rate in Hz, True for 40 as ``ros2 bag play --clock``: the
    playback's bag time, running at ``rate`` from the first message of each round, and each
    message's bag time just before it is published, shifted to 'now' as the stamps with
    ``restamp``; False or None: no /clock), ``ack_timeout`` (s: after the last message, wait
    until the reliable subscribers acknowledged every message, at most this long, before the
    publishers are destroyed; 0 = not at all; ``ros2 bag play --wait-for-all-acked`` is off by
    default).
    """

    def __init__(self, bag, *, rate=1.0, loop=False, start_delay=0.0, start_offset=0.0,
                 duration=None, wait_for_subscribers=0, wait_timeout=60.0, topics=None, remap=None,
                 restamp=False, qos_reliability='reliable', record=None, record_topics=(),
                 record_reliability='reliable', linger=2.0, max_linger=30.0,
                 settle=0.5, domain_id=None, node_name='tarfuse_player', should_abort=None,
                 log=None, clock=False, ack_timeout=5.0):
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f'rate must be a finite factor > 0, got {rate}')
        for name, value in (('start_delay', start_delay), ('start_offset', start_offset),
                            ('wait_timeout', wait_timeout), ('settle', settle),
                            ('ack_timeout', ack_timeout), ('linger', linger),
                            ('max_linger', max_linger)):
            if not value >= 0:  # NaN too: every comparison with it is false
                raise ValueError(f'{name} must be >= 0, got {value}')
        if duration is not None and not duration > 0:  # NaN played the bag whole, or forever
            raise ValueError(f'duration must be > 0 s, got {duration}')
        if clock is True:
            clock = DEFAULT_CLOCK_HZ
        if clock is not None and clock is not False and not (
                clock > 0 and math.isfinite(clock)):
            raise ValueError(f'--clock: the /clock rate must be a number > 0 Hz, got {clock:g}')
        if wait_for_subscribers < 0:
            raise ValueError(f'wait_for_subscribers must be >= 0, got {wait_for_subscribers}')
        self.bag = Path(bag)
        problem = bag_folder_problem(self.bag)
        if problem is not None:
            raise ValueError(problem)
        if record is not None and Path(record).exists():
            raise ValueError(f'record bag {record} exists already; remove it or choose another')
        problem = None if record is None else output_problem(record, folder=True)
        if problem:
            raise ValueError(f'record bag {record} cannot be written ({problem})')
        if record is not None and not record_topics:
            raise ValueError('--record needs --record-topics')
        if record is None and record_topics:
            raise ValueError('--record-topics needs --record (the bag to record them to)')
        bag_topics, length_ns = _bag_topics(self.bag)
        if start_offset * 1e9 > length_ns:
            raise ValueError(f'--start-offset {start_offset:g} s is past the end of the bag '
                             f'(its last message is {length_ns / 1e9:.3f} s after its first)')
        for name, given in (('--topics', list(topics or ())),
                            ('--remap', list((remap or {}).keys()))):
            unknown = [topic for topic in given if topic not in bag_topics]
            if unknown:
                raise ValueError(f'{name}: {", ".join(unknown)} not in the bag (it has '
                                 f'{", ".join(sorted(bag_topics))})')
        played = [topic for topic in sorted(bag_topics) if topics is None or topic in topics]
        if played and not any(bag_topics[topic] for topic in played):
            # It published nothing and exited 0; with --loop it spun a core for ever.
            raise ValueError(f'{bag} holds no message to play (on {", ".join(played)})')
        left_out = [topic for topic in (remap or {}) if topics is not None and topic not in topics]
        if left_out:  # its remap did nothing
            raise ValueError(f'--remap: {", ".join(left_out)} is not played (--topics leaves it '
                             'out); add it to --topics or drop its remap')
        for topic in (remap or {}).values():
            check_topic_name(topic, '--remap target')
        for item in record_topics:  # before rcl refuses it in run(), with a traceback
            check_topic_name(item.partition(':')[0], '--record-topics')
        # A relative target is published from the player's node (root namespace): name it as
        # the graph will, so the wait, the errors and the statistics use the real topic.
        from rclpy.expand_topic_name import expand_topic_name
        remap = {source: expand_topic_name(target, node_name, '/')
                 for source, target in (remap or {}).items()}
        # A topic given twice (also as 'detections' and '/detections') was subscribed twice:
        # every message was recorded twice.
        recorded = {}
        for item in record_topics:
            topic = expand_topic_name(item.partition(':')[0], node_name, '/')
            if topic in recorded:
                raise ValueError(f'--record-topics: {topic} given twice, as {recorded[topic]} '
                                 f'and {item}; give it once')
            recorded[topic] = item
        # Two played topics published on one (a remap onto a topic the bag also plays, or two
        # remaps onto one target) would merge their messages into one stream: refused. Names
        # as published: a bag may store a topic relative ('cam/image_raw' is /cam/image_raw),
        # and --clock publishes /clock (a remap onto it: a type clash that rcl refused with
        # a traceback; a bag's own /clock: two clocks in one stream).
        published = {'/clock': ['/clock (--clock)']} if clock else {}
        names = {}  # {bag topic played: its name on the graph}, for the statistics and logs
        for topic in sorted(bag_topics):
            if topics is None or topic in topics:
                target = remap.get(topic, expand_topic_name(topic, node_name, '/'))
                published.setdefault(target, []).append(topic)
                names[topic] = target
        # The player's own node publishes its log and parameter events (rcl, every node): a
        # remap onto them clashed with their types in an RCLError traceback.
        for source, target in remap.items():
            if target in ('/rosout', '/parameter_events') and source != target:
                raise ValueError(f'--remap: {source} onto {target}, which the player node '
                                 f'publishes itself (every ROS node does); choose another topic')
        merged = {target: sources for target, sources in published.items() if len(sources) > 1}
        if merged:
            target, sources = sorted(merged.items())[0]
            option = '--remap: ' if any(source in remap for source in sources) else ''
            clock_too = ', or play without --clock' if target == '/clock' and clock else ''
            raise ValueError(f'{option}{" and ".join(sources)} would both be published on '
                             f'{target}, one stream of both; remap them apart, or leave one '
                             f'out with --topics{clock_too}')
        self.rate, self.loop, self.start_delay, self.duration = rate, loop, start_delay, duration
        self.start_offset = start_offset
        self.wait_for_subscribers, self.wait_timeout = wait_for_subscribers, wait_timeout
        self.settle, self.ack_timeout = settle, ack_timeout
        self.topics = None if topics is None else set(topics)
        self.remap = dict(remap or {})
        self._names = names
        self.restamp = restamp
        self.clock_hz = float(clock) if clock else None
        self.clock = self.clock_hz is not None
        self.qos_reliability = qos_reliability
        _qos(qos_reliability, 1)
        _qos(record_reliability, 1)
        self.record = None if record is None else Path(record)
        self.record_topics = list(record_topics)
        self.record_reliability = record_reliability
        self.linger, self.max_linger = linger, max_linger
        self.domain_id, self.node_name = domain_id, node_name
        self.should_abort = should_abort
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.typestore = jazzy_typestore()
        self.stats = PlayStats(record_path=str(self.record or ''))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_answer = None
        self._answered = set()  # (topic, stamp) of the recorded answers to published inputs
        self._published_stamps = set()
        self._first_stamp = None  # header stamp of the first message played (restamp)
        # restamp: the stamp that is shifted to a round's start, the first stamp less the bag
        # time between that start and its message (a --start-offset into a gap, or a first
        # message without header such as /tf): the first is then stamped when it is played.
        self._stamp_origin = None
        self._writer = None
        self._record_conns = {}
        self._matched = {}
        # Whether this rclpy reports matched events (Iron and newer; set by run()). Without
        # them (Humble) the waits go by the graph's counts, and the settle time covers both.
        self._matched_events = True
        self._clock_pub = None
        self._clock_lock = threading.Lock()
        self._clock_round = None  # (base_mono, its time, ns per s, ns to the end) of the round
        self._clock_last = None  # the last /clock time published in this round
        self._clock_stop = threading.Event()
        # Bag time /clock runs on past a round's last message: a --loop's gap to the next round.
        self._clock_run_on_ns = 0

    # -- set-up ---------------------------------------------------------------------------
    def _record_specs(self, node):
        specs = []
        for item in self.record_topics:
            name, _, msgtype = item.partition(':')
            topic = node.resolve_topic_name(name)
            if not msgtype:
                msgtype = KNOWN_TYPES.get(topic.rstrip('/').rsplit('/', 1)[-1], '')
            if not msgtype:
                for graph_topic, types in node.get_topic_names_and_types():
                    if graph_topic == topic and types:
                        msgtype = types[0]
            if not msgtype:
                raise PlayError(f'type of record topic {topic} unknown: give it as '
                                f'{name}:pkg/msg/Type')
            if msgtype not in self.typestore.types:
                raise PlayError(f'record topic {topic}: type {msgtype} is not in the typestore '
                                '(vision_msgs needs its .msg files installed)')
            specs.append((topic, msgtype, message_class(msgtype)))
        return specs

    def _on_record(self, topic, msgtype, data):
        wall = time.time_ns()
        stamp = header_stamp_ns(data) if type_has_header(self.typestore, msgtype) else None
        with self._lock:
            if self._writer is not None:
                conn = self._record_conns.get(topic)
                if conn is None:
                    conn = self._writer.add_connection(
                        topic, msgtype, typestore=self.typestore,
                        offered_qos_profiles=offered_qos(self.record_reliability == 'reliable'))
                    self._record_conns[topic] = conn
                self._writer.write(conn, wall, data)
            self.stats.received.append((topic, stamp, wall))
            if (stamp is not None and stamp in self._published_stamps
                    and (topic, stamp) not in self._answered):
                # A first message per topic and published stamp answers an input; a repeat of
                # it does not (a use_sim_time node under --clock stamps its /diagnostics with
                # the bag's last time again and again once the clock stops).
                self._answered.add((topic, stamp))
                self._last_answer = time.monotonic()

    def _on_matched(self, topic, status):
        with self._lock:
            self._matched[topic] = status.current_count

    def _matched_count(self, topic):
        with self._lock:
            return self._matched.get(topic, 0)

    def _matched_at_least(self, topic, count):
        """Return whether ``topic``'s endpoint matched ``count`` peers (True without events).

        ``topic`` is a publisher's topic, or ``(topic, 'recorder')`` for a recording subscription.
        """
        return not self._matched_events or self._matched_count(topic) >= count

    def _check_abort(self):
        if self._stop.is_set():
            return True
        if self.should_abort is not None:
            reason = self.should_abort()
            if reason:
                raise PlayError(reason)
        return False

    def _sleep_until(self, deadline):
        while True:
            if self._check_abort():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(remaining, 0.05))

    def _wait_for_graph(self, node, publishers, record_topics):
        deadline = time.monotonic() + self.wait_timeout
        # A played topic recorded too has the recorder's subscription besides those waited for.
        needed = {topic: self.wait_for_subscribers + (topic in record_topics)
                  for topic in publishers}
        while True:
            # Both the graph and the DDS writer must see the readers ('matched' event).
            missing = [topic for topic, pub in publishers.items()
                       if pub.get_subscription_count() < needed[topic]
                       or not self._matched_at_least(topic, needed[topic])]
            if not missing:
                break
            if time.monotonic() > deadline:
                # A bag holds topics the node does not read (another camera_info, /tf): the
                # node is running when the other topics have their subscribers.
                served = [topic for topic in publishers if topic not in missing]
                raise PlayError(
                    f'no {self.wait_for_subscribers} subscriber(s) on {", ".join(missing)} after '
                    f'{self.wait_timeout:.0f} s' + (
                        f', though on {", ".join(served)}: play only the topics the node reads '
                        f'(--topics)' if served else
                        ': is the node running (same ROS_DOMAIN_ID, topic names/namespace, '
                        'compatible QoS)?'))
            if self._check_abort():
                return
            time.sleep(0.05)
        # Outputs published before the recorder matched would be lost: wait for publishers too.
        while record_topics:
            record_topics = [t for t in record_topics
                             if node.count_publishers(t) < 1
                             or not self._matched_at_least((t, 'recorder'), 1)]
            if not record_topics or time.monotonic() > deadline:
                break
            if self._check_abort():
                return
            time.sleep(0.05)
        if record_topics:
            self.log(f'tarfuse-play: no publisher yet on {", ".join(record_topics)}; '
                     'recording anyway')
        # Matching is seen from this side only; give the readers' side the same moment to
        # match our writers, or the very first messages can be lost.
        self._sleep_until(time.monotonic() + self.settle)

    # -- playback ---------------------------------------------------------------------------
    def _play_once(self, reader, connections, publishers, base_mono, base_wall_ns, end_mono):
        """Publish every message once; return (last bag time, True if stopped early)."""
        start_ns = self._start_ns(reader)
        last = start_ns
        begun = False

        def restamped(time_ns, first_ns=start_ns):  # -> playback time (offsets scaled)
            return base_wall_ns + int((time_ns - first_ns) / self.rate)

        for connection, timestamp, data in reader.messages(connections=connections,
                                                           start=start_ns):
            target = base_mono + (timestamp - start_ns) / 1e9 / self.rate
            if end_mono is not None and target > end_mono:
                return last, True
            if not self._sleep_until(target):
                return last, True
            if not begun:  # rounds begun: one cut short by Ctrl-C counts too, one that
                # --duration ends before its first message does not ('2 round(s)' for one)
                self.stats.loops += 1
                begun = True
                if self._clock_pub is not None:  # /clock starts over from the round's start
                    self._start_clock_round(
                        base_mono, restamped(start_ns) if self.restamp else start_ns,
                        reader.end_time - 1 - start_ns + self._clock_run_on_ns)
            data = bytes(data)
            stamp = None
            topic = self._names[connection.topic]
            if type_has_header(self.typestore, connection.msgtype):
                stamp = header_stamp_ns(data)
                # A zero stamp is none (a camera not synchronised yet): it stays one, for the
                # node to refuse, and is no first stamp (the next were shifted past 2038).
                if self.restamp and stamp:
                    # From the first stamp played, not the bag's start: a camera may stamp by
                    # its own clock (since boot: decades before the bag's times).
                    if self._first_stamp is None:
                        self._first_stamp = stamp
                        self._stamp_origin = stamp - (timestamp - start_ns)
                    shifted = restamped(stamp, self._stamp_origin)
                    data = self._restamp(data, topic, stamp, shifted)
                    stamp = shifted
            with self._lock:
                if stamp is not None:
                    self._published_stamps.add(stamp)
                if self._clock_pub is not None:
                    self._publish_clock(restamped(timestamp) if self.restamp else timestamp)
                # Timed before publishing: a subscriber (the recorder's, in another thread)
                # may take the message before publish() returns (a latency of -0.03 ms once).
                published_ns = time.time_ns()
                publishers[connection.topic].publish(data)
                self.stats.published.append((topic, stamp, published_ns))
            last = timestamp
        return last, False

    def _restamp(self, data, topic, stamp, shifted):
        """Return ``data`` stamped ``shifted``; PlayError where no stamp can hold it."""
        try:
            return replace_header_stamp(data, shifted)
        except ValueError as error:  # a clock jump in the bag (decades), at a low --rate
            raise PlayError(
                f'--restamp: the {topic} message stamped {stamp // 10**9}.{stamp % 10**9:09d} s '
                f'({(stamp - self._first_stamp) / 1e9:+.1f} s from the first stamp played) '
                f'cannot be shifted to now at --rate {self.rate:g} ({error}); play it without '
                '--restamp') from None

    def _wait_for_acks(self, publishers):
        """Wait until reliable subscribers acknowledged what was played (``ack_timeout`` s).

        ``publishers``: ``{topic as published: publisher}``.

        Destroying a reliable writer drops the messages its readers have not acknowledged yet:
        the last message of a bag was lost to a subscriber in another process on a loaded
        machine (a test's listener, once in a few runs). Best-effort readers do not acknowledge
        and are not waited for. Topics still waiting at the timeout are logged and listed in
        ``stats.unacknowledged``.
        """
        if self.qos_reliability != 'reliable' or not self.ack_timeout or self._stop.is_set():
            return
        from rclpy.duration import Duration
        deadline = time.monotonic() + self.ack_timeout
        step = Duration(nanoseconds=50_000_000)
        waiting = dict(publishers)
        while waiting and not self._check_abort():
            waiting = {topic: pub for topic, pub in waiting.items()
                       if not pub.wait_for_all_acked(step)}
            if time.monotonic() > deadline:
                break
        if waiting:
            self.stats.unacknowledged = sorted(waiting)
            self.log(f'tarfuse-play: not every message on {", ".join(sorted(waiting))} was '
                     f'acknowledged by its subscribers within {self.ack_timeout:g} s '
                     '(--ack-timeout)')

    def _start_clock_round(self, base_mono, origin_ns, span_ns):
        """Run /clock from ``origin_ns`` at ``base_mono`` for ``span_ns`` of bag time."""
        with self._clock_lock:
            # As the stamps: the bag's time, or with restamp the wall's, from origin_ns.
            per_s, span = (1e9, span_ns / self.rate) if self.restamp else (1e9 * self.rate,
                                                                           span_ns)
            self._clock_round = (base_mono, origin_ns, per_s, max(0, int(span)))
            self._clock_last = None

    def _run_clock_on(self, extra_ns):
        """Let this round's /clock run ``extra_ns`` of bag time further."""
        with self._clock_lock:
            if self._clock_round is not None:
                base_mono, origin_ns, per_s, span_ns = self._clock_round
                extra = extra_ns / self.rate if self.restamp else extra_ns
                self._clock_round = (base_mono, origin_ns, per_s, span_ns + int(extra))

    def _publish_clock(self, time_ns=None):
        """Publish ``time_ns`` on /clock, or the playback's bag time now where None.

        Never a time before the last one of the round: a message published late comes after
        the ticks of its time. The playback's time is the round's bag time now, at most its
        last message's, or in a --loop the next round's start.
        """
        from rosgraph_msgs.msg import Clock
        with self._clock_lock:
            if self._clock_round is None:
                return
            if time_ns is None:
                # Not past the round's last message (a loop's: the next round's start; the time
                # stands there): at a huge rate it would run to the end of int32 seconds.
                base_mono, origin_ns, per_s, span_ns = self._clock_round
                elapsed_s = max(0.0, time.monotonic() - base_mono)
                time_ns = origin_ns + int(min(elapsed_s * per_s, span_ns))
            if self._clock_last is not None:
                time_ns = max(time_ns, self._clock_last)
            self._clock_last = time_ns
            message = Clock()
            message.clock.sec, message.clock.nanosec = divmod(int(time_ns), 1_000_000_000)
            self._clock_pub.publish(message)

    def _tick_clock(self):
        """Publish /clock every 1 / ``clock_hz`` s until stopped (between messages too)."""
        period = 1.0 / self.clock_hz
        due = time.monotonic()
        while not self._clock_stop.wait(max(0.0, due - time.monotonic())):
            self._publish_clock()
            # After a stall (a loaded machine) the next tick is one period on, not a burst.
            due = max(due + period, time.monotonic())

    def run(self):
        """Play (and record) until done; return the :class:`PlayStats`."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        publisher_events, subscription_events, self._matched_events = event_callback_classes()

        context = rclpy.Context()
        # args=[]: the tool's own command line (--remap A:=B) is not for rcl.
        rclpy.init(args=[], context=context, domain_id=self.domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        node = executor = spinner = ticker = None
        failed_start = False
        try:
            node = rclpy.create_node(self.node_name, context=context)
            if self.clock:
                from rclpy.qos import QoSProfile
                from rosgraph_msgs.msg import Clock
                self._clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(depth=10))
            with Reader(self.bag) as reader:
                connections = [c for c in reader.connections
                               if self.topics is None or c.topic in self.topics]
                if not connections:
                    raise PlayError(f'no topics to play in {self.bag} '
                                    f'(bag has {sorted(c.topic for c in reader.connections)})')
                connections = self._one_type_per_topic(connections)
                classes = self._message_classes(connections)
                connections = [c for c in connections if c.topic in classes]
                if self.start_offset and next(reader.messages(
                        connections=connections, start=self._start_ns(reader)), None) is None:
                    raise PlayError(f'no message of {", ".join(sorted(classes))} comes '
                                    f'--start-offset {self.start_offset:g} s or later into '
                                    f'the bag')
                publishers = {}
                for connection in connections:
                    if connection.topic not in publishers:
                        topic = self._names[connection.topic]
                        events = publisher_events(
                            matched=lambda status, t=topic: self._on_matched(t, status)
                        ) if self._matched_events else None
                        qos = _qos(self.qos_reliability, 10, _recorded_transient_local(
                            connections, connection.topic))
                        publishers[connection.topic] = node.create_publisher(
                            classes[connection.topic], topic, qos, event_callbacks=events)
                specs = self._record_specs(node) if self.record is not None else []
                if specs:
                    self._writer = open_writer(self.record)
                    record_qos = _qos(self.record_reliability, 100)
                    for topic, msgtype, cls in specs:
                        # Keyed apart from a publisher of the topic (one played and recorded):
                        # the one's count replaced the other's.
                        events = subscription_events(
                            matched=lambda status, t=topic: self._on_matched((t, 'recorder'),
                                                                             status)
                        ) if self._matched_events else None
                        node.create_subscription(
                            cls, topic,
                            lambda data, t=topic, m=msgtype: self._on_record(t, m, data),
                            record_qos, raw=True, event_callbacks=events)
                executor = SingleThreadedExecutor(context=context)
                executor.add_node(node)
                spinner = threading.Thread(target=executor.spin, name='tarfuse_play_spin',
                                           daemon=True)
                spinner.start()
                named = {self._names[t]: p for t, p in publishers.items()}  # graph names
                if self.wait_for_subscribers:
                    self._wait_for_graph(node, named, [t for t, _m, _c in specs])
                self._sleep_until(time.monotonic() + self.start_delay)
                if self._clock_pub is not None:
                    ticker = threading.Thread(target=self._tick_clock, name='tarfuse_play_clock',
                                              daemon=True)
                    ticker.start()
                self._play(reader, connections, publishers)
                self._clock_stop.set()  # the time stands at the end of the playback
                self._wait_for_acks(named)
            self._linger()
        except KeyboardInterrupt:
            self.stats.interrupted = True
            # Before anything was played (waiting for the node): as a failed start, whatever
            # was recorded meanwhile (a node's /diagnostics under other topic names), as when
            # no subscriber came within wait_timeout: the same command can be run again.
            failed_start = not self.stats.published
        except PlayError:
            # Nothing played (no subscribers in time): the empty recording refused the rerun
            # of the same command ('exists already').
            failed_start = not self.stats.published
            raise
        finally:
            self._stop.set()
            self._clock_stop.set()
            if ticker is not None:
                ticker.join(timeout=5.0)
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if spinner is not None:
                spinner.join(timeout=5.0)
            with self._lock:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                    if failed_start:
                        shutil.rmtree(self.record, ignore_errors=True)
            if node is not None:
                node.destroy_node()
            rclpy.shutdown(context=context)
        return self.stats

    def _one_type_per_topic(self, connections):
        """Return ``connections`` less those of a topic's other types, saying what is left out.

        A topic recorded with two message types (a driver reconfigured mid-recording) has one
        publisher here, of its first type that has messages: the other type's messages would
        reach subscribers as bytes of the wrong type. A type without messages (a topic
        discovered, then reconfigured before it published) was chosen, so nothing played.
        """
        counts = {}  # (topic, type) -> messages, in the order the bag lists them
        for connection in connections:
            key = (connection.topic, connection.msgtype)
            counts[key] = counts.get(key, 0) + connection.msgcount
        chosen = {}
        for (topic, msgtype), count in counts.items():
            if topic not in chosen or (count and not counts[(topic, chosen[topic])]):
                chosen[topic] = msgtype
        for (topic, msgtype), count in counts.items():
            if msgtype != chosen[topic] and count:
                self.log(f'tarfuse-play: {topic} has two message types in the bag: its {count} '
                         f'{msgtype} message(s) are left out, the {chosen[topic]} ones played')
        return [c for c in connections if c.msgtype == chosen[c.topic]]

    def _message_classes(self, connections):
        """Return ``{bag topic: rclpy message class}`` of the topics whose type is installed.

        A topic of a type not installed here (a robot's own messages) is left out, saying so,
        as ``ros2 bag play`` does: it stopped the whole playback. One named in --topics, or
        every topic, is a PlayError.
        """
        classes, missing = {}, {}
        for connection in connections:
            try:
                classes[connection.topic] = message_class(connection.msgtype)
            except ValueError as error:
                missing[connection.topic] = str(error)
        named = [topic for topic in missing if self.topics is not None]
        if named or not classes:
            topic = (named or sorted(missing))[0]
            raise PlayError(f'{"--topics: " if named else ""}{topic}: {missing[topic]}')
        for topic, problem in sorted(missing.items()):
            self.log(f'tarfuse-play: {topic} left out: {problem}')
        return classes

    def _start_ns(self, reader):
        """Return the bag time each round starts at (``start_offset`` after the bag's start)."""
        return reader.start_time + int(self.start_offset * 1e9)

    def _play(self, reader, connections, publishers):
        first_mono = time.monotonic()
        end_mono = None if self.duration is None else first_mono + self.duration
        base_mono = first_mono
        span_ns = reader.end_time - self._start_ns(reader) if reader.message_count > 1 else 0
        gap_ns = None
        while True:
            base_wall_ns = time.time_ns() + int((base_mono - time.monotonic()) * 1e9)
            if not self.stats.started_ns:
                self.stats.started_ns = base_wall_ns
            rounds = self.stats.loops
            _last, stopped = self._play_once(
                reader, connections, publishers, base_mono, base_wall_ns, end_mono)
            if stopped or not self.loop or self.stats.loops == rounds:  # or nothing was played
                return
            if end_mono is not None and time.monotonic() >= end_mono:
                # At a huge rate the rounds are due one after the other, as good as no time
                # apart, and none after end_mono: --duration is also the wall time played.
                return
            if gap_ns is None:
                gap_ns = self._frame_gap_ns(reader, connections)
                # /clock runs on to the next round, as ros2 bag play's: it stood at the last
                # message for the gap, so the node measured no latency for the round's last
                # pair (0 ms) and its ROS timers stood still.
                self._clock_run_on_ns = gap_ns
                self._run_clock_on(gap_ns)
            # The next round starts one frame period after this round's last message.
            base_mono += (span_ns + gap_ns) / 1e9 / self.rate

    @staticmethod
    def _frame_gap_ns(reader, connections):
        stamps = {}
        for connection, timestamp, _data in reader.messages(connections=connections):
            stamps.setdefault(connection.topic, []).append(timestamp)
        # Gaps of 0 (messages of one time) are none: rounds 0 s apart went as fast as the
        # machine could, for ever.
        gaps = [b - a for times in stamps.values() for a, b in zip(times, times[1:]) if b > a]
        return int(statistics.median(gaps)) if gaps else 100_000_000

    def _linger(self):
        if self.record is None or self._stop.is_set():
            return
        end = time.monotonic()
        cap = end + self.max_linger
        while time.monotonic() < cap:
            with self._lock:
                last = max(end, self._last_answer or end)
            if time.monotonic() - last >= self.linger:
                return
            if self._check_abort():
                return
            time.sleep(0.05)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='tarfuse-play', description=__doc__.split('\n\n')[0],
        formatter_class=HelpFormatter)
    parser.add_argument('bag', type=Path, help='rosbag2 directory (MCAP or SQLite 3)')
    parser.add_argument('--rate', type=float, default=1.0, help='time factor (2 = twice as fast)')
    parser.add_argument('--loop', action='store_true', help='repeat until --duration or Ctrl-C')
    parser.add_argument('--start-delay', type=float, default=0.0,
                        help='seconds to wait before the first message')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='SECONDS',
                        help='start this many seconds (of bag time) into the bag, each round')
    parser.add_argument('--duration', type=float, default=None,
                        help='stop after this many seconds of playback (default: the whole bag)')
    parser.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                        help='wait until every played topic has N subscribers besides '
                        "this player's own --record subscription")
    parser.add_argument('--wait-timeout', type=float, default=60.0,
                        help='give up waiting for subscribers after this many seconds')
    parser.add_argument('--settle', type=float, default=0.5,
                        help='seconds to wait after subscribers matched, before playing')
    parser.add_argument('--ack-timeout', type=float, default=5.0,
                        help='after the last message, wait at most this many seconds until '
                             'reliable subscribers acknowledged every message (0: no wait)')
    parser.add_argument('--topics', nargs='+', default=None,
                        help='bag topics to play (default: all)')
    parser.add_argument('--remap', nargs='+', default=(), metavar='FROM:=TO',
                        help='publish bag topic FROM as TO (not onto a topic played too)')
    parser.add_argument('--restamp', action='store_true',
                        help='shift header stamps to the time each message is played '
                        '(offsets scaled by 1 / --rate)')
    parser.add_argument('--qos-reliability', choices=('reliable', 'best_effort'),
                        default='reliable', help='reliability of the publishers')
    parser.add_argument('--record', type=Path, default=None, help='bag directory to record to')
    parser.add_argument('--record-topics', nargs='+', default=(), metavar='TOPIC[:TYPE]',
                        help='topics to record, e.g. fused/image_raw detections /diagnostics')
    parser.add_argument('--record-reliability', choices=('reliable', 'best_effort'),
                        default='reliable', help='reliability of the recording subscriptions')
    parser.add_argument('--linger', type=float, default=2.0,
                        help='keep recording until no answer to an input came for this long')
    parser.add_argument('--max-linger', type=float, default=30.0,
                        help='stop recording at most this many seconds after playback')
    parser.add_argument('--clock', type=_clock_rate, nargs='?', const=DEFAULT_CLOCK_HZ,
                        default=None, metavar='HZ',
                        help='publish /clock with the bag time, HZ times a second (40 where '
                             'no HZ is given, as ros2 bag play --clock) and before each message, '
                             'for nodes with use_sim_time true')
    parser.add_argument('--stats', type=Path, default=None,
                        help='write published/received stamps and times to this JSON file')
    return parser


def _clock_rate(text):
    """Return ``--clock``'s rate (Hz); its range is checked by :class:`BagPlayer`."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a rate in Hz (give the bag before --clock, or a rate: '
            f'--clock {DEFAULT_CLOCK_HZ:g})') from None


def _terminate(_signum, _frame):
    """Stop the playback on the first SIGINT or SIGTERM (``KeyboardInterrupt``); ignore more.

    The clean-up then runs whole: a second Ctrl-C (a terminal and ros2 launch may send more
    than one) cut the recording's close short, with a traceback and a bag left without its
    metadata.yaml.
    """
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stats_problem(stats, bag, record):
    """Return why ``--stats`` would replace a file of the bag played or recorded, or None.

    ``--stats BAG/metadata.yaml`` replaced the played bag's metadata with the statistics,
    leaving a bag that no tool can read.
    """
    target = stats.resolve()
    if target.parent == bag.resolve() and target.exists():
        return f'it would replace {target.name} of the bag played ({bag})'
    if record is not None and target == record.resolve():  # a folder once recording starts
        return f'it names the bag recorded ({record}), a folder'
    if record is not None and target.parent == record.resolve() and (
            target.name == 'metadata.yaml' or target.suffix in ('.mcap', '.db3')):
        return f'it would replace {target.name} of the bag recorded ({record})'
    return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    # SIGINT stays ignored where the process was started so (a background job of a shell).
    previous = install_handler(_terminate, (signal.SIGINT, signal.SIGTERM))
    try:
        problem = None if args.stats is None else output_problem(args.stats)
        if problem:
            raise ValueError(f'--stats {str(args.stats)!r} cannot be written ({problem})')
        problem = None if args.stats is None else _stats_problem(args.stats, args.bag,
                                                                 args.record)
        if problem:
            raise ValueError(f'--stats {str(args.stats)!r}: {problem}; write it beside the bag')
        player = BagPlayer(
            args.bag, rate=args.rate, loop=args.loop, start_delay=args.start_delay,
            start_offset=args.start_offset,
            duration=args.duration, wait_for_subscribers=args.wait_for_subscribers,
            wait_timeout=args.wait_timeout, settle=args.settle, ack_timeout=args.ack_timeout,
            topics=args.topics,
            remap=_parse_remaps(args.remap),
            restamp=args.restamp, qos_reliability=args.qos_reliability, record=args.record,
            record_topics=args.record_topics, record_reliability=args.record_reliability,
            linger=args.linger, max_linger=args.max_linger, clock=args.clock)
        stats = player.run()
    except (ValueError, PlayError) as error:
        print(f'tarfuse-play: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the playback started (reading the bag)
        print('tarfuse-play: interrupted', file=sys.stderr)
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if args.stats is not None:
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        args.stats.write_text(json.dumps(stats.to_dict()))
    published = ', '.join(f'{t}: {n}' for t, n in sorted(stats.counts('published').items()))
    interrupted = ', interrupted' if stats.interrupted else ''
    print(f'published {published or "nothing"} ({stats.loops} round(s){interrupted})')
    if args.record is not None and not args.record.exists():
        print(f'nothing recorded ({args.record} not written)')
    elif args.record is not None:
        received = ', '.join(f'{t}: {n}' for t, n in sorted(stats.counts('received').items()))
        if not received and stats.published and not stats.interrupted:
            # A node slower than --linger per pair (a large camera on a CPU) answers after it.
            received = (f'nothing (no message on {" ".join(args.record_topics)} during the '
                        f'playback and the --linger {args.linger:g} s after it: a node slower '
                        f'than that per pair answers later (raise --linger), else check the '
                        f'topic names and ROS_DOMAIN_ID)')
        print(f'recorded to {args.record}: {received or "nothing"}')
    return 130 if stats.interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
