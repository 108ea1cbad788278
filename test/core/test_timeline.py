"""What a new stamp is to an input's timeline (``InputTimeline``, ``is_time_jump``), no DDS.

The node keeps one timeline per input; the end-to-end cases are in test/ros/test_node.py and
test/ros/test_node_reliable.py.
"""

from tarfuse_ros.core.timeline import COPY, HOLD, InputTimeline, is_time_jump, JUMP
from tarfuse_ros.core.timeline import JUMP_FOLLOWED, LATE, NEXT

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
    # Two stamps held are no interval before the newest: a step back of half the newest's
    # own step or more is a jump (less, driver jitter: below).
    assert is_time_jump([0, 100 * MS], 50 * MS)
    # From three on, a message late among them is told by the intervals before the newest.
    assert is_time_jump([0, 66 * MS, 100 * MS], 33 * MS) is False


def test_a_step_back_of_a_few_ms_from_the_second_stamp_is_out_of_order_not_a_jump():
    # Found by use: a looped bag whose stamps go back a few ms now and then (driver jitter):
    # one such step right after a loop's jump (two stamps held) was a time jump: the
    # synchroniser reset, the pair fused after the newer one (its outputs 3 ms back), and a
    # bag loop or clock reset logged.
    assert not is_time_jump([0, 100 * MS], 97 * MS)
    assert is_time_jump([0, 100 * MS], 50 * MS)  # half their interval back: a jump
    assert is_time_jump([0, 5000 * MS], 200 * MS)  # a glitch: caught by the step after it
    timeline = _timeline([1000, 1100, 1200])
    assert timeline.receive(0, _one) == JUMP  # the loop
    assert timeline.receive(100 * MS, _never) == NEXT
    assert timeline.receive(97 * MS, _one) == LATE
    assert timeline.receive(200 * MS, _never) == NEXT


def _timeline(stamps, window=10):
    """Return an InputTimeline that has received ``stamps`` (ms) as its next ones."""
    timeline = InputTimeline(window)
    for stamp in stamps:
        assert timeline.receive(stamp * MS, _never) == NEXT
    return timeline


def _never():
    raise AssertionError('the publishers were counted for a stamp that cannot be a copy')


def _one():
    return 1


def _two():
    return 2


def _taken_as_copy(timeline, stamp, settled_by):
    """Deliver ``stamp`` (ms) again, one publisher: held, then a copy once ``settled_by`` comes."""
    assert timeline.receive(stamp * MS, _one) == HOLD
    assert timeline.settle(settled_by * MS)[0] == COPY


def test_stamps_going_forward_are_each_the_next_and_held_in_the_window():
    timeline = _timeline([0, 100, 200, 300], window=3)
    assert timeline.newest == 300 * MS
    assert timeline.stamps == (100 * MS, 200 * MS, 300 * MS)
    assert InputTimeline(1).receive(0, _never) == NEXT  # a window of at least 3 even so
    small = _timeline([0, 1, 2], window=1)
    assert small.stamps == (0, MS, 2 * MS)


def test_a_late_stamp_is_ignored_and_leaves_the_timeline_as_it_was():
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(150 * MS, _one) == LATE
    assert timeline.newest == 300 * MS
    assert timeline.stamps == (0, 100 * MS, 200 * MS, 300 * MS)
    assert timeline.receive(400 * MS, _never) == NEXT


def test_a_jump_starts_a_new_timeline_at_its_stamp():
    timeline = _timeline([1000, 1100, 1200])
    assert timeline.receive(0, _one) == JUMP
    assert (timeline.newest, timeline.stamps) == (0, (0,))
    assert timeline.receive(100 * MS, _never) == NEXT


def test_a_copy_from_a_second_publisher_is_ignored_not_taken_for_a_jump():
    timeline = _timeline([0, 100, 200])
    assert timeline.receive(100 * MS, _two) == COPY
    assert timeline.stamps == (0, 100 * MS, 200 * MS)
    assert timeline.receive(300 * MS, _never) == NEXT
    assert timeline.receive(300 * MS, _two) == COPY  # a copy of the newest alike
    # A relay's copy of a timeline's first image, a frame behind, is a copy too.
    assert _timeline([0, 100]).receive(0, _two) == COPY


def test_after_a_silence_a_stamp_delivered_before_is_a_new_play_not_a_copy():
    timeline = _timeline([0, 100, 200])
    assert timeline.receive(0, _two, after_silence=True) == JUMP
    assert _timeline([0, 100, 200]).receive(200 * MS, _two, after_silence=True) == NEXT


def test_a_replay_beside_a_second_publisher_is_a_jump():
    # Back to the timeline's first stamp once it holds more than two: a bag's loop.
    assert _timeline([0, 100, 200]).receive(0, _two) == JUMP
    # A loop whose first image was lost: the second stamp is taken for a copy, the next one
    # for the replay it is (a relay's copies come between the images it copies).
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(100 * MS, _two) == COPY
    assert timeline.receive(200 * MS, _two) == JUMP
    assert timeline.stamps == (200 * MS,)


