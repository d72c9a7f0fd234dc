"""SED decoder: cost volume and gradual fusion decoder with category early rejection.

Shapes are for one image (the class axis T doubles as the batch axis of every 2-D
layer), with h x w the dense CLIP grid (24 x 24 for a 768 x 768 input):

1. Cost volume: cosine similarity of every pixel embedding with each of the 80 prompt
   embeddings of each class -> (T, 80, h, w).
2. ``conv1`` embeds it -> (T, 128, h, w); three transposed-conv projections of the cost
   volume give guidance at 2x, 4x and 8x resolution.
3. Three fusion stages, each: ConvNeXt block (spatial), linear attention across classes
   at every pixel, 2x upsampling, concatenation with the projected image guidance
   (ConvNeXt res4/res3/res2) and cost guidance, double conv. -> (T, 16, 8h, 8w).
4. ``head`` -> (T, 8h, 8w) logits.

Category early rejection (CER): before each stage an auxiliary head (``head0``,
``head1``, ``head2``) scores the classes per pixel; only classes that are in the top K
at some pixel go on, so the later stages (and the class attention) only see those.
Without CER the auxiliary heads are not evaluated: they only feed training losses.

CER keeps every shape a function of the class count bucket only, not of the data: the
kept classes are ranked first in a fixed-shape order on the device, and the stage runs
on a padded bucket of B rows (the smallest power of two >= the kept count K, at most the
previous bucket), rows K..B-1 being padding. Reading K is the one host sync per stage.
Padding never reaches a kept row: the class attention masks it, and every other layer
treats the class axis as its batch axis. Each stage (:meth:`SEDDecoder.rank` and the
:class:`FusionStage`) is a function of fixed-shape tensors, so ``torch.compile`` traces
it without graph breaks (one graph per bucket size).

Module and parameter names follow the official checkpoint's
``sem_seg_head.predictor.transformer.*`` so that conversion is a prefix change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base import stage


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (depthwise conv, LayerNorm, MLP, layer scale, residual): (N, C, H, W) -> same."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LinearClassAttention(nn.Module):
    """Multi-head linear attention (Katharopoulos et al. 2020, elu + 1 feature map) over classes.

    Linear in T, which matters with hundreds of classes; no output projection.
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, C): N independent sequences of T class tokens -> (N, T, C).

        ``valid`` (T,) bool marks the real classes of a padded CER bucket (None: all are).
        Padding tokens get zero keys and values, and the count of real tokens replaces T,
        so they change no real token's output; their own outputs are meaningless.
        """
        n, t, _ = x.shape
        q = F.elu(self.q(x).view(n, t, self.heads, -1)) + 1
        k = F.elu(self.k(x).view(n, t, self.heads, -1)) + 1
        v = self.v(x).view(n, t, self.heads, -1)
        if valid is None:
            classes = t
        else:
            # where, not a product: padding may hold anything (inf * 0 would be nan).
            padding = ~valid[None, :, None, None]
            k = k.masked_fill(padding, 0)
            v = v.masked_fill(padding, 0)
            classes = valid.sum()  # a device tensor: no host sync
        # Scaled down by T and back up at the end, as the authors do against fp16 overflow.
        v = v / classes
        kv = torch.einsum("nshd,nshv->nhdv", k, v)
        normaliser = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        out = torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, normaliser) * classes
        return out.reshape(n, t, -1)


class ClassAttentionBlock(nn.Module):
    """Pre-norm transformer layer across classes at every (pooled) pixel, added back residually."""

    def __init__(self, dim: int, heads: int, pooling_size: tuple[int, int]):
        super().__init__()
        self.pool = nn.AvgPool2d(pooling_size)
        self.attention = LinearClassAttention(dim, heads)
        self.MLP = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(T, C, H, W) -> (T, C, H, W); ``valid`` (T,) bool or None as in :class:`LinearClassAttention`."""
        pooled = self.pool(x)
        t, c, h, w = pooled.shape
        tokens = pooled.permute(2, 3, 0, 1).reshape(h * w, t, c)
        tokens = tokens + self.attention(self.norm1(tokens), valid)
        tokens = tokens + self.MLP(self.norm2(tokens))
        update = tokens.view(h, w, t, c).permute(2, 3, 0, 1)
        return x + F.interpolate(update, size=x.shape[-2:], mode="bilinear", align_corners=True)


