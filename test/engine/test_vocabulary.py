"""Class-name validation, runtime edits and the on-disk text-embedding cache."""

import pytest
import torch

from ovseg_ros.engine.vocabulary import (
    MAX_CLASSES,
    MODE_ADD,
    MODE_REMOVE,
    MODE_REPLACE,
    TextEmbeddingCache,
    VocabularyError,
    edit_vocabulary,
    validate_class_names,
)


def test_names_are_stripped_and_kept_in_order():
    assert validate_class_names([" person ", "sofa, couch", "café"]) == ["person", "sofa, couch", "café"]


@pytest.mark.parametrize(
    "names, reason",
    [
        ([], "empty"),
        (["person", "  "], "class 1 is empty"),
        (["person", "Person"], "duplicates class 0"),
        (["x" * 151], "151 characters"),
        (["bad\nname"], "control characters"),
        ([3], "not a string"),
    ],
)
def test_bad_vocabularies_are_refused_with_a_reason(names, reason):
    with pytest.raises(VocabularyError, match=reason):
        validate_class_names(names)


def test_more_classes_than_mono16_holds_are_refused():
    with pytest.raises(VocabularyError, match="at most 65535"):
        validate_class_names([f"c{i}" for i in range(MAX_CLASSES + 1)])


def test_edit_modes():
    current = ["person", "car"]
    assert edit_vocabulary(current, ["tree"], MODE_REPLACE) == ["tree"]
    assert edit_vocabulary(current, ["tree"], MODE_ADD) == ["person", "car", "tree"]
    assert edit_vocabulary(current, ["CAR"], MODE_REMOVE) == ["person"]
    for labels, mode, reason in (
        (["car"], MODE_ADD, "duplicates"),
        (["bus"], MODE_REMOVE, "not in the vocabulary"),
        (["person", "car"], MODE_REMOVE, "empty"),
        (["x"], 7, "unknown mode"),
    ):
        with pytest.raises(VocabularyError, match=reason):
            edit_vocabulary(current, labels, mode)


CPU = torch.device("cpu")


class CountingEncoder:
    """A deterministic text encoder that records which names it had to encode."""

    def __init__(self):
        self.calls = []

    def __call__(self, names):
        self.calls.append(list(names))
        return torch.stack([torch.full((2, 3), float(sum(map(ord, n)))) for n in names])


def test_cache_encodes_each_name_once_across_instances(tmp_path):
    encoder = CountingEncoder()
    first = TextEmbeddingCache(tmp_path, "sed_convnext_base", "abc").lookup(["a", "b"], encoder, CPU, "fp32")
    cache = TextEmbeddingCache(tmp_path, "sed_convnext_base", "abc")
    second = cache.lookup(["b", "c", "a"], encoder, CPU, "fp32")
    assert encoder.calls == [["a", "b"], ["c"]]
    assert (cache.hits, cache.misses) == (2, 1)
    assert torch.equal(second[0], first[1]) and torch.equal(second[2], first[0])


def test_cache_is_keyed_by_model_and_weights(tmp_path):
    encoder = CountingEncoder()
    for variant, digest in (("m1", "w1"), ("m1", "w2"), ("m2", "w1")):
        TextEmbeddingCache(tmp_path, variant, digest).lookup(["a"], encoder, CPU, "fp32")
    assert len(encoder.calls) == 3


def test_cache_is_keyed_by_precision(tmp_path):
    """Embeddings computed in fp32 are never served to a bf16 or fp16 encoder, nor the reverse."""
    encoder = CountingEncoder()
    for precision in ("fp32", "bf16", "fp16", "fp32", "bf16", "fp16"):
        TextEmbeddingCache(tmp_path, "m", "w").lookup(["a"], encoder, CPU, precision)
    assert len(encoder.calls) == 3


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(tmp_path, "m", "w")
    cache.lookup(["a"], encoder, CPU, "fp32")
    for entry in (cache.directory / "fp32").iterdir():
        entry.write_bytes(b"not a tensor")
    again = cache.lookup(["a"], encoder, CPU, "fp32")
    assert len(encoder.calls) == 2 and again.shape == (1, 2, 3)
