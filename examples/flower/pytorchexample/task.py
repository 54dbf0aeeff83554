"""pytorchexample: A Flower / PyTorch app.

Flower's PyTorch template with local data instead of downloads: Fashion-MNIST from
the Debian package ``dataset-fashion-mnist`` or scikit-learn's 8x8 digits, read by
fedpress's data loader (nothing is fetched at run time).
"""

from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedpress.sim.data import Dataset, load_dataset


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz'), for 1-channel
    images of any size from 8 x 8 (the same weights for Fashion-MNIST and digits)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.pool2 = nn.AdaptiveMaxPool2d(4)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@lru_cache(maxsize=1)
def _dataset(name: str) -> Dataset:
    """The dataset (read once per process)."""
    return load_dataset(name)


def _tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Images scaled to [-1, 1] (as the template's Normalize(0.5, 0.5)), labels."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    return TensorDataset(x, torch.from_numpy(labels))


def load_data(partition_id: int, num_partitions: int, batch_size: int,
              dataset: str) -> tuple[DataLoader, DataLoader]:
    """Load this node's partition of the training set (IID, seeded)."""
    ds = _dataset(dataset)
    order = np.random.default_rng(42).permutation(len(ds.y_train))
    partition = np.array_split(order, num_partitions)[partition_id]
    # Divide data on each node: 80% train, 20% test
    cut = int(0.8 * len(partition))
    train, test = partition[:cut], partition[cut:]
    trainloader = DataLoader(_tensors(ds.x_train[train], ds.y_train[train]),
                             batch_size=batch_size, shuffle=True)
    testloader = DataLoader(_tensors(ds.x_train[test], ds.y_train[test]),
                            batch_size=batch_size)
    return trainloader, testloader


def load_centralized_dataset(dataset: str) -> DataLoader:
    """Load test set and return dataloader."""
    ds = _dataset(dataset)
    return DataLoader(_tensors(ds.x_test, ds.y_test), batch_size=128)


def train(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float,
          device: torch.device) -> float:
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net: nn.Module, testloader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            images, labels = images.to(device), labels.to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
