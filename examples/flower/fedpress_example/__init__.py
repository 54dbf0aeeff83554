"""fedpress in a Flower app: Fashion-MNIST CNN, FedAvg, FedSZ-compressed traffic."""
