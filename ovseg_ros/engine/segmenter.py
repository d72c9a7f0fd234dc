"""The model facade shared by SED and SAN: an uploaded camera image in, class scores out.

    segmenter = Segmenter(build_model("sed_convnext_base", weights=path), device="cuda")
    text = segmenter.encode_text(["person", "forklift", "pallet"])
    scores = segmenter.scores(segmenter.preprocess(rgb), text)   # rgb: (H, W, 3) uint8 tensor
    confidence, labels = scores.best(output_size=(H, W))

It owns what is the same for every model: device, precision (autocast), memory format,
``torch.compile`` of the heavy parts, the authors' resize to a 640 short edge, the
text-embedding cache; a frame's CER K comes with each call. Decoding, smoothing,
labels and rendering are the frame pipeline's (:mod:`ovseg_ros.engine.frame_pipeline`);
vocabularies are :mod:`ovseg_ros.engine.vocabulary`'s.

Preprocessing deviates from the authors' evaluation path in one documented way: the
authors resize the camera image with PIL (uint8, bilinear) to a 640 short edge before the
model's own torch resizing; we do that first resize with ``torch.nn.functional.interpolate``
on the device (bilinear, antialiased when shrinking), which avoids a host round trip per
frame: on the CPU on the uint8 pixels, on CUDA in float rounded to whole values.
``test/engine/test_segmenter.py`` measures the effect on the ``sed_b_seed1`` fixture (SED-B, seeded
weights, 480x640 -> 640x853) on the CPU: probabilities differ by 9.6e-7 on average (1.5e-4
at most) and 99.996% of the labels agree. The float path measured 2.9e-4 on average and
98.7% agreement there (random weights make many pixels near-ties).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_ros.models import AUTO_WEIGHTS, build_model, resolve_weights
from ovseg_ros.models.base import OpenVocabModel
from ovseg_ros.models.checkpoint import file_digest
from ovseg_ros.models.scores import ClassScores
from ovseg_ros.engine.vocabulary import TextEmbeddingCache, default_cache_dir

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Short edge the authors evaluate at (detectron2 ResizeShortestEdge(640, max_size=2560)).
DEFAULT_SHORT_EDGE = 640
MAX_LONG_EDGE = 2560
#: ``torch.compile`` modes for ``compile_mode`` ("reduce-overhead" adds CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Graphs dynamo keeps before falling back to eager. All compiled modules share one cache
#: (nn.Module._call_impl's, 8 by default) and every SED stage adds one graph per CER bucket size.
COMPILE_RECOMPILE_LIMIT = 64


#: The first torch release whose CUDA graph trees (compile modes with CUDA graphs) work when the
#: model is called from a thread other than the one that first imported them (the node's
#: inference thread): earlier ones fail ``assert torch._C._is_key_in_tls(...)`` in
#: ``torch/_inductor/cudagraph_trees.py`` (pytorch/pytorch#123177, fixed in 2.13.0).
CUDAGRAPHS_IN_THREADS_SINCE = (2, 13)
#: Each compile mode with CUDA graphs, and the same mode without them.
WITHOUT_CUDAGRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def torch_release(version: str = torch.__version__) -> tuple[int, int]:
    """(major, minor) of a torch version string such as ``2.11.0+cu130``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def compile_mode_for_threads(mode: str | None, version: str = torch.__version__) -> tuple[str | None, str | None]:
    """The compile mode to use for a model called from worker threads with this torch, and why it
    differs from ``mode`` (None when it does not): CUDA graphs only from torch 2.13 on."""
    if mode not in WITHOUT_CUDAGRAPHS or torch_release(version) >= CUDAGRAPHS_IN_THREADS_SINCE:
        return mode, None
    fallback = WITHOUT_CUDAGRAPHS[mode]
    return fallback, (
        f"compile mode {mode} uses CUDA graphs, which torch {version} cannot run from the node's inference thread "
        f"(pytorch/pytorch#123177, fixed in torch {'.'.join(map(str, CUDAGRAPHS_IN_THREADS_SINCE))}): compiling with {fallback} instead"
    )


