"""Behaviour of the project's message_filters stand-in (tools/ros_env/shims)."""

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sensor_msgs.msg import Image
from stand_in import import_stand_in
from std_msgs.msg import Header

import_stand_in('message_filters')

from message_filters import (  # noqa: E402,I100
    ApproximateTimeSynchronizer, Cache, SimpleFilter, Subscriber, TimeSynchronizer)


def image(stamp_s, frame_id='cam'):
    """Return a real sensor_msgs/Image stamped at ``stamp_s`` seconds."""
    sec = int(stamp_s)
    nanosec = int(round((stamp_s - sec) * 1e9))
    msg = Image()
    msg.header = Header(frame_id=frame_id)
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = nanosec
    return msg


def stamp_s(msg):
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class Collector:
    """Record every set a synchroniser emits, as stamps per input."""

    def __init__(self):
        self.sets = []

    def __call__(self, *msgs):
        self.sets.append(tuple(round(stamp_s(m), 6) for m in msgs))


def make_sync(kind, n_inputs=2, **kwargs):
    inputs = [SimpleFilter() for _ in range(n_inputs)]
    sync = kind(inputs, **kwargs)
    out = Collector()
    sync.registerCallback(out)
    return inputs, sync, out


def test_simple_filter_passes_message_and_extra_args():
    f = SimpleFilter()
    got = []
    f.registerCallback(lambda msg, tag: got.append((msg, tag)), 'a')
    conn = f.registerCallback(lambda msg, tag: got.append((msg, tag)), 'b')
    f.signalMessage(1)
    del f.callbacks[conn]
    f.signalMessage(2)
    # After removing one callback a new registration must not overwrite the remaining one.
    f.registerCallback(lambda msg, tag: got.append((msg, tag)), 'c')
    f.signalMessage(3)
    assert got == [(1, 'a'), (1, 'b'), (2, 'a'), (3, 'a'), (3, 'c')]


def test_exact_sync_pairs_equal_stamps_only():
    (a, b), _, out = make_sync(TimeSynchronizer, queue_size=10)
    a.signalMessage(image(1.0))
    b.signalMessage(image(1.001))  # 1 ms apart: not exact
    assert out.sets == []
    b.signalMessage(image(1.0))
    assert out.sets == [(1.0, 1.0)]
    a.signalMessage(image(1.001))
    assert out.sets == [(1.0, 1.0), (1.001, 1.001)]


def test_exact_sync_evicts_oldest_beyond_queue_size():
    (a, b), sync, out = make_sync(TimeSynchronizer, queue_size=3)
    for t in (1.0, 2.0, 3.0, 4.0):
        a.signalMessage(image(t))
    assert len(sync.queues[0]) == 3
    b.signalMessage(image(1.0))  # its partner was evicted
    assert out.sets == []
    b.signalMessage(image(2.0))
    assert out.sets == [(2.0, 2.0)]


def test_exact_sync_three_inputs_emit_in_input_order():
    (a, b, c), _, out = make_sync(TimeSynchronizer, n_inputs=3, queue_size=5)
    c.signalMessage(image(5.0))
    a.signalMessage(image(5.0))
    b.signalMessage(image(4.0))
    assert out.sets == []
    b.signalMessage(image(5.0))
    assert out.sets == [(5.0, 5.0, 5.0)]


def test_exact_sync_callback_gets_messages_in_order_of_inputs():
    inputs = [SimpleFilter(), SimpleFilter()]
    sync = TimeSynchronizer(inputs, 4)
    got = []
    sync.registerCallback(lambda ir, vi: got.append((ir.header.frame_id, vi.header.frame_id)))
    inputs[1].signalMessage(image(2.0, 'visible'))
    inputs[0].signalMessage(image(2.0, 'infrared'))
    assert got == [('infrared', 'visible')]


def test_approximate_pairs_within_slop_once():
    (ir, vi), _, out = make_sync(ApproximateTimeSynchronizer, queue_size=10, slop=0.01)
    ir.signalMessage(image(10.000))
    vi.signalMessage(image(10.004))
    assert out.sets == [(10.0, 10.004)]
    # Both were consumed: another visible frame near 10.0 finds no partner.
    vi.signalMessage(image(10.006))
    assert out.sets == [(10.0, 10.004)]


