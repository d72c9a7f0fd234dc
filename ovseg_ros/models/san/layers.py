"""Small building blocks shared by SAN's CLIP towers, side adapter and mask decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def attend(qkv: torch.Tensor, heads: int, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product self-attention on packed projections.

    Args:
        qkv: (B, L, 3*C) queries, keys and values side by side, as a fused projection makes them.
        heads: number of heads; C must divide by it.
        attn_mask: additive float mask broadcastable to (B, heads, L, L), or None.

    Returns:
        (B, L, C) heads concatenated, before the output projection.
    """
    b, length, c3 = qkv.shape
    q, k, v = qkv.view(b, length, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(b, length, c3 // 3)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (the ConvNeXt-style one, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLP(nn.Module):
    """``num_layers`` affine layers with ReLU between them (none after the last).

    ``dense=True`` uses 1x1 convolutions, i.e. the same MLP applied at every pixel of a
    (B, C, H, W) map; otherwise linear layers on (..., C).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, dense: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        affine = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if dense else nn.Linear
        self.layers = nn.ModuleList(affine(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)