def resized_shape(height: int, width: int, short_edge: int = DEFAULT_SHORT_EDGE, max_long_edge: int = MAX_LONG_EDGE) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` output size, rounding as it does."""
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_long_edge:
        scale = max_long_edge / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Segmenter:
    """Runs an :class:`OpenVocabModel` on uploaded camera images.

    Args:
        model: SED, SAN or any other :class:`OpenVocabModel`.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast around the network).
        short_edge: the image is resized so its short edge has this length before the model.
        text_cache: persistent text-embedding cache; None encodes every time.
        channels_last: store conv weights NHWC, which GPU tensor cores prefer (default: on
            CUDA only; the results are the same either way).
        compile_mode: None runs eagerly; else a ``torch.compile`` mode (:data:`COMPILE_MODES`)
            applied in place to :func:`compile_targets` with fixed shapes (``dynamic=False``).
            The first frame of each new input shape (SED: each CER bucket size) compiles.
    """

    def __init__(
        self,
        model: OpenVocabModel,
        device: str = "cpu",
        precision: str = "fp32",
        short_edge: int = DEFAULT_SHORT_EDGE,
        text_cache: TextEmbeddingCache | None = None,
        channels_last: bool | None = None,
        compile_mode: str | None = None,
    ) -> None:
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be None or one of {', '.join(COMPILE_MODES)}, not {compile_mode!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.device = torch.device(device)
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.compile_mode = compile_mode
        if compile_mode is not None:
            dynamo_config = torch._dynamo.config
            dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, COMPILE_RECOMPILE_LIMIT)
            for module in compile_targets(self.model):
                module.compile(mode=compile_mode, dynamic=False)
        self.precision = precision
        self.short_edge = short_edge
        self.text_cache = text_cache

    @property
    def supports_cer(self) -> bool:
        """Whether the model takes a CER K (:attr:`OpenVocabModel.supports_cer`: SED)."""
        return self.model.supports_cer

    @property
    def batches(self) -> bool:
        """Whether the model labels several images in one call (:meth:`scores_batch`): SAN in one
        pass; SED runs its CLIP tower on the batch and its decoder (cost volume, CER) per image."""
        return self.model.supports_batches

    def _autocast(self) -> torch.autocast:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @torch.inference_mode()
    def encode_text(self, names: list[str]) -> torch.Tensor:
        """(T, ...) float32 text features of validated ``names`` (from the cache where it has them)."""
        with self._autocast():
            if self.text_cache is None:
                features = self.model.encode_text(names)
            else:
                features = self.text_cache.lookup(names, self.model.encode_text, self.device, self.precision)
        return features.float()

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 RGB on the device -> (1, 3, H', W') float32 0..255, short edge resized.

        On the CPU the resize runs on the uint8 pixels (torch's integer path, like PIL's, about
        6x faster than in float at 640x480); on CUDA in float, rounded to whole values. The two
        differ by at most one grey level (0.2 on average).
        """
        image = rgb.permute(2, 0, 1).unsqueeze(0)  # channels-last strides, no copy
        size = resized_shape(*rgb.shape[:2], self.short_edge)
        if size != tuple(rgb.shape[:2]):
            shrinking = size[0] < rgb.shape[0]
            if self.device.type == "cpu":
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
            else:
                image = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking)
                image = image.round_().clamp_(0, 255)  # the authors' model sees a uint8 image
        return image.float().contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def scores(self, image: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None = None) -> ClassScores:
        """Class scores of one preprocessed (1, 3, H', W') image for (T, ...) ``text_features``.

        ``cer_topk``: CER's K for this frame (None: off); a model without CER refuses a K.
        """
        cer = self._begin_call(cer_topk)
        with self._autocast():
            return self.model(image, text_features, **cer)

    @torch.inference_mode()
    def scores_batch(self, images: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None = None) -> list[ClassScores]:
        """Class scores of each of B preprocessed images (B, 3, H', W') of one size, from one
        pass of the model; each equals :meth:`scores` of that image alone (up to float rounding).

        ``cer_topk``: CER's K for every image of the call, as in :meth:`scores`. Raises
        ValueError for a model without batches (:attr:`batches`).
        """
        if not self.batches:
            raise ValueError(f"{self.model.variant} labels one image at a time (no forward_batch)")
        cer = self._begin_call(cer_topk)
        with self._autocast():
            return self.model.forward_batch(images, text_features, **cer)

    def _begin_call(self, cer_topk: int | None) -> dict:
        """The model's CER argument for this call (none for a model without CER, which refuses a K)."""
        if cer_topk is not None and not self.supports_cer:
            raise ValueError(f"{self.model.variant} has no category early rejection (cer_topk is SED's)")
        if cer_topk is not None and cer_topk < 1:
            raise ValueError(f"cer_topk must be at least 1 (None: off), not {cer_topk}")
        if self.compile_mode is not None:
            # A new frame: CUDA graph outputs of the previous one may be overwritten (a no-op without CUDA graphs).
            torch.compiler.cudagraph_mark_step_begin()
        return {"cer_topk": cer_topk} if self.supports_cer else {}


def build_segmenter(
    model: str,
    weights: str = "",
    device: str = "auto",
    precision: str = "fp32",
    short_edge: int = DEFAULT_SHORT_EDGE,
    cpu_threads: int = 0,
    compile_mode: str | None = None,
) -> tuple[Segmenter, Path | None]:
    """The segmenter of ``model`` (:func:`~ovseg_ros.engine.builder.build_pipeline` builds a whole
    frame path around it); and the checkpoint it loaded (None: random weights).

    ``weights`` empty: the weights directory's checkpoint of ``model`` if present
    (:func:`~ovseg_ros.models.resolve_weights`), else random weights. ``"auto"``: the same
    file, else the authors' release downloaded, verified and converted into that directory
    (:func:`~ovseg_ros.models.weights.fetch_weights`; offline, a one-line
    :class:`~ovseg_ros.models.checkpoint.CheckpointError` naming the URL and what to do
    instead). ``device`` ``"auto"``: CUDA when available.
    ``cpu_threads`` > 0 sets torch's CPU threads (0: leave them). Text embeddings are cached
    per model and weights.
    """
    checkpoint = resolve_weights(model, weights)
    if checkpoint is None and weights == AUTO_WEIGHTS:
        from ovseg_ros.models.weights import fetch_weights

        # A download of GBs at configure: said on stderr (with huggingface_hub's / tqdm's progress bar).
        checkpoint = fetch_weights(model, log=lambda line: print(f"[ovseg weights] {line}", file=sys.stderr, flush=True))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)
    network = build_model(model, checkpoint)
    digest = file_digest(checkpoint) if checkpoint is not None else "random"
    segmenter = Segmenter(
        network,
        device=device,
        precision=precision,
        short_edge=short_edge,
        text_cache=TextEmbeddingCache(default_cache_dir(), model, digest),
        compile_mode=compile_mode,
    )
    return segmenter, checkpoint


def compile_targets(model: OpenVocabModel) -> list[nn.Module]:
    """The heavy modules of ``model`` that ``compile_mode`` compiles, each seeing repeating shapes.

    SED: the image encoder (fixed CLIP input size) and each decoder fusion stage (its class
    axis is a padded power-of-two CER bucket). SAN: the CLIP image tower, the side adapter
    and the recognition head (shapes fixed by the camera resolution). Never a text tower:
    strings in, once per vocabulary. Any other model: the whole model.
    """
    if hasattr(model, "image_encoder") and hasattr(model, "decoder"):  # SED
        return [model.image_encoder, *model.decoder.stages]
    if hasattr(model, "side_adapter_network"):  # SAN
        return [model.clip_visual_extractor, model.side_adapter_network, model.clip_rec_head]
    return [model]
