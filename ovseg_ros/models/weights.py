"""The authors' released checkpoints: where each is published, and fetching one into the weights folder.

    path = fetch_weights("sed_convnext_base")   # weights_dir()/sed_convnext_base.safetensors

:data:`RELEASES` is the one table of where the weights come from. SAN is on the authors'
Hugging Face repository and comes through ``huggingface_hub`` (its cache, its progress bar,
its resume of a transfer cut short within the run; ``HF_ENDPOINT`` redirects it). SED is on
the authors' Google Drive, fetched over plain HTTP (``urllib``) from Drive's direct download
address, keeping a partial file that a further attempt, in this run or the next, resumes
with an HTTP ``Range`` request. ``size`` and ``sha256`` are recorded once known: until then the download is
checked by its size as the server announced it and by the strict key check below, and
:func:`fetch_weights` reports both so that they can be recorded here.

A download becomes weights only after it is verified: the recorded size and sha256 when
there are some, a safe read (:func:`~ovseg_ros.models.checkpoint.read_state_dict`: tensors
only, no code from the file), conversion to ``.safetensors`` and the model built from that
file with every key and shape checked (:func:`~ovseg_ros.models.build_model` raises
:class:`CheckpointError` otherwise). Only then is ``<model>.safetensors`` moved into the
weights folder, in one rename; whatever fails leaves no file there, and the download is
discarded so that the next attempt starts afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html.parser
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import build_model, weights_dir
from .checkpoint import CheckpointError, read_state_dict

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """Where the authors publish one model's checkpoint.

    Either ``repo_id`` (a Hugging Face model repository; ``filename`` in it at ``revision``)
    or ``url`` (a direct download over HTTP(S)). ``page``: the address a person opens to
    download it by hand; ``documented``: where the authors link it. ``filename`` is the
    authors' name for the file. ``size`` (bytes) and ``sha256`` are None until known; once
    recorded, a download that differs is refused.
    """

    page: str
    documented: str
    filename: str
    repo_id: str | None = None
    revision: str = "main"
    url: str | None = None
    size: int | None = None
    sha256: str | None = None

    def address(self) -> str:
        """The URL the file is downloaded from (for Hugging Face: after ``HF_ENDPOINT``)."""
        if self.repo_id is None:
            return self.url or ""
        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


def _google_drive(file_id: str) -> str:
    """Drive's direct download address of a shared file (``confirm=t``: no virus-scan page for large files)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


#: model name -> the authors' release. Read from the authors' READMEs: github.com/MendelXu/SAN
#: ("Pretrained Weights": Hugging Face Mendel192/san, resolve/main/san_vit_b_16.pth and
#: san_vit_large_14.pth) and github.com/xb534/SED (model zoo: one Google Drive file per
#: backbone, the same file for SED and SED-fast; Drive names them sed_model_base.pth and
#: sed_model_large.pth).
RELEASES: dict[str, Release] = {
    "sed_convnext_base": Release(
        page="https://drive.google.com/file/d/1qx6zGZgSPkF6TObregRz4uzQqSRHrgUw/view",
        documented="https://github.com/xb534/SED README, model zoo: SED (B) and SED-fast (B), ckpt",
        filename="sed_model_base.pth",
        url=_google_drive("1qx6zGZgSPkF6TObregRz4uzQqSRHrgUw"),
    ),
    "sed_convnext_large": Release(
        page="https://drive.google.com/file/d/1zAXE0QXy47n0cVn7j_2cSR85eqxdDGg8/view",
        documented="https://github.com/xb534/SED README, model zoo: SED (L) and SED-fast (L), ckpt",
        filename="sed_model_large.pth",
        url=_google_drive("1zAXE0QXy47n0cVn7j_2cSR85eqxdDGg8"),
    ),
    "san_vit_b_16": Release(
        page="https://huggingface.co/Mendel192/san/resolve/main/san_vit_b_16.pth",
        documented="https://github.com/MendelXu/SAN README, Pretrained Weights: SAN-ViT-B/16, Huggingface",
        filename="san_vit_b_16.pth",
        repo_id="Mendel192/san",
    ),
    "san_vit_large_14": Release(
        page="https://huggingface.co/Mendel192/san/resolve/main/san_vit_large_14.pth",
        documented="https://github.com/MendelXu/SAN README, Pretrained Weights: SAN-ViT-L/14, Huggingface",
        filename="san_vit_large_14.pth",
        repo_id="Mendel192/san",
    ),
}


