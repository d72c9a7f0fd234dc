"""The one path of a vocabulary change, whatever asks for it (the ``~/set_vocabulary`` service or
the ``vocabulary`` parameter): edit, validate, encode off the executor threads, one change at a
time, then install under the node's output lock (class state, then class map)."""

from __future__ import annotations

from concurrent import futures
from typing import Callable

import torch

from ovseg_ros.engine.serial_worker import SerialWorker
from ovseg_ros.engine.vocabulary import Vocabulary, VocabularyError, VocabularyManager, validate_class_names

#: ``edit(current names) -> new names``
Edit = Callable[[list[str]], list[str]]


class VocabularyChanges:
    """Vocabulary changes of one node, encoded on a worker thread of their own.

    Args:
        vocabularies: the node's manager (encoder of the current configuration, versions).
        current: ``() -> (installed vocabulary or None, configuration number)``, read under the
            node's output lock; None: the node is not configured.
        install: ``(vocabulary, configuration) -> installed vocabulary``: makes it current
            (under the output lock) unless the configuration changed meanwhile (then raises
            VocabularyError: a cleanup or shutdown came during the encoding).
        not_configured: why there is no vocabulary (for the refusal's message).
    """

    def __init__(
        self,
        vocabularies: VocabularyManager,
        current: Callable[[], tuple[Vocabulary | None, int]],
        install: Callable[[Vocabulary, int], Vocabulary],
        not_configured: Callable[[], str],
    ) -> None:
        self._vocabularies = vocabularies
        self._current = current
        self._install = install
        self._not_configured = not_configured
        self._worker = SerialWorker("ovseg-vocabulary")

    def submit(self, edit: Edit) -> futures.Future:
        """Queue a change; its Future gives the vocabulary in force after it. Raises
        VocabularyError once :meth:`close` has been called."""
        try:
            return self._worker.submit(self._change, edit)
        except RuntimeError:  # closed
            raise VocabularyError("the node is shutting down") from None

    def close(self) -> None:
        """Refuse changes from now on; those queued are cancelled."""
        self._worker.close()

    def _change(self, edit: Edit) -> Vocabulary:
        """Encode the edited vocabulary and swap it in; a frame in flight keeps the old one.

        The encoding holds no lock, so frames, diagnostics and transitions go on meanwhile; a
        cleanup or shutdown during it makes the change fail rather than install classes on a
        released node.
        """
        current, configuration = self._current()
        if current is None:
            reason = self._not_configured()
            raise VocabularyError(f"the node is not configured{': ' + reason if reason else ''}")
        names = validate_class_names(edit(list(current.names)))
        if tuple(names) == current.names:
            return current
        try:
            vocabulary = self._vocabularies.encode(names)
        except torch.cuda.OutOfMemoryError as exc:
            raise VocabularyError(f"out of GPU memory encoding {len(names)} classes: {exc}") from exc
        return self._install(vocabulary, configuration)