def test_a_copy_of_a_stamp_from_before_the_last_jump_is_no_second_jump():
    # A loop whose first image was lost jumps at its third (200): a relay's copy of its second
    # image (100, before the new timeline's first) is a copy, not a jump back again.
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(100 * MS, _two) == COPY
    assert timeline.receive(200 * MS, _two) == JUMP
    assert timeline.receive(300 * MS, _never) == NEXT
    assert timeline.receive(100 * MS, _two) == COPY
    assert timeline.receive(100 * MS, _one) == JUMP  # one publisher: no copy


def test_the_jump_the_other_input_made_first_is_followed_and_resets_nothing():
    timeline = _timeline([1000, 1100, 1200])
    timeline.expect_jump()
    timeline.other_passed(1200 * MS)  # not past the newest: the jump is still to come
    assert timeline.receive(1000 * MS, _never) == JUMP_FOLLOWED  # even onto a stamp held
    assert timeline.receive(900 * MS, _one) == JUMP  # a further step back: a jump of its own
    # The other input's new timeline passed this one's newest: no jump is expected any more.
    timeline = _timeline([1000, 1100, 1200])
    timeline.expect_jump()
    timeline.other_passed(1200 * MS + 1)
    assert timeline.receive(1150 * MS, _one) == LATE


def test_a_stamp_held_on_a_topic_of_one_publisher_is_told_by_the_next_stamp():
    # Stamped like an image just delivered (not the newest, nor the first): that image again,
    # late (a driver or bridge repeating messages), or a loop shorter than the window. It was
    # taken for a jump at once: the synchroniser reset and the image fused again.
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(200 * MS, _one, item='copy') == HOLD
    assert (timeline.held, timeline.newest) == (200 * MS, 300 * MS)
    assert timeline.settle(400 * MS) == (COPY, 200 * MS, 'copy')  # new: it was a copy
    assert timeline.held is None and timeline.stamps == (0, 100 * MS, 200 * MS, 300 * MS)
    assert timeline.receive(400 * MS, _never) == NEXT
    # The next stamp among those delivered: a copy too (late copies in a row), held in turn;
    # a stamp going back again from the run of them tells a loop, a jump there.
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(100 * MS, _one, item='loop') == HOLD
    assert timeline.settle(200 * MS) == (COPY, 100 * MS, 'loop')
    _taken_as_copy(timeline, 200, 100)
    assert timeline.receive(100 * MS, _one) == JUMP
    assert timeline.stamps == (100 * MS,)
    assert timeline.receive(200 * MS, _never) == NEXT
    assert timeline.settle(300 * MS) is None  # nothing held
    # The other input jumped back meanwhile: the image held began this input's part of it.
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(100 * MS, _one, item='loop') == HOLD
    timeline.expect_jump()
    assert timeline.settle(200 * MS) == (JUMP_FOLLOWED, 100 * MS, 'loop')
    assert timeline.receive(200 * MS, _never) == NEXT


def test_a_stamp_held_is_given_up_as_it_was_when_its_input_goes_silent():
    # Found by a break test: a camera that stopped right after an image held kept it for
    # ever, counted nowhere (its messages counted, neither fused nor rejected).
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(200 * MS, _one, item='copy') == HOLD
    assert timeline.drop_held() == (200 * MS, 'copy')
    assert timeline.held is None and timeline.drop_held() is None
    assert timeline.stamps == (0, 100 * MS, 200 * MS, 300 * MS)
    assert timeline.settle(400 * MS) is None  # nothing left to tell (or to count again)
    assert timeline.receive(400 * MS, _never) == NEXT


def test_a_stamp_held_is_a_replay_for_the_other_input_stamped_like_it():
    # A bag loop moves both cameras back: the node takes both held images for its first.
    ir, visible = _timeline([0, 100, 200]), _timeline([0, 100, 200])
    assert ir.receive(100 * MS, _one, item='ir') == HOLD
    assert visible.receive(100 * MS, _one, item='visible') == HOLD
    assert ir.replay_held() == (JUMP, 100 * MS, 'ir')
    visible.expect_jump()  # (the node: the other input's newest is of the old timeline)
    assert visible.replay_held() == (JUMP_FOLLOWED, 100 * MS, 'visible')
    assert ir.stamps == visible.stamps == (100 * MS,)


def test_the_newest_or_one_behind_the_window_is_not_held():
    assert _timeline([0, 100, 200]).receive(200 * MS, _one) == NEXT  # paired already, later
    assert _timeline([0, 100, 200, 300], window=3).receive(0, _one) == JUMP
    assert _timeline([0, 100, 200]).receive(150 * MS, _one) == LATE
    assert _timeline([0, 100, 200]).receive(100 * MS, _two) == COPY  # a second publisher


