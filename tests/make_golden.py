"""Write the golden frames of wire format v1 into tests/data/ (run once per format change).

    python tests/make_golden.py

Each ``golden_v1_<name>.fpz`` is a frame written by this version; the decoded
arrays are stored in ``golden_v1_expected.npz``. ``test_frame.py`` checks that
every later version still decodes them to exactly these arrays. Existing golden
files are never rewritten: a run only adds frames for codecs that have none yet
(a new codec), and a format change gets a new version and new files.

fpz's payload version 3 has its own frames in ``golden_v1_fpz3/`` (``<name>.fpz``,
arrays under ``fpz3/<name>``), checked by ``test_fpz.py``.

Frames that decode only after the frames before them (mirrored state, e.g.
``gaeb``) or with a reference live in ``golden_v1_stateful/`` as
``<stream>_r<round>.fpz`` (see :func:`stateful_streams`); their decoded arrays are
stored in the same ``.npz`` under ``<stream>_r<round>/<tensor>`` and the references
under ``<stream>_r<round>/reference/<tensor>``. ``test_gaeb.py`` decodes them in
order, with the stored references, and checks that encoding reproduces them. To
renew a stream after a deliberate change of its encoder, delete its files and run
this script: the arrays of a frame it writes replace the stored ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import fedpress

DATA = Path(__file__).parent / "data"
STATEFUL = DATA / "golden_v1_stateful"
FPZ3_DIR = DATA / "golden_v1_fpz3"


def golden_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261123)
    t = np.linspace(0, 8 * np.pi, 3000)
    x = (np.sin(t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    x[17] = np.nan
    x[1234] = -np.inf
    # inputs added later draw from their own generator, so older ones never change
    rng2 = np.random.default_rng(20261124)
    grad = rng2.laplace(0.0, 1.0, (80, 1000)) * rng2.gamma(0.5, 1.0, (80, 1))
    grad[rng2.random(80) < 0.3] = 0.0  # dead rows: zero blocks
    rng3 = np.random.default_rng(20261125)
    burst = rng3.laplace(0.0, 1.0, 100_000) * np.repeat(rng3.choice([0.02, 1.0], 1000), 100)
    rng4 = np.random.default_rng(20261126)
    i, j = np.meshgrid(np.linspace(0, 3, 60), np.linspace(0, 4, 50), indexing="ij")
    surface = np.sin(i) * np.cos(j) + 1e-4 * rng4.standard_normal(i.shape)
    # a gradient stream with a persistent per-element scale (gaeb), and a small
    # update of a model (reference coding)
    rng5 = np.random.default_rng(20261127)
    scale = rng5.lognormal(0.0, 1.0, (64, 32, 3, 3))
    persistent = 0.5 * rng5.standard_normal(scale.shape)
    stream = [scale * (rng5.standard_normal(scale.shape) + persistent) for _ in range(2)]
    ref_base = 0.05 * rng5.standard_normal((64, 50))
    ref_new = ref_base + 1e-3 * rng5.standard_normal(ref_base.shape)
    # fpz version 3: rows longer than a block (1-D, two pieces), blocks of whole rows
    # (mostly dead rows), codes over a wide range (escapes, large shifts, split fields)
    rng6 = np.random.default_rng(20261128)
    long1d = np.zeros(300_000)
    for start in rng6.integers(0, 299_000, 40):
        long1d[start:start + 800] = rng6.laplace(0.0, 1.0, 800)
    rows2d = rng6.laplace(0.0, 1.0, (2100, 130)) * rng6.gamma(0.5, 1.0, (2100, 1))
    rows2d[rng6.random(2100) < 0.8] = 0.0
    wide = rng6.standard_normal((40, 250)) * 10.0 ** rng6.uniform(-3, 6, (40, 250))
    return {
        "smooth": x.reshape(30, 100),
        "surface": surface.astype(np.float32),
        "grad": grad.astype(np.float32),
        "burst": burst.astype(np.float32).reshape(200, 500),
        "weights": (0.05 * rng.standard_normal((64, 3, 3, 3))).astype(np.float32),
        "ints": rng.integers(-1000, 1000, 500).astype(np.int64),
        "half": rng.standard_normal(1500).astype(np.float16),
        "gaeb_r0": stream[0].astype(np.float32),
        "gaeb_r1": stream[1].astype(np.float32),
        "ref_base": ref_base.astype(np.float32),
        "ref_new": ref_new.astype(np.float32),
        "long1d": long1d.astype(np.float32),
        "rows2d": rows2d.astype(np.float32),
        "wide": wide,
    }


#: fpz version 3's golden frames: (name, input, compress options)
FPZ3: list[tuple[str, str, dict[str, Any]]] = [
    ("fpz3_smooth", "smooth", {"eb": 1e-3}),
    ("fpz3_grad", "grad", {"eb": 1e-2}),
    ("fpz3_burst", "burst", {"eb": 1e-3}),
    ("fpz3_long1d", "long1d", {"eb": 1e-2}),
    ("fpz3_rows2d", "rows2d", {"eb": 1e-3}),
    ("fpz3_wide", "wide", {"mode": "abs", "eb": 1e-2}),
    # coder=best: a version 3 or version 2 payload, whichever is smaller, under a
    # codec config that says "best"
    ("fpz3_best_grad", "grad", {"eb": 1e-2, "coder": "best"}),  # version 3 kept
    ("fpz3_best_surface", "surface", {"eb": 1e-3, "coder": "best"}),  # version 2 kept
]

Stream = tuple[dict[str, Any], list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]]]


def stateful_streams(inputs: dict[str, np.ndarray]) -> dict[str, Stream]:
    """Streams of update frames that need the frames before them or a reference:
    name -> (``UpdateEncoder`` arguments, rounds of (state dict, reference or None))."""
    bias = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    gaeb = [({"conv.weight": inputs[f"gaeb_r{t}"], "conv.bias": bias + t,
              "bn.num_batches_tracked": np.array(3 + t, np.int64)}, None) for t in range(2)]
    reference = {"fc.weight": inputs["ref_base"], "fc.bias": bias}
    update = {"fc.weight": inputs["ref_new"], "fc.bias": bias + 1,
              "bn.num_batches_tracked": np.array(3, np.int64)}
    return {
        # round 2 is coded with the context model (predictor id 3: fpz's engine with
        # the history; ``gaeb1_context``: the same stream from version 1, crans)
        "gaeb_context": ({"plan": {"default": "zstd",
                                   "re:weight$": {"id": "gaeb", "predictor": "context"}},
                          "eb": 1e-2}, gaeb),
        # HGC's coding of one stream: round 2's codes are XORed with the prediction
        "hgc": ({"plan": {"default": "zstd", "re:weight$": {"id": "hgc", "density": 0.05}},
                 "residual_feedback": True}, gaeb),
        # fc.weight against the reference (fpz, payload version 3), fc.bias (zstd)
        # without one (``fpz2_reference``: the same stream written with version 2,
        # kept to be decoded)
        "fpz_reference": ({"plan": {"default": "zstd", "re:weight$": "fpz"}, "eb": 1e-3},
                          [(update, reference)]),
    }


def encode_stream(stream: Stream) -> list[bytes]:
    """The frames of one of :func:`stateful_streams`, encoded in order by one encoder."""
    kwargs, rounds = stream
    enc = fedpress.UpdateEncoder(**kwargs)
    return [enc.encode(sd, reference=ref) for sd, ref in rounds]


def main() -> None:
    DATA.mkdir(exist_ok=True)
    inputs = golden_inputs()
    expected: dict[str, np.ndarray] = {}
    frames: dict[str, bytes] = {}
    for codec in ("sz3", "sz2", "zfp", "szx", "fpz"):
        if codec in fedpress.list_codecs():
            frames[codec] = fedpress.compress(inputs["smooth"], codec=codec, eb=1e-3)
    # fpz payload v2 (own rANS): smooth data (lorenzo1d, one lane), a sparse
    # gradient (zero blocks, magnitude context, one lane)
    if "fpz" in fedpress.list_codecs():
        from fedpress.eblc.fpz import FpzCodec

        def fpz2(eb: float) -> FpzCodec:
            return FpzCodec(eb=eb, version=2)

        frames["fpz2_smooth"] = fedpress.compress(inputs["smooth"], codec=fpz2(1e-3))
        frames["fpz2_grad"] = fedpress.compress(inputs["grad"], codec=fpz2(1e-2))
        # four lanes with the magnitude context (bursts of large and small values)
        frames["fpz2_lanes"] = fedpress.compress(inputs["burst"], codec=fpz2(1e-3))
        # 2-D Lorenzo over the natural axes (a surface smooth along both)
        frames["fpz2_lorenzo2d"] = fedpress.compress(inputs["surface"], codec=fpz2(1e-4))

    for codec in ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4", "raw"):
        frames[codec] = fedpress.compress(inputs["ints"], codec=codec)
    # the gradient compressors (single tensors, and stateful ones in update frames)
    grad_codecs = {"topk": {"ratio": 0.01}, "randk": {"ratio": 0.01}, "threshold": {"tau": 2.0},
                   "qsgd": {"levels": 16}, "terngrad": {}, "signsgd": {}}
    for codec, opts in grad_codecs.items():
        frames[f"grad_{codec}"] = fedpress.compress(inputs["grad"], codec=codec, **opts)
    # top-k with its kept values coded by fpz (relative bound on the kept values)
    frames["grad_topk_fpz"] = fedpress.compress(inputs["grad"], codec="topk", ratio=0.01,
                                                values="fpz", values_eb=1e-2)
    for plan, opts in {"ef:topk": {"ratio": 0.01}, "dgc": {"ratio": 0.01},
                       "stc": {"ratio": 0.01}, "powersgd": {"rank": 2},
                       "efsignsgd": {}}.items():
        frames[f"update_grad_{plan.replace(':', '_')}"] = fedpress.encode_update(
            {"fc.weight": inputs["grad"], "bn.num_batches_tracked": np.array(3, np.int64)},
            plan=plan, **opts)
    frames["update_fedsz"] = fedpress.encode_update(
        {"conv.weight": inputs["weights"], "fc.weight": inputs["smooth"],
         "bn.num_batches_tracked": np.array(3, np.int64), "emb.weight": inputs["half"]},
        plan="fedsz", eb=1e-2, lossy="sz3")
    exp_file = DATA / "golden_v1_expected.npz"
    if exp_file.exists():
        with np.load(exp_file) as old:
            expected.update({k: old[k] for k in old.files})
    written = 0
    for name, blob in frames.items():
        path = DATA / f"golden_v1_{name}.fpz"
        if path.exists():
            continue
        path.write_bytes(blob)
        written += 1
        if name.startswith("update"):
            for k, v in fedpress.decode_update(blob).items():
                expected.setdefault(f"{name}/{k}", v)
        else:
            expected.setdefault(name, fedpress.decompress(blob))
    if "fpz" in fedpress.list_codecs():
        # fpz payload v3 (adaptive context model): NaN/Inf and lorenzo1d, dead rows,
        # bursts, rows cut into pieces, several blocks, escapes (test_fpz.py checks them)
        FPZ3_DIR.mkdir(exist_ok=True)
        for name, source, opts in FPZ3:
            path = FPZ3_DIR / f"{name}.fpz"
            if path.exists():
                continue
            blob = fedpress.compress(inputs[source], codec="fpz", **opts)
            path.write_bytes(blob)
            written += 1
            expected[f"fpz3/{name}"] = fedpress.decompress(blob)
    if "gaeb" in fedpress.list_codecs():
        STATEFUL.mkdir(exist_ok=True)
        for stream_name, stream in stateful_streams(inputs).items():
            dec = fedpress.UpdateDecoder()
            for t, blob in enumerate(encode_stream(stream)):
                name = f"{stream_name}_r{t}"
                ref = stream[1][t][1]
                out = dec.decode(blob, reference=ref)  # in order: the state advances
                path = STATEFUL / f"{name}.fpz"
                if path.exists():
                    continue
                path.write_bytes(blob)
                written += 1
                # a (re)written frame's arrays replace whatever an older one left
                for k in [k for k in expected if k.startswith(f"{name}/")]:
                    del expected[k]
                for k, v in out.items():
                    expected[f"{name}/{k}"] = v
                for k, v in (ref or {}).items():
                    expected[f"{name}/reference/{k}"] = v
    np.savez_compressed(exp_file, **expected)
    print(f"wrote {written} new golden frames to {DATA}")


if __name__ == "__main__":
    main()
