"""The Flower example (``examples/flower/``) against the diff that docs/flower.md shows.

Taking the documented lines out of the example must leave Flower's PyTorch app without
any fedpress integration, and that app must run; the example with a raw link must then
train exactly as it does, and with a plan it must compress. The ``fedpress-*`` keys of
the example's ``pyproject.toml`` are the documented ones, all of them. Everything runs
in this process (``InlineGrid``) on scikit-learn's digits.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

import torch
from flwr.app import Context, RecordDict

from fedpress.flower.inline import InlineGrid
from fedpress.flower.strategy import RUN_CONFIG_KEYS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"
PACKAGE = "pytorchexample"
DOC = ROOT / "docs" / "flower.md"
SECTION = "## Add fedpress to a Flower app"
#: a diff's context line that stands for lines left out
GAP = "# ..."
#: what the fedpress integration looks like; none of it may remain in the plain app
MARKS = ("fedpress.flower", "compression_mod", "CompressedStrategy", "fedpress-")
#: a quick run: digits, 2 nodes, 2 rounds
QUICK = {"dataset": "digits", "num-server-rounds": 2, "batch-size": 16,
         "learning-rate": 0.05}


def documented() -> dict[str, tuple[str, str]]:
    """File (relative to the app) -> (language, block) of the blocks in the docs'
    section on adding fedpress, each after a paragraph that starts with its file's name."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"docs/flower.md has no {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    # a paragraph that starts with the file's name (up to a blank line), then the block
    found = re.findall(r"^`([\w/]+\.(?:py|toml))`:(?:[^\n]|\n(?!\n))*\n\n"
                       r"```(diff|toml)\n([\s\S]*?)\n```", section, flags=re.M)
    return {path: (lang, body) for path, lang, body in found}


def hunks(diff: str) -> list[tuple[list[str], list[str]]]:
    """(old lines, new lines) of each run of the diff between gap lines."""
    out: list[tuple[list[str], list[str]]] = [([], [])]
    for line in diff.split("\n"):
        mark, text = line[:1], line[1:]
        if mark in (" ", "") and text.strip() == GAP:
            out.append(([], []))
            continue
        assert mark in (" ", "", "+", "-"), f"not a diff line: {line!r}"
        if mark != "+":
            out[-1][0].append(text)
        if mark != "-":
            out[-1][1].append(text)
    return [h for h in out if h != ([], [])]


def revert(source: str, diff: str) -> str:
    """``source`` with each hunk's new lines (found in order, each after the one
    before) replaced by its old lines; fails if a hunk is not there."""
    lines, out, at = source.split("\n"), [], 0
    for old, new in hunks(diff):
        i = next((i for i in range(at, len(lines) - len(new) + 1)
                  if lines[i:i + len(new)] == new), None)
        assert i is not None, "not in the example (in this order):\n" + "\n".join(new)
        out += [*lines[at:i], *old]
        at = i + len(new)
    return "\n".join(out + lines[at:])


