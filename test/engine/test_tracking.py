"""Stable segment ids (ovseg_ros.engine.tracking): persistence over a moving sequence, ids
never given twice, lost tracks kept a few frames, per camera and class, the reset rules."""

import numpy as np
import pytest

from ovseg_ros.engine.segments import Segment, find_segments
from ovseg_ros.engine.tracking import SegmentTracker
from object_scenes import BOX, CHAIR, HEIGHT, NAMES, PERSON, WIDTH, Face, render, scores_of

SIZE = (HEIGHT, WIDTH)


def segment(class_id: int, x: int, y: int, width: int = 40, height: int = 40) -> Segment:
    """A rectangular segment (only its class and box matter to the tracker)."""
    return Segment(class_id, width * height, (x, y, width, height), (x + width / 2, y + height / 2), 0.9, 0.9, np.ones((height, width), bool))


def ids(segments: list[Segment]) -> list[int]:
    return [s.track_id for s in segments]


def test_ids_persist_over_a_moving_sequence():
    """A box moves right in front of a chair moving left (it passes in front of it) while a
    person moves down and a second box stays still: each keeps its id in all 30 frames."""
    tracker = SegmentTracker()
    seen: dict[tuple[int, bool], set[int]] = {}
    for frame in range(30):
        shift = 0.02 * frame  # the box 7 px a frame, the chair 4 px, the person 3.5 px
        moving_box = Face(BOX, (-0.9 + shift, -0.5 + shift), (-0.2, 0.2), 1.5)
        still_box = Face(BOX, (0.5, 0.7), (0.3, 0.5), 1.5)
        chair = Face(CHAIR, (0.4 - shift, 0.9 - shift), (-0.5, 0.0), 2.5)
        person = Face(PERSON, (-1.5, -1.2), (-1.0 + shift, 0.2 + shift), 3.0)
        labels, _ = render([chair, moving_box, still_box, person])
        segments = find_segments(labels, scores_of(labels, frame), NAMES)
        tracker.update(segments, 0.1 * frame, SIZE)
        assert tracker.last_reset_reason == ("no previous tracks" if frame == 0 else None)
        assert len(set(ids(segments))) == len(segments), "one id per segment"
        for s in segments:
            seen.setdefault((s.class_id, s.class_id == BOX and s.box_px[0] > 480), set()).add(s.track_id)
    assert set(seen) >= {(BOX, False), (BOX, True), (CHAIR, False), (PERSON, False)}
    assert all(len(found) == 1 for found in seen.values()), seen
    assert len(set.union(*seen.values())) == len(seen)


def test_a_lost_track_waits_a_few_frames_and_its_id_is_never_given_again():
    tracker = SegmentTracker(max_missed_frames=3)
    a = [segment(BOX, 100, 100)]
    tracker.update(a, 0.0, SIZE)
    (first,) = ids(a)
    for frame in range(1, 4):  # hidden 3 frames: kept
        tracker.update([], 0.1 * frame, SIZE)
    back = [segment(BOX, 102, 100)]
    tracker.update(back, 0.4, SIZE)
    assert ids(back) == [first], "back within max_missed_frames: the same id"
    for frame in range(5, 9):  # hidden 4 frames: dropped
        tracker.update([], 0.1 * frame, SIZE)
    again = [segment(BOX, 100, 100)]
    tracker.update(again, 0.9, SIZE)
    assert ids(again)[0] > first, "an object where a dropped track was gets a new id"
    # The object leaves and another of its class appears elsewhere: a new id, not the waiting one.
    elsewhere = [segment(BOX, 400, 300)]
    tracker.update(elsewhere, 1.0, SIZE)
    assert ids(elsewhere)[0] > ids(again)[0]


def test_ids_are_per_class_and_assigned_optimally():
    tracker = SegmentTracker()
    frame0 = [segment(BOX, 100, 100), segment(BOX, 130, 100), segment(CHAIR, 300, 300)]
    tracker.update(frame0, 0.0, SIZE)
    # The boxes moved 15 px right: the first now overlaps both old boxes; the optimum keeps each.
    frame1 = [segment(BOX, 115, 100), segment(BOX, 145, 100), segment(PERSON, 300, 300)]
    tracker.update(frame1, 0.1, SIZE)
    assert ids(frame1)[:2] == ids(frame0)[:2]
    assert ids(frame1)[2] not in ids(frame0), "another class at the chair's place: a new id"
    assert ids(frame0) == [1, 2, 3] and ids(frame1)[2] == 4, "a monotonic counter"


def test_cameras_have_tracks_of_their_own():
    tracker = SegmentTracker()
    front, rear = [segment(BOX, 100, 100)], [segment(BOX, 100, 100)]
    tracker.update(front, 0.0, SIZE, source="front")
    tracker.update(rear, 0.0, SIZE, source="rear")
    assert ids(front) != ids(rear), "the same box in two cameras is two objects"
    later_front, later_rear = [segment(BOX, 101, 100)], [segment(BOX, 99, 100)]
    tracker.update(later_front, 0.1, SIZE, source="front")
    tracker.update(later_rear, 0.05, SIZE, source="rear")  # its own stamps, not front's
    assert ids(later_front) == ids(front) and ids(later_rear) == ids(rear)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"image_size": (240, 320)}, "image size changed ((480, 640) -> (240, 320))"),
        ({"stamp_s": 0.5}, "timestamp went backwards by 0.500 s"),
        ({"stamp_s": 3.0}, "gap of 2.000 s > max_gap_s 1.0"),
    ],
)
def test_tracks_restart_with_new_ids(change, reason):
    tracker = SegmentTracker()
    frame = {"stamp_s": 1.0, "image_size": SIZE}
    before = [segment(BOX, 100, 100)]
    tracker.update(before, **frame)
    after = [segment(BOX, 100, 100)]
    tracker.update(after, **{**frame, **change})
    assert tracker.last_reset_reason == reason
    assert ids(after)[0] > ids(before)[0], "restarted tracks, and the old ids are not given again"
    same = [segment(BOX, 100, 100)]
    changed = {**frame, **change}
    tracker.update(same, **{**changed, "stamp_s": changed["stamp_s"] + 0.1})
    assert tracker.last_reset_reason is None and ids(same) == ids(after), "then they continue"


def test_reset_restarts_every_cameras_tracks_with_its_reason():
    tracker = SegmentTracker()
    front, rear = [segment(BOX, 100, 100)], [segment(BOX, 100, 100)]
    tracker.update(front, 1.0, SIZE, source="front")
    tracker.update(rear, 1.0, SIZE, source="rear")
    tracker.reset("vocabulary version 2")
    for source in ("front", "rear"):
        after = [segment(BOX, 100, 100)]
        tracker.update(after, 1.1, SIZE, source=source)
        assert tracker.last_reset_reason == "vocabulary version 2" and ids(after)[0] > max(ids(front) + ids(rear))
        again = [segment(BOX, 100, 100)]
        tracker.update(again, 1.2, SIZE, source=source)
        assert tracker.last_reset_reason is None and ids(again) == ids(after)


def test_settings_are_checked():
    for bad in ({"min_iou": 0.0}, {"min_iou": 1.5}, {"max_missed_frames": -1}, {"max_gap_s": 0.0}):
        with pytest.raises(ValueError):
            SegmentTracker(**bad)
