"""The plan-spec grammar (``Plan.parse``, ``split_plans``), shared by the command line,
the simulator and Flower links."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedpress import Plan
from fedpress.cli import app
from fedpress.cli.options import parse_options, parse_plan
from fedpress.errors import ConfigError
from fedpress.io import save_tensors
from fedpress.partition import split_plans

GRAMMAR = [
    # names and codec ids
    ("fedsz", ("fedsz", {})),
    ("  fedsz-paper ", ("fedsz-paper", {})),
    ("ef:topk", ("ef:topk", {})),
    ("", ("", {})),
    # options of each value type
    ("topk(ratio=0.01, approx=true)", ("topk", {"ratio": 0.01, "approx": True})),
    ("x(a=TRUE,b=False)", ("x", {"a": True, "b": False})),
    ("x(a=none, b=NULL)", ("x", {"a": None, "b": None})),
    ("x(n=3, m=-2, big=1_000)", ("x", {"n": 3, "m": -2, "big": 1000})),
    ("x(f=1e-3, g=0.5, h=2.)", ("x", {"f": 1e-3, "g": 0.5, "h": 2.0})),
    ("x(s=interp, t=hello world)", ("x", {"s": "interp", "t": "hello world"})),
    ("x()", ("x", {})),
    ("ef:topk(ratio=0.05, send=update)", ("ef:topk", {"ratio": 0.05, "send": "update"})),
    # JSON objects of rules, nested codec configs included
    ('{"conv1.weight": "zfp", "re:bias$": "zstd", "default": "sz3"}',
     ({"conv1.weight": "zfp", "re:bias$": "zstd", "default": "sz3"}, {})),
    ('{"re:(conv|fc)\\\\.weight": {"id": "sz3", "eb": 0.001, "algorithm": "interp"}}',
     ({"re:(conv|fc)\\.weight": {"id": "sz3", "eb": 0.001, "algorithm": "interp"}}, {})),
    ("{}", ({}, {})),
]


@pytest.mark.parametrize(("text", "expected"), GRAMMAR)
def test_the_grammar(text: str, expected: tuple[Any, dict[str, Any]]) -> None:
    got = Plan.parse(text)
    assert got == expected
    # the types too: True is not 1, 2.0 is a float
    assert {k: type(v) for k, v in got[1].items()} == {k: type(v) for k, v in expected[1].items()}


def test_special_floats_and_non_strings() -> None:
    _, options = Plan.parse("x(a=nan, b=inf)")
    assert math.isnan(options["a"]) and options["b"] == math.inf
    rules = {"default": "zstd"}
    assert Plan.parse(rules) == (rules, {}) and Plan.parse(rules)[0] is rules
    assert Plan.parse(None) == (None, {})


@pytest.mark.parametrize(("text", "match"), [
    ("topk(ratio)", "is not key=value"),
    ("topk(ratio=1", "write options as name"),
    ("topk(ratio=1) extra", "write options as name"),
    ("(x=1)", "write options as name"),
    ("x(1bad=2)", "is not key=value"),
    ("x(a=(1)", "unbalanced"),
    ('{"a": "zstd"', "does not parse"),
    ("{1: 2}", "does not parse"),
])
def test_errors_are_one_line(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Plan.parse(text)
    assert "\n" not in str(info.value)


def test_split_plans() -> None:
    assert split_plans("none, topk(ratio=0.01, approx=true),fpz") == [
        "none", "topk(ratio=0.01, approx=true)", "fpz"]
    assert split_plans('fpz, {"re:(a,b)": "zstd", "default": "fpz"}, none,') == [
        "fpz", '{"re:(a,b)": "zstd", "default": "fpz"}', "none"]
    # brackets inside a JSON string do not count
    assert split_plans('{"re:\\\\(": "zstd", "x": "}"},sz3') == [
        '{"re:\\\\(": "zstd", "x": "}"}', "sz3"]
    assert split_plans("") == []
    for bad in ("a(b", "a)b(", "a(b}", "{a", '{"a}'):
        with pytest.raises(ConfigError, match="unbalanced"):
            split_plans(bad)
    for text in split_plans('topk(ratio=0.01), {"default": "zstd"}, fedsz'):
        Plan.parse(text)


# -- the same reading everywhere ------------------------------------------------

SAME = ["fpz", "topk(ratio=0.01, approx=true)", "zstd(level=3)",
        "sz3(algorithm=interp, eb=0.001)"]


@pytest.mark.parametrize("text", SAME)
def test_cli_and_simulator_read_the_same(text: str, tmp_path: Path) -> None:
    from fedpress.sim.run import load_config, parse_plan_spec

    expected = Plan.parse(text)
    reserved = {"eb"} & set(expected[1])
    if reserved:  # the command line takes those as flags of their own
        with pytest.raises(ConfigError, match="use --eb instead"):
            parse_plan(text)
    else:
        assert parse_plan(text) == expected
    assert parse_plan_spec(text) == expected
    toml = tmp_path / "s.toml"
    toml.write_text(f'plan = "{text}"\ndownlink-plan = "{text}"\n')
    settings = load_config(toml)
    assert Plan.parse(settings["plan"]) == expected
    assert Plan.parse(settings["downlink_plan"]) == expected


@pytest.mark.parametrize("text", ["fpz", "topk(ratio=0.01, approx=true)", "zstd(level=3)"])
def test_flower_link_reads_the_same(text: str) -> None:
    pytest.importorskip("flwr")
    from fedpress.flower import Link

    link = Link.parse(text)
    assert (link.plan, link.options) == Plan.parse(text)
    assert Link.parse(link.spec) == link
    with pytest.raises(ConfigError, match="not JSON rules"):
        Link.parse('{"default": "zstd"}')


def test_cli_plan_options_merge_with_option_flags() -> None:
    _, plan_opts = parse_plan("zstd(level=3)")
    assert parse_options(["x=[1, 2]"], plan_opts) == {"level": 3, "x": [1, 2]}
    with pytest.raises(ConfigError, match="already given in --plan"):
        parse_options(["level=4"], plan_opts)
    with pytest.raises(ConfigError, match="use --threshold instead"):
        parse_plan("fedsz(threshold=10)")
    assert parse_plan('{"default": "zstd"}') == ({"default": "zstd"}, {})


def test_compress_with_options_in_the_plan(tmp_path: Path) -> None:
    """``--plan 'zstd(level=3)'`` writes the same frame as ``--plan zstd -O level=3``."""
    src = tmp_path / "m.npz"
    rng = np.random.default_rng(0)
    save_tensors({"w": rng.standard_normal((64, 64)).astype(np.float32),
                  "n": np.arange(10, dtype=np.int64)}, src)
    runner = CliRunner()
    frames = []
    for i, args in enumerate((["--plan", "zstd(level=3)"], ["--plan", "zstd", "-O", "level=3"])):
        out = tmp_path / f"{i}.fpz"
        result = runner.invoke(app, ["compress", str(src), "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        frames.append(out.read_bytes())
    assert frames[0] == frames[1]
