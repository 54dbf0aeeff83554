"""fedpress as an APPFL compressor, against the real ``appfl`` package: the name
resolved by APPFL's own loader once registered, round trips of torch state dicts
(nested and batched too), APPFL's configuration keys, refusals (mirrored-state plans,
non-tensor values, pickles, corrupted frames, other codecs, other shapes) and, where
APPFL's agents import, a serial run of ServerAgent and two ClientAgents."""

from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

pytest.importorskip("appfl")
pytest.importorskip("appfl.compressor")  # it imports zstd, blosc, omegaconf and torch
torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

import appfl.compressor  # noqa: E402
from appfl.compressor.base_compressor import BaseCompressor  # noqa: E402
from appfl.misc.utils import get_appfl_compressor  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import fedpress  # noqa: E402
import fedpress.appfl  # noqa: E402
from fedpress.appfl import LAYOUT_KEY, NAME, FedpressCompressor, register  # noqa: E402
from fedpress.frame import unpack  # noqa: E402

#: APPFL's documented compressor configuration, with fedpress's name
CONFIG = {"enable_compression": True, "lossy_compressor": NAME, "lossless_compressor": "zstd",
          "error_bounding_mode": "REL", "error_bound": 1e-3, "param_cutoff": 1024}


def _model() -> torch.nn.Module:
    """APPFL's stand-alone example model, with a batch norm (buffers, an int64 scalar)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 20, 5), torch.nn.ReLU(),
                               torch.nn.Conv2d(20, 64, 5), torch.nn.BatchNorm2d(64))


def _codecs(blob: bytes) -> dict[str, str]:
    """Tensor name -> codec id, read from the frame."""
    frame = unpack(blob)
    return {r.name: frame.codecs[r.codec_index]["id"] for r in frame.records}


@pytest.fixture
def unregistered(monkeypatch):
    """appfl.compressor as installed: without fedpress's class (restored afterwards)."""
    monkeypatch.delattr(appfl.compressor, NAME, raising=False)
    monkeypatch.setattr(appfl.compressor, "__all__", list(appfl.compressor.__all__))
    return appfl.compressor


def test_register_makes_appfls_loader_find_the_class(unregistered) -> None:
    """APPFL resolves ``lossy_compressor`` with getattr on appfl.compressor (no module
    paths): unknown before register(), fedpress's class after; register is idempotent."""
    cfg = OmegaConf.create(CONFIG)
    with pytest.raises(ValueError, match=f"Invalid compressor name: {NAME}"):
        get_appfl_compressor(NAME, cfg)
    assert register() is FedpressCompressor
    register()
    assert unregistered.__all__.count(NAME) == 1
    compressor = get_appfl_compressor(NAME, cfg)
    assert type(compressor) is FedpressCompressor and isinstance(compressor, BaseCompressor)


def test_a_state_dict_round_trips_as_one_fedpress_frame() -> None:
    """APPFL's stand-alone usage: bytes that are one fedpress frame (no pickle), the
    partition APPFL's SZ compressors use ("weight" tensors over param_cutoff lossy,
    the rest lossless), torch tensors back in the model's order and dtypes."""
    model = _model()
    sd = model.state_dict()
    c = FedpressCompressor(OmegaConf.create(CONFIG))
    blob = c.compress_model(sd)
    assert isinstance(blob, bytes) and blob[:4] == b"\x89FPZ"
    assert set(fedpress.decode_update(blob)) == set(sd)  # a plain fedpress update frame
    assert _codecs(blob) == {k: "fpz" if k == "2.weight" else "zstd" for k in sd}
    assert len(blob) < sum(v.numel() * v.element_size() for v in sd.values()) / 3
    out = c.decompress_model(blob, model)
    assert isinstance(out, OrderedDict) and list(out) == list(sd)
    for k, v in sd.items():
        assert isinstance(out[k], torch.Tensor) and out[k].dtype == v.dtype
        assert out[k].shape == v.shape
        if k == "2.weight":
            eb = 1e-3 * float(v.max() - v.min())
            assert 0 < float((out[k] - v).abs().max()) <= eb
        else:
            assert torch.equal(out[k], v)


@pytest.mark.parametrize("appfl_name, codec", [("zstd", "zstd"), ("gzip", "gzip"),
                                               ("zlib", "zlib"), ("lzma", "xz"),
                                               ("blosc", "blosc-lz"), ("lz4", "lz4")])
