"""Renderer: palette, colour map, overlay, masks, confidence and class counts.

Every output is checked on both paths (cv2 on host views, torch ops as on CUDA, here forced
on the CPU) against a straightforward numpy reference, so the two cannot drift apart.
"""

import numpy as np
import pytest
import torch

from ovseg_ros.engine.rendering import UNLABELED_COLOR, Renderer, class_color, index_color, palette

BOTH_PATHS = pytest.mark.parametrize("torch_ops", [False, True], ids=["cv2", "torch"])
NAMES_150 = [f"class {i}" for i in range(150)]
NAMES_300 = [f"class {i}" for i in range(300)]


def random_labels(num_classes: int, shape=(61, 83), seed=0) -> torch.Tensor:
    """Class ids, unlabeled pixels, and (uint8 only, or a few int32) values past the vocabulary."""
    rng = np.random.default_rng(seed)
    if num_classes <= 254:
        labels = rng.integers(0, 256, shape).astype(np.uint8)  # 150..254: not classes; 255: unlabeled
        labels[rng.random(shape) < 0.5] = rng.integers(0, num_classes)
        labels[rng.random(shape) < 0.1] = 255
    else:
        labels = rng.integers(0, num_classes, shape).astype(np.int32)
        labels[rng.random(shape) < 0.1] = 65535
        labels[rng.random(shape) < 0.02] = rng.integers(num_classes, 65535)
    return torch.from_numpy(labels)


def reference_colors(labels: np.ndarray, names: list[str]) -> np.ndarray:
    table = palette(names)
    index = labels.astype(np.int64)
    index[index >= len(names)] = len(names)  # unlabeled (and non-class values) -> last row
    return table[index]


def both(names, **kwargs) -> tuple[Renderer, Renderer]:
    return Renderer(names, torch_ops=False, **kwargs), Renderer(names, torch_ops=True, **kwargs)


def test_class_colours_are_stable_and_distinct():
    assert class_color("person") == class_color(" Person ")
    colours = {class_color(name) for name in ("person", "forklift", "pallet", "floor", "wall", "spill on floor")}
    assert len(colours) == 6


@BOTH_PATHS
def test_palette_and_unlabeled_colour(torch_ops):
    renderer = Renderer(["a", "b"], torch_ops=torch_ops)
    assert renderer.palette.dtype == torch.uint8 and renderer.palette.tolist() == [list(class_color("a")), list(class_color("b")), list(UNLABELED_COLOR)]
    assert Renderer(["a", "b"], "index").palette[1].tolist() == list(index_color(1))
    image = renderer.colorize(torch.tensor([[0, 1], [255, 0]], dtype=torch.uint8))
    assert image.shape == (2, 2, 3) and image.dtype == torch.uint8
    assert tuple(image[0, 0].tolist()) == class_color("a") and tuple(image[0, 1].tolist()) == class_color("b")
    assert tuple(image[1, 0].tolist()) == UNLABELED_COLOR
    with pytest.raises(ValueError, match="scheme"):
        Renderer(["a"], "rainbow")


@pytest.mark.parametrize("names", [NAMES_150, NAMES_300], ids=["uint8", "int32"])
def test_colorize_paths_agree_with_the_reference(names):
    labels = random_labels(len(names))
    cv2_path, torch_path = both(names)
    expected = reference_colors(labels.numpy(), names)
    assert np.array_equal(cv2_path.colorize(labels).numpy(), expected)
    assert np.array_equal(torch_path.colorize(labels).numpy(), expected)
    assert (expected[labels.numpy() == cv2_path.unlabeled_id] == UNLABELED_COLOR).all()


def test_label_dtype_follows_the_vocabulary_size():
    assert (Renderer(NAMES_150).unlabeled_id, Renderer(NAMES_150).label_dtype) == (255, torch.uint8)
    assert (Renderer(NAMES_300).unlabeled_id, Renderer(NAMES_300).label_dtype) == (65535, torch.int32)
    with pytest.raises(TypeError, match="int32"):
        Renderer(NAMES_300).colorize(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        Renderer(NAMES_150).class_counts(torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.3, 0.5, 0.7, 0.999, 1.0])
def test_overlay_paths_round_half_up_exactly(alpha):
    # Every (image, colour) byte pair, in each channel.
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).astype(np.uint8)  # (256, 256, 2)
    image = torch.from_numpy(np.repeat(grid[..., :1], 3, axis=2).copy())
    color = torch.from_numpy(np.repeat(grid[..., 1:], 3, axis=2).copy())
    weight = round(alpha * 4096)
    expected = (image.numpy().astype(np.int64) * (4096 - weight) + color.numpy().astype(np.int64) * weight + 2048) // 4096
    for renderer in both(["a"]):
        assert np.array_equal(renderer.overlay(image, color, alpha).numpy(), expected)
    if alpha in (0.0, 0.25, 0.5, 1.0):  # representable weights: the same as the float blend rounded half up
        before = np.floor((1 - alpha) * image.numpy().astype(np.float64) + alpha * color.numpy() + 0.5)
        assert np.array_equal(expected, before)