class DoubleConv(nn.Module):
    """(3x3 conv, GroupNorm, ReLU) x 2: (N, C_in, H, W) -> (N, C_out, H, W).

    GroupNorm normalises each sample on its own, so the N classes stay independent.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # 16 channels per group as the authors; one group for the narrower development decoder.
        groups = max(1, out_channels // 16)
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class FusionStage(nn.Module):
    """One gradual-fusion step: refine at h x w, upsample 2x, fuse guidance.

    (T, C_in, h, w) -> (T, C_out, 2h, 2w); the image guidance (1, G, 2h, 2w) is shared by
    all classes, the cost guidance (T, G, 2h, 2w) is per class. With CER, T is a padded
    bucket and ``valid`` (T,) bool marks its real classes; only the class attention mixes
    classes, every other layer maps each class row on its own.
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int, heads: int,
                 pooling_size: tuple[int, int], kernel_size: int):
        super().__init__()
        self.cnext = ConvNeXtBlock(in_channels, kernel_size)
        self.attention = ClassAttentionBlock(in_channels, heads, pooling_size)
        # Upsampled features + image guidance + cost guidance add up to in + guidance channels.
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels + guidance_channels, out_channels)

    def forward(self, x: torch.Tensor, image_guidance: torch.Tensor, cost_guidance: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(self.attention(self.cnext(x), valid))
        image_guidance = image_guidance.expand(len(x), -1, -1, -1)
        return self.conv(torch.cat([x, image_guidance, cost_guidance], dim=1))


@dataclass
class DecoderOutput:
    """Attributes:
        logits: (K, 8h, 8w) logits of the classes that reached the last stage.
        kept: (K,) their original class ids, ascending (all T when CER is off).
        kept_per_stage: with CER, the (K_i,) ids still in play after the selection before
            stage i = 1, 2, 3 (cumulative); empty without CER.
    """

    logits: torch.Tensor
    kept: torch.Tensor
    kept_per_stage: list[torch.Tensor]


class SEDDecoder(nn.Module):
    """Cost volume + gradual fusion decoder, as configured in the authors' ConvNeXt configs.

    Args:
        image_guidance_dims: channels of the ConvNeXt res4, res3, res2 outputs.
        pooling_size: spatial pooling before the class attention; the authors train with
            (2, 2) and evaluate with (1, 1) (``eval.sh``).
        prompts: templates per class (cost volume channels).
    """

    def __init__(
        self,
        image_guidance_dims: tuple[int, int, int],
        pooling_size: tuple[int, int] = (1, 1),
        prompts: int = 80,
        hidden_dim: int = 128,
        stage_dims: tuple[int, int, int] = (64, 32, 16),
        guidance_proj_dims: tuple[int, int, int] = (32, 16, 8),
        heads: int = 4,
        kernel_size: int = 9,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(prompts, hidden_dim, kernel_size=7, padding=3)
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, proj, kernel_size=3, padding=1), nn.ReLU())
            for dim, proj in zip(image_guidance_dims, guidance_proj_dims)
        )
        # Chained: each projection upsamples the previous one's output, starting from the cost volume.
        cost_dims = (prompts, *guidance_proj_dims[:-1])
        self.decoder_corr_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(dim, proj, kernel_size=2, stride=2), nn.ReLU())
            for dim, proj in zip(cost_dims, guidance_proj_dims)
        )
        in_dims = (hidden_dim, *stage_dims[:-1])
        self.decoder1, self.decoder2, self.decoder3 = (
            FusionStage(i, o, g, heads, pooling_size, kernel_size) for i, o, g in zip(in_dims, stage_dims, guidance_proj_dims)
        )
        # Auxiliary per-class heads before each stage (CER scores), and the final head.
        self.head0, self.head1, self.head2 = (nn.Conv2d(dim, 1, kernel_size=3, padding=1) for dim in in_dims)
        self.head = nn.Conv2d(stage_dims[-1], 1, kernel_size=3, padding=1)

    @property
    def stages(self) -> tuple[FusionStage, FusionStage, FusionStage]:
        return self.decoder1, self.decoder2, self.decoder3

    @property
    def aux_heads(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.head0, self.head1, self.head2

    def forward(self, dense: torch.Tensor, image_guidance: tuple[torch.Tensor, ...], text: torch.Tensor,
                cer_topk: int | None = None) -> DecoderOutput:
        """Decode one image.

        Args:
            dense: (1, E, h, w) per-pixel CLIP embeddings.
            image_guidance: res4 (1, C4, 2h, 2w), res3 (1, C3, 4h, 4w), res2 (1, C2, 8h, 8w).
            text: (T, 80, E) prompt embeddings.
            cer_topk: K for category early rejection; None runs every class through.
                With CER: one host sync per stage (the kept count, which sizes the bucket).
        """
        with stage("cost_map"):
            x, image_guidance, cost_guidance = self.cost_map(dense, image_guidance, text)

        with stage("decoder"):
            if cer_topk is None:
                for fusion, image_g, cost_g in zip(self.stages, image_guidance, cost_guidance):
                    x = fusion(x, image_g, cost_g)
                kept = torch.arange(len(text), device=text.device)
                return DecoderOutput(logits=self.head(x)[:, 0], kept=kept, kept_per_stage=[])

            ids = torch.arange(len(text), device=text.device)  # (B,) class id of each bucket row
            valid = torch.ones(len(text), dtype=torch.bool, device=text.device)  # (B,) real rows
            kept_per_stage = []
            for index, (fusion, image_g, cost_g) in enumerate(zip(self.stages, image_guidance, cost_guidance)):
                order, count = self.rank(index, x, valid, cer_topk)
                kept_count = int(count)  # the stage's one host sync: it sizes the bucket
                rows = order[:class_bucket(kept_count, len(x))]
                x, ids = x[rows], ids[rows]
                valid = torch.arange(len(rows), device=x.device) < kept_count
                kept_per_stage.append(ids[:kept_count])
                x = fusion(x, image_g, cost_g[ids], valid)
            return DecoderOutput(logits=self.head(x)[:kept_count, 0], kept=ids[:kept_count], kept_per_stage=kept_per_stage)

    def cost_map(self, dense: torch.Tensor, image_guidance: tuple[torch.Tensor, ...], text: torch.Tensor,
                 ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Everything before the fusion stages, for all T classes.

        Returns:
            x: (T, hidden, h, w) embedded cost volume.
            image_guidance: projected res4, res3, res2: (1, G_i, 2^i h, 2^i w), i = 1, 2, 3.
            cost_guidance: upsampled cost volume per class: (T, G_i, 2^i h, 2^i w), i = 1, 2, 3.
        """
        cost = self.cost_volume(dense, text)
        x = self.conv1(cost)
        image_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_projection, image_guidance)]
        cost_guidance = []
        for proj in self.decoder_corr_guidance_projection:
            cost = proj(cost)
            cost_guidance.append(cost)
        return x, image_guidance, cost_guidance

    def rank(self, index: int, x: torch.Tensor, valid: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CER's selection before stage ``index`` (0, 1, 2), on a bucket of B rows; fixed shapes.

        Args:
            x: (B, C, h, w) the stage's input.
            valid: (B,) bool, the rows that are real classes (the rest is padding).
            topk: K; a class goes on if it is among the top K real classes at some pixel.

        Returns:
            order: (B,) row indices, the kept rows first in ascending row (hence class id)
                order, then the rest.
            count: () int64, how many rows are kept.
        """
        scores = self.aux_heads[index](x)[:, 0].masked_fill(~valid[:, None, None], float("-inf"))
        # Padding scores -inf: it can only be picked where fewer than K rows are real, and is dropped.
        keep = top_classes(scores, topk) & valid
        # A stable sort of 0 (kept) / 1 (rejected) keeps ascending order inside each group.
        order = torch.argsort((~keep).to(torch.uint8), stable=True)
        return order, keep.sum()

    @staticmethod
    def cost_volume(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (T, P, h, w) of (1, E, h, w) pixels and (T, P, E) prompts (no logit scale)."""
        pixels = F.normalize(dense, dim=1)[0]
        return torch.einsum("ehw,tpe->tphw", pixels, F.normalize(text, dim=-1))


def class_bucket(kept: int, limit: int) -> int:
    """Rows of the padded CER bucket for ``kept`` classes: the smallest power of two >= kept, at most ``limit``.

    Few distinct sizes (log2 T + 1), so a compiled stage is traced only that often, and
    at most twice the kept rows are computed.
    """
    return min(1 << (kept - 1).bit_length(), limit)


def top_classes(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(T, H, W) class scores -> (T,) bool: the classes among the top ``k`` at any pixel.

    The authors sort all T scores per pixel (``argsort``); ``topk`` picks the same classes
    except between exactly tied scores. Fixed shapes: a scatter, not a data-dependent index.
    """
    winners = scores.topk(min(k, len(scores)), dim=0).indices
    return torch.zeros(len(scores), dtype=torch.bool, device=scores.device).index_fill_(0, winners.flatten(), True)
