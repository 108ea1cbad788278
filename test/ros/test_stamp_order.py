"""Telling a message delivered out of order from a time jump (``is_time_jump``), without DDS.

The node feeds it each input's last stamps; the end-to-end cases are in test_node.py and
test_node_reliable.py.
"""

from tarfuse_ros.ros.node import is_time_jump

MS = 1_000_000


def test_a_stamp_among_those_just_delivered_is_out_of_order():
    recent = [0, 66 * MS, 100 * MS]
    assert not is_time_jump(recent, 33 * MS)
    assert not is_time_jump(recent, 99 * MS)


def test_a_stamp_before_every_one_held_is_a_time_jump():
    assert is_time_jump([500 * MS, 533 * MS], 499 * MS)
    assert is_time_jump([500 * MS, 533 * MS], 0)


def test_a_stamp_replayed_is_a_time_jump_even_inside_the_window():
    # A bag of three stamps looped, after an earlier bag: its first stamp comes back while the
    # window still holds it, later than the earlier bag's stamps.
    recent = [-1000 * MS, 0, 33 * MS, 66 * MS]
    assert is_time_jump(recent, 0)
    assert is_time_jump(recent, 33 * MS)
    assert not is_time_jump(recent, 10 * MS)


def test_a_step_back_from_a_stamp_far_ahead_of_the_others_is_a_time_jump():
    # One stamp 5 s ahead (a clock that glitched forward) among frames 100 ms apart: the next
    # frames, stamped on time, would all fall among the stamps held; they are a jump back.
    recent = [0, 100 * MS, 200 * MS, 300 * MS, 5300 * MS]
    assert is_time_jump(recent, 400 * MS)
    assert is_time_jump([0, 100 * MS, 200 * MS], 100 * MS - 1) is False  # 1 frame late
    assert is_time_jump([100 * MS], 50 * MS)  # one stamp held: no interval to go by


def test_a_glitch_among_the_first_stamps_of_a_timeline_is_a_time_jump():
    # The glitch as the second or third stamp since start-up or a jump: the median interval
    # was the glitch's own step (or, of two, the longer), so every later message, stamped on
    # time, was ignored as late until the clock reached the glitch (5 s here).
    assert is_time_jump([0, 5000 * MS], 100 * MS)
    assert is_time_jump([0, 100 * MS, 5100 * MS], 200 * MS)
    # Two stamps held are no interval before the newest: a step back between them is a jump.
    assert is_time_jump([0, 100 * MS], 50 * MS)
    # From three on, a message late among them is told by the intervals before the newest.
    assert is_time_jump([0, 66 * MS, 100 * MS], 33 * MS) is False
