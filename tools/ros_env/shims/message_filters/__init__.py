"""
A small, API-compatible subset of ROS 2 ``message_filters`` (Python), written for tarfuse_ros.

This is the tarfuse_ros project's own code, installed only into the project's virtualenv on
machines without a ROS distro (see ``tools/ros_env/shims/README.md``). On a ROS install the
distro's ``message_filters`` is used instead; this package must never be installed there.

Names and call signatures follow the real package: :class:`SimpleFilter`
(``registerCallback``, ``signalMessage``), :class:`Subscriber`, :class:`Cache`,
:class:`TimeSynchronizer` and :class:`ApproximateTimeSynchronizer`. Both synchronisers keep
the real attributes ``queues`` (one ``{stamp_ns: msg}`` dict per input), ``lock``,
``queue_size`` and ``input_connections``, so a portable reset (e.g. after time jumped
backwards) works on both implementations::

    with sync.lock:
        for queue in sync.queues:
            queue.clear()

``ApproximateTimeSynchronizer`` pairs like the real Python class (ros2/message_filters): a new
message is matched against the other inputs' queued messages whose stamps lie within ``slop`` of
it, nearest first; the first combination whose spread (newest - oldest stamp) is strictly below
``slop`` is emitted and removed from the queues. Older unmatched messages stay queued until
``queue_size`` newer ones push them out, so out-of-order arrivals still pair.

Differences from the real Python implementation, all deliberate and documented:

* ``registerCallback`` hands out unique connection ids (the real one reuses ``len(callbacks)``,
  which can overwrite a callback after one was removed).
* ``Subscriber.destroy()`` removes the subscription through ``node.destroy_subscription`` (so
  the node forgets it too); other attributes are delegated to the rclpy subscription, as in
  the real class.
* Bad arguments raise ``ValueError`` at construction (``queue_size`` < 1, negative or
  infinite ``slop``) instead of failing later.
"""

import itertools
import threading

from rclpy.clock import ROSClock
from rclpy.duration import Duration
import rclpy.logging
from rclpy.time import Time

__all__ = [
    'ApproximateTimeSynchronizer',
    'Cache',
    'SimpleFilter',
    'Subscriber',
    'TimeSynchronizer',
]

# Marks this package as tarfuse_ros's stand-in (tests use it to tell it from the distro's).
__tarfuse_shim__ = True

_NS_PER_S = 1_000_000_000


def _stamp_to_ns(stamp):
    """Return a stamp (builtin_interfaces/Time or rclpy Time) in integer nanoseconds."""
    if hasattr(stamp, 'nanoseconds'):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def _has_stamp(msg):
    header = getattr(msg, 'header', None)
    return header is not None and hasattr(header, 'stamp')


class SimpleFilter:
    """Base of every filter: holds callbacks and calls them with each output."""

    def __init__(self):
        self.callbacks = {}
        self._next_connection = 0

    def registerCallback(self, cb, *args):
        """
        Register ``cb`` to be called with this filter's output followed by ``args``.

        Returns a connection id; ``del filter.callbacks[conn]`` disconnects it.
        """
        conn = self._next_connection
        self._next_connection += 1
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg):
        """Call every registered callback with ``msg`` (+ its extra arguments)."""
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class Subscriber(SimpleFilter):
    """
    Source filter wrapping an rclpy subscription.

    Arguments are those of ``Node.create_subscription`` without the callback. The default
    ``qos_profile`` is 10 (reliable, depth 10) as in the real class: pass the QoS explicitly
    for camera topics (sensor-data publishers are best effort, which a reliable subscription
    does not match).
    """

    def __init__(self, node, msg_type, topic, qos_profile=10, **kwargs):
        SimpleFilter.__init__(self)
        self.node = node
        self.msg_type = msg_type
        self.topic = topic
        self.sub = node.create_subscription(
            msg_type, topic, self.callback, qos_profile, **kwargs)

    def callback(self, msg):
        self.signalMessage(msg)

    def getTopic(self):
        return self.topic

    def destroy(self):
        """Destroy the rclpy subscription (through the node, which then forgets it)."""
        sub = self.__dict__.get('sub')
        if sub is not None:
            self.node.destroy_subscription(sub)
            self.sub = None

    def __getattr__(self, key):
        """Serve the rclpy subscription's attributes, as the real class does."""
        sub = self.__dict__.get('sub')
        if sub is None:
            raise AttributeError(key)
        return getattr(sub, key)


