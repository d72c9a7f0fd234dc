"""SAN checkpoint loading and the role of the attention bias, on a tiny SAN.

The tiny model is a real SAN (same code path) with small widths, so checkpoint files are a few
MB and a forward pass takes well under a second.
"""

import math
import os
import pickle
import subprocess
import sys
import types

import numpy as np
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


def detectron2_checkpoint(model_state: dict[str, torch.Tensor]) -> dict:
    """What detectron2's ``Checkpointer.save`` writes: model, optimizer, scheduler, iteration."""
    params = [torch.nn.Parameter(value.clone()) for value in list(model_state.values())[:4]]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[60000, 80000])
    return {"model": model_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "iteration": np.int64(89999)}


class Numpy1Pickler(pickle._Pickler):
    """Writes numpy scalars under numpy 1's module name, as files saved before numpy 2 have them."""

    def save_global(self, obj, name=None):
        if obj is np.int64(0).__reduce__()[0]:  # numpy's scalar constructor
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
def test_detectron2_training_state_beside_the_weights_loads(tmp_path, state, numpy_names):
    """numpy scalars are what plain weights_only loading refused (the iteration counter)."""
    path = tmp_path / "model_final.pth"
    pickle_module = pickle if numpy_names == "numpy 2" else types.SimpleNamespace(Pickler=Numpy1Pickler, __name__="numpy1")
    torch.save(detectron2_checkpoint(state), path, pickle_module=pickle_module)
    assert (f"numpy.{'_core' if numpy_names == 'numpy 2' else 'core'}.multiarray.scalar"
            in torch.serialization.get_unsafe_globals_in_checkpoint(path))
    loaded = build_san(TINY, checkpoint=path).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


class RunsAShellCommand:
    """Pickles as a call to os.system: loading it with plain pickle runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused_and_never_runs(tmp_path, state):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model_final.pth"
    torch.save({**detectron2_checkpoint(state), "hook": RunsAShellCommand(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*\(posix.system\)"):
        build_san(TINY, checkpoint=path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is malicious: plain unpickling runs it
    assert marker.exists()


def test_key_with_and_without_module_prefix_is_an_error(tmp_path, state):
    path = tmp_path / "san.pth"
    key = "clip_rec_head.proj"
    torch.save({"model": {**state, f"module.{key}": state[key] + 1}}, path)
    with pytest.raises(CheckpointError, match=rf"'{key}' is there both with and without the 'module.' prefix"):
        build_san(TINY, checkpoint=path)


def test_optimizer_state_is_not_read_into_memory(tmp_path, state):
    """The file is memory-mapped: 512 MB of optimizer state beside the weights costs no RAM."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "optimizer": {"state": {0: {"exp_avg": torch.ones(128 << 20)}}}}, path)
    code = (
        "import sys\n"
        "from ovseg_ros.models.checkpoint import read_state_dict\n"
        "def kib(field): return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1])\n"
        "before = kib('VmRSS:')\n"
        "read_state_dict(sys.argv[1])\n"
        "print((kib('VmHWM:') - before) // 1024)\n"
    )
    grown_mib = int(subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True).stdout)
    print(f"peak memory growth reading a {path.stat().st_size >> 20} MiB checkpoint: {grown_mib} MiB")
    assert grown_mib < 100


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
    scores = tiny_model(image, text).full((35, 45))
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
