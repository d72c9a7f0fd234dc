"""SED (Xie et al., CVPR 2024): the full inference path of the authors' ``SED.forward``.

normalise with CLIP's mean/std -> stretch to 768 x 768 -> ConvNeXt CLIP dense features
-> cost volume with the class prompts -> gradual fusion decoder (optionally with category
early rejection) -> sigmoid at 192 x 192, returned as
:class:`~ovseg_ros.models.scores.UpsampledScores`: cropped to the input image's size (a no-op
unless a side of the input is below 192) and resized bilinearly to the output size on demand.
Test-time sliding window is off in the authors' evaluation and not implemented.
One image at a time: the cost volume and category early rejection treat the class axis
as the batch axis, as the authors' test path does (it reads only the first image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import OpenVocabModel, stage
from ..scores import UpsampledScores
from .decoder import SEDDecoder
from .image_encoder import ImageEncoder
from .text_encoder import TextEncoder

# OpenAI CLIP mean/std on the 0..255 scale (the authors' CLIP_PIXEL_MEAN/STD).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)
CLIP_INPUT_SIZE = (768, 768)


@dataclass
class SEDOutput:
    """One image through SED, with the intermediates the parity checks compare.

    Attributes:
        clip_input: (1, 3, 768, 768) normalised, resized image fed to the CLIP tower.
        clip_dense: (1, E, 24, 24) per-pixel CLIP embeddings.
        logits: (K, 192, 192) logits of the classes that reached the last stage.
        kept: (K,) their class ids (all T without CER).
        kept_per_stage: CER's cumulative kept ids before decoder stages 1..3; empty without CER.
        probs: (T, 192, 192) float32 sigmoid probabilities; classes rejected by CER are exactly 0.
        image_size: (H, W) of the image the model received.
    """

    clip_input: torch.Tensor
    clip_dense: torch.Tensor
    logits: torch.Tensor
    kept: torch.Tensor
    kept_per_stage: list[torch.Tensor]
    probs: torch.Tensor
    image_size: tuple[int, int]

    def scores(self) -> UpsampledScores:
        """The probabilities as the authors post-process them, with detectron2's ``sem_seg_postprocess``.

        That crops the map to ``image_size`` (unpadded: the authors set ``size_divisibility``
        to -1 at test time), then resizes it bilinearly to the output size. The 192 x 192 map
        covers the whole stretched image, so the crop is a no-op for ordinary images; where a
        side of the input is below 192 (aspect ratios above about 13 : 1 once the long side is
        capped at 2560) it keeps only the map's top or left part, and we keep it too.
        """
        rejected_any = len(self.kept) < len(self.probs)
        return UpsampledScores(self.probs, self.image_size, candidates=self.kept if rejected_any else None)


class SED(OpenVocabModel):
    """SED with a ConvNeXt CLIP backbone; build it with :func:`ovseg_ros.models.sed.build_sed`.

    Every call takes ``cer_topk``: K for category early rejection (the authors'
    ``TEST.FAST_INFERENCE`` with ``TEST.TOPK``); None runs every class through the whole decoder.
    """

    supports_cer = True
    supports_batches = True  # the CLIP tower on the batch, the decoder per image

    def __init__(self, variant: str, image_encoder: ImageEncoder, text_encoder: TextEncoder,
                 decoder: SEDDecoder, clip_input_size: tuple[int, int] = CLIP_INPUT_SIZE):
        super().__init__()
        self.variant = f"sed_{variant}"
        self.clip_input_size = clip_input_size
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.register_buffer("pixel_mean", torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def encode_text(self, class_names: list[str]) -> torch.Tensor:
        """(T, 80, E) unit prompt embeddings on the model's device; see :class:`TextEncoder`."""
        return self.text_encoder(class_names)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB 0..255 -> (1, 3, *clip_input_size) normalised CLIP input (aspect not
        kept; 768 x 768 for the released variants)."""
        normalised = (image - self.pixel_mean) / self.pixel_std
        return F.interpolate(normalised, size=self.clip_input_size, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None = None) -> SEDOutput:
        """Run the network on a (1, 3, H, W) RGB 0..255 image with CER's K ``cer_topk`` (None:
        off); probabilities at 192 x 192."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(
                f"SED takes one image, shaped (1, 3, H, W), got {tuple(image.shape)}: its cost volume and "
                "category early rejection use the class axis as the batch axis; use forward_batch for several"
            )
        return self._predict_batch(image, text_features, cer_topk)[0]

    @torch.inference_mode()
    def _predict_batch(self, images: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None) -> list[SEDOutput]:
        """(B, 3, H, W) images of one size: the CLIP tower runs on the batch, the decoder (cost
        volume, CER) on each image, since the class axis is its batch axis."""
        with stage("preprocess"):
            clip_input = self.preprocess(images)
        with stage("backbone"):
            features = self.image_encoder(clip_input)
        outputs = []
        for i in range(len(images)):
            dense = features.dense[i : i + 1]
            decoded = self.decoder(dense, tuple(g[i : i + 1] for g in features.guidance), text_features, cer_topk)
            with stage("postprocess"):
                # float32 whatever autocast made the logits: stored in bf16, every probability
                # above ~0.996 would fall on one of two values and argmax ties go to the lowest id.
                probs = decoded.logits.new_zeros((len(text_features), *decoded.logits.shape[-2:]), dtype=torch.float32)
                probs[decoded.kept] = decoded.logits.float().sigmoid()
            outputs.append(SEDOutput(clip_input[i : i + 1], dense, decoded.logits, decoded.kept, decoded.kept_per_stage,
                                     probs, tuple(images.shape[-2:])))
        return outputs

    def forward_batch(self, images: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None = None) -> list[UpsampledScores]:
        """Scores of each of the B images (B, 3, H, W) RGB 0..255 of one size (CER per image)."""
        return [output.scores() for output in self._predict_batch(images, text_features, cer_topk)]

    def forward(self, image: torch.Tensor, text_features: torch.Tensor, cer_topk: int | None = None) -> UpsampledScores:
        """Class probabilities for a (1, 3, H, W) RGB 0..255 image; see :meth:`SEDOutput.scores`."""
        return self.predict(image, text_features, cer_topk).scores()
