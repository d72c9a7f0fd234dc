"""SAN: Side Adapter Network for open-vocabulary semantic segmentation (Xu et al., CVPR 2023).

Reproduces the inference path of the authors' ``SAN`` meta-architecture
(MendelXu/SAN @ e19262d, ``configs/san_clip_vit_res4_coco.yaml`` and the ViT-L variant):

1. ``(x - mean) / std`` on 0..255 RGB, zero-pad bottom/right to a multiple of 32;
2. the CLIP branch sees the padded image rescaled by ``clip_resolution`` (0.5 / 0.7), the side
   adapter sees it at full resolution;
3. CLIP blocks before the split -> side adapter (with CLIP fusion) -> mask logits and
   attention bias -> CLIP recognition blocks with [SOS] tokens -> one embedding per mask;
4. mask class logits = mask embeddings . text classifier (background last);
5. semantic inference (:class:`~ovseg_ros.models.scores.SANScores`, on demand per output size):
   masks upsampled to the padded size, cropped to the image, resized to the output size;
   scores = sum over masks of softmax(class logits) without background times sigmoid(mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..base import OpenVocabModel, stage
from ..scores import SANScores
from .clip_encoder import CLIPFeatureExtractor, RecWithAttnBiasHead
from .side_adapter import SideAdapterNetwork
from .text_encoder import TextEncoder

# OpenAI CLIP's normalisation on the 0..255 scale (RGB), as the authors compute it.
PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)


@dataclass(frozen=True)
class SANConfig:
    """Architecture and inference settings of one SAN variant (the authors' config values)."""

    # CLIP image tower
    clip_width: int
    clip_layers: int
    clip_heads: int
    patch_size: int
    clip_image_size: int
    embed_dim: int
    split_layer: int  # FEATURE_LAST_LAYER_IDX: CLIP blocks before the recognition head
    # CLIP text tower
    text_width: int
    text_heads: int
    text_layers: int
    # side adapter: side depth -> CLIP depth (FUSION_MAP)
    fusion_map: tuple[tuple[int, int], ...]
    side_width: int = 240
    side_depth: int = 8
    side_heads: int = 6
    side_patch_size: int = 16
    side_image_size: int = 640
    num_queries: int = 100
    decoder_channels: int = 256
    # inference
    clip_resolution: float = 0.5
    size_divisibility: int = 32


VARIANTS: dict[str, SANConfig] = {
    "vit_b_16": SANConfig(
        clip_width=768, clip_layers=12, clip_heads=12, patch_size=16, clip_image_size=224, embed_dim=512,
        split_layer=9, text_width=512, text_heads=8, text_layers=12,
        fusion_map=((0, 0), (1, 3), (2, 6), (3, 9)), clip_resolution=0.5,
    ),
    "vit_large_14": SANConfig(
        clip_width=1024, clip_layers=24, clip_heads=16, patch_size=14, clip_image_size=336, embed_dim=768,
        split_layer=18, text_width=768, text_heads=12, text_layers=12,
        fusion_map=((0, 0), (1, 6), (2, 12), (3, 18)), clip_resolution=0.7,
    ),
    # Development only: the SAN code path with tiny widths and no released weights, so
    # tests of the node and of checkpoint handling run on a CPU in well under a second.
    "tiny_dev": SANConfig(
        clip_width=64, clip_layers=3, clip_heads=2, patch_size=8, clip_image_size=32, embed_dim=32,
        split_layer=2, text_width=32, text_heads=2, text_layers=2, fusion_map=((0, 0), (1, 1), (2, 2)),
        side_width=48, side_depth=2, side_heads=2, side_image_size=64, num_queries=10, decoder_channels=16,
    ),
}  # fmt: skip


@dataclass
class SANPrediction:
    """Network outputs for B images of one size, before semantic inference (the parity checkpoints).

    B = images, Q = mask queries (100), T = classes, D = CLIP embedding size, (h, w) = side
    adapter grid (padded size / 16).
    """

    text_classifier: torch.Tensor  # (T+1, D) scaled classifier, background last
    mask_preds: torch.Tensor  # (B, Q, h, w) mask logits
    attn_biases: torch.Tensor  # (B, heads, Q, h, w) attention bias after bias_scaling
    mask_embs: torch.Tensor  # (B, Q, D) unit-norm region embeddings
    mask_logits: torch.Tensor  # (B, Q, T+1) class logits per mask
    image_size: tuple[int, int]  # (H, W) of the input images
    padded_size: tuple[int, int]  # (H, W) after padding to size_divisibility

    def scores(self, index: int = 0) -> SANScores:
        """The class scores of semantic inference of image ``index`` (no background channel)."""
        class_probs = self.mask_logits[index].float().softmax(dim=-1)[:, :-1]  # float32, as CUDA autocast gives it
        return SANScores(class_probs, self.mask_preds[index], self.image_size, self.padded_size)


class SAN(OpenVocabModel):
    """SAN with module names as in the official checkpoint (``clip_visual_extractor``,
    ``clip_rec_head``, ``side_adapter_network``, ``ov_classifier``).

    Text features from :meth:`encode_text` are the (T, D) class embeddings; the background
    row and logit scale are applied in :meth:`predict`, so a text cache stays independent of
    them. (The authors cache the same per-class embeddings.)
    """

    supports_batches = True  # one pass of the network for B images of one size
    auto_smoothing = "flow"  # its per-frame masks flicker; flow follows moving content

    def __init__(self, config: SANConfig, variant: str = "custom"):
        super().__init__()
        self.config = config
        self.variant = f"san_{variant}"
        self.clip_visual_extractor = CLIPFeatureExtractor(
            config.clip_width, config.split_layer, config.clip_heads, config.patch_size, config.clip_image_size
        )
        self.clip_rec_head = RecWithAttnBiasHead(
            config.clip_width, config.clip_layers - config.split_layer, config.clip_heads, config.embed_dim
        )
        self.side_adapter_network = SideAdapterNetwork(
            clip_width=config.clip_width,
            attn_bias_heads=config.clip_heads,
            fusion_map=dict(config.fusion_map),
            width=config.side_width,
            depth=config.side_depth,
            heads=config.side_heads,
            patch_size=config.side_patch_size,
            image_size=config.side_image_size,
            num_queries=config.num_queries,
            embed_channels=config.decoder_channels,
            mlp_channels=config.decoder_channels,
        )
        self.ov_classifier = TextEncoder(config.text_width, config.text_heads, config.text_layers, config.embed_dim)
        # Buffers, not tensors made from Python values per frame (a host-to-device copy each on CUDA).
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def encode_text(self, class_names: list[str]) -> torch.Tensor:
        """(T, D) unit-norm class embeddings averaged over the 14 ViLD templates."""
        return self.ov_classifier(class_names)

    def predict(self, image: torch.Tensor, text_features: torch.Tensor) -> SANPrediction:
        """Run the network on B images of one size (every stage keeps the images apart: each
        image's outputs equal those of running it alone, up to float rounding).

        Args:
            image: (B, 3, H, W) float RGB 0..255.
            text_features: (T, D) from :meth:`encode_text`.
        """
        image_size = tuple(image.shape[-2:])
        with stage("preprocess"):
            padded = self._normalise_and_pad(image)
            clip_input = F.interpolate(padded, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False)
        with stage("backbone"):
            clip_features, clip_grid = self.clip_visual_extractor(clip_input)
        with stage("side_adapter"):
            mask_preds, attn_biases = self.side_adapter_network(padded, clip_features, clip_grid)
        with stage("recognition"):
            mask_embs = self.clip_rec_head(clip_features[-1], attn_biases, clip_grid)
            text_classifier = self.ov_classifier.classifier(text_features)
        return SANPrediction(
            text_classifier=text_classifier,
            mask_preds=mask_preds,
            attn_biases=attn_biases,
            mask_embs=mask_embs,
            mask_logits=mask_embs @ text_classifier.T,
            image_size=image_size,
            padded_size=tuple(padded.shape[-2:]),
        )

    def forward(self, image: torch.Tensor, text_features: torch.Tensor) -> SANScores:
        """Scores for image (1, 3, H, W) RGB 0..255; see :class:`OpenVocabModel` and :meth:`SANPrediction.scores`."""
        if image.shape[0] != 1:
            raise ValueError(f"forward takes one image, got a batch of {image.shape[0]}: use forward_batch")
        return self.predict(image, text_features).scores()

    def forward_batch(self, images: torch.Tensor, text_features: torch.Tensor) -> list[SANScores]:
        """Scores of each of the B images (B, 3, H, W) RGB 0..255 of one size, from one pass of the network."""
        prediction = self.predict(images, text_features)
        return [prediction.scores(index) for index in range(images.shape[0])]

    def _normalise_and_pad(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0..255 -> normalised, zero-padded bottom/right to a multiple of
        ``size_divisibility`` (padding after normalisation, as detectron2's ImageList does)."""
        div = self.config.size_divisibility
        height, width = image.shape[-2:]
        pad_h, pad_w = -height % div, -width % div
        return F.pad((image - self.pixel_mean) / self.pixel_std, (0, pad_w, 0, pad_h))
