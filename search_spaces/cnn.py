"""A small residual CNN for small images (the 8 x 8 digits that ship with scikit-learn) and its
default search space: one group per convolution and for the classifier, or with
`grouping="block"` `blocks` groups of output channels per convolution, where `prune` adds the
0-bit candidate (a block of channels can be removed; never every block of a layer). BatchNorm
parameters and biases stay FP32.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nas_mpq.search.space import GroupRule, SearchSpace, check_candidates, check_grouping

from . import register_search_space

DEFAULT_CANDIDATES = [1, 2, 4, 8, 32]
GROUPINGS = ("tensor", "block")


def cnn_space(candidates: list[int] | None = None, grouping: str = "tensor", blocks: int | None = None,
              prune: bool = False, method: str = "uniform", per_channel: bool = False,
              activation_candidates: list[int] | None = None) -> SearchSpace:
    """`grouping="block"` splits every convolution's output channels into `blocks` groups."""
    check_grouping("cnn", grouping, GROUPINGS)
    cands = check_candidates(candidates if candidates is not None else DEFAULT_CANDIDATES)
    rules: list[GroupRule] = []
    if grouping == "block":
        if blocks is None:
            raise ValueError("grouping 'block' needs blocks = the number of output-channel blocks per layer")
        rules = [GroupRule("*conv*", grouping="block", blocks=blocks,
                           candidates=sorted(set(cands) | {0}) if prune else cands)]
    elif prune:
        raise ValueError("prune needs grouping 'block' (a whole layer is never pruned)")
    return SearchSpace("cnn", cands, rules=rules, method=method, per_channel=per_channel,
                       activation_candidates=activation_candidates)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 conv when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


@register_search_space("cnn", cnn_space, example_args={"num_classes": 10, "width": 4, "image_size": 8},
                       example_space={"grouping": "block", "blocks": 2, "prune": True, "per_channel": True,
                                      "activation_candidates": [2, 4, 32]})
class ResNetCNN(nn.Module):
    """Stem conv -> residual stages (widths w, 2w, 4w; the later ones stride 2) -> global average
    pool -> linear classifier.

    Example:
        >>> net = ResNetCNN(num_classes=10, width=16)
        >>> logits = net(torch.randn(32, 1, 8, 8))
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 stages: int = 3, image_size: int = 8) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or stages < 1:
            raise ValueError(f"need num_classes >= 2, width >= 1, stages >= 1; got {num_classes}, {width}, {stages}")
        self.in_channels, self.image_size = in_channels, image_size
        self.stem_conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        widths = [width * 2 ** i for i in range(stages)]
        self.stages = nn.Sequential(*(ResidualBlock(widths[max(i - 1, 0)], w, 1 if i == 0 else 2)
                                      for i, w in enumerate(widths)))
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> logits (B, num_classes)."""
        x = self.stages(F.relu(self.stem_bn(self.stem_conv(images))))
        return self.classifier(x.mean(dim=(2, 3)))

    def example_input(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, self.in_channels, self.image_size, self.image_size, generator=g),)
