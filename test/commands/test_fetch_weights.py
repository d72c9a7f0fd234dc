"""Weights in one command: the authors' releases downloaded, verified, converted to safetensors.

A local HTTP server on 127.0.0.1 stands in for both hosts: for Hugging Face (``HF_ENDPOINT``
points huggingface_hub at it) it answers ``HEAD`` / ``GET /{repo}/resolve/{revision}/{file}``
with the headers huggingface_hub reads (``ETag``, ``X-Repo-Commit``, ``Content-Length``) and
``Range`` requests; for Google Drive, ``GET /drive/download?id=...``, first with Drive's
warning page and its form where asked to. It serves real checkpoints of the tiny models,
keyed as the authors' files are; the tiny models get a release entry for the test only.
"""

import hashlib
import io
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ovseg_ros.commands import fetch_weights as fetch_command
from ovseg_ros.engine.segmenter import build_segmenter
from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.models.checkpoint import SED_CLIP_PREFIX, CheckpointError, read_state_dict
from ovseg_ros.models.weights import RELEASES, Release, WeightsDownloadError, fetch_weights

#: Each test's limit (downloads here are tens of MB over loopback; huggingface_hub retries an
#: unreachable host for about 23 s before it gives up; the node test starts a node).
pytestmark = pytest.mark.timeout(240)
HF_REPO = "ovseg-test/tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OURS_TO_OFFICIAL_SED = {"image_encoder.": SED_CLIP_PREFIX + "visual.", "text_encoder.": SED_CLIP_PREFIX, "decoder.": "sem_seg_head.predictor.transformer."}


def official_checkpoint(model: str, seed: int = 1) -> tuple[bytes, dict[str, torch.Tensor]]:
    """``model``'s weights saved as the authors save theirs (detectron2's ``model_final.pth``:
    official key names, the weights under ``"model"`` beside the training state, whose Adam
    moments make the file 3x the weights: 23 MB here, over two of huggingface_hub's 10 MB
    chunks); and our state dict of them."""
    torch.manual_seed(seed)
    ours = {key: torch.randn(value.shape).to(value.dtype) if value.is_floating_point() else value for key, value in build_model(model).state_dict().items()}
    if model.startswith("sed"):
        official = {}
        for key, value in ours.items():
            old = next(prefix for prefix in OURS_TO_OFFICIAL_SED if key.startswith(prefix))
            official[OURS_TO_OFFICIAL_SED[old] + key.removeprefix(old)] = value
    else:
        official = {**ours, "criterion.empty_weight": torch.ones(3)}  # the loss's class weights, dropped on load
    moments = {i: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)} for i, v in enumerate(ours.values()) if v.is_floating_point()}
    buffer = io.BytesIO()
    torch.save({"model": official, "optimizer": {"state": moments, "param_groups": [{"lr": 1e-4, "params": list(moments)}]}, "iteration": 89999}, buffer)
    return buffer.getvalue(), ours


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, tuple[bytes, dict[str, torch.Tensor]]]:
    return {model: official_checkpoint(model) for model in ("san_tiny_dev", "sed_tiny_dev")}