def test_appfls_lossless_names_map_to_fedpress_codecs(appfl_name: str, codec: str) -> None:
    if codec.startswith("blosc"):
        pytest.importorskip("blosc2")
    if codec == "lz4":
        pytest.importorskip("lz4")
    c = FedpressCompressor({**CONFIG, "lossless_compressor": appfl_name})
    assert _codecs(c.compress_model(_model().state_dict()))["2.bias"] == codec


def test_fedpress_keys_and_appfl_keys() -> None:
    """fedpress's keys (plan and its options, eb, mode) win over APPFL's shared ones;
    ABS bounds every value; YAML's 1e-3 (a string to PyYAML) is a number here."""
    model = _model()
    sd = model.state_dict()
    c = FedpressCompressor({**CONFIG, "error_bounding_mode": "ABS", "error_bound": 1e-4})
    assert (c.mode, c.eb) == ("abs", 1e-4)
    out = c.decompress_model(c.compress_model(sd), model)
    assert float((out["2.weight"] - sd["2.weight"]).abs().max()) <= 1e-4
    c = FedpressCompressor({**CONFIG, "plan": "fedsz(lossy=szx, threshold=100)", "eb": 0.01,
                            "mode": "rel", "plan_options": {"lossless": "zlib"}})
    assert (c.mode, c.eb) == ("rel", 0.01)
    codecs = _codecs(c.compress_model(sd))
    assert codecs["2.weight"] == codecs["0.weight"] == "szx"  # 500 values > threshold 100
    assert codecs["2.bias"] == "zlib"
    c = FedpressCompressor(yaml.safe_load("error_bound: 1e-3\nplan: szx(eb=0.02)\n"))
    assert c.eb == 0.02 and c.plan == "szx"
    c = FedpressCompressor(yaml.safe_load("error_bound: 1e-3\n"))
    assert c.eb == 1e-3 and c.plan == "fedsz"


@pytest.mark.parametrize("config, match", [
    ({"error_bounding_mode": "PSNR"}, "PSNR.*no fedpress equivalent"),
    ({"mode": "pw_rel"}, "mode must be 'abs' or 'rel'"),
    ({"error_bound": -1}, "finite number > 0"),
    ({"error_bound": "tight"}, "must be a number"),
    ({"eb": 0.1, "plan": "fpz(eb=0.2)"}, "eb is given twice"),
    ({"plan": "gaeb"}, "'gaeb' keeps state that both ends mirror"),
    ({"plan": "hgc(density=0.1)"}, "'hgc' keeps state that both ends mirror"),
    ({"plan": "fpz(send=update)"}, "'send' is a setting of fedpress's Flower links"),
    ({"plan": "fedsz(reference=true)"}, "'reference' is a setting"),
    ({"plan": "no-such-codec"}, "no-such-codec"),
    ({"plan": 3}, "plan is a fedpress plan spec"),
    ({"plan_options": "lossy=sz3"}, "plan_options is a mapping"),
    ({"lossless_compressor": 3}, "lossless_compressor is a name"),
])
def test_bad_configurations_are_refused_with_the_key(config: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        FedpressCompressor({**CONFIG, **config})


def test_nested_and_batched_models_keep_their_layout_without_pickle() -> None:
    """APPFL's compressors take nested models and batches; here their layout travels
    in the frame's JSON metadata, and the decoder checks it against the frame."""
    model = _model()
    sd = model.state_dict()
    c = FedpressCompressor(CONFIG)
    nested = {"primal": sd, "dual": {k: v * 2 for k, v in sd.items()}}
    blob = c.compress_model(nested)
    assert unpack(blob).meta[LAYOUT_KEY]["batch"] is None
    out = c.decompress_model(blob, model)
    assert list(out) == ["primal", "dual"] and list(out["dual"]) == list(sd)
    assert torch.equal(out["dual"]["2.bias"], sd["2.bias"] * 2)
    assert _codecs(blob)["dual/2.weight"] == "fpz"  # the partition still sees "weight"
    batch = [sd, {k: v + 1 for k, v in sd.items()}]
    out = c.decompress_model(c.compress_model(batch, batched=True), model, batched=True)
    assert isinstance(out, list) and len(out) == 2
    assert torch.equal(out[1]["0.bias"], sd["0.bias"] + 1)
    out = c.decompress_model(c.compress_model({"a": sd, "b": sd}, batched=True), None,
                             batched=True)
    assert list(out) == ["a", "b"] and list(out["b"]) == list(sd)
    with pytest.raises(fedpress.FormatError, match="holds one model, batched=True"):
        c.decompress_model(c.compress_model(sd), model, batched=True)
    with pytest.raises(fedpress.FormatError, match="holds a batch of models, batched=False"):
        c.decompress_model(c.compress_model(batch, batched=True), model)
    # a crafted layout that does not match the frame's tensors
    enc = fedpress.UpdateEncoder("zstd")
    bad = enc.encode({"a/w": np.ones(3, np.float32)},
                     {LAYOUT_KEY: {"batch": None, "paths": [["b", "w"]]}})
    with pytest.raises(fedpress.FormatError, match="paths do not match"):
        c.decompress_model(bad)


def test_numpy_samples_get_numpy_arrays_back() -> None:
    sd = {"fc.weight": np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32),
          "fc.bias": np.zeros(40, np.float32)}
    c = FedpressCompressor(CONFIG)
    out = c.decompress_model(c.compress_model(sd), sd)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert np.abs(out["fc.weight"] - sd["fc.weight"]).max() <= 1e-3 * np.ptp(sd["fc.weight"])


