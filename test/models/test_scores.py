"""ClassScores: best() is exactly full().max(0), computed over class chunks of bounded size.

Upsampled scores on small random maps; SAN scores from a real run of the tiny SAN.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ovseg_ros.models import build_model
from ovseg_ros.models.scores import SANScores, UpsampledScores

T, COARSE, OUTPUT = 40, (12, 16), (30, 50)
CLASS_BYTES = OUTPUT[0] * OUTPUT[1] * 4  # one class of float32 scores at OUTPUT


def tied_coarse(seed: int = 0) -> torch.Tensor:
    """(T, 12, 16) scores on a coarse grid of values (many exact ties between classes), with
    classes 2 and 3, 5 and 6, 8 and 9 identical (pairs that chunks of 3 classes split)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (T, *COARSE), generator=gen).float() / 3
    for first in (2, 5, 8):
        coarse[first + 1] = coarse[first]
    coarse[2:4, :4] = 2.0  # the split pair is the best there
    return coarse


def assert_best_is_full_max(scores, output_size):
    confidence, labels = scores.best(output_size)
    expected = scores.full(output_size).max(dim=0)
    assert confidence.dtype == torch.float32 and labels.dtype == torch.int64
    torch.testing.assert_close(confidence, expected.values, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(labels, expected.indices)


def largest_allocation(fn) -> int:
    """Bytes of the largest allocation any single op makes while ``fn`` runs (profiler's memory counter)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


@pytest.mark.parametrize("classes_per_chunk", [1, 3, 7, T])
@pytest.mark.parametrize("valid_size", [COARSE, (9, 16), (100, 100)])
def test_upsampled_full_is_the_authors_postprocess(classes_per_chunk, valid_size):
    """Crop to the valid size, then a bilinear resize (detectron2's sem_seg_postprocess).

    In one chunk exactly; in several up to float rounding (the CPU kernel's rounding depends
    on the number of channels resized together).
    """
    coarse = torch.rand(T, *COARSE, generator=torch.Generator().manual_seed(1))
    scores = UpsampledScores(coarse, valid_size, chunk_bytes=classes_per_chunk * CLASS_BYTES)
    assert scores.classes_per_chunk(OUTPUT) == classes_per_chunk and scores.num_classes == T
    height, width = valid_size
    reference = F.interpolate(coarse[None, :, :height, :width], size=OUTPUT, mode="bilinear", align_corners=False)[0]
    if classes_per_chunk == T:
        assert torch.equal(scores.full(OUTPUT), reference)
    else:
        torch.testing.assert_close(scores.full(OUTPUT), reference, rtol=0, atol=3e-7)


@pytest.mark.parametrize("classes_per_chunk", [1, 3, 7, T])
def test_upsampled_best_is_full_max_with_ties_across_chunks(classes_per_chunk):
    coarse = tied_coarse()
    scores = UpsampledScores(coarse, COARSE, chunk_bytes=classes_per_chunk * CLASS_BYTES)
    full = scores.full(OUTPUT)
    # The ties are real: classes 2 and 3 (in different chunks of 3) share the maximum at some pixels.
    assert torch.equal(full[2], full[3]) and bool((full[3] == full.amax(dim=0)).any())
    assert_best_is_full_max(scores, OUTPUT)
    assert bool((scores.best(OUTPUT)[1] == 2).any())


def test_upsampled_best_treats_nan_as_torch_max_does():
    coarse = tied_coarse()
    coarse[20, 5, 5] = coarse[33, 5, 8] = float("nan")
    assert_best_is_full_max(UpsampledScores(coarse, COARSE, chunk_bytes=3 * CLASS_BYTES), OUTPUT)


def test_upsampled_best_allocates_one_chunk_at_a_time():
    scores = UpsampledScores(tied_coarse(), COARSE, chunk_bytes=3 * CLASS_BYTES)
    all_classes = T * CLASS_BYTES
    # The counter sees the full tensor, so the bound below can fail.
    assert largest_allocation(lambda: scores.full(OUTPUT)) >= all_classes
    labels_bytes = OUTPUT[0] * OUTPUT[1] * 8  # (H0, W0) int64
    assert largest_allocation(lambda: scores.best(OUTPUT)) <= max(scores.chunk_bytes, labels_bytes) < all_classes / 4


def test_upsampled_with_coarse_replaces_the_map():
    scores = UpsampledScores(tied_coarse(), (9, 16))
    assert scores.coarse().shape == (T, *COARSE)
    smoothed = torch.rand(T, *COARSE)
    replaced = scores.with_coarse(smoothed)
    assert replaced.coarse() is smoothed and replaced.valid_size == (9, 16)
    assert torch.equal(replaced.full(OUTPUT), UpsampledScores(smoothed, (9, 16)).full(OUTPUT))
    with pytest.raises(ValueError, match="does not replace"):
        scores.with_coarse(torch.rand(T, 6, 8))


IMAGE_SIZE = (70, 90)  # padded to 96 x 96, a 6 x 6 mask grid


@pytest.fixture(scope="module")
def san_scores():
    """SANScores of the tiny SAN (random weights) on a random 70 x 90 image, T classes."""
    model = build_model("san_tiny_dev")
    image = torch.rand(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():
        text = F.normalize(torch.randn(T, model.config.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
        scores = model(image, text)
    assert isinstance(scores, SANScores) and scores.num_classes == T
    return scores


def authors_semantic_inference(scores: SANScores, output_size) -> torch.Tensor:
    """(T, H0, W0) in one piece, as the authors' SAN.semantic_inference computes it."""
    height, width = scores.image_size
    masks = F.interpolate(scores.mask_preds[None], size=scores.padded_size, mode="bilinear", align_corners=False)
    masks = F.interpolate(masks[..., :height, :width], size=output_size, mode="bilinear", align_corners=False)
    return torch.einsum("qc,qhw->chw", scores.class_probs, masks[0].sigmoid())


def with_chunk(scores: SANScores, classes_per_chunk: int, class_probs=None) -> SANScores:
    return SANScores(scores.class_probs if class_probs is None else class_probs, scores.mask_preds,
                     scores.image_size, scores.padded_size, chunk_bytes=classes_per_chunk * CLASS_BYTES)


@pytest.mark.parametrize("classes_per_chunk", [1, 3, 7, T])
def test_san_full_is_the_authors_semantic_inference(san_scores, classes_per_chunk):
    scores = with_chunk(san_scores, classes_per_chunk)
    torch.testing.assert_close(scores.full(OUTPUT), authors_semantic_inference(scores, OUTPUT), rtol=0, atol=1e-6)


@pytest.mark.parametrize("classes_per_chunk", [1, 3, 7, T])
def test_san_best_is_full_max(san_scores, classes_per_chunk):
    assert_best_is_full_max(with_chunk(san_scores, classes_per_chunk), OUTPUT)


def test_san_best_ties_across_chunks_go_to_the_first_class(san_scores):
    class_probs = san_scores.class_probs.clone()
    class_probs[:, 3] = class_probs[:, 2] = 1.0  # two identical, dominant classes in different chunks
    scores = with_chunk(san_scores, 1, class_probs)
    full = scores.full(OUTPUT)
    assert torch.equal(full[2], full[3]) and torch.equal(full[3], full.amax(dim=0))
    assert_best_is_full_max(scores, OUTPUT)
    assert bool((scores.best(OUTPUT)[1] == 2).all())


def test_san_best_allocates_masks_and_one_chunk(san_scores):
    output_size = (120, 150)  # above the padded size, so the masks at it are the largest tensor
    class_bytes = output_size[0] * output_size[1] * 4
    scores = SANScores(san_scores.class_probs, san_scores.mask_preds, san_scores.image_size,
                       san_scores.padded_size, chunk_bytes=3 * class_bytes)
    queries = scores.mask_preds.shape[0]
    assert queries < T / 2  # else the masks would not be smaller than all classes' scores
    all_classes = T * class_bytes
    assert largest_allocation(lambda: scores.full(output_size)) >= all_classes
    bound = max(scores.chunk_bytes, queries * class_bytes)  # one chunk, or the (Q, H0, W0) masks
    assert largest_allocation(lambda: scores.best(output_size)) <= bound < all_classes / 2


def test_san_coarse_covers_the_image_on_the_mask_grid(san_scores):
    assert san_scores.padded_size == (96, 96) and san_scores.mask_preds.shape[-2:] == (6, 6)
    cells = (math.ceil(70 / 16), math.ceil(90 / 16))  # (5, 6): the last row is part padding
    coarse = san_scores.coarse()
    assert coarse.shape == (T, *cells)
    # A sum of class probabilities times mask sigmoids: within [0, Q].
    assert float(coarse.min()) >= 0 and float(coarse.max()) <= san_scores.mask_preds.shape[0]
    smoothed = san_scores.with_coarse(coarse * 0.5)
    assert isinstance(smoothed, UpsampledScores) and smoothed.valid_size == cells
    reference = F.interpolate(coarse[None] * 0.5, size=OUTPUT, mode="bilinear", align_corners=False)[0]
    assert torch.equal(smoothed.full(OUTPUT), reference)
    with pytest.raises(ValueError, match="does not replace"):
        san_scores.with_coarse(torch.rand(T, 6, 6))


def test_candidates_give_the_labels_of_all_classes_without_upsampling_the_rejected():
    """CER leaves rejected classes exactly 0: best() over the kept ones only gives full()'s
    answer, a rejected class included where no kept one is above 0."""
    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand((12, 16, 16), generator=generator)
    kept = torch.tensor([2, 5, 6, 11])
    rejected = torch.ones(12, dtype=torch.bool)
    rejected[kept] = False
    coarse[rejected] = 0.0
    coarse[:, :4, :4] = 0.0  # no class scores there: the lowest id (0, rejected) wins, as in full()
    plain = UpsampledScores(coarse, (16, 16))
    with_candidates = UpsampledScores(coarse, (16, 16), candidates=kept)
    expected_confidence, expected_labels = plain.full((40, 40)).max(dim=0)
    confidence, labels = with_candidates.best((40, 40))
    assert torch.equal(labels, expected_labels) and torch.allclose(confidence, expected_confidence, atol=1e-6)
    assert labels[0, 0] == 0 and set(labels.unique().tolist()) <= {0, 2, 5, 6, 11}
    assert with_candidates.with_coarse(coarse).candidates is None