@BOTH_PATHS
def test_overlay_extremes_and_halves(torch_ops):
    renderer = Renderer(["a"], torch_ops=torch_ops)
    image, color = torch.full((2, 3, 3), 201, dtype=torch.uint8), torch.zeros((2, 3, 3), dtype=torch.uint8)
    assert torch.equal(renderer.overlay(image, color, 0.0), image)
    assert torch.equal(renderer.overlay(image, color, 1.0), color)
    assert renderer.overlay(image, color, 0.5)[0, 0, 0] == 101  # 100.5 rounds up
    assert renderer.overlay(image - 1, color, 0.25)[0, 0, 0] == 150
    with pytest.raises(ValueError, match="alpha"):
        renderer.overlay(image, color, 1.5)
    with pytest.raises(ValueError, match="color"):
        renderer.overlay(image, color[:1], 0.5)


@pytest.mark.parametrize("names", [NAMES_150, NAMES_300], ids=["uint8", "int32"])
def test_masks_mark_each_class_with_255(names):
    labels = random_labels(len(names), seed=1)
    ids = [0, 3, len(names) - 1, 3]
    for renderer in both(names):
        masks = renderer.masks(labels, ids)
        assert masks.shape == (len(ids), *labels.shape) and masks.dtype == torch.uint8
        for mask, class_id in zip(masks.numpy(), ids):
            assert np.array_equal(mask, np.where(labels.numpy() == class_id, 255, 0))
        assert masks.numpy().any()
        assert renderer.masks(labels, []).shape == (0, *labels.shape)
        with pytest.raises(ValueError, match="class ids"):
            renderer.masks(labels, [len(names)])


def test_confidence_is_scaled_rounded_and_clipped():
    rng = np.random.default_rng(2)
    scores = rng.uniform(-0.3, 1.4, (47, 53)).astype(np.float32)  # SAN's may exceed 1
    ties = ((np.arange(255, dtype=np.float32) + np.float32(0.5)) / np.float32(255)).astype(np.float32)
    scores[0, :5] = [-1e30, -0.0, 1.0, 7.5, 1e30]
    scores[1, :53] = ties[:53]
    confidence = torch.from_numpy(scores)
    expected = np.rint(np.clip(scores, 0, 1) * np.float32(255)).astype(np.uint8)
    assert expected[0, :5].tolist() == [0, 0, 255, 255, 255]
    for renderer in both(["a"]):
        image = renderer.confidence(confidence)
        assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), expected)
    with pytest.raises(TypeError, match="float32"):
        Renderer(["a"]).confidence(confidence.double())


@pytest.mark.parametrize("names", [NAMES_150, NAMES_300], ids=["uint8", "int32"])
def test_class_counts_skip_unlabeled_pixels(names):
    labels = random_labels(len(names), seed=3)
    values = labels.numpy().astype(np.int64).ravel()
    expected = np.bincount(values[values < len(names)], minlength=len(names))
    for renderer in both(names):
        counts = renderer.class_counts(labels)
        assert counts.dtype == torch.int64 and counts.shape == (len(names),)
        assert np.array_equal(counts.numpy(), expected)
        assert counts.sum() == (values < len(names)).sum() < values.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("names", [NAMES_150, NAMES_300], ids=["uint8", "int32"])
def test_cuda_renders_the_same_pixels_as_cv2(names):
    labels = random_labels(len(names), shape=(480, 640), seed=4)
    image = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    confidence = torch.from_numpy(np.random.default_rng(6).uniform(-0.1, 1.2, (480, 640)).astype(np.float32))
    host, device = Renderer(names), Renderer(names, device="cuda")
    assert device.torch_ops and not host.torch_ops
    color = device.colorize(labels.cuda())
    assert color.is_cuda and torch.equal(color.cpu(), host.colorize(labels))
    assert torch.equal(device.overlay(image.cuda(), color, 0.3).cpu(), host.overlay(image, color.cpu(), 0.3))
    assert torch.equal(device.masks(labels.cuda(), [0, 5]).cpu(), host.masks(labels, [0, 5]))
    assert torch.equal(device.confidence(confidence.cuda()).cpu(), host.confidence(confidence))
    assert torch.equal(device.class_counts(labels.cuda()).cpu(), host.class_counts(labels))
