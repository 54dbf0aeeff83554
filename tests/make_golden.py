"""Write the golden frames of wire format v1 into tests/data/ (run once per format change).

    python tests/make_golden.py

Each ``golden_v1_<name>.fpz`` is a frame written by this version; the decoded
arrays are stored in ``golden_v1_expected.npz``. ``test_frame.py`` checks that
every later version still decodes them to exactly these arrays. Existing golden
files are never rewritten: a run only adds frames for codecs that have none yet
(a new codec), and a format change gets a new version and new files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import fedpress

DATA = Path(__file__).parent / "data"


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
    return {
        "smooth": x.reshape(30, 100),
        "surface": surface.astype(np.float32),
        "grad": grad.astype(np.float32),
        "burst": burst.astype(np.float32).reshape(200, 500),
        "weights": (0.05 * rng.standard_normal((64, 3, 3, 3))).astype(np.float32),
        "ints": rng.integers(-1000, 1000, 500).astype(np.int64),
        "half": rng.standard_normal(1500).astype(np.float16),
    }


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
        frames["fpz2_smooth"] = fedpress.compress(inputs["smooth"], codec="fpz", eb=1e-3)
        frames["fpz2_grad"] = fedpress.compress(inputs["grad"], codec="fpz", eb=1e-2)
        # four lanes with the magnitude context (bursts of large and small values)
        frames["fpz2_lanes"] = fedpress.compress(inputs["burst"], codec="fpz", eb=1e-3)
        # 2-D Lorenzo over the natural axes (a surface smooth along both)
        frames["fpz2_lorenzo2d"] = fedpress.compress(inputs["surface"], codec="fpz", eb=1e-4)
    for codec in ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4"):
        frames[codec] = fedpress.compress(inputs["ints"], codec=codec)
    # the gradient compressors (single tensors, and stateful ones in update frames)
    grad_codecs = {"topk": {"ratio": 0.01}, "randk": {"ratio": 0.01}, "threshold": {"tau": 2.0},
                   "qsgd": {"levels": 16}, "terngrad": {}, "signsgd": {}}
    for codec, opts in grad_codecs.items():
        frames[f"grad_{codec}"] = fedpress.compress(inputs["grad"], codec=codec, **opts)
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
    np.savez_compressed(exp_file, **expected)
    print(f"wrote {written} new golden frames to {DATA}")


if __name__ == "__main__":
    main()
