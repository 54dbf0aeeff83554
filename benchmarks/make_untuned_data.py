#!/usr/bin/env python3
"""FL tensors of a model no codec was tuned on, for ``bench_engine.py``.

FedAvg on a non-IID (Dirichlet, ``--alpha`` 0.3 label skew) split of
Fashion-MNIST over ``--clients`` clients, a VGG-style CNN with batch norm
trained with Adam, ``--rounds`` rounds of one local epoch. The data come from
``fedpress.sim.data.load_dataset("fashion-mnist")`` (the Debian package's IDX
files; nothing is downloaded). Model ``vggbn``::

    [conv3x3-BN-ReLU] x2 (32 ch), max-pool 2        28 -> 14
    [conv3x3-BN-ReLU] x2 (64 ch), max-pool 2        14 -> 7
    [conv3x3-BN-ReLU] x2 (128 ch), max-pool 2       7 -> 3
    flatten 1152 -> FC 256 -> BN1d -> ReLU -> dropout 0.3 -> FC 10

Writes, in the layout of ``../shared/bench/make_fl_data.py`` (all float32 npz):

``vggbn_global_rXX.npz``  global ``state_dict`` after round XX (r00 = initial)
``vggbn_update_rXX.npz``  client 0's update of round XX (local state minus the
                          global state it started from; every state entry)
``vggbn_grad_rXX.npz``    client 0's gradient of its last minibatch of round XX
                          (parameters only)
``vggbn_log.json``        per-round test accuracy and loss, timings, settings

Local optimizers are fresh Adam instances each round (FedAvg of weights only;
clients keep no optimizer state), lr ``--lr`` 1e-3, batch 64, drop_last.
Aggregation weights clients by their sample counts (the split is unbalanced);
``num_batches_tracked`` is taken from the largest client.

Usage (from the project root; ~4 min on 2 cores with the defaults)::

    python benchmarks/make_untuned_data.py --out .bench/data
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedpress.sim.data import load_dataset, partition

MODEL = "vggbn"
BATCH = 64
SEED = 20240


class VGGBN(nn.Module):
    """A small VGG-style network with batch norm for 1 x 28 x 28 inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(128 * 3 * 3, 256)
        self.bn_fc = nn.BatchNorm1d(256)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch N x 1 x 28 x 28."""
        x = self.features(x).flatten(1)
        return self.fc2(self.drop(F.relu(self.bn_fc(self.fc1(x)))))


def state_np(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as float32 numpy arrays (integer counters converted)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000,
             ) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy loss."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            out = model(x[i:i + bs])
            loss += F.cross_entropy(out, y[i:i + bs], reduction="sum").item()
            correct += int((out.argmax(1) == y[i:i + bs]).sum().item())
    model.train()
    return correct / len(x), loss / len(x)


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                gen: torch.Generator) -> tuple[float, dict[str, np.ndarray]]:
    """One epoch of Adam; the mean loss and the last minibatch's gradient."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    perm = torch.randperm(len(x), generator=gen)
    nb = max(1, len(x) // BATCH)
    tot = 0.0
    for b in range(nb):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        tot += loss.item()
    grad = {n: p.grad.detach().numpy().astype(np.float32).copy()
            for n, p in model.named_parameters() if p.grad is not None}
    return tot / nb, grad


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int],
           ) -> dict[str, torch.Tensor]:
    """Sample-weighted average of float entries; integer entries from the largest client."""
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    big = int(np.argmax(weights))
    avg: dict[str, torch.Tensor] = {}
    for k, v0 in states[0].items():
        if v0.dtype.is_floating_point:
            acc = torch.zeros_like(v0)
            for wi, s in zip(w, states):
                acc += float(wi) * s[k]
            avg[k] = acc
        else:
            avg[k] = states[big][k].clone()
    return avg


