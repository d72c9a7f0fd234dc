"""Segments of a labeled frame (ovseg_ros.engine.segments) on synthetic scenes of exact depth
(test/object_scenes.py): regions, stuff classes, scores, 3D boxes, odd frames."""

import time

import numpy as np
import pytest
import torch

from ovseg_ros.engine.points import back_project, class_summary
from ovseg_ros.engine.segments import Segment, SegmentSettings, find_segments, instance_image
from object_scenes import BOX, CAMERA, CHAIR, FLOOR, HEIGHT, NAMES, PERSON, WALL, WALL_Z, WIDTH, Face, points_of, render, scores_of

MM = 1e-3
NEAR_BOX = Face(BOX, (-0.9, -0.3), (-0.2, 0.4), 1.5)
FAR_BOX = Face(BOX, (0.2, 0.8), (-0.5, 0.3), 2.5)


def segments_of(class_id: int, segments: list[Segment]) -> list[Segment]:
    return [segment for segment in segments if segment.class_id == class_id]


def pixels_of(segment: Segment, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    """(H, W) bool: the segment's pixels in the frame."""
    x, y, width, height = segment.box_px
    frame = np.zeros(shape, bool)
    frame[y : y + height, x : x + width] = segment.mask
    return frame


def test_two_boxes_of_one_class_are_two_segments_with_their_3d_boxes():
    labels, depth = render([NEAR_BOX, FAR_BOX])
    scores = scores_of(labels)
    segments = find_segments(labels, scores, NAMES, depth=depth, intrinsics=CAMERA)
    every_point = SegmentSettings(max_points=10**9)  # not summarised from a grid: the exact percentiles
    by_depth = lambda segment: segment.box3d.centroid[2]  # noqa: E731
    exact_boxes = sorted(segments_of(BOX, find_segments(labels, scores, NAMES, every_point, depth=depth, intrinsics=CAMERA)), key=by_depth)
    boxes = sorted(segments_of(BOX, segments), key=by_depth)
    assert len(boxes) == 2
    for segment, exact_box, face in zip(boxes, exact_boxes, (NEAR_BOX, FAR_BOX)):
        own = pixels_of(segment)
        assert np.array_equal(own, (labels == BOX) & (depth == np.float32(face.z)))
        assert segment.area_px == own.sum() and segment.point_count == own.sum()
        rows, cols = np.nonzero(own)
        assert segment.box_px == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        assert np.allclose(segment.centroid_px, (cols.mean(), rows.mean()))
        assert np.isclose(segment.mean_score, scores[own].mean()) and segment.max_score == scores[own].max()
        exact = points_of(own, depth)
        assert np.allclose(exact_box.box3d.centroid, np.median(exact, axis=0), atol=1e-5), "the median of the exact points"
        assert np.allclose(exact_box.box3d.minimum, np.percentile(exact, 5, axis=0), atol=1e-5)
        assert np.allclose(exact_box.box3d.maximum, np.percentile(exact, 95, axis=0), atol=1e-5)
        footprint = face.z / CAMERA.fx  # one pixel at the face: 2.9 mm (near), 4.8 mm (far)
        assert np.allclose(segment.box3d.centroid, face.center, atol=footprint), "the face's centre, to a pixel"
        face_size = np.array([face.x[1] - face.x[0], face.y[1] - face.y[0], 0.0])
        assert np.allclose(segment.box3d.size, 0.9 * face_size, atol=2 * footprint), "5-95% of a uniform face"
        assert np.allclose(segment.box3d.center[:2], face.center[:2], atol=footprint)


def test_3d_box_is_the_per_class_summary_of_the_same_points():
    """A segment that is its whole class has the per-class summary of back_project's points."""
    labels, depth = render([NEAR_BOX])
    depth_mm = np.rint(depth * 1000).astype(np.uint16)
    depth_mm[::7, ::5] = 0  # holes
    scores = scores_of(labels)
    every_point = SegmentSettings(max_points=10**9)
    (box,) = segments_of(BOX, find_segments(labels, scores, NAMES, every_point, depth=depth_mm, intrinsics=CAMERA))
    cloud = back_project(torch.from_numpy(labels), torch.from_numpy(scores), torch.zeros((HEIGHT, WIDTH, 3), dtype=torch.uint8), torch.from_numpy(depth_mm), CAMERA, len(NAMES))
    summary = class_summary(cloud).numpy()[BOX]
    assert box.point_count == summary[0:1].view(np.int32)[0] == np.count_nonzero((labels == BOX) & (depth_mm > 0))
    assert np.allclose(box.box3d.centroid, summary[1:4], atol=1e-6)
    assert np.allclose(box.box3d.minimum, summary[4:7], atol=1e-6) and np.allclose(box.box3d.maximum, summary[7:10], atol=1e-6)


def test_touching_regions_of_different_classes_stay_apart():
    person = Face(PERSON, (-0.5, 0.0), (-0.6, 0.6), 2.0)
    chair = Face(CHAIR, (0.0, 0.5), (0.0, 0.6), 2.0)  # shares the person's right edge
    labels, depth = render([person, chair])
    assert ((labels[:, :-1] == PERSON) & (labels[:, 1:] == CHAIR)).any(), "the regions touch"
    segments = find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA)
    (person_segment,) = segments_of(PERSON, segments)
    (chair_segment,) = segments_of(CHAIR, segments)
    assert np.array_equal(pixels_of(person_segment), labels == PERSON)
    assert np.array_equal(pixels_of(chair_segment), labels == CHAIR)
    assert np.allclose(person_segment.box3d.centroid, person.center, atol=0.004)
    assert np.allclose(chair_segment.box3d.centroid, chair.center, atol=0.004)


