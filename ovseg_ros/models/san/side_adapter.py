"""SAN's side adapter network: a small ViT (width 240, 8 blocks, 6 heads, patch 16) on the
full-resolution image, with learnable mask queries, into which CLIP features are added at a few
depths. It predicts the masks and the attention bias for CLIP's recognition head.

Names follow the authors' ``RegionwiseSideAdapterNetwork`` around a timm ``VisionTransformer``
(``vit_model.blocks.N.attn.qkv`` ...), so the official checkpoint loads by name. The timm ViT's
[CLS] token, final norm and classifier are dropped by the authors and absent here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .layers import LayerNorm2d, attend
from .mask_decoder import MLPMaskDecoder


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, C, H/p, W/p)."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image)


class Attention(nn.Module):
    """timm ViT self-attention (fused ``qkv`` with bias, output ``proj``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        return self.proj(attend(self.qkv(x), self.heads))


class Mlp(nn.Module):
    """timm ViT MLP: fc1, exact GELU, fc2 (hidden width 4C)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """timm pre-norm ViT block (LayerNorm eps 1e-6)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SideViT(nn.Module):
    """The side ViT's weights (``vit_model``): patch embedding, positional embedding, blocks.

    ``pos_embed`` is stored for a ``image_size`` square input (a 40x40 grid for 640) and resized
    bicubically to the actual grid.
    """

    def __init__(self, width: int, depth: int, heads: int, patch_size: int, image_size: int):
        super().__init__()
        self.grid_size = image_size // patch_size
        self.patch_embed = PatchEmbed(width, patch_size)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.grid_size**2, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, h*w, C) positional embedding for a patch grid (h, w)."""
        if grid == (self.grid_size, self.grid_size):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)


class AddFusion(nn.Module):
    """Adds a projected CLIP feature map to the side adapter's patch tokens.

    The CLIP map (B, C_clip, h', w') is channel-LayerNormed, projected by a 1x1 convolution to
    the side width and resized bilinearly to the side grid.
    """

    def __init__(self, clip_width: int, width: int):
        super().__init__()
        self.input_proj = nn.Sequential(LayerNorm2d(clip_width), nn.Conv2d(clip_width, width, kernel_size=1))

    def forward(self, x: torch.Tensor, clip_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, h*w, C) patch tokens on grid (h, w); clip_map: (B, C_clip, h', w'). Returns x's shape."""
        y = F.interpolate(self.input_proj(clip_map), size=grid, mode="bilinear", align_corners=False)
        return x + y.flatten(2).transpose(1, 2)


class SideAdapterNetwork(nn.Module):
    """Side ViT with Q mask queries, CLIP fusion and the mask decoder.

    Args:
        clip_width: channels of the CLIP token maps that are fused.
        attn_bias_heads: heads of CLIP's recognition layers; one bias map per head.
        fusion_map: side depth -> CLIP depth, e.g. ``{0: 0, 1: 3, 2: 6, 3: 9}`` for ViT-B: CLIP's
            block-k output is added after side block i (i = 0: before the first block).
        width, depth, heads, patch_size, image_size: side ViT (240, 8, 6, 16, 640).
        num_queries: Q (100).
        embed_channels, mlp_channels: mask decoder sizes (256, 256).
    """

    def __init__(
        self,
        clip_width: int,
        attn_bias_heads: int,
        fusion_map: Mapping[int, int],
        width: int = 240,
        depth: int = 8,
        heads: int = 6,
        patch_size: int = 16,
        image_size: int = 640,
        num_queries: int = 100,
        embed_channels: int = 256,
        mlp_channels: int = 256,
    ):
        super().__init__()
        self.fusion_map = dict(fusion_map)
        # Random init (the authors') only matters when no checkpoint is loaded.
        self.query_embed = nn.Parameter(0.02 * torch.randn(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(0.02 * torch.randn(1, num_queries, width))
        self.vit_model = SideViT(width, depth, heads, patch_size, image_size)
        self.fusion_layers = nn.ModuleDict({f"layer_{i}": AddFusion(clip_width, width) for i in self.fusion_map})
        self.mask_decoder = MLPMaskDecoder(width, attn_bias_heads, embed_channels, mlp_channels)

    def forward(
        self, image: torch.Tensor, clip_features: list[torch.Tensor], clip_grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image: (B, 3, H, W) normalised, padded full-resolution image.
            clip_features: token maps from :class:`~.clip_encoder.CLIPFeatureExtractor`,
                (B, 1 + h'*w', C_clip) each, [CLS] first.
            clip_grid: (h', w') CLIP patch grid.

        Returns:
            ``mask_preds`` (B, Q, H/16, W/16) and ``attn_bias`` (B, heads, Q, H/16, W/16), both
            from the last block. (The authors also decode block 7 for deep supervision in
            training; inference uses only the last one, so it is not computed here.)
        """
        x = self.vit_model.patch_embed(image)
        b, c, h, w = x.shape
        num_queries = self.query_embed.shape[1]
        pos = torch.cat([self.query_pos_embed, self.vit_model.position_embedding((h, w))], dim=1)
        x = torch.cat([self.query_embed.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
        x = self._fuse(0, x, clip_features, clip_grid, (h, w))
        for i, block in enumerate(self.vit_model.blocks, start=1):
            x = self._fuse(i, block(x), clip_features, clip_grid, (h, w))
            if i < len(self.vit_model.blocks):  # positions are re-added before every block
                x = x + pos
        query, pixels = x[:, :num_queries], x[:, num_queries:]
        return self.mask_decoder(query, pixels.transpose(1, 2).reshape(b, c, h, w))

    def _fuse(
        self, depth: int, x: torch.Tensor, clip_features: list[torch.Tensor], clip_grid: tuple[int, int], grid: tuple[int, int]
    ) -> torch.Tensor:
        """Add CLIP's features to the patch tokens of x (B, Q + h*w, C) if ``depth`` is fused."""
        if depth not in self.fusion_map:
            return x
        tokens = clip_features[self.fusion_map[depth]]
        clip_map = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *clip_grid)
        num_queries = self.query_embed.shape[1]
        patches = self.fusion_layers[f"layer_{depth}"](x[:, num_queries:], clip_map, grid)
        return torch.cat([x[:, :num_queries], patches], dim=1)
