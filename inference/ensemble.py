"""The OVA + 3-class ensemble network: one shared Res2Net backbone, five one-vs-all sigmoid heads
(one per class of ``CELL_CLASSES``) and one 3-way softmax lineage head (``LINEAGES``).

Sharing the backbone is the efficient form of the source study's "OVA and 3-class classification
strategy": the heads are separate classifiers over one feature extractor. An optional plain 5-way
softmax head exists only for the ablation that measures what the OVA + lineage design adds.
How the heads' outputs are combined into a decision lives in ``wbcv.inference.combine``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from wbcv.base.taxonomy import CELL_CLASSES, LINEAGES
from wbcv.inference.res2net import Res2NetBackbone, Res2NetConfig


class EnsembleLogits(NamedTuple):
    """Raw head outputs; calibration and combination happen in ``wbcv.inference.combine``."""

    ova: torch.Tensor  # (N, 5) one-vs-all logits, CELL_CLASSES order
    lineage: torch.Tensor  # (N, 3) lineage logits, LINEAGES order
    softmax5: torch.Tensor | None  # (N, 5) plain softmax-head logits (ablation only)
    features: torch.Tensor | None = None  # (N, F) pooled backbone features (the out-of-distribution score)


class WbcEnsembleNet(nn.Module):
    """Takes uint8 images (N, H, W, 3) as decoded, returns the heads' logits.

    Normalisation (mean/std in 0..255 units) is part of the network, so the model card's values
    are the only place they are defined and no caller can forget them. The NHWC input is permuted
    to an NCHW view that is already channels-last in memory, which is what oneDNN's convolutions
    prefer on CPU.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    inv_std: torch.Tensor

    def __init__(
        self,
        backbone: Res2NetConfig,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        with_softmax_head: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = Res2NetBackbone(backbone)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        f = self.backbone.num_features
        self.dropout = nn.Dropout(backbone.dropout)
        self.ova_head = nn.Linear(f, len(CELL_CLASSES))
        self.lineage_head = nn.Linear(f, len(LINEAGES))
        self.softmax_head = nn.Linear(f, len(CELL_CLASSES)) if with_softmax_head else None

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels-last memory)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        # Broadcasting over the last (channel) axis before the permute is ~40 % faster on CPU.
        return images.float().sub_(self.mean.view(3)).mul_(self.inv_std.view(3)).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> EnsembleLogits:
        pooled = self.backbone(self.normalise(images))
        feats = self.dropout(pooled)
        soft = self.softmax_head(feats) if self.softmax_head is not None else None
        return EnsembleLogits(self.ova_head(feats), self.lineage_head(feats), soft, pooled)