def test_approximate_does_not_pair_outside_slop():
    (ir, vi), sync, out = make_sync(ApproximateTimeSynchronizer, queue_size=10, slop=0.01)
    ir.signalMessage(image(10.000))
    vi.signalMessage(image(10.030))
    vi.signalMessage(image(9.980))
    assert out.sets == []
    assert [len(q) for q in sync.queues] == [1, 2]


def test_approximate_picks_nearest_partner_and_keeps_older_ones_queued():
    (ir, vi), sync, out = make_sync(ApproximateTimeSynchronizer, queue_size=10, slop=0.05)
    for t in (1.00, 1.03, 1.06):
        vi.signalMessage(image(t))
    ir.signalMessage(image(1.035))
    assert out.sets == [(1.035, 1.03)]
    # As upstream: only the emitted messages leave the queues; 1.00 can still pair later.
    assert sorted(sync.queues[1]) == [1_000_000_000, 1_060_000_000]
    ir.signalMessage(image(1.005))
    assert out.sets == [(1.035, 1.03), (1.005, 1.0)]
    ir.signalMessage(image(1.07))
    assert out.sets == [(1.035, 1.03), (1.005, 1.0), (1.07, 1.06)]


def test_approximate_spread_must_be_strictly_below_slop():
    # Upstream's rule: max(stamps) - min(stamps) < slop (a spread equal to slop does not pair).
    (ir, vi), _, out = make_sync(ApproximateTimeSynchronizer, queue_size=10, slop=0.5)
    ir.signalMessage(image(3.0))
    vi.signalMessage(image(3.5))
    assert out.sets == []
    vi.signalMessage(image(3.25))
    assert out.sets == [(3.0, 3.25)]


class _Header:
    pass


class _Stamped:
    """A stamped message as upstream's test builds it (``header.stamp`` an rclpy Time)."""

    def __init__(self, stamp, data):
        self.header = _Header()
        self.header.stamp = stamp
        self.data = data


class _Headerless:
    def __init__(self, data):
        self.data = data


def test_approximate_pairs_two_scrambled_sequences_completely():
    # ros2/message_filters test/test_approxsync.py: N stamped messages per input, each input
    # fed in a random order, queue size N: every message finds its partner.
    from rclpy.time import Time

    rng = random.Random(0)
    for n in range(1, 10):
        seq0 = [_Stamped(Time(seconds=t), rng.random()) for t in range(n)]
        seq1 = [_Stamped(Time(seconds=t), rng.random()) for t in range(n)]
        inputs = [SimpleFilter(), SimpleFilter()]
        sync = ApproximateTimeSynchronizer(inputs, n, 0.1)
        pairs = []
        sync.registerCallback(lambda a, b: pairs.append((a, b)))
        for msg in rng.sample(seq0, n):
            inputs[0].signalMessage(msg)
        assert pairs == []
        for msg in rng.sample(seq1, n):
            inputs[1].signalMessage(msg)
        assert set(pairs) == set(zip(seq0, seq1)), f'N={n}'
        assert all(len(q) == 0 for q in sync.queues)


def test_approximate_pairs_headerless_messages_with_the_nearest_stamped_ones():
    # The headerless half of the same upstream test: each headerless message is stamped 'now'
    # and pairs with the nearest stamped message still queued.
    from rclpy.clock import ROSClock
    from rclpy.duration import Duration

    rng = random.Random(0)
    for n in range(1, 10):
        seq0 = [_Stamped(ROSClock().now() + Duration(seconds=t), rng.random())
                for t in range(n)]
        seq1 = [_Headerless(rng.random()) for _ in range(n)]
        inputs = [SimpleFilter(), SimpleFilter()]
        sync = ApproximateTimeSynchronizer(inputs, n, 10, allow_headerless=True)
        pairs = []
        sync.registerCallback(lambda a, b: pairs.append((a, b)))
        for msg in rng.sample(seq0, n):
            inputs[0].signalMessage(msg)
        assert pairs == []
        for msg in seq1:
            inputs[1].signalMessage(msg)
        assert set(pairs) == set(zip(seq0, seq1)), f'N={n}'


