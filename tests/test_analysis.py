"""fedpress.analysis: error profiles of frames, and ``fedpress inspect --errors``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

import fedpress
from fedpress import cli
from fedpress import io as fio
from fedpress.analysis import (
    ErrorProfile,
    error_profile,
    ks_distance,
    plot_error_profile,
    profile_arrays,
)
from fedpress.analysis.fit import erf, fit_all
from fedpress.backends.lossless import ZstdCodec
from fedpress.registry import register_codec, unregister_codec

from .common import available

RNG = np.random.default_rng(20240611)
runner = CliRunner()


def _run(*args: str | Path, columns: int = 200) -> Any:
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def _model() -> dict[str, np.ndarray]:
    """Two weights over the fedsz threshold, a bias and an integer counter."""
    rng = np.random.default_rng(7)
    return {"conv.weight": (rng.standard_normal((16, 3, 5, 5)) * 0.2).astype(np.float32),
            "fc.weight": rng.laplace(0, 0.05, (32, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(32).astype(np.float32),
            "steps": np.array([12], dtype=np.int64)}


# -- the fits, on errors whose distribution is known ----------------------------------


def test_uniform_quantizer_error_is_uniform() -> None:
    x = RNG.standard_normal(200_000)
    eb = 0.01
    y = np.rint(x / (2 * eb)) * (2 * eb)  # a uniform quantizer, no prediction
    p = profile_arrays(x, y, bound=eb)
    assert p.best_fit == "uniform"
    assert p.uniform.ks < 0.01
    assert p.uniform.ks * 5 < p.laplace.ks and p.uniform.ks * 5 < p.gaussian.ks
    assert p.uniform.scale == pytest.approx(eb, rel=1e-3)
    assert p.gaussian.scale == pytest.approx(eb / math.sqrt(3), rel=1e-2)
    assert p.laplace.scale == pytest.approx(eb / 2, rel=1e-2)
    assert p.within_bound and p.max_abs <= eb
    assert abs(p.corr_x) < 0.01 and abs(p.lag1) < 0.01


@pytest.mark.parametrize("b", [1e-4, 0.3, 7.0])
def test_laplace_sample_recovers_its_scale(b: float) -> None:
    e = RNG.laplace(0.0, b, 100_000)
    x = RNG.standard_normal(e.size)
    p = profile_arrays(x, x - e)
    assert p.laplace.scale == pytest.approx(b, rel=0.02)
    assert p.laplace.loc == pytest.approx(0.0, abs=0.02 * b)
    assert p.best_fit == "laplace" and p.laplace.ks < 0.01
    assert p.gaussian.ks > 3 * p.laplace.ks
    assert p.bound is None and p.within_bound is None


def test_gaussian_sample_recovers_its_sigma() -> None:
    e = RNG.normal(0.5, 2.0, 100_000)
    p = profile_arrays(e, np.zeros_like(e))
    assert p.gaussian.scale == pytest.approx(2.0, rel=0.02)
    assert p.gaussian.loc == pytest.approx(0.5, abs=0.05)
    assert p.mean == pytest.approx(0.5, abs=0.05)
    assert p.best_fit == "gaussian" and p.gaussian.ks < 0.01


def test_ks_distance_by_hand() -> None:
    # sample {0, 1} against U(0, 2): F = 0, 0.5; ECDF steps 0 -> 0.5 -> 1; sup gap 0.5
    s = np.array([0.0, 1.0])
    assert ks_distance(s, np.array([0.0, 0.5])) == pytest.approx(0.5)
    assert math.isnan(ks_distance(np.array([]), np.array([])))
    t = np.linspace(-5, 5, 20_001)
    assert np.abs(erf(t) - np.array([math.erf(v) for v in t])).max() < 2e-7


def test_ks_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    e = np.round(RNG.laplace(0, 1.0, 5000), 1)  # ties too
    fits = fit_all(e)
    want = {
        "laplace": stats.kstest(e, "laplace", args=(fits["laplace"].loc,
                                                    fits["laplace"].scale)).statistic,
        "gaussian": stats.kstest(e, "norm", args=(fits["gaussian"].loc,
                                                  fits["gaussian"].scale)).statistic,
        "uniform": stats.kstest(e, "uniform", args=(fits["uniform"].loc - fits["uniform"].scale,
                                                    2 * fits["uniform"].scale)).statistic,
    }
    for family, value in want.items():
        assert fits[family].ks == pytest.approx(value, abs=1e-6), family


def test_degenerate_errors() -> None:
    x = np.arange(10, dtype=np.float32)
    p = profile_arrays(x, x)
    assert p.exact and p.max_abs == 0 and p.best_fit is None
    assert all(math.isnan(f.ks) and f.scale == 0 for f in p.fits.values())
    assert math.isnan(p.corr_x) and math.isnan(p.lag1)
    empty = profile_arrays(np.zeros(0, np.float32), np.zeros(0, np.float32))
    assert empty.count == 0 and math.isnan(empty.laplace.scale)


def test_correlations() -> None:
    x = RNG.standard_normal(50_000)
    p = profile_arrays(x, 0.9 * x)  # e = 0.1 x
    assert p.corr_x == pytest.approx(1.0)
    smooth = np.repeat(RNG.standard_normal(25_000), 2)  # each error value twice in a row
    q = profile_arrays(x, x - smooth)
    assert q.lag1 == pytest.approx(0.5, abs=0.02)
    assert abs(q.corr_x) < 0.02


def test_bound_check_and_nonfinite() -> None:
    x = RNG.standard_normal(1000)
    x[3], x[7] = np.nan, np.inf
    y = x + RNG.uniform(-0.01, 0.01, x.size)
    y[3], y[7] = np.nan, np.inf
    p = profile_arrays(x, y, bound=0.01)
    assert p.count == 998 and p.nonfinite == 2 and p.within_bound
    y[10] = x[10] + 0.25
    q = profile_arrays(x, y, bound=0.01)
    assert q.within_bound is False and q.max_abs == pytest.approx(0.25)
    y[11] = np.inf  # decoded not finite where the original is
    assert profile_arrays(x, y, bound=0.01).max_abs == math.inf


def test_bins_and_histogram() -> None:
    x = RNG.standard_normal(4000)
    p = profile_arrays(x, x + RNG.uniform(-1, 1, x.size), bins=10)
    h = p.histogram
    assert h.counts.sum() == 4000 and h.edges.size == 11
    assert h.edges[0] == pytest.approx(-h.edges[-1])
    assert float((h.density() * np.diff(h.edges)).sum()) == pytest.approx(1.0)
    with pytest.raises(fedpress.ConfigError, match="bins"):
        profile_arrays(x, x, bins=0)


# -- frames ---------------------------------------------------------------------------


def test_single_tensor_frame() -> None:
    x = (RNG.standard_normal((40, 50)) * 0.1).astype(np.float32)
    blob = fedpress.compress(x, codec="fpz", eb=1e-2)
    p = error_profile(x, blob)
    assert isinstance(p, ErrorProfile)
    assert p.name == "" and p.codec == "fpz" and p.shape == (40, 50) and p.dtype == "float32"
    assert p.bound == fedpress.inspect(blob)["tensors"][0]["eb_abs"]
    assert p.within_bound and 0 < p.max_abs <= p.bound
    # fpz reconstructs q * 2eb whatever its predictor: the error of a quantizer
    assert p.best_fit == "uniform"
    d = p.to_dict()
    assert d["codec"] == "fpz" and d["within_bound"] is True
    assert set(d["laplace"]) == {"loc", "scale", "ks"}
    assert sum(d["histogram"]["counts"]) == x.size
    json.dumps(d)
    assert "histogram" not in p.to_dict(histogram=False)
    # a one-tensor state dict keeps its name
    named = error_profile({"w": x}, blob)
    assert list(named) == ["w"] and named["w"].name == "w"


def test_state_dict_frame() -> None:
    sd = _model()
    blob = fedpress.encode_update(sd, "fpz", eb=1e-3, threshold=1000)
    profiles = error_profile(sd, blob)
    assert list(profiles) == list(sd)
    lossy = {n for n, p in profiles.items() if p.bound is not None}
    assert lossy == {"conv.weight", "fc.weight"}
    for name, p in profiles.items():
        if name in lossy:
            assert p.codec == "fpz" and p.within_bound and not p.exact
        else:
            assert p.exact and p.within_bound is None and p.best_fit is None
    json.dumps([p.to_dict() for p in profiles.values()], allow_nan=True)


def test_update_encoder_and_reference() -> None:
    sd = _model()
    start = {k: (v * 0.9).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in sd.items()}
    blob = fedpress.UpdateEncoder("fpz", eb=1e-2, threshold=1000).encode(sd, reference=start)
    with pytest.raises(fedpress.ReferenceMismatchError):
        error_profile(sd, blob)
    profiles = error_profile(sd, blob, reference=start)
    assert all(p.within_bound in (True, None) for p in profiles.values())
    assert profiles["fc.weight"].bound is not None


def test_torch_inputs() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(40, 30)
    blob = fedpress.encode_update(model, "fpz", threshold=100)
    profiles = error_profile(model, blob)
    assert set(profiles) == {"weight", "bias"} and profiles["weight"].bound is not None
    w = model.weight.detach()
    assert error_profile(w, fedpress.compress(w)).within_bound


def test_mismatched_originals_are_clear_errors() -> None:
    sd = _model()
    blob = fedpress.encode_update(sd, "fpz", threshold=1000)
    with pytest.raises(fedpress.ConfigError, match=r"'fc\.bias', which the original lacks"):
        error_profile({k: v for k, v in sd.items() if k != "fc.bias"}, blob)
    with pytest.raises(fedpress.ConfigError, match="'extra', which the frame lacks"):
        error_profile({**sd, "extra": np.zeros(3, np.float32)}, blob)
    shapes = r"'fc\.weight': the original is float32\[64, 32\], the frame's float32\[32, 64\]"
    with pytest.raises(fedpress.ConfigError, match=shapes):
        error_profile({**sd, "fc.weight": sd["fc.weight"].T.copy()}, blob)
    with pytest.raises(fedpress.ConfigError, match="float64"):
        error_profile({**sd, "fc.bias": sd["fc.bias"].astype(np.float64)}, blob)
    with pytest.raises(fedpress.ConfigError, match="holds 4 tensors"):
        error_profile(sd["fc.weight"], blob)
    single = fedpress.compress(sd["fc.weight"])
    with pytest.raises(fedpress.ConfigError, match="single-tensor frame"):
        error_profile(sd, single)
    with pytest.raises(fedpress.ConfigError, match="the tensor"):
        error_profile(sd["conv.weight"], single)
    with pytest.raises(fedpress.FormatError):
        error_profile(sd, b"not a fedpress frame at all")
    with pytest.raises(fedpress.FormatError):
        error_profile(sd, blob[:-3])


class UnsafeZstd(ZstdCodec):
    """zstd, marked as a codec whose decoder is not safe on a peer's bytes."""

    codec_id = "test-analysis-unsafe-zstd"
    peer_safe: ClassVar[bool] = False