def main(argv: list[str] | None = None) -> int:
    """Train and write the npz files; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".bench/data")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.3, help="Dirichlet label-skew concentration")
    ap.add_argument("--subset", type=int, default=6000,
                    help="training samples drawn (seeded) before the split; 0 = all 60,000")
    ap.add_argument("--test-samples", type=int, default=2000,
                    help="test samples (seeded draw) for the per-round accuracy; 0 = all 10,000")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    os.makedirs(a.out, exist_ok=True)
    ds = load_dataset("fashion-mnist")
    rng = np.random.default_rng(SEED)
    keep = np.sort(rng.permutation(len(ds.y_train))[:a.subset]) if a.subset else \
        np.arange(len(ds.y_train))
    mean, std = 0.2860, 0.3530

    def prep(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((img.astype(np.float32) / 255.0 - mean) / std)

    xtr, ytr = prep(ds.x_train[keep]), torch.from_numpy(ds.y_train[keep])
    tkeep = np.sort(rng.permutation(len(ds.y_test))[:a.test_samples]) if a.test_samples else \
        np.arange(len(ds.y_test))
    xte, yte = prep(ds.x_test[tkeep]), torch.from_numpy(ds.y_test[tkeep])
    parts = partition(ds.y_train[keep], a.clients, "dirichlet", alpha=a.alpha, seed=SEED)
    sizes = [int(p.size) for p in parts]
    gmodel = VGGBN()
    nparams = sum(p.numel() for p in gmodel.parameters())
    print(f"[{MODEL}] params={nparams} samples={len(keep)} clients={sizes} "
          f"alpha={a.alpha} rounds={a.rounds}", flush=True)

    def save(name: str, d: dict[str, np.ndarray]) -> None:
        np.savez(os.path.join(a.out, f"{MODEL}_{name}.npz"), **d)  # type: ignore[arg-type]

    save("global_r00", state_np(gmodel))
    acc0, loss0 = evaluate(gmodel, xte, yte)
    log: dict[str, Any] = {
        "model": MODEL, "params": nparams, "train_samples": len(keep),
        "test_samples": len(tkeep), "clients": a.clients,
        "client_samples": sizes, "partition": f"dirichlet alpha={a.alpha}", "optimizer": "adam",
        "lr": a.lr, "batch": BATCH, "seed": SEED, "torch": torch.__version__,
        "threads": a.threads, "rounds": [{"round": 0, "test_acc": acc0, "test_loss": loss0}]}
    gens = [torch.Generator().manual_seed(SEED + 1 + c) for c in range(a.clients)]
    for r in range(1, a.rounds + 1):
        t0 = time.time()
        gstate = {k: v.clone() for k, v in gmodel.state_dict().items()}
        gnp = state_np(gmodel)
        states, losses = [], []
        for c in range(a.clients):
            local = VGGBN()
            local.load_state_dict(gstate)
            local.train()
            idx = torch.from_numpy(parts[c])
            loss, grad = local_train(local, xtr[idx], ytr[idx], a.lr, gens[c])
            losses.append(loss)
            states.append({k: v.detach().clone() for k, v in local.state_dict().items()})
            if c == 0:
                lnp = state_np(local)
                save(f"update_r{r:02d}", {k: (lnp[k] - gnp[k]).astype(np.float32) for k in lnp})
                save(f"grad_r{r:02d}", grad)
        gmodel.load_state_dict(fedavg(states, sizes))
        save(f"global_r{r:02d}", state_np(gmodel))
        acc, tloss = evaluate(gmodel, xte, yte)
        dt = time.time() - t0
        log["rounds"].append({"round": r, "test_acc": acc, "test_loss": tloss,
                              "train_loss_mean": float(np.mean(losses)), "round_s": round(dt, 1)})
        print(f"[{MODEL}] round {r:2d} acc={acc:.4f} test_loss={tloss:.4f} "
              f"train_loss={np.mean(losses):.4f} {dt:.0f}s", flush=True)
        with open(os.path.join(a.out, f"{MODEL}_log.json"), "w") as f:
            json.dump(log, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
