"""SAN checkpoint loading and the role of the attention bias, on a tiny SAN.

The tiny model is a real SAN (same code path) with small widths, so checkpoint files are a few
MB and a forward pass takes well under a second.
"""

import math

import pytest
import torch

from ovseg_ros.models.checkpoint import CheckpointError
from ovseg_ros.models.san import SAN, VARIANTS, build_san

TINY = VARIANTS["tiny_dev"]


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for TINY keyed as in an official checkpoint (incl. the loss's empty_weight)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in SAN(TINY).state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("attn_mask"):  # causal mask, stored as is
            state[key] = value
        elif value.dim() >= 2 and value.numel() > 1:
            state[key] = noise / math.sqrt(value[0].numel())
        else:  # scales near 1 (a tiny bias_scaling would silence the attention bias), small offsets
            state[key] = 1 + 0.1 * noise if key.endswith("weight") else 0.02 * noise
    state["criterion.empty_weight"] = torch.ones(5)
    return state


@pytest.fixture(scope="module")
def state():
    return official_state()


@pytest.mark.parametrize("layout", ["wrapped", "bare", "module_prefix"])
def test_official_layouts_load(tmp_path, state, layout):
    if layout == "module_prefix":
        payload = {"model": {f"module.{k}": v for k, v in state.items()}}
    else:
        payload = {"model": state} if layout == "wrapped" else state
    path = tmp_path / "san.pth"
    torch.save(payload, path)
    loaded = build_san(TINY, checkpoint=path).state_dict()
    assert set(loaded) == set(state) - {"criterion.empty_weight"}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_truncated_checkpoint_names_missing_key(tmp_path, state):
    path = tmp_path / "san.pth"
    torch.save({"model": {k: v for k, v in state.items() if k != "clip_rec_head.proj"}}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys.*clip_rec_head\.proj"):
        build_san(TINY, checkpoint=path)


def test_extra_key_is_named(tmp_path, state):
    path = tmp_path / "san.pth"
    torch.save({"model": {**state, "side_adapter_network.extra.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys.*side_adapter_network\.extra\.weight"):
        build_san(TINY, checkpoint=path)


def test_wrong_variant_is_rejected(state):
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build_san("vit_b_16", state_dict=state)


def test_corrupt_file_raises(tmp_path, state):
    good = tmp_path / "good.pth"
    torch.save({"model": state}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        build_san(TINY, checkpoint=cut)


@pytest.fixture(scope="module")
def tiny_model(state):
    return build_san(TINY, state_dict=state)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0)) * 255


@torch.inference_mode()
def test_forward_returns_scores_per_class(tiny_model, image):
    text = tiny_model.encode_text(["sky", "road", "sofa, couch"])
    assert text.shape == (3, TINY.embed_dim)
    scores = tiny_model(image, text, output_size=(35, 45))
    assert scores.shape == (3, 35, 45) and torch.isfinite(scores).all()


@torch.inference_mode()
def test_attention_bias_shapes_the_mask_embeddings(tiny_model, state, image):
    """With the bias, every query sees its own region; zeroed, all [SOS] tokens are identical."""
    text = torch.nn.functional.normalize(torch.randn(2, TINY.embed_dim), dim=-1)
    with_bias = tiny_model.predict(image, text)
    assert with_bias.attn_biases.abs().amax() > 0.1
    assert (with_bias.mask_embs - with_bias.mask_embs[:, :1]).abs().amax() > 1e-2

    no_bias = build_san(TINY, state_dict=state)
    no_bias.side_adapter_network.mask_decoder.bias_scaling.weight.zero_()
    no_bias.side_adapter_network.mask_decoder.bias_scaling.bias.zero_()
    zeroed = no_bias.predict(image, text)
    assert zeroed.attn_biases.abs().amax() == 0
    assert torch.allclose(zeroed.mask_embs, zeroed.mask_embs[:, :1].expand_as(zeroed.mask_embs), atol=1e-6)
    assert (zeroed.mask_embs - with_bias.mask_embs).abs().amax() > 1e-2