def example_config() -> dict:
    with open(EXAMPLE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_the_docs_show_every_change_to_the_template() -> None:
    """The diffs name the client and server apps, and apply: reverting them leaves no
    trace of fedpress in the app's code."""
    changes = documented()
    assert set(changes) == {f"{PACKAGE}/client_app.py", f"{PACKAGE}/server_app.py",
                            "pyproject.toml"}
    for path in EXAMPLE.joinpath(PACKAGE).glob("*.py"):
        source = path.read_text(encoding="utf-8")
        key = f"{PACKAGE}/{path.name}"
        if key in changes:
            lang, diff = changes[key]
            assert lang == "diff"
            plain = revert(source, diff)
            assert plain != source
            compile(plain, f"{key} (reverted)", "exec")
        else:
            plain = source
        left = [m for m in MARKS if m in plain]
        assert not left, f"{key} without the documented lines still has {left}"


def test_the_docs_show_the_pyproject_lines() -> None:
    """The dependency and every fedpress-* key, with the example's values; the keys are
    the ones CompressedStrategy.from_run_config reads, all declared (Flower's
    --run-config only overrides declared keys) and all in the docs' table."""
    lang, block = documented()["pyproject.toml"]
    assert lang == "toml"
    doc, app = tomllib.loads(block), example_config()
    assert doc["project"]["dependencies"] == ["fedpress[flower]"]
    assert "fedpress[flower]" in app["project"]["dependencies"]
    config = app["tool"]["flwr"]["app"]["config"]
    ours = {k: v for k, v in config.items() if k.startswith("fedpress-")}
    assert ours == doc["tool"]["flwr"]["app"]["config"]
    missing = sorted(set(RUN_CONFIG_KEYS) - set(ours))
    assert not missing, (f"from_run_config reads {missing}: declare them in the example's "
                         "[tool.flwr.app.config] and in the docs' pyproject block, so that "
                         "--run-config can set them")
    assert not set(ours) - set(RUN_CONFIG_KEYS), "keys from_run_config does not read"
    table = DOC.read_text(encoding="utf-8").split("## Switch plans without code", 1)[1]
    for key in RUN_CONFIG_KEYS:
        assert f"| `{key}`" in table or f", `{key}`" in table, (
            f"{key} (read by from_run_config) is not in docs/flower.md's table of keys")


# -- the apps, in process ---------------------------------------------------------------


@pytest.fixture
def load_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``load_app(plain)``: the ServerApp and ClientApp modules of a copy of the example,
    with the documented lines taken out if ``plain``."""
    def forget() -> None:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]

    def load(plain: bool) -> tuple[ModuleType, ModuleType]:
        forget()
        root = tmp_path / ("plain" if plain else "example")
        shutil.copytree(EXAMPLE / PACKAGE, root / PACKAGE,
                        ignore=shutil.ignore_patterns("__pycache__"))
        if plain:
            for key, (lang, diff) in documented().items():
                if lang == "diff":
                    path = root / key
                    path.write_text(revert(path.read_text(encoding="utf-8"), diff))
        monkeypatch.syspath_prepend(str(root))
        server = importlib.import_module(f"{PACKAGE}.server_app")
        client = importlib.import_module(f"{PACKAGE}.client_app")
        assert Path(server.__file__).is_relative_to(root)
        return server, client

    yield load
    forget()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """PyTorch on one thread: on a small shared machine, more wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(server: ModuleType, client: ModuleType, config: dict, out: Path) -> dict:
    """The app's ServerApp main on 2 in-process nodes, seeded; its metrics.json and
    final model."""
    random.seed(0)  # FedAvg samples the evaluate nodes with `random`
    torch.manual_seed(0)  # the initial model and the data loaders' shuffling
    config = {**config, "out-dir": str(out)}
    grid = InlineGrid(client.app, 2, run_config=config)
    server.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=config))
    return {**json.loads((out / "metrics.json").read_text()),
            "model": torch.load(out / "final_model.pt")}


def test_the_template_runs_and_fedpress_changes_only_the_traffic(
        load_app, one_thread, tmp_path) -> None:
    """The plain app (the docs' lines taken out) trains; the example with both links raw
    gives the same model bit for bit; with fedsz up, the uplink shrinks and every reply
    is used."""
    config = {**example_config()["tool"]["flwr"]["app"]["config"], **QUICK}
    plain = {k: v for k, v in config.items() if not k.startswith("fedpress-")}
    base = run(*load_app(plain=True), plain, tmp_path / "plain")
    assert not any(k.startswith("fedpress-") for m in base["train"].values() for k in m)
    assert base["central"]["2"]["accuracy"] > base["central"]["0"]["accuracy"]

    server, client = load_app(plain=False)
    raw = run(server, client, {**config, "fedpress-uplink": "none"}, tmp_path / "raw")
    for name, value in base["model"].items():
        assert torch.equal(raw["model"][name], value), name
    assert [m["fedpress-cr-up"] for m in raw["train"].values()] == [1.0, 1.0]

    fedsz = run(server, client, config, tmp_path / "fedsz")
    rows = list(fedsz["train"].values())
    assert [m["fedpress-dropped"] for m in rows] == [0, 0]
    assert all(m["fedpress-cr-up"] > 2 and m["fedpress-cr-down"] == 1.0 for m in rows)
    assert fedsz["central"]["2"]["accuracy"] > fedsz["central"]["0"]["accuracy"]
