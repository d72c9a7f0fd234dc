"""SAN's mask decoder: turns the side adapter's query and pixel tokens into mask logits and the
attention bias that steers CLIP's recognition head."""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP


class MLPMaskDecoder(nn.Module):
    """Three MLP branches and a learned affine rescale of the bias.

    * ``query_mlp``: query tokens -> (B, Q, E) embeddings;
    * ``pix_mlp``: pixel map -> (B, E, h, w); mask logits = query . pixel;
    * ``attn_mlp``: pixel map -> ``heads`` maps of E channels; bias of head n = query . map n,
      then ``bias_scaling`` (a ``Linear(1, 1)``, i.e. ``w * bias + b``).

    The authors also support one bias per recognition layer (``NUM_LAYERS``); both released
    models use a single bias shared by every layer, so only that case is implemented.

    Args:
        in_channels: side adapter width (240).
        heads: attention heads of CLIP's recognition layers (12 for ViT-B, 16 for ViT-L).
        embed_channels, mlp_channels, num_layers: MLP sizes (256, 256, 3).
    """

    def __init__(self, in_channels: int, heads: int, embed_channels: int = 256, mlp_channels: int = 256, num_layers: int = 3):
        super().__init__()
        self.heads = heads
        self.query_mlp = MLP(in_channels, mlp_channels, embed_channels, num_layers)
        self.pix_mlp = MLP(in_channels, mlp_channels, embed_channels, num_layers, dense=True)
        self.attn_mlp = MLP(in_channels, mlp_channels, embed_channels * heads, num_layers, dense=True)
        self.bias_scaling = nn.Linear(1, 1)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            query: (B, Q, C) query tokens.
            x: (B, C, h, w) pixel tokens as a map.

        Returns:
            ``mask_preds`` (B, Q, h, w) mask logits and ``attn_bias`` (B, heads, Q, h, w).
        """
        query = self.query_mlp(query)
        mask_preds = torch.einsum("bqc,bchw->bqhw", query, self.pix_mlp(x))
        b, _, h, w = x.shape
        attn = self.attn_mlp(x).view(b, self.heads, -1, h, w)
        attn_bias = torch.einsum("bqc,bnchw->bnqhw", query, attn)
        attn_bias = self.bias_scaling(attn_bias.unsqueeze(-1)).squeeze(-1)
        return mask_preds, attn_bias
