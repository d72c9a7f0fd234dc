"""Vocabularies: class names, their validation, text embeddings (cached on disk), versions.

A vocabulary is a list of class names as a user types them. ``"sofa, couch"`` is one
class with two synonyms (the models split on ``", "``). Names are validated before any
model sees them so that a bad request gets a clear answer, not a crash.

A :class:`Vocabulary` is immutable and carries a version. The :class:`VocabularyManager`
encodes a new one (on whatever thread asks, usually not the frames' one) and swaps it in
as a whole; a frame reads :attr:`VocabularyManager.current` once, so it is labeled by
exactly one vocabulary and says which.
"""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import torch

#: mono16 labels use 65535 for "unlabeled", so ids 0..65534 are available.
MAX_CLASSES = 65535
#: CLIP's context is 77 tokens and the prompt templates take about 10; 150 characters
#: stays well inside it for any ordinary name.
MAX_NAME_CHARS = 150


class VocabularyError(ValueError):
    """A vocabulary request that cannot be honoured; the message says why."""


def unlabeled_id(num_classes: int) -> int:
    """Label value for "no class": 255 in mono8 labels (<= 254 classes), else 65535 (mono16)."""
    return 255 if num_classes <= 254 else 65535


@dataclass(frozen=True)
class Vocabulary:
    """Class names with their text features, as one immutable unit.

    Attributes:
        names: the validated class names; label id i is ``names[i]``.
        text_features: (T, ...) float32, as the model's ``encode_text`` returns, on its device.
        version: > 0 once installed by a :class:`VocabularyManager`; never names two class lists.
        ready: on CUDA, recorded on the stream that computed ``text_features`` (the encoding
            thread's) once they are written: a frame's stream waits for it before reading them.
            None where nothing is pending (CPU, or features copied with a blocking copy).
    """

    names: tuple[str, ...]
    text_features: torch.Tensor
    version: int
    ready: torch.cuda.Event | None = None

    @property
    def unlabeled_id(self) -> int:
        return unlabeled_id(len(self.names))