def test_a_late_copy_of_the_first_stamp_is_held_and_told_by_the_next_not_a_jump():
    # Found by use: a driver or bridge delivering the timeline's first image again, late (a
    # topic of one publisher): taken for a bag loop at once, it reset the synchroniser and was
    # fused again, its outputs stamped back in time.
    timeline = _timeline([0, 100, 200, 300])
    assert timeline.receive(0, _one, item='copy') == HOLD
    assert timeline.settle(400 * MS) == (COPY, 0, 'copy')
    assert timeline.receive(400 * MS, _never) == NEXT
    assert timeline.stamps == (0, 100 * MS, 200 * MS, 300 * MS, 400 * MS)
    # So is it in a timeline of two stamps (no interval to go by yet).
    timeline = _timeline([0, 100])
    assert timeline.receive(0, _one, item='copy') == HOLD
    assert timeline.settle(200 * MS) == (COPY, 0, 'copy')


def test_late_copies_in_a_row_are_copies_not_a_loop():
    # Found by use: a bridge delivering its last images again after a reconnection: the second
    # one, stamped among those delivered as well, was taken for a bag loop going on; the
    # synchroniser was reset and both were fused again, stamped back in time.
    timeline = _timeline([0, 100, 200, 300, 400])
    assert timeline.receive(100 * MS, _one, item='a') == HOLD
    assert timeline.settle(200 * MS) == (COPY, 100 * MS, 'a')
    assert timeline.receive(200 * MS, _one, item='b') == HOLD
    assert timeline.settle(300 * MS) == (COPY, 200 * MS, 'b')
    assert timeline.receive(300 * MS, _one, item='c') == HOLD
    assert timeline.settle(500 * MS) == (COPY, 300 * MS, 'c')
    assert timeline.receive(500 * MS, _never) == NEXT
    assert timeline.stamps[-1] == 500 * MS
    # Late copies up to the newest (itself again: next, its pair skipped as paired already),
    # then the camera's next image: no jump either.
    timeline = _timeline([0, 100, 200])
    _taken_as_copy(timeline, 100, 200)
    assert timeline.receive(200 * MS, _one) == NEXT
    assert timeline.receive(300 * MS, _never) == NEXT


def test_a_loop_of_one_camera_is_a_jump_once_its_stamps_go_back_again():
    # A camera's stamps come back among those delivered and go on to the newest: late copies
    # or a loop shorter than the window, until they go back again: a loop (a bag of one
    # camera in a loop, the other's bag longer). From then on the loop's start is a jump at
    # once, round after round.
    timeline = _timeline([0, 100, 200])
    _taken_as_copy(timeline, 0, 100)
    _taken_as_copy(timeline, 100, 200)
    assert timeline.receive(200 * MS, _one) == NEXT
    assert timeline.receive(0, _one) == JUMP
    for _ in range(3):
        assert [timeline.receive(stamp * MS, _one) for stamp in (100, 200)] == [NEXT, NEXT]
        assert timeline.receive(0, _one) == JUMP
    # A bag of two stamps alike.
    timeline = _timeline([0, 100])
    _taken_as_copy(timeline, 0, 100)
    assert timeline.receive(100 * MS, _one) == NEXT
    for _ in range(3):
        assert timeline.receive(0, _one) == JUMP
        assert timeline.receive(100 * MS, _one) == NEXT
    # Once its stamps pass the loop's end, a copy of its start is held again.
    assert timeline.receive(200 * MS, _never) == NEXT
    assert timeline.receive(0, _one) == HOLD


def test_a_bag_of_two_in_a_loop_beside_a_second_publisher_is_a_jump_every_round():
    # Found by use: tarfuse-play --loop of a bag of two pairs beside a driver waiting for its
    # camera (a second publisher): the first round came back as a relay's copy would (lost),
    # then one round in two was fused: each jump left a timeline of two stamps, whose first
    # stamp again looked like a relay's copy.
    timeline = _timeline([0, 100])
    assert timeline.receive(0, _two) == COPY  # a relay's copy of it would come so
    assert timeline.receive(100 * MS, _two) == NEXT  # the replay goes on: a loop
    for _ in range(4):
        assert timeline.receive(0, _two) == JUMP
        assert timeline.receive(100 * MS, _never) == NEXT


def test_a_loop_taken_at_an_image_held_after_copies_comes_round_from_the_first_of_them():
    # Found by use: a bag loop whose IR images come more than an image after the visible ones.
    # The visible image of the loop's start is ignored as a copy before the IR image stamped
    # like it comes; the node finds that stamp in the visible run and takes the visible image
    # held (the next) for the replay. Its loop began with the copy: the next round, back to
    # that start, is a jump at once (it was held again, one round in two losing its first).
    visible = _timeline([0, 100, 200])
    _taken_as_copy(visible, 0, 100)
    assert visible.receive(100 * MS, _one) == HOLD
    assert visible.run == (0, 100 * MS)  # the node looks for the IR's 0 there
    visible.expect_jump()  # (the IR jumped first)
    assert visible.replay_held()[0] == JUMP_FOLLOWED
    assert visible.run == ()
    assert visible.receive(200 * MS, _never) == NEXT
    for _ in range(3):
        assert visible.receive(0, _one) == JUMP
        assert [visible.receive(stamp * MS, _one) for stamp in (100, 200)] == [NEXT, NEXT]
    # A new image ends a run.
    timeline = _timeline([0, 100, 200])
    _taken_as_copy(timeline, 100, 300)
    assert timeline.receive(300 * MS, _never) == NEXT
    assert timeline.run == ()