@pytest.fixture
def unsafe() -> Any:
    register_codec(UnsafeZstd)
    yield UnsafeZstd.codec_id
    unregister_codec(UnsafeZstd.codec_id)


def test_decoding_keeps_the_limits(unsafe: str) -> None:
    sd = _model()
    blob = fedpress.encode_update(sd, unsafe)
    with pytest.raises(fedpress.FormatError, match=unsafe):
        error_profile(sd, blob)
    assert all(p.exact for p in error_profile(sd, blob, limits=fedpress.trusting(unsafe))
               .values())


# -- the plot -------------------------------------------------------------------------


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sd = _model()
    profiles = error_profile(sd, fedpress.encode_update(sd, "fpz", threshold=1000))
    fig = plot_error_profile(profiles, tmp_path / "e.png", columns=2)
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(ax.get_visible() for ax in fig.axes) == 2  # the two lossy tensors
    with pytest.raises(fedpress.ConfigError, match="exactly"):
        plot_error_profile(profiles["fc.bias"])


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    x = RNG.standard_normal(100)
    p = profile_arrays(x, x + 0.01)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(fedpress.MissingDependencyError, match="matplotlib"):
        plot_error_profile(p)


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    original = tmp_path / "model.npz"
    fio.save_tensors(_model(), original)
    frame = tmp_path / "model.fpz"
    result = _run("compress", original, "--codec", "fpz", "--threshold", "1000", "-o", frame)
    assert result.exit_code == 0, result.output
    return original, frame


