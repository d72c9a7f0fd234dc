"""SAN's open-vocabulary classifier (``ov_classifier``): the CLIP text tower, the 14 ViLD prompt
templates and the learned background embedding.

Names follow the open_clip ``CLIP`` text attributes the authors copy into their
``LearnableBgOvClassifier`` (``token_embedding``, ``transformer.resblocks.N``, ``attn_mask`` ...),
so the official checkpoint loads by name. open_clip is used only for its BPE tokenizer.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .clip_encoder import ResidualAttentionBlock

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer

#: The authors' "vild" template set (``CLIP_TEMPLATE_SET``), in their order.
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


@functools.cache
def _tokenizer() -> "SimpleTokenizer":
    """open_clip's CLIP BPE tokenizer (lower-cases, 77 tokens); loaded once, on first use."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class Transformer(nn.Module):
    """A stack of CLIP blocks under one attention mask."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C) -> (B, L, C)."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class TextEncoder(nn.Module):
    """CLIP text tower plus SAN's background class.

    Args:
        width, heads, layers: text transformer (512/8/12 for ViT-B/16, 768/12/12 for ViT-L/14).
        embed_dim: joint embedding size (512 or 768).
        context_length, vocab_size: CLIP's 77 tokens and 49408 BPE entries.
        templates: prompt templates, ``{}`` replaced by the class name verbatim.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        layers: int,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        templates: tuple[str, ...] = VILD_TEMPLATES,
    ):
        super().__init__()
        self.templates = templates
        self.token_embedding = nn.Embedding(vocab_size, width)
        # Random init (open_clip's and the authors') only matters when no checkpoint is loaded.
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(width**-0.5 * torch.randn(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.bg_embed = nn.Parameter(embed_dim**-0.5 * torch.randn(1, embed_dim))
        # Causal mask; a persistent buffer because the official checkpoint stores it.
        self.register_buffer("attn_mask", torch.full((context_length, context_length), float("-inf")).triu(1))

    def forward(self, class_names: list[str]) -> torch.Tensor:
        """(T, embed_dim) unit-norm class embeddings: the mean over templates of each
        template's unit-norm text embedding, renormalised."""
        per_template = [self.encode_prompts([t.format(name) for name in class_names]) for t in self.templates]
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, embed_dim) unit-norm CLIP embeddings of N prompts, read at the [EOT] token.

        Differs from open_clip on purpose: the sequence is cut after the last [EOT] of the batch
        instead of running all 77 positions. The mask is causal, so the [EOT] outputs are
        unchanged; encoding is several times faster.
        """
        device = self.positional_embedding.device
        tokens = _tokenizer()(prompts, context_length=self.positional_embedding.shape[0]).to(device)
        eot = tokens.argmax(dim=-1)  # [EOT] has the largest id
        length = int(eot.max()) + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=device), eot] @ self.text_projection
        return F.normalize(x, dim=-1)

    def classifier(self, text_features: torch.Tensor) -> torch.Tensor:
        """(T, D) class embeddings -> (T+1, D) classifier: background appended last, every row
        L2-normalised, all scaled by ``logit_scale.exp()``."""
        weights = torch.cat([text_features, self.bg_embed.to(text_features)], dim=0)
        return self.logit_scale.exp() * F.normalize(weights, dim=-1)