def test_values_other_than_tensors_are_refused_by_key() -> None:
    c = FedpressCompressor(CONFIG)
    sd = _model().state_dict()
    with pytest.raises(fedpress.ConfigError, match="'meta/step' holds a int"):
        c.compress_model({**sd, "meta": {"step": 3}})
    with pytest.raises(fedpress.ConfigError, match="batched=True takes a list or a mapping"):
        c.compress_model(sd["0.bias"], batched=True)
    with pytest.raises(fedpress.ConfigError, match="two tensors are named 'x/y'"):
        c.compress_model({"x/y": sd["0.bias"], "x": {"y": sd["0.bias"]}})


def test_the_server_refuses_pickles_corruption_other_codecs_and_other_shapes() -> None:
    """What reaches decompress_model comes from a client: APPFL's own compressors'
    pickles are not unpickled, a corrupted frame fails its checksum, a frame naming a
    codec outside the plan is refused before decoding, and so is one whose tensors
    differ from the model's."""
    model = _model()
    sd = model.state_dict()
    c = FedpressCompressor(CONFIG)
    with pytest.raises(fedpress.FormatError):
        c.decompress_model(pickle.dumps({"2.weight": b"\x00" * 8}), model)
    blob = bytearray(c.compress_model(sd))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(fedpress.FormatError, match="checksum"):
        c.decompress_model(bytes(blob), model)
    other = fedpress.encode_update(sd, plan="fedsz", lossy="szx")
    with pytest.raises(fedpress.FormatError, match="'szx' is not accepted"):
        c.decompress_model(other, model)
    small = dict(sd)
    small["2.weight"] = sd["2.weight"][:32]
    with pytest.raises(fedpress.FormatError, match=r"'2.weight' of shape \(32, 20, 5, 5\)"):
        c.decompress_model(c.compress_model(small), model)
    with pytest.raises(fedpress.FormatError, match="missing"):
        c.decompress_model(c.compress_model({k: v for k, v in sd.items() if k != "0.bias"}),
                           model)
    with pytest.raises(fedpress.FormatError, match="expected the bytes"):
        c.decompress_model(sd, model)  # type: ignore[arg-type]


def test_a_sender_state_plan_carries_its_state_across_rounds() -> None:
    """ef:topk keeps its residual in the client's compressor (APPFL makes one per client
    agent): the second round sends what the first left out; the server decodes each
    frame without state."""
    sd = {"fc.weight": torch.randn(64, 64, generator=torch.Generator().manual_seed(1))}
    client = FedpressCompressor({**CONFIG, "plan": "ef:topk(ratio=0.05)", "param_cutoff": 10})
    server = FedpressCompressor({**CONFIG, "plan": "ef:topk(ratio=0.05)", "param_cutoff": 10})
    first = server.decompress_model(client.compress_model(sd))["fc.weight"]
    second = server.decompress_model(client.compress_model(sd))["fc.weight"]
    assert int((first != 0).sum()) == int((second != 0).sum()) == 205  # ceil(0.05 * 4096)
    assert not torch.equal(first, second)  # the residual came through
    fresh = FedpressCompressor({**CONFIG, "plan": "ef:topk(ratio=0.05)", "param_cutoff": 10})
    assert torch.equal(server.decompress_model(fresh.compress_model(sd))["fc.weight"], first)


MODEL_FILE = """\
import fedpress.appfl
fedpress.appfl.register()  # APPFL loads this file before it builds the compressor

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.bn = torch.nn.BatchNorm1d(64)
        self.fc2 = torch.nn.Linear(64, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))
"""

DATA_FILE = """\
import torch


def get_data(client_id=0):
    g = torch.Generator().manual_seed(client_id)
    x = torch.randn(64, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    return data, data
"""

METRIC_FILE = """\
import numpy as np


def accuracy(y_true, y_pred):
    return 100 * float(np.mean(y_pred.argmax(axis=1) == y_true))
"""


