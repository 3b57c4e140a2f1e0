"""Res2Net-style backbone, small enough for CPU batch inference.

Res2Net (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021,
doi:10.1109/TPAMI.2019.2938758) splits the 3x3 stage of a bottleneck block into ``scale`` groups of
``width`` channels and convolves them hierarchically (each group sees the previous group's output),
which gives every block several receptive-field sizes. The source study of this harness found it
the best backbone for WBC classification. Layout follows timm's ``res2net.py``: one block class, a
stage builder, a config dataclass and a registry of named variants.

Normalisation is configurable. BatchNorm (the default) is folded into the convolutions for
inference, which is what makes the 1,000-cells/s target reachable on 2 CPU cores; GroupNorm keeps
per-image statistics (more robust to a new scanner's or stain's colour shift) but cannot be
folded and measured about 30 % slower end to end (README, "Performance": 752 against 1,073 cells/s).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

NormKind = Literal["group", "batch"]


@dataclass(frozen=True)
class Res2NetConfig:
    """Shape of the backbone. Every field is stored in the model card, so an artifact rebuilds exactly."""

    stem_channels: int = 24
    stage_channels: tuple[int, ...] = (48, 96, 160, 256)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    base_width: int = 8
    scale: int = 4
    norm: NormKind = "batch"
    norm_groups: int = 8
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if len(self.stage_channels) != len(self.depths):
            raise ValueError("stage_channels and depths must have the same length")
        if self.scale < 2:
            raise ValueError("Res2Net needs scale >= 2 (scale 1 is a plain bottleneck)")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', got {self.norm!r}")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["stage_channels"] = list(self.stage_channels)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Res2NetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown backbone field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        kw = dict(d)
        for key in ("stage_channels", "depths"):
            if key in kw:
                kw[key] = tuple(kw[key])  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]


def make_norm(kind: NormKind, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # Fall back to fewer groups when the channel count is not divisible (keeps configs flexible).
    g = groups
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def conv_norm_act(
    in_ch: int, out_ch: int, kernel: int, stride: int, cfg: Res2NetConfig, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        make_norm(cfg.norm, out_ch, cfg.norm_groups),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 expand, hierarchical 3x3 over ``scale`` splits, 1x1 project, residual."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: Res2NetConfig) -> None:
        super().__init__()
        width = cfg.base_width * max(1, out_ch // 64)
        self.width = width
        self.scale = cfg.scale
        self.is_first = stride > 1 or in_ch != out_ch
        self.conv1 = conv_norm_act(in_ch, width * cfg.scale, 1, 1, cfg)
        self.convs = nn.ModuleList(conv_norm_act(width, width, 3, stride, cfg) for _ in range(cfg.scale - 1))
        # In the first block of a stage the last split is not convolved; it is pooled to match.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if self.is_first and stride > 1 else None
        self.conv3 = conv_norm_act(width * cfg.scale, out_ch, 1, 1, cfg, act=False)
        if self.is_first:
            # ResNet-D shortcut: average-pool then 1x1, so no input pixel is skipped by a strided 1x1.
            down: list[nn.Module] = []
            if stride > 1:
                down.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            down.append(conv_norm_act(in_ch, out_ch, 1, 1, cfg, act=False))
            self.shortcut: nn.Module = nn.Sequential(*down)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        splits = torch.split(out, self.width, dim=1)
        outs: list[torch.Tensor] = []
        sp = splits[0]
        for i, conv in enumerate(self.convs):
            # Hierarchical: later splits add the previous split's output (not in a stage's first block).
            sp = splits[i] if (i == 0 or self.is_first) else sp + splits[i]
            sp = conv(sp)
            outs.append(sp)
        last = splits[-1]
        outs.append(self.pool(last) if self.pool is not None else last)
        out = self.conv3(torch.cat(outs, dim=1))
        return self.act(out + self.shortcut(x))


class Res2NetBackbone(nn.Module):
    """Stem (two strided 3x3 convs) followed by Res2Net stages; returns pooled features."""

    def __init__(self, cfg: Res2NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            conv_norm_act(3, cfg.stem_channels // 2, 3, 2, cfg),
            conv_norm_act(cfg.stem_channels // 2, cfg.stem_channels, 3, 2, cfg),
        )
        stages: list[nn.Module] = []
        in_ch = cfg.stem_channels
        for i, (ch, depth) in enumerate(zip(cfg.stage_channels, cfg.depths, strict=True)):
            blocks = [Bottle2neck(in_ch, ch, 1 if i == 0 else 2, cfg)]
            blocks += [Bottle2neck(ch, ch, 1, cfg) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last norm of each residual branch so every block starts as identity (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, Bottle2neck):
                norm = m.conv3[1]
                assert isinstance(norm, nn.BatchNorm2d | nn.GroupNorm)
                nn.init.zeros_(norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (inference only).

    Each conv + BN pair becomes one conv with w' = w * g / sqrt(v + eps) and
    b' = (b - m) * g / sqrt(v + eps) + beta; outputs agree up to float rounding and the BN pass,
    a full read and write of every activation, disappears. GroupNorm has per-image statistics and
    cannot be folded; modules using it are left as they are.
    """
    for m in module.modules():
        if (
            isinstance(m, nn.Sequential)
            and len(m) >= 2
            and isinstance(m[0], nn.Conv2d)
            and isinstance(m[1], nn.BatchNorm2d)
        ):
            m[0] = fuse_conv_bn_eval(m[0].eval(), m[1].eval())
            m[1] = nn.Identity()
    return module


#: Named variants; a model card stores the full config, so these are only starting points.
VARIANTS: dict[str, Res2NetConfig] = {
    "res2net_wbc_tiny": Res2NetConfig(
        stem_channels=16, stage_channels=(32, 64, 96, 128), depths=(1, 1, 1, 1), base_width=8
    ),
    "res2net_wbc_small": Res2NetConfig(),
    "res2net_wbc_base": Res2NetConfig(
        stem_channels=32, stage_channels=(64, 128, 256, 384), depths=(1, 2, 2, 1), base_width=12
    ),
}


def variant(name: str) -> Res2NetConfig:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Res2Net variant {name!r}; expected one of {sorted(VARIANTS)}") from None


__all__ = ["VARIANTS", "Bottle2neck", "Res2NetBackbone", "Res2NetConfig", "fold_batchnorm", "variant"]
