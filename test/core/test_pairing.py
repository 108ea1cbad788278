"""Whether a synchronised pair was the nearest in time (core.pairing), stamp by stamp."""

from tarfuse_ros.core.pairing import NearestPairCheck

MS = 1_000_000
IR, VISIBLE = 0, 1


def test_a_visible_image_nearer_to_the_ir_after_the_pair_makes_it_not_the_nearest():
    # Visible 0 ms queued, IR 25 ms pairs with it (within a 50 ms slop); visible 33 ms, 8 ms
    # from the IR, comes next: the pair was not the nearest, by 17 ms.
    check = NearestPairCheck()
    assert check.message(VISIBLE, 0) is None  # no pair yet
    assert check.paired((25 * MS, 0)) is None
    assert check.message(VISIBLE, 33 * MS) is None  # the IR side is still to come
    verdict = check.message(IR, 125 * MS)
    assert not verdict.nearest
    assert (verdict.index, verdict.nearer_ns) == (VISIBLE, 17 * MS)
    assert check.share_not_nearest() == (1, 1)


def test_next_images_farther_from_the_pair_leave_it_the_nearest():
    check = NearestPairCheck()
    check.paired((10 * MS, 0))
    assert check.message(IR, 110 * MS) is None
    verdict = check.message(VISIBLE, 33 * MS)  # 23 ms from the IR, farther than 10
    assert verdict.nearest and verdict.index is None and verdict.nearer_ns == 0


def test_a_next_image_nearer_by_the_tolerance_or_less_is_no_better():
    check = NearestPairCheck(tolerance_ns=1 * MS)
    check.paired((17 * MS, 0))
    check.message(VISIBLE, 33 * MS)  # 16 ms from the IR: 1 ms nearer, within the tolerance
    assert check.message(IR, 128 * MS).nearest


def test_a_repeated_or_older_stamp_judges_nothing():
    check = NearestPairCheck()
    check.paired((25 * MS, 0))
    assert check.message(VISIBLE, 0) is None  # a duplicate of the pair's own stamp
    assert check.message(IR, 25 * MS) is None
    check.message(VISIBLE, 33 * MS)
    assert not check.message(IR, 136 * MS).nearest


def test_a_new_pair_settles_the_open_one_by_what_came_and_reset_forgets_it():
    check = NearestPairCheck()
    check.paired((25 * MS, 0))
    check.message(VISIBLE, 33 * MS)  # nearer; the IR's next message has not come
    settled = check.paired((136 * MS, 133 * MS))
    assert not settled.nearest and settled.index == VISIBLE
    check.reset()  # a time jump: the pair held is not judged
    assert check.message(IR, 240 * MS) is None and check.message(VISIBLE, 166 * MS) is None
    assert check.share_not_nearest() == (1, 1)


def test_the_window_keeps_the_last_verdicts():
    check = NearestPairCheck(window=3)
    for k in range(5):
        base = k * 100 * MS
        check.paired((base + 25 * MS, base))
        check.message(VISIBLE, base + (33 if k < 2 else 60) * MS)
        check.message(IR, base + 100 * MS + 25 * MS)
    # The first two were not the nearest (a visible image 8 ms from the IR came next); the
    # last three were (60 ms is farther than 25).
    assert check.share_not_nearest() == (0, 3)