class WeightsDownloadError(CheckpointError):
    """A release could not be downloaded (offline, host unreachable or refusing); one line, naming the URL."""


def release(model: str) -> Release:
    """The authors' release of ``model``; :class:`CheckpointError` for a model with none."""
    if model not in RELEASES:
        raise CheckpointError(f"no released weights for {model!r} (released: {', '.join(RELEASES)})")
    return RELEASES[model]


def installed_weights(model: str) -> Path:
    """Where :func:`fetch_weights` puts ``model``'s weights: ``weights_dir()/<model>.safetensors``."""
    return weights_dir() / f"{model}.safetensors"


def download_dir() -> Path:
    """Partial and unverified downloads made over plain HTTP: ``$OVSEG_CACHE_DIR/downloads``
    (else ``$XDG_CACHE_HOME/ovseg_ros/downloads``, else ``~/.cache/ovseg_ros/downloads``)."""
    if os.environ.get("OVSEG_CACHE_DIR"):
        return Path(os.environ["OVSEG_CACHE_DIR"]) / "downloads"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ovseg_ros" / "downloads"


def manual_alternative(model: str) -> str:
    """What to do instead, said in every download error."""
    return (
        f"fetch it with `python -m ovseg_ros.commands.fetch_weights {model}` where the host is reachable, "
        f"or download {release(model).page} yourself and put it at {weights_dir() / model}.pth "
        f"(or run `python -m ovseg_ros.commands.fetch_weights {model} --file FILE`)"
    )


def fetch_weights(model: str, *, file: str | Path | None = None, force: bool = False, log: Callable[[str], None] = _LOG.info) -> Path:
    """``model``'s verified weights in the weights folder, downloading and converting them if needed.

    Returns ``weights_dir()/<model>.safetensors``. Already there (and not ``force``): returned
    as it is. Otherwise the checkpoint comes from ``file``, else from ``weights_dir()/<model>.pth``
    when someone put it there, else from the authors' release (:data:`RELEASES`); it is
    verified and converted (module docstring). Raises :class:`WeightsDownloadError` (one
    line: the URL and the manual alternative) when the download fails, and
    :class:`CheckpointError` when the file is not the model's checkpoint.
    """
    entry = release(model)
    target = installed_weights(model)
    if target.is_file() and not force:
        return target
    with _lock(model):
        if target.is_file() and not force:  # another process finished it meanwhile
            return target
        manual = weights_dir() / f"{model}.pth"
        if file is not None or manual.is_file():
            source = Path(file).expanduser() if file is not None else manual
            log(f"{model}: converting {source}")
            _install(model, entry, source, str(source), log)
            return target
        address = entry.address()
        log(f"{model}: downloading {address}")
        downloaded = _download_hf(model, entry) if entry.repo_id else _download_http(model, entry, log)
        try:
            _install(model, entry, downloaded, address, log)
        except CheckpointError:
            _discard(downloaded)  # not the release: the next attempt downloads afresh
            raise
        if entry.repo_id is None:
            _discard(downloaded)  # ours, converted; a Hugging Face download stays in its cache
        else:
            log(f"{model}: the download stays in the Hugging Face cache ({downloaded})")
        return target