def test_approximate_queue_limit_evicts_oldest():
    (ir, vi), sync, out = make_sync(ApproximateTimeSynchronizer, queue_size=2, slop=0.001)
    for t in (1.0, 2.0, 3.0):
        ir.signalMessage(image(t))
    assert sorted(sync.queues[0]) == [2_000_000_000, 3_000_000_000]
    vi.signalMessage(image(1.0))  # the partner was evicted
    assert out.sets == []
    vi.signalMessage(image(3.0))
    assert out.sets == [(3.0, 3.0)]


def test_approximate_three_inputs_need_all_within_slop():
    (a, b, c), _, out = make_sync(
        ApproximateTimeSynchronizer, n_inputs=3, queue_size=10, slop=0.02)
    a.signalMessage(image(5.000))
    b.signalMessage(image(5.015))
    c.signalMessage(image(5.030))  # within slop of b, but spread to a is 30 ms
    assert out.sets == []
    a.signalMessage(image(5.025))
    assert out.sets == [(5.025, 5.015, 5.03)]


def test_approximate_out_of_order_arrival():
    (ir, vi), _, out = make_sync(ApproximateTimeSynchronizer, queue_size=10, slop=0.005)
    # Visible frames arrive out of order, before any infrared.
    for t in (2.2, 2.0, 2.1):
        vi.signalMessage(image(t))
    ir.signalMessage(image(2.101))
    assert out.sets == [(2.101, 2.1)]
    ir.signalMessage(image(2.199))
    assert out.sets == [(2.101, 2.1), (2.199, 2.2)]


def test_approximate_headerless_messages_are_dropped_unless_allowed():
    class Headerless:
        pass

    inputs = [SimpleFilter(), SimpleFilter()]
    strict = ApproximateTimeSynchronizer(inputs, 5, 0.5)
    inputs[0].signalMessage(Headerless())
    assert strict.queues[0] == {}

    inputs = [SimpleFilter(), SimpleFilter()]
    lenient = ApproximateTimeSynchronizer(inputs, 5, 0.5, allow_headerless=True)
    got = []
    lenient.registerCallback(lambda x, y: got.append((x, y)))
    first, second = Headerless(), Headerless()
    inputs[0].signalMessage(first)
    inputs[1].signalMessage(second)
    # Both are stamped with the current ROS time, microseconds apart: one pair.
    assert got == [(first, second)]


def test_reset_by_clearing_queues_under_lock():
    # The portable reset (same attributes on the distro's class): after time jumps backwards
    # (a bag replayed in a loop), stale newer stamps must not block or mis-pair new frames.
    (ir, vi), sync, out = make_sync(ApproximateTimeSynchronizer, queue_size=5, slop=0.01)
    ir.signalMessage(image(100.0))
    vi.signalMessage(image(100.5))
    with sync.lock:
        for queue in sync.queues:
            queue.clear()
    assert all(len(q) == 0 for q in sync.queues)
    ir.signalMessage(image(0.1))
    vi.signalMessage(image(0.102))
    assert out.sets == [(0.1, 0.102)]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match='queue_size'):
        TimeSynchronizer([SimpleFilter(), SimpleFilter()], 0)
    with pytest.raises(ValueError, match='slop'):
        ApproximateTimeSynchronizer([SimpleFilter(), SimpleFilter()], 5, -0.1)


def test_cache_keeps_newest_and_answers_time_queries():
    src = SimpleFilter()
    cache = Cache(src, cache_size=3)
    passed = []
    cache.registerCallback(passed.append)
    for t in (1.0, 2.0, 3.0, 4.0):
        src.signalMessage(image(t))
    assert len(passed) == 4
    assert [stamp_s(m) for m in cache.cache_msgs] == [2.0, 3.0, 4.0]
    from rclpy.time import Time
    assert [stamp_s(m) for m in cache.getInterval(Time(seconds=2.5), Time(seconds=4))] == [
        3.0, 4.0]
    assert stamp_s(cache.getElemAfterTime(Time(seconds=2.5))) == 3.0
    assert stamp_s(cache.getElemBeforeTime(Time(seconds=2.5))) == 2.0
    assert cache.getLastestTime().nanoseconds == 4_000_000_000
    assert cache.getOldestTime().nanoseconds == 2_000_000_000
    assert stamp_s(cache.getLast()) == 4.0


