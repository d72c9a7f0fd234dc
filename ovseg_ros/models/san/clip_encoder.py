"""SAN's use of the CLIP image tower, split in two at ``split`` (9 of 12 for ViT-B/16, 18 of 24
for ViT-L/14-336).

* :class:`CLIPFeatureExtractor` (``clip_visual_extractor``): patch embedding and the blocks
  before the split. Every intermediate token map is kept; the side adapter fuses some of them.
* :class:`RecWithAttnBiasHead` (``clip_rec_head``): the blocks after the split, run on the
  split-layer tokens plus one [SOS] token per mask query. The side adapter's attention bias
  decides which patches each [SOS] token looks at, so its output is a CLIP embedding of that
  mask region.

Module and parameter names follow open_clip's ``VisionTransformer`` (as the authors' wrappers
keep them), so the official checkpoint loads by name. Tokens are batch-first (B, L, C) here;
open_clip 2.16 used (L, B, C), which does not change the arithmetic.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .layers import attend


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation the OpenAI CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names (fused ``in_proj``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C); attn_mask: additive, broadcastable to (B, heads, L, L). Returns (B, L, C)."""
        return self.out_proj(attend(F.linear(x, self.in_proj_weight, self.in_proj_bias), self.heads, attn_mask))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP transformer block (LayerNorm eps 1e-5, QuickGELU MLP of width 4C)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C) -> (B, L, C)."""
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class CLIPFeatureExtractor(nn.Module):
    """CLIP ViT from the pixels to the split layer.

    Args:
        width, heads: transformer width and heads (768/12 for ViT-B, 1024/16 for ViT-L).
        layers: blocks before the split.
        patch_size: 16 or 14.
        image_size: CLIP's training resolution (224 or 336); the positional embedding is
            stored for that grid and resized bicubically to the input's grid.
    """

    def __init__(self, width: int, layers: int, heads: int, patch_size: int, image_size: int):
        super().__init__()
        self.grid_size = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        # Random init (open_clip's) only matters when no checkpoint is loaded.
        self.class_embedding = nn.Parameter(width**-0.5 * torch.randn(width))
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Token maps of every depth.

        Args:
            image: (B, 3, H, W) normalised CLIP input (any size; a partial last patch is dropped).

        Returns:
            ``features``: ``len(resblocks) + 1`` tensors (B, 1 + h*w, C), [CLS] first, patches
            row-major; ``features[i]`` is the output of block i (``features[0]``: after ``ln_pre``).
            ``(h, w)``: the patch grid.
        """
        x = self.conv1(image)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid)
        features = [self.ln_pre(x)]
        for block in self.resblocks:
            features.append(block(features[-1]))
        return features, grid

    def _positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, C): the [CLS] entry as stored, the patch grid resized bicubically."""
        if grid == (self.grid_size, self.grid_size):
            return self.positional_embedding
        cls, patches = self.positional_embedding[:1], self.positional_embedding[1:]
        patches = patches.T.reshape(1, -1, self.grid_size, self.grid_size)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.flatten(2)[0].T], dim=0)


class RecWithAttnBiasHead(nn.Module):
    """The CLIP blocks after the split, recognising one masked region per [SOS] token.

    Each of the Q [SOS] tokens starts as a copy of the split layer's [CLS] token and runs
    through the remaining blocks jointly with the image tokens, under an attention mask built
    from the side adapter's bias (the authors' ``REC_CROSS_ATTN: False`` path):

    * [SOS] rows: 0 to themselves, the bias to the patches, -100 to the other [SOS] tokens and
      to [CLS];
    * [CLS]/patch rows: -100 to every [SOS] token, 0 elsewhere, so the image tokens evolve
      exactly as in plain CLIP.

    The -100 is the authors' soft mask, not -inf. It is kept on purpose: where the bias itself
    falls below -100 the "masked" tokens do receive attention.
    """

    #: The authors' value for "masked" in the joint attention mask.
    MASKED = -100.0

    def __init__(self, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, output_dim))

    def forward(self, tokens: torch.Tensor, attn_bias: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """L2-normalised CLIP embeddings of the Q mask regions.

        Args:
            tokens: (B, 1 + h*w, C) split-layer tokens from :class:`CLIPFeatureExtractor`.
            attn_bias: (B, heads, Q, H', W') side adapter bias at its own resolution;
                max-pooled (adaptively) to the CLIP grid here.
            grid: (h, w) CLIP patch grid.

        Returns:
            (B, Q, output_dim) unit vectors.
        """
        b, heads, q = attn_bias.shape[:3]
        if heads != self.heads:
            raise ValueError(f"attention bias has {heads} heads, CLIP has {self.heads}")
        bias = F.adaptive_max_pool2d(attn_bias.flatten(1, 2), grid).view(b, heads, q, -1)
        mask = self._joint_attention_mask(bias)
        x = torch.cat([tokens[:, :1].expand(-1, q, -1), tokens], dim=1)
        for block in self.resblocks:
            x = block(x, mask)
        return F.normalize(self.ln_post(x[:, :q]) @ self.proj, dim=-1)

    def _joint_attention_mask(self, bias: torch.Tensor) -> torch.Tensor:
        """(B, heads, Q, L) patch bias -> (B, heads, Q+1+L, Q+1+L) additive mask (see class doc)."""
        b, heads, q, length = bias.shape
        n = q + 1 + length
        mask = bias.new_zeros(b, heads, n, n)
        mask[..., :q] = self.MASKED
        mask[..., :q, :q].diagonal(dim1=-2, dim2=-1).zero_()
        mask[..., :q, q] = self.MASKED
        mask[..., :q, q + 1 :] = bias
        return mask