class VocabularyManager:
    """The current vocabulary of a segmenter: encoding, versions, and the swap between frames.

    Versions count over the manager's life, across encoders (a node keeps one manager and
    attaches each configuration's segmenter), so a version never names two class lists.
    Encoding runs on the caller's thread; the swap is one attribute assignment, so a frame
    that read :attr:`current` keeps that vocabulary whatever happens meanwhile.

    Args:
        encode: ``list[str] -> (T, ...)`` text features (e.g. ``Segmenter.encode_text``), or
            None until :meth:`attach` gives one.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor] | None = None) -> None:
        self._encode = encode
        self._lock = threading.Lock()
        self._last_version = 0
        self.current: Vocabulary | None = None

    def attach(self, encode: Callable[[list[str]], torch.Tensor] | None) -> None:
        """Encode with ``encode`` from now on (None: detach); the current vocabulary is dropped."""
        with self._lock:
            self._encode = encode
            self.current = None

    def encode(self, names: Iterable[str]) -> Vocabulary:
        """Validate ``names`` and compute their text features; not installed (version 0).

        Raises :class:`VocabularyError` for bad names or when no encoder is attached.
        """
        encode = self._encode
        if encode is None:
            raise VocabularyError("no model to encode the vocabulary with (the node is not configured)")
        names = validate_class_names(names)
        features = encode(names).float()
        ready = None
        if features.is_cuda:  # written on this thread's stream; frames read them on another
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(features.device))
        return Vocabulary(tuple(names), features, 0, ready)

    def install(self, vocabulary: Vocabulary) -> Vocabulary:
        """Make ``vocabulary`` current under the next version; returns the installed one."""
        with self._lock:
            self._last_version += 1
            self.current = Vocabulary(vocabulary.names, vocabulary.text_features, self._last_version, vocabulary.ready)
            return self.current


def validate_class_names(names: Iterable[str]) -> list[str]:
    """Return ``names`` with surrounding whitespace stripped, or raise :class:`VocabularyError`.

    Rejects an empty vocabulary, empty names, names with control characters, names over
    :data:`MAX_NAME_CHARS`, duplicates (case-insensitive) and more than :data:`MAX_CLASSES`
    names. Non-ASCII letters are fine: CLIP's tokenizer is byte-level.
    """
    cleaned = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(names):
        if not isinstance(raw, str):
            raise VocabularyError(f"class {index} is a {type(raw).__name__}, not a string")
        name = raw.strip()
        if not name:
            raise VocabularyError(f"class {index} is empty")
        if any(unicodedata.category(ch).startswith("C") for ch in name):
            raise VocabularyError(f"class {index} ({name!r}) contains control characters")
        if len(name) > MAX_NAME_CHARS:
            raise VocabularyError(f"class {index} is {len(name)} characters long (max {MAX_NAME_CHARS})")
        key = name.casefold()
        if key in seen:
            raise VocabularyError(f"class {index} ({name!r}) duplicates class {seen[key]}")
        seen[key] = index
        cleaned.append(name)
    if not cleaned:
        raise VocabularyError("the vocabulary is empty: give at least one class name")
    if len(cleaned) > MAX_CLASSES:
        raise VocabularyError(f"{len(cleaned)} classes: at most {MAX_CLASSES} fit a mono16 label image")
    return cleaned


def load_class_list(name: str) -> list[str]:
    """A class list shipped in ``ovseg_ros/data`` (``ade150``, ``ade847``), in label order."""
    try:
        text = resources.files("ovseg_ros.data").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VocabularyError(f"no shipped class list {name!r}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def default_cache_dir() -> Path:
    """``$OVSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/ovseg_ros``, else ``~/.cache/ovseg_ros``."""
    if os.environ.get("OVSEG_CACHE_DIR"):
        return Path(os.environ["OVSEG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ovseg_ros"


class TextEmbeddingCache:
    """Per-class text embeddings on disk, keyed by model variant, weights digest, precision and name.

    One file per class name under ``<root>/text/<variant>-<digest>/<precision>/``, so any
    vocabulary that reuses names seen before (in any order, in any earlier run) costs no
    text encoding for them. The precision is the one the embeddings were computed in
    (bf16 and fp16 features differ from fp32 ones), given with each lookup by whoever runs
    the encoder. Files are written atomically and read with ``weights_only=True``; an
    unreadable entry is recomputed.
    """

    def __init__(self, root: Path, variant: str, weights_digest: str) -> None:
        self.directory = Path(root) / "text" / f"{variant}-{weights_digest}"
        self.hits = 0
        self.misses = 0

    def _path(self, precision: str, name: str) -> Path:
        return self.directory / precision / (hashlib.sha256(name.encode("utf-8")).hexdigest()[:32] + ".pt")

    def lookup(self, names: list[str], encode: Callable[[list[str]], torch.Tensor], device: torch.device, precision: str) -> torch.Tensor:
        """Embeddings of ``names`` stacked on dim 0: cached ones loaded, the rest encoded in one batch.

        Args:
            names: validated class names.
            encode: the model's text encoder, ``list[str] -> (len, ...)`` tensor.
            device: where the result lives.
            precision: what ``encode`` computes in (``"fp32"``, ``"bf16"``, ``"fp16"``).
        """
        found: dict[str, torch.Tensor] = {}
        for name in names:
            path = self._path(precision, name)
            if path.is_file():
                try:
                    found[name] = torch.load(path, map_location=device, weights_only=True)
                except Exception:  # a torn or foreign file: encode again
                    path.unlink(missing_ok=True)
        missing = [name for name in names if name not in found]
        self.hits += len(names) - len(missing)
        self.misses += len(missing)
        if missing:
            encoded = encode(missing)
            (self.directory / precision).mkdir(parents=True, exist_ok=True)
            for name, embedding in zip(missing, encoded):
                found[name] = embedding
                self._store(self._path(precision, name), embedding)
        return torch.stack([found[name].to(device) for name in names])

    @staticmethod
    def _store(path: Path, embedding: torch.Tensor) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(embedding.detach().to("cpu").clone(), tmp)
        tmp.replace(path)


#: SetVocabulary modes (values of the srv constants MODE_REPLACE / MODE_ADD / MODE_REMOVE).
MODE_REPLACE, MODE_ADD, MODE_REMOVE = 0, 1, 2


def edit_vocabulary(current: list[str], labels: list[str], mode: int) -> list[str]:
    """The vocabulary after a replace / add / remove request, validated.

    Raises :class:`VocabularyError` for an unknown mode, adding a name already present,
    removing a name that is absent, removing every class, or any name
    :func:`validate_class_names` rejects.
    """
    if mode == MODE_REPLACE:
        return validate_class_names(labels)
    if mode == MODE_ADD:
        return validate_class_names(list(current) + list(labels))
    if mode == MODE_REMOVE:
        present = {name.casefold(): name for name in current}
        removed = {str(label).strip().casefold() for label in labels}
        unknown = sorted(label for label in removed if label not in present)
        if unknown:
            raise VocabularyError(f"cannot remove {', '.join(map(repr, unknown))}: not in the vocabulary")
        return validate_class_names([name for name in current if name.casefold() not in removed])
    raise VocabularyError(f"unknown mode {mode} (0 replace, 1 add, 2 remove)")
