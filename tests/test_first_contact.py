"""What a new user meets first: a light ``import fedpress``, command-line tables that
fit an 80-column terminal, readable codec descriptions, titled plots, the packaging
files and one-line hints for missing optional packages."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import fedpress
from fedpress.cli import app

ROOT = Path(__file__).parents[1]
HEAVY = ("ml_dtypes", "numba", "torch", "matplotlib", "flwr")
NARROW = {"COLUMNS": "80"}
runner = CliRunner()


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout


def _narrow(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args], env=NARROW)
    assert result.exit_code == 0, result.output
    return result


def _fits(text: str) -> None:
    """Nothing cut: no line over 80 columns and no ellipsis."""
    for line in text.splitlines():
        assert len(line.rstrip()) <= 80, line
    assert "…" not in text


# -- import -----------------------------------------------------------------------------


def test_import_fedpress_loads_no_heavy_module() -> None:
    out = _fresh("import json, sys, fedpress\n"
                 f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert json.loads(out) == []


def test_bfloat16_frames_decode_in_a_fresh_process(tmp_path: Path) -> None:
    from fedpress.dtypes import BFLOAT16

    x = np.linspace(-2, 2, 300).astype(BFLOAT16)
    frame = tmp_path / "bf16.fpz"
    frame.write_bytes(fedpress.compress(x, codec="zstd"))
    out = _fresh("import sys, fedpress\n"
                 "before = 'ml_dtypes' in sys.modules\n"
                 f"y = fedpress.decompress(open({str(frame)!r}, 'rb').read())\n"
                 "print(before, y.dtype.name, y.tobytes().hex())")
    before, name, data = out.split()
    assert before == "False" and name == "bfloat16" and data == x.tobytes().hex()


def test_the_dtype_module_keeps_its_names() -> None:
    import ml_dtypes

    from fedpress import dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert dtypes.BFLOAT16 == bf16 and dtypes.bfloat16() == bf16
    assert dtypes.FLOAT_DTYPES == {np.dtype(t) for t in ("float32", "float64", "float16")} | {bf16}
    assert dtypes.is_float(bf16) and not dtypes.is_float(np.dtype("int16"))
    assert dtypes.dtype_code(bf16) == 4 and dtypes.dtype_from_code(4) == bf16
    with pytest.raises(AttributeError):
        _ = dtypes.NO_SUCH_NAME


# -- 80-column tables ------------------------------------------------------------------------


def test_inspect_fits_80_columns_with_every_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    state = {"layer4.1.conv2.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
             "layer4.1.bn2.running_mean": rng.standard_normal(64).astype(np.float32),
             "bn.num_batches_tracked": np.array(1234, dtype=np.int64)}
    frame = tmp_path / "m.fpz"
    frame.write_bytes(fedpress.encode_update(state, "fpz", eb=1e-2, threshold=1000))
    info = fedpress.inspect(frame.read_bytes())
    lossy = next(t for t in info["tensors"] if t["codec"] == "fpz")
    assert lossy.get("patches") is not None  # so the patches column is shown

    text = _narrow("inspect", frame).stdout
    _fits(text)
    header = next(line for line in text.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "codec", "shape", "dtype", "payload", "CR", "eb_abs",
                              "patches"]
    for name in state:
        assert name in text
    row = next(line for line in text.splitlines() if line.startswith("layer4.1.conv2.weight"))
    assert row.split()[1:4] == ["fpz", "64x64x3x3", "float32"]
    assert f"{lossy['cr']:.2f}" in row and f"{lossy['eb_abs']:.3g}" in row
    assert f"{info['frame_bytes']:,} B" in text  # the exact size, under the table


def _results(plans: list[str]) -> list[dict[str, Any]]:
    return [{"plan": plan, "final_accuracy": 0.9372 - i / 100, "best_accuracy": 0.9411,
             "cr_up": 1.0 + 37.2 * i, "cr_down": 1.0, "bytes_up": 13_500e6 / (1 + 37.2 * i),
             "bytes_down": 13_500e6, "encode_s": 12.345, "decode_s": 3.21,
             "comm_s": 1234.5, "round_s": 12_345.6, "wall_s": 2345.6}
            for i, plan in enumerate(plans)]


def test_compare_summary_fits_80_columns(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fedpress.cli.sim import SUMMARY_COLUMNS, print_summary

    monkeypatch.setenv("COLUMNS", "80")
    plans = ["none", "fedsz", "ef:topk(ratio=0.05)", "powersgd(rank=2)"]
    print_summary(_results(plans), Path("out/compare"))
    text = capsys.readouterr().out
    _fits(text)
    header = next(line for line in text.splitlines() if line.startswith("plan"))
    for title, _ in SUMMARY_COLUMNS:
        assert title in header
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line}
    for plan in plans:
        assert plan in lines  # whole, on one line
    assert lines["none"] == ["0.937", "0.941", "1.00", "1.00", "13,500", "13,500", "15.6",
                             "1,234", "12,346"]
    assert lines["fedsz"][2] == "38.2" and lines["fedsz"][4] == "353"


def test_codecs_list_fits_80_columns_and_reads_as_prose() -> None:
    text = _narrow("codecs").stdout
    _fits(text)
    for cid in fedpress.list_codecs():
        assert any(line.split()[:1] == [cid] for line in text.splitlines()), cid
    rows = json.loads(_narrow("codecs", "--json").stdout)
    for r in rows:
        d = r["description"]
        assert d and "`" not in d and ":mod:" not in d and ":class:" not in d, r
        assert d.endswith("."), r  # a whole sentence
    by_id = {r["id"]: r["description"] for r in rows}
    if "ternary" in by_id:  # its first sentence runs over three docstring lines
        assert by_id["ternary"].endswith("re-sends what was dropped.")


def test_first_sentence_strips_inline_markup() -> None:
    from fedpress.cli.render import first_sentence

    doc = """Keep ``ratio`` of the entries, see :mod:`fedpress.bounds` and
    :class:`~fedpress.Limits` (*quoted*: ``"l1"``). Second sentence.

    Parameters
    ----------
    """
    assert first_sentence(doc) == ("Keep 'ratio' of the entries, see fedpress.bounds and "
                                   'Limits (quoted: "l1").')
    assert first_sentence("SZx (Yu et al., HPDC'22): blocks.\n\nMore.") == (
        "SZx (Yu et al., HPDC'22): blocks.")
    assert first_sentence(None) == ""


# -- advise: progress and plot -----------------------------------------------------------------


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"fc.weight": rng.standard_normal((64, 64)).astype(np.float32),
            "fc.bias": np.zeros(64, np.float32)}


def test_advise_reports_each_measurement() -> None:
    from fedpress.sim import advise

    labels: list[str] = []
    rows = advise.advise(_state(), ["zstd", "fedsz:fpz"], [1e-2, 1e-3], repeats=1,
                         on_step=labels.append)
    assert labels == ["zstd eb=0.01", "zstd eb=0.001", "fedsz:fpz eb=0.01",
                      "fedsz:fpz eb=0.001"]
    assert len(rows) == 4


def test_advise_progress_bar_only_on_a_terminal(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from fedpress.cli import sim

    np.savez(tmp_path / "m.npz", **_state())
    args = ["advise", str(tmp_path / "m.npz"), "--codecs", "zstd", "--eb", "1e-2,1e-3",
            "--repeat", "1", "--plot", str(tmp_path / "a.png")]
    result = runner.invoke(app, args, env=NARROW)
    assert result.exit_code == 0, result.output
    assert "eb=0.001" not in result.output and "2/2" not in result.output  # not a terminal

    buf = io.StringIO()
    monkeypatch.setattr(sim, "err_console",
                        lambda: Console(file=buf, force_terminal=True, width=80))
    result = runner.invoke(app, args, env=NARROW)
    assert result.exit_code == 0, result.output
    assert "zstd eb=0.001" in buf.getvalue() and "2/2" in buf.getvalue()


def _capture_figures(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[Any]:
    """Replace ``module.save_png`` by one that keeps the figures' texts (then saves)."""
    seen: list[Any] = []
    real = module.save_png

    def keep(fig: Any, path: Any, **kw: Any) -> None:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen.append({"path": Path(path).name, "title": ax.get_title(),
                     "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                     "xticks": [t.get_text() for t in ax.get_xticklabels()]})
        real(fig, path, **kw)

    monkeypatch.setattr(module, "save_png", keep)
    return seen


def test_advise_plot_has_a_title(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from fedpress.sim import advise

    seen = _capture_figures(monkeypatch, advise)
    rows = advise.advise(_state(), ["zstd"], [1e-2], repeats=1)
    advise.plot(rows, tmp_path / "a.png")
    advise.plot(rows, tmp_path / "b.png", title="when compression pays: m.npz")
    assert seen[0]["title"].startswith("when compression pays: 0.0166 MB")
    assert seen[1]["title"] == "when compression pays: m.npz"


def test_run_plots_titles_integer_rounds_and_plan_legend(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from fedpress.sim import report

    seen = _capture_figures(monkeypatch, report)
    table = [{"round": r, "accuracy": 0.5 + r / 10, "cum_mb": 2.0 * r, "comm_s": 1.0,
              "round_s": 1.5} for r in (1, 2, 3)]
    config = {"dataset": "digits", "model": "mlp", "uplink_mbps": [1.0, 2.0, 4.0],
              "downlink_mbps": 10.0, "plan": "ef:topk(ratio=0.05)"}
    report.plot({report.plan_label(config["plan"]): table}, tmp_path,
                title=report.plot_title(config))
    assert [s["path"] for s in seen] == ["accuracy_vs_round.png", "accuracy_vs_mb.png",
                                         "time_per_round.png"]
    for s in seen:
        assert s["title"] == "digits, mlp, up 1-4 Mbps, down 10 Mbps"
        assert any("ef:topk(ratio=0.05)" in label for label in s["legend"])
    for s in (seen[0], seen[2]):  # round axes: whole rounds only
        ticks = [t.replace("\u2212", "-") for t in s["xticks"] if t]
        assert ticks and all(float(t).is_integer() and "." not in t for t in ticks), ticks
    assert report.plan_label({"re:weight": "fpz"}) == '{"re:weight":"fpz"}'
    # a log-normal spread: the links as drawn, or the median when they are not known
    spread = {"median": 10, "sigma": 1.0}
    assert report.plot_title({"uplink_mbps": spread, "downlink_mbps": 5.0}) == \
        "up median 10 Mbps, down 5 Mbps"
    assert report.plot_title({"uplink_mbps": spread, "network": {"up_mbps": [2.5, 40.0]}}) \
        == "up 2.5-40 Mbps"


# -- missing optional packages ---------------------------------------------------------------


@pytest.mark.parametrize("command,blocked", [
    (["simulate", "--dataset", "digits", "--rounds", "1"], "torch"),
    (["compare", "--plans", "none"], "matplotlib"),
])
def test_simulator_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         command: list[str], blocked: str) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # the import fails
    result = runner.invoke(app, [*command, "--out", str(tmp_path)], env=NARROW)
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "\n" not in text and "Traceback" not in text
    assert "needs" in text and blocked in text and "pip install 'fedpress[sim]'" in text
    assert not any(tmp_path.iterdir())  # nothing ran


def test_advise_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "m.npz", **_state())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["advise", str(tmp_path / "m.npz"), "--codecs", "zstd"],
                           env=NARROW)
    assert result.exit_code == 2
    assert "advise needs matplotlib" in result.output and "fedpress[sim]" in result.output


# -- packaging -----------------------------------------------------------------------------------


def test_license_typing_marker_and_extras_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "LICENSE" in project["project"]["license-files"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the fedpress authors" in license_text
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["fedpress"]
    assert (ROOT / "src" / "fedpress" / "py.typed").is_file()
    sim = project["project"]["optional-dependencies"]["sim"]
    torch_req = [r for r in sim if r.startswith("torch")]
    assert torch_req and all(">=" in r and "==" not in r for r in torch_req)
    assert any(r.startswith("matplotlib") for r in sim)


def test_the_entry_point_and_python_m() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, name = project["project"]["scripts"]["fedpress"].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), name))
    done = subprocess.run([sys.executable, "-m", "fedpress.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"fedpress {fedpress.__version__}"
