"""Segmenter(compile_mode=...): which modules are compiled, and the refusals.

A compiled frame is not run here: inductor on this CPU takes about a minute for the tiny
SED (its output then matches eager within 4e-7); ``scripts/device_check.sh`` times the
compile modes on the GPU.
"""

import pytest
import torch

from ovseg_ros.models import build_model
from ovseg_ros.engine.segmenter import COMPILE_MODES, COMPILE_RECOMPILE_LIMIT, Segmenter, compile_mode_for_threads, compile_targets


def compiled(module: torch.nn.Module) -> bool:
    return module._compiled_call_impl is not None  # what nn.Module.compile sets


def test_sed_compiles_its_image_encoder_and_each_decoder_stage():
    segmenter = Segmenter(build_model("sed_tiny_dev"), compile_mode="default")
    model = segmenter.model
    assert compile_targets(model) == [model.image_encoder, *model.decoder.stages]
    assert all(compiled(module) for module in compile_targets(model))
    assert not compiled(model) and not compiled(model.text_encoder) and not compiled(model.decoder)
    assert torch._dynamo.config.cache_size_limit >= COMPILE_RECOMPILE_LIMIT


def test_san_compiles_its_image_towers_not_its_text_tower():
    model = Segmenter(build_model("san_tiny_dev"), compile_mode="reduce-overhead").model
    assert compile_targets(model) == [model.clip_visual_extractor, model.side_adapter_network, model.clip_rec_head]
    assert all(compiled(module) for module in compile_targets(model))
    assert not compiled(model.ov_classifier)


def test_eager_by_default_and_unknown_modes_are_refused():
    model = Segmenter(build_model("san_tiny_dev")).model
    assert not any(compiled(module) for module in model.modules())
    assert "reduce-overhead" in COMPILE_MODES
    with pytest.raises(ValueError, match="compile_mode must be None or one of"):
        Segmenter(build_model("san_tiny_dev"), compile_mode="fast")


@pytest.mark.parametrize(
    "mode, version, expected",
    [
        ("reduce-overhead", "2.11.0+cu130", "default"),  # the GPU machine's torch
        ("max-autotune", "2.12.1", "max-autotune-no-cudagraphs"),
        ("reduce-overhead", "2.13.0", "reduce-overhead"),
        ("reduce-overhead", "2.14.0+cu130", "reduce-overhead"),
        ("default", "2.11.0", "default"),
        (None, "2.11.0", None),
    ],
)
def test_cuda_graphs_from_the_inference_thread_only_where_torch_supports_them(mode, version, expected):
    used, note = compile_mode_for_threads(mode, version)
    assert used == expected
    if used == mode:
        assert note is None
    else:
        assert f"torch {version}" in note and "#123177" in note and f"with {expected} instead" in note