class Cache(SimpleFilter):
    """
    Keep the newest ``cache_size`` messages of a filter and pass each one on.

    Headerless messages are dropped (with a warning) unless ``allow_headerless`` is true,
    in which case they are stored with the current ROS time.
    """

    def __init__(self, f, cache_size=1, allow_headerless=False):
        SimpleFilter.__init__(self)
        self.cache_size = int(cache_size)
        self.cache_msgs = []
        self.cache_times = []
        self.allow_headerless = allow_headerless
        self.connectInput(f)

    def connectInput(self, f):
        self.incoming_connection = f.registerCallback(self.add)

    def add(self, msg):
        if _has_stamp(msg):
            stamp = _stamp_to_ns(msg.header.stamp)
        elif self.allow_headerless:
            stamp = ROSClock().now().nanoseconds
        else:
            rclpy.logging.get_logger('message_filters_cache').warning(
                'dropping a message without header.stamp (allow_headerless is False)')
            return
        self.cache_times.append(stamp)
        self.cache_msgs.append(msg)
        while len(self.cache_msgs) > self.cache_size:
            del self.cache_msgs[0]
            del self.cache_times[0]
        self.signalMessage(msg)

    def getInterval(self, from_stamp, to_stamp):
        """Return the cached messages with ``from_stamp <= stamp <= to_stamp``."""
        lo, hi = _stamp_to_ns(from_stamp), _stamp_to_ns(to_stamp)
        if lo > hi:
            raise ValueError(f'from_stamp ({lo} ns) is after to_stamp ({hi} ns)')
        return [m for m, t in zip(self.cache_msgs, self.cache_times) if lo <= t <= hi]

    def getElemAfterTime(self, stamp):
        """Return the oldest message with a stamp at or after ``stamp`` (or None)."""
        ns = _stamp_to_ns(stamp)
        newer = [m for m, t in zip(self.cache_msgs, self.cache_times) if t >= ns]
        return newer[0] if newer else None

    def getElemBeforeTime(self, stamp):
        """Return the newest message with a stamp at or before ``stamp`` (or None)."""
        ns = _stamp_to_ns(stamp)
        older = [m for m, t in zip(self.cache_msgs, self.cache_times) if t <= ns]
        return older[-1] if older else None

    def getLastestTime(self):
        """Return the newest stamp (rclpy Time) or None; the real API's spelling."""
        if not self.cache_times:
            return None
        return Time(nanoseconds=self.cache_times[-1])

    def getOldestTime(self):
        """Return the oldest stamp (rclpy Time) or None."""
        if not self.cache_times:
            return None
        return Time(nanoseconds=self.cache_times[0])

    def getLast(self):
        """Return the newest message or None."""
        return self.cache_msgs[-1] if self.cache_msgs else None


class TimeSynchronizer(SimpleFilter):
    """
    Pass on one message per input when all inputs have a message with the same stamp.

    The callback gets ``(msg_0, ..., msg_N-1)`` in the order of ``fs``. Each input keeps at
    most ``queue_size`` messages waiting for their set; the oldest is evicted first.
    Stamps are read from ``msg.header.stamp``.
    """

    def __init__(self, fs, queue_size):
        SimpleFilter.__init__(self)
        queue_size = int(queue_size)
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.queue_size = queue_size
        self.lock = threading.Lock()
        self.connectInput(fs)

    def connectInput(self, fs):
        self.queues = [{} for _ in fs]
        self.input_connections = [
            f.registerCallback(self.add, q, i_q)
            for i_q, (f, q) in enumerate(zip(fs, self.queues))]

    def _push(self, my_queue, stamp_ns, msg):
        my_queue[stamp_ns] = msg
        while len(my_queue) > self.queue_size:
            del my_queue[min(my_queue)]

    def add(self, msg, my_queue, my_queue_index=None):
        if not _has_stamp(msg):
            raise ValueError(
                f'TimeSynchronizer needs messages with header.stamp, got {type(msg).__name__}')
        stamp_ns = _stamp_to_ns(msg.header.stamp)
        with self.lock:
            self._push(my_queue, stamp_ns, msg)
            common = set(self.queues[0]).intersection(*self.queues[1:])
            for t in sorted(common):
                msgs = [q.pop(t) for q in self.queues]
                self.signalMessage(*msgs)


class ApproximateTimeSynchronizer(TimeSynchronizer):
    """
    Pass on one message per input when their stamps lie within ``slop`` seconds.

    On each arrival, every other input's queued messages within ``slop`` of the new stamp are
    candidates, nearest first; the first combination (in that order) whose spread, newest
    minus oldest stamp, is strictly below ``slop`` is emitted and its messages are removed.
    Unmatched messages stay queued (each input keeps at most ``queue_size``, oldest evicted
    first), so messages arriving out of order still find their partners. Note that with
    ``slop`` 0 nothing pairs (use :class:`TimeSynchronizer` for identical stamps).
    """

    def __init__(self, fs, queue_size, slop, allow_headerless=False):
        slop = float(slop)
        if not slop >= 0.0 or slop == float('inf'):
            raise ValueError(f'slop must be a finite number of seconds >= 0, got {slop}')
        TimeSynchronizer.__init__(self, fs, queue_size)
        self.slop = Duration(seconds=slop)
        self.allow_headerless = allow_headerless

    def add(self, msg, my_queue, my_queue_index=None):
        if _has_stamp(msg):
            stamp_ns = _stamp_to_ns(msg.header.stamp)
        elif self.allow_headerless:
            stamp_ns = ROSClock().now().nanoseconds
        else:
            rclpy.logging.get_logger('message_filters_approx').warning(
                'dropping a message without header.stamp (allow_headerless is False)')
            return
        with self.lock:
            self._push(my_queue, stamp_ns, msg)
            if my_queue_index is None:
                my_queue_index = next(
                    i for i, q in enumerate(self.queues) if q is my_queue)
            chosen = self._first_set(my_queue_index, stamp_ns)
            if chosen is None:
                return
            msgs = [q.pop(t) for q, t in zip(self.queues, chosen)]
            self.signalMessage(*msgs)

    def _first_set(self, index, stamp_ns):
        """Return per-input stamps of the first set within ``slop`` holding ``stamp_ns``."""
        slop_ns = self.slop.nanoseconds
        candidates = []
        for i, queue in enumerate(self.queues):
            if i == index:
                continue
            near = [s for s in queue if abs(s - stamp_ns) <= slop_ns]
            if not near:
                return None
            # Nearest first; equally near stamps keep their queue order (a stable sort).
            candidates.append(sorted(near, key=lambda s: abs(s - stamp_ns)))
        for others in itertools.product(*candidates):
            chosen = list(others)
            chosen.insert(index, stamp_ns)
            if max(chosen) - min(chosen) < slop_ns and all(
                    t in q for q, t in zip(self.queues, chosen)):
                return chosen
        return None