def _install(model: str, entry: Release, source: Path, origin: str, log: Callable[[str], None]) -> None:
    """Verify ``source`` as ``model``'s checkpoint and write it as the folder's ``.safetensors``."""
    from safetensors.torch import save_file

    if not source.is_file():
        raise CheckpointError(f"checkpoint not found: {source}")
    size = source.stat().st_size
    if entry.size is not None and size != entry.size:
        raise CheckpointError(f"{origin}: {size} bytes where the {model} release has {entry.size}; refused, nothing installed")
    digest = _sha256(source)
    if entry.sha256 is not None and digest != entry.sha256:
        raise CheckpointError(f"{origin}: sha256 {digest} where the {model} release has {entry.sha256}; refused, nothing installed")
    recorded = "as recorded" if entry.sha256 is not None else "not recorded yet in ovseg_ros/models/weights.py RELEASES"
    log(f"{model}: {size} bytes, sha256 {digest} ({recorded})")
    target = installed_weights(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{model}.partial.safetensors")  # hidden until verified
    try:
        state = read_state_dict(source)  # tensors only: a file holding code is refused here
        save_file(_contiguous_unshared(state), partial, metadata={"format": "pt", "model": model, "source": origin, "source_sha256": digest})
        del state
        log(f"{model}: checking every key and shape by building the model")
        build_model(model, partial)
        os.replace(partial, target)
    except CheckpointError as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{origin} is not the {model} checkpoint, refused, nothing installed: {reason}") from error
    finally:
        partial.unlink(missing_ok=True)
    log(f"{model}: {target}")


def _contiguous_unshared(state: dict) -> dict:
    """The tensors as safetensors stores them: contiguous, none sharing memory with another."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


@contextlib.contextmanager
def _lock(model: str) -> Iterator[None]:
    """One fetch of a model at a time on this machine (two would append to one partial file)."""
    folder = download_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{model}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(path: Path) -> None:
    """Remove a download (for a Hugging Face cache entry: the snapshot link and its blob)."""
    if path.is_symlink():
        Path(os.path.realpath(path)).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _failure(model: str, address: str, error: BaseException) -> WeightsDownloadError:
    """One line: the URL, the first cause (refused, timed out, HTTP status...), the manual alternative."""
    reason = error
    while reason.__cause__ is not None or (reason.__context__ is not None and not reason.__suppress_context__):
        reason = reason.__cause__ or reason.__context__
    detail = " ".join(str(reason).split())[:300].rstrip(".") or type(reason).__name__
    return WeightsDownloadError(f"cannot download the {model} weights from {address}: {detail}; {manual_alternative(model)}")


def _download_hf(model: str, entry: Release) -> Path:
    """The release's file through ``huggingface_hub`` (its cache; ``HF_ENDPOINT``, ``HF_HUB_CACHE`` read now)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            entry.repo_id,
            entry.filename,
            revision=entry.revision,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        )
    except Exception as error:  # network, HTTP and cache errors of every kind
        raise _failure(model, entry.address(), error) from error
    return Path(path)


class _DriveForm(html.parser.HTMLParser):
    """The form of Google Drive's "can't scan this file for viruses" page, and the page's title."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


#: Attempts of one download: each after the first resumes where the previous one stopped.
HTTP_ATTEMPTS = 3
HTTP_TIMEOUT_S = 30.0


def _download_http(model: str, entry: Release, log: Callable[[str], None]) -> Path:
    """The release's file over HTTP into :func:`download_dir`, resuming a partial file with ``Range``.

    A transfer cut short is kept as ``<model>.pth.partial`` and resumed, by a further attempt
    while this call makes progress, or by the next call. An HTML answer is Google Drive's
    warning page: its form is followed once; a page without one (quota exceeded, access
    denied) is an error naming the page's title.
    """
    from tqdm.auto import tqdm

    folder = download_dir()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{model}.pth.partial"
    done = folder / f"{model}.pth"
    address = entry.address()
    if done.is_file():  # transferred by an earlier call that stopped before verifying it
        return done
    url, followed_form, attempt = address, False, 0
    while True:
        attempt += 1
        have = partial.stat().st_size if partial.is_file() else 0
        headers = {"User-Agent": "ovseg_ros-fetch_weights", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        progressed = False
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=HTTP_TIMEOUT_S) as response:
                if response.headers.get_content_type() == "text/html":
                    page = _DriveForm()
                    page.feed(response.read(1 << 20).decode("utf-8", "replace"))
                    if followed_form or not page.action:
                        title = " ".join(page.title.split()) or "no title"
                        raise WeightsDownloadError(
                            f"cannot download the {model} weights from {address}: the host answered with a web page ({title!r}) "
                            f"instead of the file, e.g. over its download quota; {manual_alternative(model)}"
                        )
                    url = urllib.parse.urljoin(url, page.action) + "?" + urllib.parse.urlencode(page.fields)
                    followed_form, attempt = True, attempt - 1
                    continue
                if have and response.status == 206 and _range_start(response) == have:
                    mode = "ab"
                else:  # a full answer: start again
                    have, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                if have:
                    log(f"{model}: resuming at byte {have}")
                with open(partial, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
                        progressed = True
                if total is not None and partial.stat().st_size != total:
                    raise http.client.IncompleteRead(b"", total - partial.stat().st_size)
            os.replace(partial, done)
            return done
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the range starts past the file's end: the partial file is no prefix of it
                partial.unlink(missing_ok=True)
                if attempt < HTTP_ATTEMPTS:
                    continue
            raise _failure(model, address, error) from error
        except (OSError, http.client.HTTPException) as error:  # URLError, refused, reset, timed out, cut short
            if progressed and attempt < HTTP_ATTEMPTS:
                log(f"{model}: transfer interrupted ({error}); resuming")
                time.sleep(1.0)
                continue
            raise _failure(model, address, error) from error


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 answer (``Content-Range: bytes START-END/TOTAL``)."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