class Host:
    """The stand-in for huggingface.co and Google Drive: files by URL path, every request logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.drop_next_get = False  # the next GET of a file sends half of it, then drops the connection
        self.down_after_drop = False  # ... and every request after that answers 503
        self.dropped = False
        self.drive_form = False  # a Drive GET without uuid answers the warning page with its form
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                host.answer(self, body=False)

            def do_GET(self):
                host.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ranges(self) -> list[str]:
        return [headers["Range"] for method, _, headers in self.requests if method == "GET" and "Range" in headers]

    def gets(self) -> int:
        return sum(method == "GET" for method, _, _ in self.requests)

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path, dict(handler.headers)))
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        data = self.files.get(url.path if url.path.startswith(f"/{HF_REPO}/") else f"{url.path}?id={query.get('id')}")
        if self.dropped and self.down_after_drop or data is None:
            return self.send(handler, 503 if data is not None else 404, b"unavailable" if data is not None else b"not found", "text/plain")
        if url.path.startswith("/drive/") and self.drive_form and "uuid" not in query:
            page = (
                "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                '<form id="download-form" action="/drive/download" method="get">'
                f'<input type="hidden" name="id" value="{query["id"]}"><input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234-abcd">'
                "</form></body></html>"
            ).encode()
            return self.send(handler, 200, page, "text/html; charset=utf-8")
        start, status = 0, 200
        requested = handler.headers.get("Range", "")
        if requested.startswith("bytes=") and requested.endswith("-"):
            start, status = int(requested[len("bytes="):-1]), 206
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", COMMIT)
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        if self.drop_next_get:
            self.drop_next_get, self.dropped = False, True
            handler.wfile.write(data[start:start + (len(data) - start) // 2])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        handler.wfile.write(data[start:])

    @staticmethod
    def send(handler, status: int, payload: bytes, content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host():
    host = Host()
    yield host
    host.close()


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Empty weights folder, download folder and Hugging Face cache of the test's own."""
    weights = tmp_path / "weights"
    monkeypatch.setenv("OVSEG_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("OVSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return weights


def publish(host: Host, monkeypatch, model: str, data: bytes, **recorded) -> str:
    """Serve ``data`` as ``model``'s release (Hugging Face for SAN, Drive for SED); its URL."""
    if model.startswith("san"):
        monkeypatch.setenv("HF_ENDPOINT", host.url)
        host.files[f"/{HF_REPO}/resolve/main/{model}.pth"] = data
        entry = Release(page=f"{host.url}/{HF_REPO}/resolve/main/{model}.pth", documented="test", filename=f"{model}.pth", repo_id=HF_REPO, **recorded)
    else:
        host.files[f"/drive/download?id={model}"] = data
        entry = Release(page=f"{host.url}/drive/view/{model}", documented="test", filename=f"{model}.pth", url=f"{host.url}/drive/download?id={model}", **recorded)
    monkeypatch.setitem(RELEASES, model, entry)
    return entry.address()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_weights_equal(model, ours: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(ours)
    for key, value in ours.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("model", ["san_tiny_dev", "sed_tiny_dev"])
def test_auto_downloads_verifies_converts_and_later_loads_without_pickle(host, folders, monkeypatch, checkpoints, model):
    data, ours = checkpoints[model]
    publish(host, monkeypatch, model, data)
    host.drive_form = True  # Drive's warning page first (SED); Hugging Face ignores it

    segmenter, checkpoint = build_segmenter(model, "auto", device="cpu")
    assert checkpoint == folders / f"{model}.safetensors"
    assert files_in(folders) == [f"{model}.safetensors"], "only the verified, converted file"
    assert_weights_equal(segmenter.model, ours)
    if model == "sed_tiny_dev":
        assert any("uuid=" in path for _, path, _ in host.requests), "followed the warning page's form"

    # Later: the folder's file, no network, no pickle (torch.load is how a .pth is read).
    requests = len(host.requests)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (pickle) used for a .safetensors file"))
    (folders / f"{model}.pth").write_bytes(data)  # a .pth beside it: the .safetensors wins
    assert resolve_weights(model) == checkpoint
    for weights in ("", "auto"):
        segmenter, again = build_segmenter(model, weights, device="cpu")
        assert again == checkpoint
        assert_weights_equal(segmenter.model, ours)
    assert len(host.requests) == requests, "nothing downloaded again"


def test_san_download_cut_halfway_resumes_with_a_range_request(host, folders, monkeypatch, checkpoints):
    """huggingface_hub resumes a transfer cut short in the same run, asking for the rest with Range."""
    data, ours = checkpoints["san_tiny_dev"]
    publish(host, monkeypatch, "san_tiny_dev", data)
    host.drop_next_get = True

    path = fetch_weights("san_tiny_dev")
    assert host.dropped and len(host.ranges()) == 1
    resumed_at = int(host.ranges()[0].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(data) // 2, "the rest asked for: from the last whole chunk written"
    assert_weights_equal(build_model("san_tiny_dev", path), ours)


def test_sed_download_cut_halfway_resumes_in_the_next_run(host, folders, monkeypatch, checkpoints, capsys):
    """The host drops the transfer halfway and is then down: the run fails, keeps the half it
    has (not in the weights folder); the next run asks for the rest with Range and verifies."""
    data, ours = checkpoints["sed_tiny_dev"]
    address = publish(host, monkeypatch, "sed_tiny_dev", data)
    host.drop_next_get, host.down_after_drop = True, True

    assert fetch_command.main(["sed_tiny_dev"]) == 1
    assert f"cannot download the sed_tiny_dev weights from {address}" in capsys.readouterr().err
    assert files_in(folders) == []
    host.down_after_drop = False
    first_run = len(host.requests)

    assert fetch_command.main(["sed_tiny_dev"]) == 0
    second_run = [headers.get("Range") for method, _, headers in host.requests[first_run:] if method == "GET"]
    assert second_run == [f"bytes={len(data) // 2}-"], "resumed where the first run stopped"
    assert_weights_equal(build_model("sed_tiny_dev", folders / "sed_tiny_dev.safetensors"), ours)
    assert files_in(folders) == ["sed_tiny_dev.safetensors"]


@pytest.mark.parametrize(
    "model, corruption",
    [("san_tiny_dev", "sha256"), ("sed_tiny_dev", "sha256"), ("san_tiny_dev", "keys"), ("sed_tiny_dev", "keys"), ("san_tiny_dev", "truncated")],
)
def test_corrupt_download_is_refused_and_leaves_nothing(host, folders, monkeypatch, checkpoints, model, corruption):
    data, ours = checkpoints[model]
    if corruption == "sha256":  # a flipped byte, the release's sha256 recorded
        served = bytearray(data)
        served[len(served) // 2] ^= 0xFF
        address = publish(host, monkeypatch, model, bytes(served), size=len(data), sha256=hashlib.sha256(data).hexdigest())
        expected = f"sha256 {hashlib.sha256(served).hexdigest()} where the {model} release has {hashlib.sha256(data).hexdigest()}"
    elif corruption == "keys":  # a well-formed checkpoint of another model, nothing recorded: the strict key check refuses it
        other = "sed_tiny_dev" if model == "san_tiny_dev" else "san_tiny_dev"
        address = publish(host, monkeypatch, model, checkpoints[other][0])
        expected = "missing keys"
    else:  # the first half served as the whole file, nothing recorded: unreadable
        address = publish(host, monkeypatch, model, data[: len(data) // 2])
        expected = "cannot read checkpoint"

    with pytest.raises(CheckpointError) as error:
        fetch_weights(model)
    message = str(error.value)
    assert expected in message and address in message and "nothing installed" in message
    assert "\n" not in message
    assert files_in(folders) == [], "no file left in the weights folder"

    # The refused download was discarded: with the right file served, the next run downloads it whole.
    host.files = {}
    publish(host, monkeypatch, model, data)
    gets = host.gets()
    assert_weights_equal(build_model(model, fetch_weights(model)), ours)
    assert host.gets() > gets and host.ranges() == []


@pytest.mark.parametrize("model", ["san_tiny_dev", "sed_tiny_dev"])
def test_offline_is_one_line_naming_the_url_and_the_manual_alternative(host, folders, monkeypatch, checkpoints, model, capsys):
    address = publish(host, monkeypatch, model, checkpoints[model][0])
    host.close()  # nothing listens there any more: connection refused

    with pytest.raises(WeightsDownloadError) as error:
        build_segmenter(model, "auto", device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert f"from {address}: " in message and "Connection refused" in message
    assert f"python -m ovseg_ros.commands.fetch_weights {model}" in message
    assert f"put it at {folders / model}.pth" in message
    assert isinstance(error.value, CheckpointError), "what the node's configure catches"
    assert files_in(folders) == []


def test_a_file_downloaded_by_hand_is_verified_and_converted(folders, monkeypatch, checkpoints, tmp_path):
    data, ours = checkpoints["sed_tiny_dev"]
    monkeypatch.setitem(RELEASES, "sed_tiny_dev", Release(page="http://127.0.0.1:9/none", documented="test", filename="sed_tiny_dev.pth", url="http://127.0.0.1:9/none"))
    manual = tmp_path / "sed_model_tiny.pth"
    manual.write_bytes(data)

    assert fetch_command.main(["sed_tiny_dev", "--file", str(manual)]) == 0
    converted = folders / "sed_tiny_dev.safetensors"
    assert_weights_equal(build_model("sed_tiny_dev", converted), ours)
    assert read_state_dict(converted).keys() == read_state_dict(manual).keys(), "the authors' keys, as in the file"


@pytest.mark.usefixtures("ros2_tools")
def test_node_with_auto_weights_offline_stays_unconfigured_alive_and_says_why(tmp_path, peer):
    """The real SAN-B release, its host unreachable (HF_ENDPOINT on a port nothing listens on)."""
    from diagnostic_msgs.msg import DiagnosticArray

    from ovseg_ros.srv import SetVocabulary

    from node_settings import NODE_READY_TIMEOUT_S, started_node, stopped

    with socket.socket() as probe:  # a free port, closed again: connection refused
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = {"OVSEG_WEIGHTS_DIR": str(tmp_path / "weights"), "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hf")}
    node = started_node(tmp_path, "w_auto", model="san_vit_b_16", weights="auto", env=env)
    try:
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        expected = f"cannot download the san_vit_b_16 weights from {endpoint}/Mendel192/san/resolve/main/san_vit_b_16.pth"

        def error_reported() -> bool:
            return any(expected in s.message for a in diagnostics.decoded() for s in a.status if s.level == s.ERROR)

        assert peer.wait_for(error_reported, NODE_READY_TIMEOUT_S), node.log_text()[-3000:]
        response = peer.call(peer.node.create_client(SetVocabulary, "/w_auto/ovseg/set_vocabulary"), SetVocabulary.Request(labels=["a"]))
        assert not response.success and expected in response.message
        assert node.process.poll() is None
        failure = next(line for line in node.log_text().splitlines() if "configure failed" in line)
        assert expected in failure and "python -m ovseg_ros.commands.fetch_weights san_vit_b_16" in failure, "one line: the URL and what to do"
        assert files_in(tmp_path / "weights") == []
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]
