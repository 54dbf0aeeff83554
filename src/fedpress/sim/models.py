"""Models of the simulator, defined here (torchvision does not import beside this
torch build), sized for small inputs (1 x 28 x 28, 3 x 32 x 32, 1 x 8 x 8).

``mlp``
    flatten -> 200 -> 200 -> classes (ReLU).
``cnn``
    the small CNN of ``../shared/bench/make_fl_data.py``: 2 conv (32/64 channels,
    3x3, pad 1, each followed by ReLU and a 2x2 max-pool), FC -> 128 -> classes;
    421,642 parameters on 1 x 28 x 28 (same parameter names, so its state dicts
    load).
``resnet18``
    ResNet-18 (basic blocks 64-128-256-512, BatchNorm) with a 3x3 stem: stride 2
    on 28 x 28 (as ``make_fl_data.py``: 11,172,810 parameters), stride 1 on 32 x 32
    and smaller, no max-pool.
``alexnet``
    the 5-conv / 3-FC AlexNet shape at CIFAR scale (64-192-384-256-256 channels,
    3x3 kernels, three 2x2 max-pools (one on inputs below 16 x 16), FC 4096 ->
    4096 -> classes, dropout 0.5).
``mobilenetv2``
    MobileNetV2 (inverted residuals, width 1.0) with a stride-1 stem and the first
    two stride-2 stages at stride 1, as is usual for 32 x 32 inputs.

Needs PyTorch (``pip install 'fedpress[torch]'``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from ..errors import ConfigError

Shape = tuple[int, int, int]


class MLP(nn.Module):
    def __init__(self, shape: Shape, classes: int, hidden: int = 200) -> None:
        super().__init__()
        c, h, w = shape
        self.fc1 = nn.Linear(c * h * w, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.fc1(x.flatten(1)))
        return self.fc3(functional.relu(self.fc2(x)))


class CNN(nn.Module):
    def __init__(self, shape: Shape, classes: int) -> None:
        super().__init__()
        c, h, w = shape
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.max_pool2d(functional.relu(self.conv1(x)), 2)
        x = functional.max_pool2d(functional.relu(self.conv2(x)), 2)
        return self.fc2(functional.relu(self.fc1(x.flatten(1))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn1(self.conv1(x)))
        return functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, shape: Shape, classes: int) -> None:
        super().__init__()
        c, h, _ = shape
        self.conv1 = nn.Conv2d(c, 64, 3, 2 if h == 28 else 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                     BasicBlock(cout, cout, 1)))
            cin = cout
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(functional.adaptive_avg_pool2d(x, 1).flatten(1))


class AlexNet(nn.Module):
    def __init__(self, shape: Shape, classes: int) -> None:
        super().__init__()
        c, h, w = shape
        pool_after = {0, 1, 4} if min(h, w) >= 16 else {4}  # 8 x 8 inputs: one pool
        layers: list[nn.Module] = []
        cin = c
        for i, cout in enumerate((64, 192, 384, 256, 256)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        side_h, side_w = h >> len(pool_after), w >> len(pool_after)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * side_h * side_w, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(True)]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), nn.ReLU6(True),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    #: (expansion, channels, repeats, stride) of the standard network; the stem and
    #: the first two stride-2 stages run at stride 1 on small inputs
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 1), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, shape: Shape, classes: int) -> None:
        super().__init__()
        c = shape[0]
        layers: list[nn.Module] = [nn.Conv2d(c, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                   nn.ReLU6(True)]
        cin = 32
        for t, cout, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(x.flatten(1))


MODELS: dict[str, Callable[[Shape, int], nn.Module]] = {
    "mlp": MLP, "cnn": CNN, "resnet18": ResNet18, "alexnet": AlexNet,
    "mobilenetv2": MobileNetV2,
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None = None) -> nn.Module:
    """A freshly initialised model (with ``torch.manual_seed(seed)`` first if given)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input shape must be (channels, height, width), got {input_shape}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if name in ("cnn", "alexnet") and min(shape[1:]) < 8:
        raise ConfigError(f"model {name!r} needs inputs of at least 8 x 8, got {shape[1:]}")
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name](shape, num_classes)
