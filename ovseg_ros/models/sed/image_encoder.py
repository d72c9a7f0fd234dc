"""SED image encoder: the ConvNeXt CLIP image tower read out at every scale.

SED does not pool the CLIP image embedding. It applies the tower's embedding head
(``trunk.head``: LayerNorm2d, then ``visual.head``: linear or MLP projection) to every
pixel of the last stage, which gives a CLIP embedding per 32x32 patch that is comparable
with the text embeddings. The outputs of the earlier stages guide the decoder's
upsampling path.

The authors bundle open_clip 2.10.1 and patch its ``TimmModel.forward`` to return these
features (``encode_image(..., dense=True)``). We take the modules of stock open_clip_torch
3.x and do the same readout here; parameter names and the computation are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.timm_model import TimmModel
from torch import nn


@dataclass
class ImageFeatures:
    """What the decoder needs from the image.

    Attributes:
        dense: (1, E, H/32, W/32) per-pixel CLIP embeddings, not normalised
            (E = 640 for ConvNeXt-B, 768 for ConvNeXt-L).
        guidance: stage outputs from coarse to fine, one per decoder stage:
            res4 (1, C4, H/16, W/16), res3 (1, C3, H/8, W/8), res2 (1, C2, H/4, W/4).
    """

    dense: torch.Tensor
    guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ImageEncoder(nn.Module):
    """The ConvNeXt trunk and embedding head of an open_clip ``TimmModel`` image tower.

    Weights keep open_clip's names below ``trunk.`` and ``head.`` (the official
    checkpoint's ``clip_model.visual.*``).
    """

    def __init__(self, visual: TimmModel):
        super().__init__()
        self.trunk = visual.trunk
        self.head = visual.head

    def forward(self, image: torch.Tensor) -> ImageFeatures:
        """Encode a normalised (1, 3, H, W) image (H, W multiples of 32; SED uses 768x768)."""
        x = self.trunk.stem(image)
        stage_outputs = []
        for stage in self.trunk.stages:
            x = stage(x)
            stage_outputs.append(x)
        x = self.trunk.norm_pre(x)
        res2, res3, res4, _ = stage_outputs
        return ImageFeatures(dense=self.embed_pixels(x), guidance=(res4, res3, res2))

    def embed_pixels(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) last-stage features -> (B, E, h, w) CLIP embeddings, one per pixel."""
        batch, channels, height, width = features.shape
        # Each pixel becomes a 1x1 image, so the head's global pooling leaves it unchanged
        # and only its LayerNorm and the projection act.
        pixels = features.permute(0, 2, 3, 1).reshape(-1, channels, 1, 1)
        embedded = self.head(self.trunk.head(pixels))
        return embedded.view(batch, height, width, -1).permute(0, 3, 1, 2)
