"""The Siamese encoder: one network with shared weights that embeds every image.

backbone (global pooling) -> linear projection -> L2 normalisation. Embeddings are unit
vectors, so the inner product is the cosine similarity used as the score everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import DEFAULT_BACKBONE, build_backbone


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild the network's structure (not its weights)."""

    backbone: str = DEFAULT_BACKBONE
    # None: no projection, the backbone's pooled ImageNet features themselves (the baseline).
    embedding_dim: int | None = 128

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "embedding_dim": self.embedding_dim}

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        dim = data.get("embedding_dim")
        return cls(backbone=str(data["backbone"]), embedding_dim=None if dim is None else int(dim))


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head: nn.Module = (
            nn.Identity() if embedding_dim is None else nn.Linear(feature_dim, embedding_dim)
        )
        self.embedding_dim = feature_dim if embedding_dim is None else embedding_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, before the projection."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)).float(), dim=-1)


def build_encoder(config: EncoderConfig, pretrained: bool = True) -> Encoder:
    """Build the encoder; ``pretrained`` loads the backbone's ImageNet weights."""
    backbone, feature_dim = build_backbone(config.backbone, pretrained=pretrained)
    return Encoder(backbone, feature_dim, config.embedding_dim)