def test_a_region_split_by_an_occluder_is_two_segments():
    chair = Face(CHAIR, (-0.6, 0.6), (0.0, 0.5), 2.5)
    pole = Face(PERSON, (-0.05, 0.05), (-2.0, 2.0), 1.5)  # in front of the chair, top to bottom
    labels, depth = render([chair, pole])
    segments = find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA)
    left, right = sorted(segments_of(CHAIR, segments), key=lambda s: s.box_px[0])
    assert pixels_of(left).sum() + pixels_of(right).sum() == (labels == CHAIR).sum()
    assert left.box_px[0] + left.box_px[2] < right.box_px[0], "the pole's pixels between them"
    assert left.box3d.maximum[0] < -0.05 and right.box3d.minimum[0] > 0.05
    assert abs(left.box3d.centroid[2] - 2.5) < MM and abs(right.box3d.centroid[2] - 2.5) < MM
    assert len(segments_of(PERSON, segments)) == 1


def test_stuff_classes_are_one_segment_per_class():
    pole = Face(PERSON, (-0.05, 0.05), (-3.0, 3.0), 1.5)  # cuts the wall and the floor in two
    labels, depth = render([pole])
    segments = find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA)
    (wall,) = segments_of(WALL, segments)
    (floor,) = segments_of(FLOOR, segments)
    assert np.array_equal(pixels_of(wall), labels == WALL) and np.array_equal(pixels_of(floor), labels == FLOOR)
    assert abs(wall.box3d.centroid[2] - WALL_Z) < MM
    # A synonym of a stuff class makes a stuff class; without stuff classes the wall is two segments.
    synonyms = ("wall, partition", "ground, floor", *NAMES[2:])
    assert len(segments_of(WALL, find_segments(labels, scores_of(labels), synonyms))) == 1
    assert len(segments_of(FLOOR, find_segments(labels, scores_of(labels), synonyms))) == 1
    assert len(segments_of(WALL, find_segments(labels, scores_of(labels), NAMES, SegmentSettings(stuff_classes=frozenset())))) == 2


