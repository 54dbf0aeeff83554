"""The federated-learning simulator: datasets and partitions (``data``); more to come."""
