"""SED's category early rejection (CER) on padded class buckets, against plain boolean indexing.

A small random decoder (narrow widths, 8 prompts, 6 x 6 grid) keeps this fast; the parity
cases (test_sed_parity.py, test_sed_checkpoint.py) check the same code on the authors' numbers.
"""

import pytest
import torch

from ovseg_ros.models import build_model
from ovseg_ros.models.sed.decoder import SEDDecoder, class_bucket, top_classes

CLASSES = 37  # not a power of two: the last bucket is capped at T
GRID = 6


@pytest.fixture(scope="module")
def decoder() -> SEDDecoder:
    torch.manual_seed(0)
    return SEDDecoder((24, 16, 8), prompts=8, hidden_dim=16, stage_dims=(16, 8, 4), guidance_proj_dims=(8, 4, 2),
                      heads=2, kernel_size=3).eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """dense (1, E, 6, 6), guidance res4/res3/res2, text (T, 8, E): random."""
    generator = torch.Generator().manual_seed(1)
    dense = torch.randn(1, 12, GRID, GRID, generator=generator)
    guidance = tuple(torch.randn(1, c, GRID * s, GRID * s, generator=generator) for c, s in ((24, 2), (16, 4), (8, 8)))
    return dense, guidance, torch.randn(CLASSES, 8, 12, generator=generator)


def reference_cer(decoder: SEDDecoder, dense, guidance, text, topk: int):
    """The straightforward selection: boolean indexing, every stage on exactly the kept classes."""
    x, image_guidance, cost_guidance = decoder.cost_map(dense, guidance, text)
    kept = torch.arange(len(text))
    kept_per_stage = []
    for aux_head, fusion, image_g, cost_g in zip(decoder.aux_heads, decoder.stages, image_guidance, cost_guidance):
        survivors = top_classes(aux_head(x)[:, 0], topk)
        x, kept = x[survivors], kept[survivors]
        kept_per_stage.append(kept)
        x = fusion(x, image_g, cost_g[kept])
    return decoder.head(x)[:, 0], kept, kept_per_stage


@torch.inference_mode()
@pytest.mark.parametrize("topk", [1, 2, 8, CLASSES])
def test_bucketed_cer_matches_boolean_indexing(decoder, inputs, topk):
    logits, kept, kept_per_stage = reference_cer(decoder, *inputs, topk)
    out = decoder(*inputs, cer_topk=topk)
    assert [ids.tolist() for ids in out.kept_per_stage] == [ids.tolist() for ids in kept_per_stage]
    assert out.kept.tolist() == kept.tolist()
    assert out.logits.shape == (len(kept), 8 * GRID, 8 * GRID)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    if topk == 1:  # 36 pixels cannot keep all 37 classes: the comparison covered real rejection
        assert len(kept_per_stage[0]) < CLASSES
        assert any(len(ids) != class_bucket(len(ids), CLASSES) for ids in kept_per_stage), "no stage padded"


@torch.inference_mode()
def test_without_cer_every_class_goes_through(decoder, inputs):
    out = decoder(*inputs)
    assert out.kept.tolist() == list(range(CLASSES)) and out.kept_per_stage == []
    assert out.logits.shape == (CLASSES, 8 * GRID, 8 * GRID)


def test_bucket_sizes():
    assert [class_bucket(k, 24) for k in (1, 2, 3, 5, 8, 9, 16, 17, 24)] == [1, 2, 4, 8, 8, 16, 16, 24, 24]
    assert class_bucket(5, 6) == 6


@torch.inference_mode()
def test_padding_never_changes_kept_rows(decoder, inputs):
    """Junk (huge values, inf, nan) in the padded rows of a bucket: kept rows are bit-identical."""
    x, image_guidance, cost_guidance = decoder.cost_map(*inputs)
    bucket, kept = 16, 11
    valid = torch.arange(bucket) < kept
    x, cost_g = x[:bucket].clone(), cost_guidance[0][:bucket].clone()
    junk_x, junk_cost_g = x.clone(), cost_g.clone()
    junk_x[kept:] = 1e6 * torch.randn_like(x[kept:])
    junk_x[kept, 0, 0, 0], junk_x[kept + 1, 1, 2, 3] = float("inf"), float("nan")
    junk_cost_g[kept:] = -1e6

    order, count = decoder.rank(0, x, valid, 1)
    junk_order, junk_count = decoder.rank(0, junk_x, valid, 1)
    # The bucket's selection is the plain one on its real rows, kept first and ascending.
    expected = top_classes(decoder.head0(x[:kept])[:, 0], 1).nonzero()[:, 0]
    assert 0 < len(expected) < kept
    assert order[: int(count)].tolist() == junk_order[: int(junk_count)].tolist() == expected.tolist()

    clean = decoder.decoder1(x, image_guidance[0], cost_g, valid)
    junk = decoder.decoder1(junk_x, image_guidance[0], junk_cost_g, valid)
    assert torch.equal(clean[:kept], junk[:kept])
    # Without the mask the padding would leak in through the class attention.
    unmasked = decoder.decoder1(junk_x, image_guidance[0], junk_cost_g)
    assert not torch.allclose(unmasked[:kept], clean[:kept])


@torch.inference_mode()
def test_each_stage_traces_as_one_graph(decoder, inputs):
    """torch.compile(fullgraph=True) raises on any graph break (backend "eager": no C++ compile)."""
    torch._dynamo.reset()
    x, image_guidance, cost_guidance = torch.compile(decoder.cost_map, fullgraph=True, backend="eager")(*inputs)
    ids = torch.arange(CLASSES)
    valid = torch.ones(CLASSES, dtype=torch.bool)
    for index, (fusion, image_g, cost_g) in enumerate(zip(decoder.stages, image_guidance, cost_guidance)):
        order, count = torch.compile(decoder.rank, fullgraph=True, backend="eager")(index, x, valid, 1)
        rows = order[: class_bucket(int(count), len(x))]
        x, ids = x[rows], ids[rows]
        valid = torch.arange(len(rows)) < count
        x = torch.compile(fusion, fullgraph=True, backend="eager")(x, image_g, cost_g[ids], valid)
    expected = decoder(*inputs, cer_topk=1)
    torch.testing.assert_close(decoder.head(x)[: len(expected.kept), 0], expected.logits)


@torch.inference_mode()
def test_sed_tiny_dev_rejects_classes_with_cer():
    model = build_model("sed_tiny_dev")
    text = model.encode_text([f"class {i}" for i in range(40)])
    image = torch.rand(1, 3, 480, 640, generator=torch.Generator().manual_seed(0)) * 255
    features = model.image_encoder(model.preprocess(image))
    everything = model.decoder(features.dense, features.guidance, text)
    top1 = model.decoder(features.dense, features.guidance, text, cer_topk=1)
    assert len(everything.kept) == 40
    assert 0 < len(top1.kept) < 40
    assert top1.logits.shape == (len(top1.kept), *everything.logits.shape[-2:])