def _agents_module(monkeypatch) -> types.ModuleType:
    """appfl.agent, or a skip where its imports are missing (wandb, opacus, ... are not
    in fedpress's environment). piq (image-quality metrics of APPFL's data-readiness
    report, unused here) needs torchvision; where that does not import against this
    torch, an empty stand-in takes its place."""
    for name in ("wandb", "opacus", "colorama", "seaborn", "sklearn", "matplotlib"):
        pytest.importorskip(name)
    try:
        import piq  # noqa: F401
    except Exception:  # torchvision built for another torch raises RuntimeError
        monkeypatch.setitem(sys.modules, "piq", types.ModuleType("piq"))
    return pytest.importorskip("appfl.agent")


def test_appfls_agents_run_rounds_through_fedpress(tmp_path, monkeypatch,
                                                   unregistered) -> None:
    """APPFL's ServerAgent and two ClientAgents (VanillaTrainer, SyncScheduler,
    FedAvgAggregator), the compressor named in the YAML-style configuration and
    registered by the model file: every upload is a fedpress frame, the server decodes
    it with the model as sample, and the global model is the mean of what it decoded."""
    agents = _agents_module(monkeypatch)
    from appfl.config import ClientAgentConfig, ServerAgentConfig

    for name, text in (("model.py", MODEL_FILE), ("data.py", DATA_FILE),
                       ("metric.py", METRIC_FILE)):
        (tmp_path / name).write_text(text)
    out = str(tmp_path / "out")
    server = agents.ServerAgent(server_agent_config=ServerAgentConfig(
        client_configs=OmegaConf.create({
            "train_configs": {"trainer": "VanillaTrainer", "mode": "step",
                              "num_local_steps": 2, "optim": "SGD", "optim_args": {"lr": 0.1},
                              "loss_fn": "CrossEntropyLoss", "do_validation": False,
                              "metric_path": str(tmp_path / "metric.py"),
                              "metric_name": "accuracy", "train_batch_size": 16,
                              "optimize_memory": False},  # (gc.collect() calls: slow)
            "model_configs": {"model_path": str(tmp_path / "model.py"), "model_name": "Net"},
            "comm_configs": {"compressor_configs": {**CONFIG, "param_cutoff": 100,
                                                    "plan": "fedsz"}}}),
        server_configs=OmegaConf.create({
            "num_clients": 2, "scheduler": "SyncScheduler",
            "scheduler_kwargs": {"same_init_model": True, "optimize_memory": False},
            "aggregator": "FedAvgAggregator",
            "aggregator_kwargs": {"client_weights_mode": "equal", "optimize_memory": False},
            "device": "cpu",
            "num_global_epochs": 2, "logging_output_dirname": out,
            "logging_output_filename": "result", "optimize_memory": False})))
    assert type(server.compressor) is FedpressCompressor  # registered by the model file
    clients = []
    for i in range(2):
        cfg = ClientAgentConfig(
            train_configs=OmegaConf.create({"device": "cpu", "logging_output_dirname": out,
                                            "logging_output_filename": "result"}),
            data_configs=OmegaConf.create({"dataset_path": str(tmp_path / "data.py"),
                                           "dataset_name": "get_data",
                                           "dataset_kwargs": {"client_id": i}}))
        cfg.client_id, cfg.optimize_memory = f"client{i}", False
        clients.append(agents.ClientAgent(client_agent_config=cfg))
    for client in clients:
        client.load_config(server.get_client_configs())
        client.load_parameters(server.get_parameters(serial_run=True))
    rounds = 0
    while not server.training_finished():
        uploads, futures = [], []
        for client in clients:
            client.train()
            blob = client.get_parameters()
            blob = blob[0] if isinstance(blob, tuple) else blob
            assert isinstance(blob, bytes) and blob[:4] == b"\x89FPZ"
            uploads.append(fedpress.decode_update(blob))
            futures.append(server.global_update(client_id=client.get_id(), local_model=blob,
                                                blocking=False))
        models = [f.result() for f in futures]
        models = [m[0] if isinstance(m, tuple) else m for m in models]
        for client, model in zip(clients, models):
            client.load_parameters(model)
        rounds += 1
        for k, v in models[0].items():
            if v.dtype.is_floating_point:
                mean = (uploads[0][k].astype(np.float64) + uploads[1][k]) / 2
                np.testing.assert_allclose(v.numpy(), mean, rtol=1e-5, atol=1e-6)
    assert rounds == 2
    assert isinstance(clients[0].compressor, FedpressCompressor)