def test_approximate_is_thread_safe():
    n = 300
    (ir, vi), _, out = make_sync(ApproximateTimeSynchronizer, queue_size=n, slop=0.002)

    def feed(f, offset):
        for i in range(n):
            f.signalMessage(image(1.0 + i * 0.01 + offset))

    threads = [threading.Thread(target=feed, args=(ir, 0.0)),
               threading.Thread(target=feed, args=(vi, 0.001))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the two feeders as much as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(out.sets) == n
    for a, b in out.sets:
        assert abs(a - b) <= 0.002 + 1e-9
    stamps = [s[0] for s in out.sets]
    assert stamps == sorted(stamps), 'emitted sets never go back in time'
    assert len(set(stamps)) == len(stamps), 'each message is emitted at most once'


PUBLISHER = textwrap.dedent("""
    import sys
    import time
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('shim_pair_publisher')
    pubs = [node.create_publisher(Image, name, qos_profile_sensor_data)
            for name in ('infrared/image_raw', 'visible/image_raw')]
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and min(p.get_subscription_count() for p in pubs) < 1:
        rclpy.spin_once(node, timeout_sec=0.05)
    frame = 0
    while time.monotonic() < deadline:
        for k, (pub, enc, ch, offset) in enumerate(
                [(pubs[0], 'mono8', 1, 0), (pubs[1], 'bgr8', 3, 3_000_000)]):
            msg = Image()
            msg.header.stamp.sec = 50 + frame
            msg.header.stamp.nanosec = offset
            msg.header.frame_id = 'ir' if k == 0 else 'vi'
            msg.height, msg.width, msg.encoding = 24, 32, enc
            msg.step = 32 * ch
            msg.data = bytes([frame % 256]) * (24 * 32 * ch)
            pub.publish(msg)
        frame += 1
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()
""")


@pytest.mark.dds
def test_subscriber_and_approximate_sync_over_dds(domain_ids):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    domain_id = random.SystemRandom().choice(domain_ids)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    proc = None
    try:
        node = rclpy.create_node('shim_sync_test', context=context)
        ir_sub = Subscriber(node, Image, 'infrared/image_raw',
                            qos_profile=qos_profile_sensor_data)
        vi_sub = Subscriber(node, Image, 'visible/image_raw',
                            qos_profile=qos_profile_sensor_data)
        assert ir_sub.getTopic() == 'infrared/image_raw'
        assert ir_sub.sub.topic_name == '/infrared/image_raw'
        assert ir_sub.topic_name == '/infrared/image_raw'  # delegated to the subscription
        sync = ApproximateTimeSynchronizer([ir_sub, vi_sub], queue_size=5, slop=0.01)
        pairs = []
        sync.registerCallback(lambda ir, vi: pairs.append((ir, vi)))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        proc = subprocess.Popen([sys.executable, '-c', PUBLISHER], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 25.0
        while time.monotonic() < deadline and (
                node.count_publishers('/infrared/image_raw') < 1
                or node.count_publishers('/visible/image_raw') < 1):
            executor.spin_once(timeout_sec=0.05)
        assert node.count_publishers('/visible/image_raw') >= 1, 'publisher never discovered'
        while time.monotonic() < deadline and not pairs:
            executor.spin_once(timeout_sec=0.05)
        assert pairs, 'no synchronised pair arrived within 25 s'
        ir, vi = pairs[0]
        assert (ir.encoding, vi.encoding) == ('mono8', 'bgr8')
        assert (ir.header.frame_id, vi.header.frame_id) == ('ir', 'vi')
        assert ir.header.stamp.sec == vi.header.stamp.sec
        assert vi.header.stamp.nanosec - ir.header.stamp.nanosec == 3_000_000
        assert ir.data[0] == vi.data[0] == ir.header.stamp.sec - 50
        ir_sub.destroy()
        vi_sub.destroy()
        assert ir_sub.sub is None
        assert node.count_subscribers('/infrared/image_raw') == 0
        executor.remove_node(node)
        node.destroy_node()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        rclpy.shutdown(context=context)
