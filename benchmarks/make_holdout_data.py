#!/usr/bin/env python3
"""FL tensors from models and optimisers that fpz was not tuned on (a hold-out set).

``../shared/bench/make_fl_data.py`` gives the project's CNN and ResNet-18 tensors
(SGD, IID). To check the engine on streams it has never seen, this script trains
two other models with FedAvg on Fashion-MNIST, 4 clients, a label-skewed
(non-IID, Dirichlet 0.3) split of a fixed subset:

``vggbn``
    a VGG-style net with BatchNorm (conv 32-M-64-M-128-128-M-256-256-M, FC
    256-256-10), trained with **Adam** (lr 1e-3) on each client;
``resnarrow``
    a narrow CIFAR-style ResNet (3 stages of 2 BasicBlocks, 16/32/64 channels),
    SGD lr 0.05 momentum 0.9.

Per model and round it writes ``{model}_global_rNN.npz`` (after aggregation),
``{model}_update_rNN.npz`` (client 0's local minus global) and
``{model}_grad_rNN.npz`` (client 0's last-minibatch gradient), as
``make_fl_data.py`` does, into ``--out`` (default ``.bench/holdout``)::

    nohup nice python benchmarks/make_holdout_data.py > .bench/holdout.log 2>&1 &
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "make_fl_data", os.path.join(HERE, os.pardir, os.pardir, "shared", "bench", "make_fl_data.py"))
assert _spec is not None and _spec.loader is not None
fl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fl)

CLIENTS, BATCH, SEED = 4, 32, 4321


class VggBn(nn.Module):
    CFG = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M")

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True),
                                        nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNarrow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
            blocks.append(Block(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


MODELS = {"vggbn": (VggBn, "adam"), "resnarrow": (ResNarrow, "sgd")}


def split(y: torch.Tensor, rng: np.random.Generator, alpha: float = 0.3) -> list[np.ndarray]:
    """Dirichlet(alpha) label skew over the clients."""
    parts: list[list[int]] = [[] for _ in range(CLIENTS)]
    yn = y.numpy()
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(yn == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * CLIENTS)) * idx.size).astype(int)[:-1]
        for k, part in enumerate(np.split(idx, cuts)):
            parts[k] += part.tolist()
    return [rng.permutation(np.array(p)) for p in parts]


def local(model: nn.Module, opt_kind: str, x: torch.Tensor, y: torch.Tensor,
          gen: torch.Generator) -> dict[str, np.ndarray]:
    opt: torch.optim.Optimizer
    if opt_kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    perm = torch.randperm(len(x), generator=gen)
    for b in range(len(x) // BATCH):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {n: p.grad.detach().numpy().astype(np.float32).copy()
            for n, p in model.named_parameters()}


def run(name: str, xtr: torch.Tensor, ytr: torch.Tensor, rounds: int, subset: int,
        out: str) -> None:
    cls, opt_kind = MODELS[name]
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    pick = rng.permutation(len(xtr))[:subset]
    xs, ys = xtr[pick], ytr[pick]
    shards = split(ys, rng)
    gmodel = cls()
    fl.save_npz(os.path.join(out, f"{name}_global_r00.npz"), fl.state_np(gmodel))
    gens = [torch.Generator().manual_seed(SEED + 1 + c) for c in range(CLIENTS)]
    for r in range(1, rounds + 1):
        t0 = time.time()
        gstate = {k: v.clone() for k, v in gmodel.state_dict().items()}
        gnp = fl.state_np(gmodel)
        states = []
        for c in range(CLIENTS):
            m = cls()
            m.load_state_dict(gstate)
            m.train()
            idx = torch.from_numpy(shards[c])
            grad = local(m, opt_kind, xs[idx], ys[idx], gens[c])
            states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
            if c == 0:
                lnp = fl.state_np(m)
                fl.save_npz(os.path.join(out, f"{name}_update_r{r:02d}.npz"),
                            {k: (lnp[k] - gnp[k]).astype(np.float32) for k in lnp})
                fl.save_npz(os.path.join(out, f"{name}_grad_r{r:02d}.npz"), grad)
        gmodel.load_state_dict(fl.fedavg(states))
        fl.save_npz(os.path.join(out, f"{name}_global_r{r:02d}.npz"), fl.state_np(gmodel))
        print(f"[{name}] round {r} {time.time() - t0:.0f}s shards {[len(s) for s in shards]}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vggbn,resnarrow")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--subset", type=int, default=8000)
    ap.add_argument("--out", default=".bench/holdout")
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    xtr, ytr, _, _ = fl.load_fmnist()
    for name in a.models.split(","):
        run(name, xtr, ytr, a.rounds, a.subset, a.out)


if __name__ == "__main__":
    main()