def test_cli_errors_table_fits_80_columns(files: tuple[Path, Path]) -> None:
    original, frame = files
    result = _run("inspect", "--errors", original, frame, columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    text = result.stdout
    for name in _model():
        assert name in text
    assert "KS-L" in text and "exact" in text and "Kolmogorov-Smirnov" in text
    row = next(line for line in lines if line.startswith("fc.weight"))
    assert row.split()[1] == "fpz" and row.split()[3] == "1.00"  # max |e| / eb_abs


def test_cli_errors_json_and_plot(files: tuple[Path, Path], tmp_path: Path) -> None:
    original, frame = files
    result = _run("inspect", frame, "--errors", original, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(_model())
    by = {r["name"]: r for r in rows}
    assert by["fc.weight"]["within_bound"] is True and by["steps"]["laplace"]["ks"] is None
    pytest.importorskip("matplotlib")
    png = tmp_path / "errors.png"
    result = _run("inspect", "--errors", original, frame, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_usage_mistakes(files: tuple[Path, Path], tmp_path: Path) -> None:
    original, frame = files
    for args in (["--plot", tmp_path / "x.png"], ["--reference", original]):
        result = _run("inspect", frame, *args)
        assert result.exit_code == 2 and "--errors" in result.output
    result = _run("inspect", "--errors", original, frame, "--plot", tmp_path / "x.jpg")
    assert result.exit_code == 2 and ".png" in result.output
    other = tmp_path / "other.npz"
    fio.save_tensors({"w": np.zeros(5, np.float32)}, other)
    result = _run("inspect", "--errors", other, frame)
    assert result.exit_code == 2 and "does not match" in result.output
    assert "Traceback" not in result.output
    junk = tmp_path / "junk.fpz"
    junk.write_bytes(b"junk" * 20)
    result = _run("inspect", "--errors", original, junk)
    assert result.exit_code == 2 and "not a fedpress frame" in result.output


def test_cli_errors_keeps_the_safety_rules(tmp_path: Path, unsafe: str) -> None:
    original = tmp_path / "model.npz"
    fio.save_tensors(_model(), original)
    frame = tmp_path / "model.fpz"
    frame.write_bytes(fedpress.encode_update(_model(), unsafe))
    result = _run("inspect", "--errors", original, frame)
    assert result.exit_code == 2
    text = result.output.strip()
    assert "\n" not in text and unsafe in text and "--allow" in text and "--isolate" in text
    result = _run("inspect", "--errors", original, frame, "--allow", unsafe)
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(not available(("sz2",)), reason="sz2 back end not installed")
def test_cli_errors_isolated_sz2(tmp_path: Path) -> None:
    original = tmp_path / "w.npy"
    w = (RNG.standard_normal((30, 40)) * 0.1).astype(np.float32)
    np.save(original, w)
    frame = tmp_path / "w.fpz"
    frame.write_bytes(fedpress.encode_update({"w": w}, "sz2", threshold=10))
    assert _run("inspect", "--errors", original, frame).exit_code == 2
    result = _run("inspect", "--errors", original, frame, "--isolate", "sz2", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["codec"] == "sz2" and row["within_bound"] is True
