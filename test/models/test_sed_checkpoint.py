"""SED weights: official checkpoint layouts, strict loading, safe loading, CLIP-only weights,
and category early rejection on the seeded weights.

The checkpoint files are tiny: every tensor is one number broadcast to its full shape
(stride 0), and ``torch.save`` stores only that number. Each key gets its own number, so
checking every loaded tensor also checks the key mapping.
"""

import argparse
import json

import numpy as np
import pytest
import torch

from ovseg_ros.models.checkpoint import SED_CLIP_PREFIX, CheckpointError
from ovseg_ros.models.sed import build_sed
from ovseg_ros.commands import check_parity

OFFICIAL_TO_OURS = {
    SED_CLIP_PREFIX + "visual.": "image_encoder.",
    SED_CLIP_PREFIX: "text_encoder.",
    "sem_seg_head.predictor.transformer.": "decoder.",
}


@pytest.fixture(scope="module")
def official(fixtures_dir) -> dict[str, torch.Tensor]:
    """Every key of the official ConvNeXt-B checkpoint, each a distinct constant."""
    tensors = json.loads((fixtures_dir / "manifests" / "sed_convnext_base.json").read_text())["tensors"]
    return {key: torch.tensor(1.0 + i / len(tensors)).expand(shape) for i, (key, shape, _) in enumerate(tensors)}


def assert_loaded(model, state: dict[str, torch.Tensor], prefix_map: dict[str, str]) -> None:
    """Every tensor of ``state`` arrived in ``model`` under its key renamed by the first matching prefix."""
    ours = model.state_dict()
    for key, value in state.items():
        old, new = next((old, new) for old, new in prefix_map.items() if key.startswith(old))
        assert torch.equal(ours[new + key.removeprefix(old)], value), key


@pytest.mark.parametrize("layout", ["model-wrapped", "bare", "module-prefixed", "detectron2-training-state"])
def test_official_layouts_load(tmp_path, official, layout):
    content = {
        "model-wrapped": {"model": official},
        "bare": official,
        "module-prefixed": {"model": {"module." + key: value for key, value in official.items()}},
        # detectron2's Checkpointer.save: the weights beside optimizer, scheduler and iteration.
        "detectron2-training-state": {
            "model": official,
            "optimizer": {"state": {0: {"step": torch.tensor(89999.0), "exp_avg": torch.zeros(4)}},
                          "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "params": [0]}]},
            "scheduler": {"base_lrs": [2e-4], "last_epoch": 89999},
            "iteration": np.int64(89999),
        },
    }[layout]
    path = tmp_path / "model_final.pth"
    torch.save(content, path)
    assert path.stat().st_size < 1_000_000
    model = build_sed("convnext_base", checkpoint=path)
    assert_loaded(model, official, OFFICIAL_TO_OURS)


def test_truncated_checkpoint_names_missing_keys(tmp_path, official):
    truncated = dict(official)
    del truncated["sem_seg_head.predictor.transformer.head.bias"]
    del truncated[SED_CLIP_PREFIX + "visual.trunk.stem.0.weight"]
    torch.save({"model": truncated}, tmp_path / "truncated.pth")
    with pytest.raises(CheckpointError, match="2 missing keys") as error:
        build_sed("convnext_base", checkpoint=tmp_path / "truncated.pth")
    assert "decoder.head.bias" in str(error.value)
    assert "image_encoder.trunk.stem.0.weight" in str(error.value)


def test_extra_key_is_unexpected(tmp_path, official):
    extra = {**official, "sem_seg_head.predictor.transformer.head3.weight": torch.zeros(1, 16, 3, 3)}
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected keys.*decoder.head3.weight"):
        build_sed("convnext_base", checkpoint=tmp_path / "extra.pth")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_sed("convnext_base", checkpoint=path)


def test_loading_is_weights_only(tmp_path, official):
    # A pickled Namespace loads with weights_only=False but must be refused here.
    path = tmp_path / "unsafe.pth"
    torch.save({"model": official, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*\(argparse.Namespace\)"):
        build_sed("convnext_base", checkpoint=path)


def test_clip_weights_only(tmp_path, official):
    clip = {key.removeprefix(SED_CLIP_PREFIX): value for key, value in official.items() if key.startswith(SED_CLIP_PREFIX)}
    torch.save(clip, tmp_path / "open_clip.pth")
    first = build_sed("convnext_base", clip_weights=tmp_path / "open_clip.pth")
    second = build_sed("convnext_base", clip_weights=tmp_path / "open_clip.pth")
    assert_loaded(first, clip, {"visual.": "image_encoder.", "": "text_encoder."})
    # The untrained decoder is initialised the same way every time.
    for (name, a), b in zip(first.decoder.state_dict().items(), second.decoder.state_dict().values()):
        assert torch.equal(a, b), name

    torch.save({**clip, "extra.weight": torch.zeros(1)}, tmp_path / "open_clip_extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys.*text_encoder.extra.weight"):
        build_sed("convnext_base", clip_weights=tmp_path / "open_clip_extra.pth")


def test_category_early_rejection_rejects(fixtures_dir):
    """With top-1 CER, 18 of the cer24 case's 24 classes survive and the other 6 score exactly 0.

    Uses the stored reference text features: this is about the decoder, and it saves the
    text encoding of 24 x 80 prompts.
    """
    case_dir = fixtures_dir / "sed_b_seed1_cer24"
    case = json.loads((case_dir / "case.json").read_text())
    model = build_sed("convnext_base", state_dict=check_parity.seeded_state_dict(case, case_dir))
    with np.load(case_dir / "arrays.npz") as arrays:
        image = torch.from_numpy(arrays["image_input_u8"]).float()[None]
        text = torch.from_numpy(arrays["text_features"])
        expected_kept = arrays["cer_top1_kept_stage3"]

    out = model.predict(image, text, cer_topk=1)
    assert [len(kept) for kept in out.kept_per_stage] == [18, 18, 18]
    assert np.array_equal(out.kept.numpy(), expected_kept)
    rejected = np.setdiff1d(np.arange(24), expected_kept)
    final = out.scores().full(tuple(case["original_hw"]))
    assert torch.all(final[rejected] == 0)
    assert torch.all(final[expected_kept] > 0)