def test_flying_pixels_do_not_move_the_3d_box():
    labels, depth = render([NEAR_BOX])
    (clean,) = segments_of(BOX, find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA))
    noisy = depth.copy()
    box_pixels = np.flatnonzero(labels == BOX)
    noisy.flat[np.random.default_rng(0).choice(box_pixels, size=len(box_pixels) * 3 // 100, replace=False)] = 30.0
    (box,) = segments_of(BOX, find_segments(labels, scores_of(labels), NAMES, depth=noisy, intrinsics=CAMERA))
    # 3% outliers, all beyond one edge, shift a percentile by at most 3% of the points: 18 mm of the 0.6 m face.
    assert abs(box.box3d.centroid[2] - NEAR_BOX.z) < MM and np.allclose(box.box3d.centroid, clean.box3d.centroid, atol=0.02)
    assert np.allclose(box.box3d.minimum, clean.box3d.minimum, atol=0.02) and np.allclose(box.box3d.maximum, clean.box3d.maximum, atol=0.02)


def test_too_few_valid_points_no_valid_depth_and_no_depth_give_no_3d_box():
    labels, depth = render([NEAR_BOX, FAR_BOX])
    sparse = depth.copy()
    near = (labels == BOX) & (depth == np.float32(NEAR_BOX.z))
    keep = np.flatnonzero(near)[:5]
    sparse[near] = np.nan
    sparse.flat[keep] = NEAR_BOX.z
    segments = find_segments(labels, scores_of(labels), NAMES, depth=sparse, intrinsics=CAMERA)
    near_segment, far_segment = sorted(segments_of(BOX, segments), key=lambda s: s.box_px[0])
    assert near_segment.point_count == 5 and near_segment.box3d is None, "5 points < min_points = 10: no box, not one at the origin"
    assert far_segment.box3d is not None
    assert find_segments(labels, scores_of(labels), NAMES, SegmentSettings(min_points=5), depth=sparse, intrinsics=CAMERA)[2].box3d is not None
    for invalid in (np.zeros_like(depth), np.full_like(depth, np.nan), np.full_like(depth, np.inf), np.zeros(depth.shape, np.uint16)):
        without = find_segments(labels, scores_of(labels), NAMES, depth=invalid, intrinsics=CAMERA)
        assert len(without) == len(segments) and all(s.box3d is None and s.point_count == 0 for s in without)
    assert all(s.box3d is None and s.point_count == 0 for s in find_segments(labels, scores_of(labels), NAMES))


def test_depth_of_another_size_and_large_segments_summarised_from_a_sample():
    labels, depth = render([NEAR_BOX, FAR_BOX])
    half_camera = CAMERA.scaled_to(WIDTH // 2, HEIGHT // 2)
    _, half_depth = render([NEAR_BOX, FAR_BOX], half_camera)
    segments = find_segments(labels, scores_of(labels), NAMES, depth=np.rint(half_depth * 1000).astype(np.uint16), intrinsics=half_camera)
    for segment in segments_of(BOX, segments):
        face = NEAR_BOX if segment.box3d.centroid[2] < 2 else FAR_BOX
        assert np.allclose(segment.box3d.centroid, face.center, atol=2 * face.z / CAMERA.fx + MM)
    (wall,) = segments_of(WALL, segments)
    assert wall.point_count == wall.area_px and abs(wall.box3d.centroid[2] - WALL_Z) < MM
    full = find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA, settings=SegmentSettings(max_points=10**9))
    sampled = find_segments(labels, scores_of(labels), NAMES, depth=depth, intrinsics=CAMERA)  # max_points 4096: the wall, floor and boxes sampled
    for every, grid in zip(full, sampled):
        assert grid.point_count == every.point_count, "every valid pixel counted"
        tolerance = 2 * every.box3d.maximum[2] / CAMERA.fx  # two pixels at the far end
        assert np.allclose(grid.box3d.centroid, every.box3d.centroid, atol=tolerance)
        assert np.allclose(grid.box3d.minimum, every.box3d.minimum, atol=tolerance) and np.allclose(grid.box3d.maximum, every.box3d.maximum, atol=tolerance)


def test_tiny_empty_and_unlabeled_frames():
    labels, _ = render([])
    labels[10:12, 10:12] = CHAIR  # 4 pixels
    scores = scores_of(labels)
    assert segments_of(CHAIR, find_segments(labels, scores, NAMES)) == [], "below min_area_px"
    (tiny,) = segments_of(CHAIR, find_segments(labels, scores, NAMES, SegmentSettings(min_area_px=1)))
    assert tiny.area_px == 4 and tiny.box_px == (10, 10, 2, 2) and tiny.centroid_px == (10.5, 10.5)
    unlabeled = np.full((HEIGHT, WIDTH), 255, np.uint8)
    assert find_segments(unlabeled, scores, NAMES) == []
    assert find_segments(unlabeled, scores, ()) == [], "an empty vocabulary"
    assert find_segments(labels, scores, NAMES, present_class_ids=np.array([PERSON, 200], np.uint16)) == [], "listed but absent, or no class"
    one_pixel = np.zeros((1, 1), np.uint8)
    (only,) = find_segments(one_pixel, np.ones((1, 1), np.float32), NAMES, SegmentSettings(min_area_px=1), depth=np.ones((1, 1), np.float32), intrinsics=CAMERA)
    assert only.area_px == 1 and only.point_count == 1 and only.box3d is None
    with pytest.raises(ValueError):
        find_segments(labels.astype(np.int32), scores, NAMES)
    with pytest.raises(ValueError):
        find_segments(labels, scores[:-1], NAMES)


def test_847_classes_uint16_labels_and_uint8_scores():
    names = tuple(f"class {i}" for i in range(846)) + ("wall",)
    labels, depth = render([NEAR_BOX, FAR_BOX])
    wide = np.full(labels.shape, 65535, np.uint16)  # unlabeled
    wide[labels == BOX] = 845
    wide[labels == WALL] = 846  # stuff, by name
    wide[labels == FLOOR] = 3
    wide[:5, :5] = 600  # tiny: dropped
    confidence = np.rint(scores_of(labels) * 255).astype(np.uint8)  # FrameOutputs.confidence
    start = time.perf_counter()
    segments = find_segments(wide, confidence, names, depth=depth, intrinsics=CAMERA)
    elapsed = time.perf_counter() - start
    assert [s.class_id for s in segments] == [3, 845, 845, 846]
    assert all(s.box3d is not None for s in segments)
    boxes = segments_of(845, segments)
    own = pixels_of(boxes[0])
    assert np.isclose(boxes[0].mean_score, confidence[own].mean() / 255) and np.isclose(boxes[0].max_score, confidence[own].max() / 255)
    assert elapsed < 1.0, f"{elapsed:.3f} s: the present classes only, not all 847"


def test_instance_image_holds_the_track_ids():
    labels, _ = render([NEAR_BOX, FAR_BOX])
    segments = find_segments(labels, scores_of(labels), NAMES)
    for track_id, segment in zip((7, 70000, 0, 3), segments):
        segment.track_id = track_id
    image = instance_image(segments, HEIGHT, WIDTH)
    assert image.dtype == np.uint16
    expected = np.zeros((HEIGHT, WIDTH), np.uint16)
    for segment, value in zip(segments, (7, 70000 - 65535, 0, 3)):
        expected[pixels_of(segment)] = value
    assert np.array_equal(image, expected)
    assert not instance_image([], HEIGHT, WIDTH).any()


def test_the_benchmark_runs(capsys):
    from ovseg_dev.bench_segments import main

    main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("640x480: 20 segments (20 with a 3D box), 20 regions")
    assert "total (segments + 3D + tracking)" in out and "CC: torch propagation (cpu)" in out
