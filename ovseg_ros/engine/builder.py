"""One builder of the frame path, for the node, the commands, the benchmarks and the tests.

    pipeline, weights = build_pipeline(PipelineSettings(model="sed_convnext_base", cer_topk=8))

The settings are the node's parameters of the same names, as one value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovseg_ros.engine.frame_pipeline import FramePipeline
from ovseg_ros.engine.segmenter import DEFAULT_SHORT_EDGE, Segmenter, build_segmenter
from ovseg_ros.engine.smoothing import TemporalSmoother, smoothing_mode
from ovseg_ros.engine.vocabulary import VocabularyManager


@dataclass(frozen=True)
class PipelineSettings:
    """What a frame path is made of (see the node's parameters of these names).

    ``cer_topk`` 0 = off; a model without CER (SAN) ignores it. ``smoothing`` ``"auto"``: what
    the model declares (flow for SAN, none for SED). ``compile_mode`` None: eager.
    """

    model: str = "sed_convnext_base"
    weights: str = ""
    device: str = "auto"
    precision: str = "fp32"
    input_short_edge: int = DEFAULT_SHORT_EDGE
    cpu_threads: int = 0
    compile_mode: str | None = None
    cer_topk: int = 0
    latency_budget_ms: float = 0.0
    smoothing: str = "none"
    smoothing_strength: float = 0.6
    smoothing_max_gap_s: float = 0.5
    palette: str = "name"
    min_score: float = 0.0
    torch_rendering: bool | None = None


def build_pipeline(settings: PipelineSettings, vocabularies: VocabularyManager | None = None, segmenter: Segmenter | None = None) -> tuple[FramePipeline, Path | None]:
    """A frame path per ``settings``, and the checkpoint its model loaded (None: random weights).

    ``vocabularies``: the manager of the pipeline's vocabularies (a node keeps one over its
    life; default a new one); a model built here becomes its encoder. ``segmenter``: share
    this model (e.g. a smoother per camera around one model, ``vocabularies`` already its
    encoder's) instead of building one; its checkpoint is then reported as None.
    """
    weights = None
    if vocabularies is None:
        vocabularies = VocabularyManager(segmenter.encode_text if segmenter is not None else None)
    if segmenter is None:
        segmenter, weights = build_segmenter(
            settings.model, settings.weights, settings.device, settings.precision, settings.input_short_edge, settings.cpu_threads, settings.compile_mode
        )
        vocabularies.attach(segmenter.encode_text)  # a new model: its encoder, no vocabulary yet
    smoother = TemporalSmoother(smoothing_mode(settings.smoothing, segmenter.model.auto_smoothing), strength=settings.smoothing_strength, max_gap_s=settings.smoothing_max_gap_s)
    pipeline = FramePipeline(
        segmenter,
        vocabularies,
        smoother,
        settings.palette,
        settings.min_score,
        settings.latency_budget_ms,
        settings.torch_rendering,
        cer_topk=(settings.cer_topk or None) if segmenter.supports_cer else None,
    )
    return pipeline, weights
