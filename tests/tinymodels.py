"""Tiny models the tests build (importable as custom `tinymodels:factory` specs)."""

import torch
import torch.nn.functional as F
from torch import nn


def tiny_cnn():
    """A plain conv stack with odd kernels, strides, padding, dilation and pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, stride=1, padding=0),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class Residual(nn.Module):
    """A residual block with a functional ReLU and a strided 1x1 shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.short = nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(Residual(8, 8, 1), Residual(8, 16, 2), Residual(16, 16, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


def tiny_resnet():
    return TinyResNet()


def raising_factory():
    raise RuntimeError("boom")


def not_a_module():
    return 42


def _circuit_pair(kernel: int) -> nn.Sequential:
    """conv(3->40, 1x1, every channel the same: mean RGB + 2) -> ReLU -> conv(40->6, k x k, no padding, no bias).

    Every channel of the ReLU output is the same positive map, so unit u's strongest inputs are its weights
    W[u, v] (summed over the kernel) times one positive number: the known answer of the circuits tests.
    Unit 5's weights sum below 0: it never fires."""
    g = torch.Generator().manual_seed(7)
    first = nn.Conv2d(3, 40, 1)
    second = nn.Conv2d(40, 6, kernel, bias=False)
    with torch.no_grad():
        first.weight.fill_(1.0 / 3.0)
        first.bias.fill_(2.0)
        w = torch.randn(6, 40, kernel, kernel, generator=g)
        sums = w.sum(dim=(2, 3))
        for u in range(6):  # units 0..4 fire (positive weight sum), unit 5 never does
            want = 1.0 if u < 5 else -1.0
            if sums[u].sum() * want < 0:
                w[u] = -w[u]
        second.weight.copy_(w)
    return nn.Sequential(first, nn.ReLU(), second)


def circuit_1x1():
    return _circuit_pair(1)


def circuit_3x3():
    return _circuit_pair(3)


class TwoBranch(nn.Module):
    """Two parallel branches from the stem: `left` is not on the path to `right`."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        return self.left(s) + self.right(s)


def two_branch():
    return TwoBranch()


def ablation_net():
    """conv -> ReLU -> conv -> ReLU -> conv, nonlinear between layer 1 and layer 4 (the ablation test), with a
    planted circuit on top of the random weights: unit u of layer 4 reads mostly channel u of layer 3, which
    reads mostly channels u, u+2 and u+4 of layer 1. Near-ties between weak inputs would make any top-3
    comparison a coin toss; the planted ones are clear, and ReLU and max still bend the path."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        for c in range(8):
            for v in (c, (c + 2) % 8, (c + 4) % 8):
                net[2].weight[c, v] = net[2].weight[c, v].abs() * 4
        for u in range(4):
            net[4].weight[u, u] = net[4].weight[u, u].abs() * 4
    return net


def _channels_cnn(cin: int, seed: int) -> nn.Sequential:
    """A small conv stack on `cin` input channels with fixed random weights (a factory must build the same model
    every time, so the artifact's fingerprint holds)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(cin, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )


def gray_cnn():
    """A 1-channel model, like an X-ray or CT classifier."""
    return _channels_cnn(1, 1)


def four_band():
    """A 4-band model (RGB + near-infrared), like a satellite classifier."""
    return _channels_cnn(4, 4)


def five_channel():
    """A 5-channel model, like a cell-painting classifier."""
    return _channels_cnn(5, 5)


def cifar_cnn():
    """A 3-channel model for 32 px inputs (CIFAR-like)."""
    return _channels_cnn(3, 32)


EDGE_CHANNEL = 2  # the channel `edge_detector` reads


def edge_detector():
    """Known answer: of 5 input channels, the first convolution reads only channel EDGE_CHANNEL, through a hand-set
    vertical-edge (Sobel-x) kernel; unit 0 of `conv` responds to vertical edges in that channel and nothing else."""
    conv = nn.Conv2d(5, 2, 3, padding=0, bias=False)  # valid: no zero-padding edge at the border
    with torch.no_grad():
        conv.weight.zero_()
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        conv.weight[0, EDGE_CHANNEL] = sobel
        conv.weight[1, EDGE_CHANNEL] = -sobel
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    return model


def decisive_net():
    """Known answer for effects: unit 0 of `relu` reads the red channel and alone drives class 0's logit (x10);
    unit 1 reads green and drives class 1; units 2-3 (blue, gray) drive nothing."""
    mix = nn.Conv2d(3, 4, 1, bias=False)
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        mix.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3]]).view(4, 3, 1, 1))
        head.weight.copy_(torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0]]))
    model = nn.Sequential()
    for name, m in (("mix", mix), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
                    ("head", head)):
        model.add_module(name, m)
    return model


def inplace_cnn():
    """tiny_cnn's shape with in-place ReLUs right after the convolutions whose outputs effects read."""
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
