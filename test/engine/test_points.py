"""Labels in 3D (ovseg_ros.engine.points): a synthetic scene of exact depth, known intrinsics.

The scene, seen by a 640x480 camera (fx = fy = 525, principal point at the image centre):
a wall at z = 4 m (class 0), a floor 1.2 m below the camera (class 1, y = +1.2 in the optical
frame), and the front face of a box at z = 1.5 m, x in [-0.3, 0.3], y in [-0.2, 0.4] (class 2).
"""

import numpy as np
import pytest
import torch

from ovseg_ros.engine.frame_pipeline import DepthData, FramePipeline, OutputRequest, RawImageData
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.engine.points import POINT_DTYPE, PinholeIntrinsics, back_project, class_summary, decode_depth, organized_points, points_of

HEIGHT, WIDTH = 480, 640
CAMERA = PinholeIntrinsics(525.0, 525.0, 319.5, 239.5, WIDTH, HEIGHT)
WALL_Z, FLOOR_Y, BOX_Z = 4.0, 1.2, 1.5
BOX_X, BOX_Y = (-0.3, 0.3), (-0.2, 0.4)
MM = 1e-3


def scene(camera: PinholeIntrinsics = CAMERA):
    """(labels (H, W) uint8, depth (H, W) float32 metres) of the scene at ``camera``'s resolution."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    ray_x, ray_y = (u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy
    labels = np.zeros((camera.height, camera.width), np.uint8)
    depth = np.full((camera.height, camera.width), WALL_Z)
    floor_z = np.divide(FLOOR_Y, ray_y, out=np.full_like(ray_y, np.inf), where=ray_y > 0)
    on_floor = floor_z < WALL_Z
    labels[on_floor], depth[on_floor] = 1, floor_z[on_floor]
    box_x, box_y = ray_x * BOX_Z, ray_y * BOX_Z
    on_box = (box_x >= BOX_X[0]) & (box_x <= BOX_X[1]) & (box_y >= BOX_Y[0]) & (box_y <= BOX_Y[1]) & (BOX_Z < depth)
    labels[on_box], depth[on_box] = 2, BOX_Z
    return labels, depth.astype(np.float32)


def project(labels, depth, camera=CAMERA, stride=1, min_score=0.0, confidence=None, rgb=None):
    confidence = np.ones(labels.shape, np.float32) if confidence is None else confidence
    rgb = np.zeros((*labels.shape, 3), np.uint8) if rgb is None else rgb
    cloud = back_project(torch.from_numpy(labels), torch.from_numpy(confidence), torch.from_numpy(rgb), torch.from_numpy(depth), camera, 3, stride, min_score)
    return points_of(cloud.records.numpy(), int(cloud.count[0])), class_summary(cloud).numpy()


def pixel_of(points, camera=CAMERA):
    """(u, v) each point came from (rounded): the projection of its xyz."""
    u = points["x"] / points["z"] * camera.fx + camera.cx
    v = points["y"] / points["z"] * camera.fy + camera.cy
    return np.rint(u).astype(int), np.rint(v).astype(int)


def test_points_lie_on_the_scenes_geometry():
    labels, depth = scene()
    points, _ = project(labels, depth)
    assert points.dtype == POINT_DTYPE and len(points) == HEIGHT * WIDTH
    wall, floor, box = (points[points["label"] == c] for c in range(3))
    assert len(wall) and len(floor) and len(box)
    assert np.abs(wall["z"] - WALL_Z).max() < MM
    assert np.abs(floor["y"] - FLOOR_Y).max() < MM, "floor points on the plane y = 1.2"
    assert np.abs(box["z"] - BOX_Z).max() < MM
    assert box["x"].min() >= BOX_X[0] - MM and box["x"].max() <= BOX_X[1] + MM
    assert box["y"].min() >= BOX_Y[0] - MM and box["y"].max() <= BOX_Y[1] + MM
    # Each point back on its own pixel, x right and y down.
    u, v = pixel_of(points)
    assert np.array_equal(labels[v, u], points["label"])
    assert np.allclose(depth[v, u], points["z"])
    corner = points[(u == 0) & (v == 0)][0]
    assert corner["x"] < 0 and corner["y"] < 0


def test_box_centroid_and_extent():
    labels, depth = scene()
    points, summary = project(labels, depth)
    counts = summary[:, 0].copy().view(np.int32)
    assert counts.tolist() == [int((labels == c).sum()) for c in range(3)]
    centroid, low, high = summary[2, 1:4], summary[2, 4:7], summary[2, 7:10]
    footprint = BOX_Z / CAMERA.fx  # one pixel at the box: 2.9 mm
    assert np.allclose(centroid, [np.mean(BOX_X), np.mean(BOX_Y), BOX_Z], atol=footprint)
    box = points[points["label"] == 2]
    xyz = np.stack([box["x"], box["y"], box["z"]], axis=1)
    assert np.allclose(centroid, np.median(xyz, axis=0), atol=1e-6)
    assert np.allclose(low, np.percentile(xyz, 5, axis=0), atol=1e-6) and np.allclose(high, np.percentile(xyz, 95, axis=0), atol=1e-6)
    size = np.array([BOX_X[1] - BOX_X[0], BOX_Y[1] - BOX_Y[0]])
    assert np.allclose(high[:2] - low[:2], 0.9 * size, atol=2 * footprint), "5-95% of a uniform face: 90% of its size"


def test_summary_is_robust_to_depth_outliers():
    labels, depth = scene()
    _, clean = project(labels, depth)
    noisy = depth.copy()
    box_pixels = np.flatnonzero(labels == 2)
    flying = np.random.default_rng(0).choice(box_pixels, size=len(box_pixels) * 3 // 100, replace=False)
    noisy.flat[flying] = 30.0  # flying pixels behind the box edge, 3% of it
    points, summary = project(labels, noisy)
    box_z = points["z"][points["label"] == 2]
    box_x = points["x"][points["label"] == 2]
    assert box_z.mean() > BOX_Z + 0.5 and box_x.max() - box_x.min() > 2.0, "the outliers move a mean, and a min-max extent, by metres"
    assert abs(summary[2, 3] - BOX_Z) < MM and np.allclose(summary[2, 1:3], clean[2, 1:3], atol=0.01), "the median moves by millimetres"
    # 3% outliers shift a percentile by at most 3% of the points: 18 mm of the 0.6 m face.
    assert np.allclose(summary[2, 4:10], clean[2, 4:10], atol=0.02), "nor the 5-95% extent"


def test_invalid_depth_gives_no_points():
    labels, depth = scene()
    depth[:100] = 0.0
    depth[100:200, :320] = np.nan
    depth[100:200, 320:] = np.inf
    points, summary = project(labels, depth)
    assert len(points) == (HEIGHT - 200) * WIDTH
    assert np.isfinite(points["z"]).all() and (points["z"] > 0).all()
    assert pixel_of(points)[1].min() == 200
    empty, empty_summary = project(labels, np.zeros_like(depth))
    assert len(empty) == 0 and np.isnan(empty_summary[:, 1:]).all() and (empty_summary[:, 0].copy().view(np.int32) == 0).all()


def test_stride_and_min_score():
    labels, depth = scene()
    confidence = np.random.default_rng(1).random(labels.shape, dtype=np.float32)
    rgb = np.random.default_rng(2).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    points, _ = project(labels, depth, stride=3, min_score=0.4, confidence=confidence, rgb=rgb)
    sampled = np.zeros(labels.shape, bool)
    sampled[::3, ::3] = True
    assert len(points) == int((sampled & (confidence >= 0.4)).sum())
    u, v = pixel_of(points)
    assert (u % 3 == 0).all() and (v % 3 == 0).all()
    assert np.array_equal(points["score"], confidence[v, u]) and (points["score"] >= 0.4).all()
    packed = points["rgb"].view(np.uint32)
    assert np.array_equal(packed, (rgb[v, u, 0].astype(np.uint32) << 16) | (rgb[v, u, 1].astype(np.uint32) << 8) | rgb[v, u, 2]), "PCL's 0x00RRGGBB"


def test_depth_of_another_size_is_resampled_and_intrinsics_scaled():
    labels, depth = scene()
    half_camera = CAMERA.scaled_to(WIDTH // 2, HEIGHT // 2)
    assert (half_camera.fx, half_camera.cx) == (262.5, 159.5)
    _, half_depth = scene(half_camera)
    points, _ = project(labels, half_depth, camera=half_camera)  # intrinsics of the depth image's size
    assert len(points) == HEIGHT * WIDTH
    u, v = pixel_of(points)
    assert np.array_equal(labels[v, u], points["label"]) and (u == np.tile(np.arange(WIDTH), HEIGHT)).all()
    wall = points["label"] == 0
    assert np.abs(points["z"][wall] - WALL_Z).max() < MM
    assert np.allclose(points["z"], half_depth[v // 2, u // 2]), "each colour pixel takes the depth pixel under its centre"


def test_organized_cloud_is_pixel_aligned_with_nan_where_no_point():
    """organized_points: one record per pixel at [v, u], the compact cloud's point where there
    is one, x y z NaN where depth is missing or the score too low; rgb, score, label always."""
    labels, depth = scene()
    depth[:50] = 0.0
    depth[50:60] = np.nan
    half_depth = scene(CAMERA.scaled_to(WIDTH // 2, HEIGHT // 2))[1]
    confidence = np.random.default_rng(4).random(labels.shape, dtype=np.float32)
    rgb = np.random.default_rng(5).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    tensors = [torch.from_numpy(a) for a in (labels, confidence, rgb)]
    organized = organized_points(*tensors, torch.from_numpy(depth), CAMERA, min_score=0.3).numpy().view(POINT_DTYPE)[..., 0]
    assert organized.shape == (HEIGHT, WIDTH)
    has_point = np.isfinite(depth) & (depth > 0) & (confidence >= 0.3)
    assert np.array_equal(~np.isnan(organized["z"]), has_point)
    assert np.isnan(organized["x"][~has_point]).all() and np.isnan(organized["y"][~has_point]).all()
    assert np.array_equal(organized["label"], labels) and np.array_equal(organized["score"], confidence)
    assert np.array_equal(organized["rgb"].view(np.uint32) >> 16, rgb[..., 0])
    compact, _ = project(labels, depth, min_score=0.3, confidence=confidence, rgb=rgb)
    assert np.array_equal(organized[has_point], compact), "the same points, bytes and order, as back_project"
    resampled = organized_points(*tensors, torch.from_numpy(half_depth), CAMERA.scaled_to(WIDTH // 2, HEIGHT // 2)).numpy().view(POINT_DTYPE)[..., 0]
    assert np.allclose(resampled["z"], half_depth[np.arange(HEIGHT)[:, None] // 2, np.arange(WIDTH) // 2]), "depth of another size: nearest neighbour"


def test_depth_decoding():
    millimetres = np.array([[0, 1500, 65535], [4000, 1, 2]], dtype=np.uint16)
    padded = np.zeros((2, 8), np.uint8)
    padded[:, :6] = millimetres.view(np.uint8).reshape(2, 6)
    decoded = decode_depth("16UC1", 2, 3, 8, padded.tobytes())
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, millimetres)
    big = decode_depth("16UC1", 2, 3, 6, millimetres.astype(">u2").tobytes(), is_bigendian=True)
    assert np.array_equal(big, millimetres) and big.dtype.isnative
    metres = np.array([[0.5, np.nan]], np.float32)
    assert np.array_equal(decode_depth("32FC1", 1, 2, 8, metres.tobytes()), metres, equal_nan=True)
    for bad in (("rgb8", 2, 3, 6, bytes(12)), ("16UC1", 2, 3, 4, bytes(8)), ("16UC1", 2, 3, 6, bytes(11)), ("32FC1", 0, 3, 12, b"")):
        with pytest.raises(ImageError):
            decode_depth(*bad)
    with pytest.raises(ImageError):
        PinholeIntrinsics(0.0, 525.0, 319.5, 239.5, WIDTH, HEIGHT).check()


def test_millimetre_depth_through_the_pipeline():
    """The frame path with a 16UC1 depth image: points of the labels it published, the
    colour image's pixels, the summary parallel to present_class_ids."""
    from ovseg_ros.models import build_model
    from ovseg_ros.engine.segmenter import Segmenter
    from ovseg_ros.engine.smoothing import TemporalSmoother
    from ovseg_ros.engine.vocabulary import VocabularyManager

    segmenter = Segmenter(build_model("san_tiny_dev"), short_edge=64)
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("none"))
    camera = CAMERA.scaled_to(160, 120)
    _, depth = scene(camera)
    depth_mm = np.rint(depth * 1000).astype(np.uint16)
    depth_mm[:10] = 0
    rgb = np.random.default_rng(3).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    image = RawImageData("rgb8", 120, 160, 480, rgb.tobytes())
    depth_data = DepthData(RawImageData("16UC1", 120, 160, 320, depth_mm.tobytes()), camera)
    outputs = pipeline.process(image, 0.0, OutputRequest(points=True, points_stride=2), depth=depth_data)
    points = outputs.points
    assert len(points) == 55 * 80, "rows 10.. of every 2nd pixel and row"
    u, v = pixel_of(points, camera)
    assert np.array_equal(points["label"], outputs.labels[v, u])
    assert np.allclose(points["z"], depth_mm[v, u] / 1000.0)
    assert np.array_equal(points["rgb"].view(np.uint32) >> 16, rgb[v, u, 0])
    summary = outputs.class_points
    assert len(summary.point_counts) == len(outputs.present_class_ids)
    for row, class_id in enumerate(outputs.present_class_ids):
        own = points[points["label"] == class_id]
        assert summary.point_counts[row] == len(own)
        if len(own):
            assert np.isclose(summary.centroids[row, 2], np.median(own["z"]), atol=1e-6)
    without_cloud = pipeline.process(image, 0.0, OutputRequest(points=False), depth=depth_data)
    assert without_cloud.points is None and np.array_equal(without_cloud.class_points.centroids, summary.centroids, equal_nan=True)
    assert pipeline.process(image, 0.0, OutputRequest(points=True)).class_points is None, "no depth, no 3D"


