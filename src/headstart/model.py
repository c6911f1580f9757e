"""The target model: the source's backbone plus a new output layer sized to the target."""

from __future__ import annotations

import torch
from torch import nn

from headstart.sources.base import Backbone

__all__ = ["TargetModel"]


class TargetModel(nn.Module):
    """``head(dropout(backbone(x)))``: the source minus its output layer, plus a new head.

    The head is a fresh ``nn.Linear(feature_dim, num_classes)``; it is created after the
    weights are loaded (and, in a plan, after freezing), so it is the part that trains.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))
