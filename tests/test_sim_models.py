"""Simulator models: every one builds and runs on each small input shape, the CNN is the
reference network of make_fl_data.py (parameter count and names), seeds reproduce."""

from __future__ import annotations

import pytest

import fedpress

torch = pytest.importorskip("torch")
models = pytest.importorskip("fedpress.sim.models")


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_runs_on_small_inputs(name: str, shape: tuple[int, int, int]) -> None:
    model = models.build_model(name, shape, 10, seed=0).eval()
    with torch.inference_mode():
        out = model(torch.zeros((2, *shape)))
    assert out.shape == (2, 10)


def test_cnn_and_resnet18_match_the_reference_networks() -> None:
    cnn = models.build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in cnn.parameters()) == 421_642
    assert list(cnn.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight",
                                      "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
                                      "fc2.bias"]
    resnet = models.build_model("resnet18", (1, 28, 28), 10)
    assert sum(p.numel() for p in resnet.parameters()) == 11_172_810


def test_seed_reproduces_the_initial_weights() -> None:
    a = models.build_model("mlp", (1, 8, 8), 10, seed=3).state_dict()
    b = models.build_model("mlp", (1, 8, 8), 10, seed=3).state_dict()
    c = models.build_model("mlp", (1, 8, 8), 10, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


@pytest.mark.parametrize("args,match", [
    (("vgg", (1, 28, 28)), "choose one of mlp, cnn"),
    (("cnn", (28, 28)), "channels, height, width"),
    (("cnn", (1, 4, 4)), "at least 8 x 8"),
])
def test_bad_model_requests_are_config_errors(args: tuple, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        models.build_model(*args, 10)