def test_point_cloud_message_layout(ros2_tools):  # image_geometry comes from ../shared/ros2: a broken set-up fails
    from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

    from ovseg_ros.ros.conversions import intrinsics_from_camera_info, point_cloud_msg

    labels, depth = scene()
    points, _ = project(labels, depth, stride=4)
    msg = point_cloud_msg(PointCloud2().header, points)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, len(points), 24, 24 * len(points))
    assert msg.is_dense and not msg.is_bigendian and len(msg.data) == msg.row_step
    fields = {f.name: (f.offset, f.datatype, f.count) for f in msg.fields}
    assert fields == {
        "x": (0, PointField.FLOAT32, 1), "y": (4, PointField.FLOAT32, 1), "z": (8, PointField.FLOAT32, 1),
        "rgb": (12, PointField.FLOAT32, 1), "score": (16, PointField.FLOAT32, 1), "label": (20, PointField.UINT16, 1),
    }
    # Read back as a generic PointCloud2 reader would: field by field at its offset.
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.width, msg.point_step)
    z = data[:, 8:12].copy().view("<f4").ravel()
    label = data[:, 20:22].copy().view("<u2").ravel()
    assert np.array_equal(z, points["z"]) and np.array_equal(label, points["label"])

    info = CameraInfo(width=320, height=240)
    info.k = [262.5, 0.0, 159.5, 0.0, 262.5, 119.5, 0.0, 0.0, 1.0]
    assert intrinsics_from_camera_info(info, 640, 480) == PinholeIntrinsics(262.5, 262.5, 159.5, 119.5, 320, 240), "K when P is unset"
    info.p = [260.0, 0.0, 160.0, 0.0, 0.0, 261.0, 120.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert intrinsics_from_camera_info(info, 640, 480) == PinholeIntrinsics(260.0, 261.0, 160.0, 120.0, 320, 240), "P, as depth_image_proc"
    info.binning_x = info.binning_y = 2
    assert intrinsics_from_camera_info(info, 640, 480) == PinholeIntrinsics(130.0, 130.5, 80.0, 60.0, 160, 120)
    with pytest.raises(ImageError):
        intrinsics_from_camera_info(CameraInfo(), 640, 480)
