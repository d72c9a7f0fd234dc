"""Scores in float32 whatever autocast makes: the dtypes CUDA autocast produces, built here on the CPU.

CUDA autocast gives softmax outputs in float32 (softmax is on its float32 list) while matmuls
and convolutions come out in bf16/fp16; CPU autocast keeps softmax in bf16, so no CPU run of a
model shows the mix. These tests construct it.
"""

import torch

from ovseg_ros.models import build_model
from ovseg_ros.models.san.model import SANPrediction
from ovseg_ros.models.scores import SANScores, UpsampledScores
from ovseg_ros.engine.segmenter import Segmenter

Q, T, GRID, IMAGE, PADDED, OUTPUT = 10, 7, (4, 6), (60, 90), (64, 96), (30, 45)


def san_outputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(Q, T + 1, generator=gen) * 3
    mask_logits = torch.randn(Q, *GRID, generator=gen) * 4
    return class_logits, mask_logits


def test_san_scores_take_float32_probabilities_with_bf16_masks():
    class_logits, mask_logits = san_outputs()
    probs = class_logits.softmax(-1)[:, :-1]  # float32, as CUDA autocast's softmax
    masks_bf16 = mask_logits.to(torch.bfloat16)  # the side adapter's output under autocast
    mixed = SANScores(probs, masks_bf16, IMAGE, PADDED)
    reference = SANScores(probs, masks_bf16.float(), IMAGE, PADDED)
    confidence, labels = mixed.best(OUTPUT)
    assert confidence.dtype == torch.float32
    expected_confidence, expected_labels = reference.best(OUTPUT)
    assert torch.equal(labels, expected_labels) and torch.equal(confidence, expected_confidence)
    assert mixed.coarse().dtype == torch.float32 and mixed.full(OUTPUT).dtype == torch.float32


def test_san_prediction_softmax_is_float32_from_bf16_logits():
    class_logits, mask_logits = san_outputs(1)
    prediction = SANPrediction(
        text_classifier=torch.zeros(T + 1, 4),
        mask_preds=mask_logits[None].to(torch.bfloat16),
        attn_biases=torch.zeros(1),
        mask_embs=torch.zeros(1),
        mask_logits=class_logits[None].to(torch.bfloat16),
        image_size=IMAGE,
        padded_size=PADDED,
    )
    scores = prediction.scores()
    assert scores.class_probs.dtype == torch.float32 and scores.mask_preds.dtype == torch.float32
    torch.testing.assert_close(scores.class_probs, class_logits.to(torch.bfloat16).float().softmax(-1)[:, :-1])
    scores.best(OUTPUT)  # no dtype mismatch


def test_upsampled_scores_store_bf16_maps_in_float32():
    coarse = torch.rand(T, *GRID).to(torch.bfloat16)
    scores = UpsampledScores(coarse, GRID)
    assert scores.coarse().dtype == torch.float32
    assert scores.best(OUTPUT)[0].dtype == torch.float32


def test_sed_probabilities_stay_float32_under_bf16_autocast():
    """SED's decoder logits are bf16 under autocast (convolutions); its sigmoid and the stored map
    must not be: bf16 has 8 bits of mantissa, so probabilities near 1 would collapse onto a few
    values and argmax ties would go to the lowest class id."""
    segmenter = Segmenter(build_model("sed_tiny_dev"), precision="bf16")
    image = torch.rand(1, 3, 96, 128) * 255
    text = segmenter.encode_text(["wall", "floor", "person", "chair"])
    scores = segmenter.scores(image, text)
    assert scores.coarse().dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = segmenter.model.predict(image, text)
    assert output.logits.dtype == torch.bfloat16, "the premise: autocast makes the logits bf16"
    assert output.probs.dtype == torch.float32
    torch.testing.assert_close(output.probs, output.logits.float().sigmoid(), rtol=0, atol=0)
    # The sigmoid of bf16 logits in float32 keeps distinct values that bf16 would merge.
    logits = torch.linspace(5.5, 9.0, 64).to(torch.bfloat16)
    assert len(torch.unique(logits.float().sigmoid())) > 3 * len(torch.unique(logits.sigmoid()))
