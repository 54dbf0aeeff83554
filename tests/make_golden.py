"""Write the golden frames of wire format v1 into tests/data/ (run once per format change).

    python tests/make_golden.py

Each ``golden_v1_<name>.fpz`` is a frame written by this version; the decoded
arrays are stored in ``golden_v1_expected.npz``. ``test_frame.py`` checks that
every later version still decodes them to exactly these arrays. Regenerating
them is a visible decision: only for a new format version, keeping the old files.
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
    return {
        "smooth": x.reshape(30, 100),
        "weights": (0.05 * rng.standard_normal((64, 3, 3, 3))).astype(np.float32),
        "ints": rng.integers(-1000, 1000, 500).astype(np.int64),
        "half": rng.standard_normal(1500).astype(np.float16),
    }


def main() -> None:
    DATA.mkdir(exist_ok=True)
    inputs = golden_inputs()
    expected: dict[str, np.ndarray] = {}
    frames: dict[str, bytes] = {}
    for codec in ("sz3", "sz2", "zfp", "szx"):
        if codec in fedpress.list_codecs():
            frames[codec] = fedpress.compress(inputs["smooth"], codec=codec, eb=1e-3)
    for codec in ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4"):
        frames[codec] = fedpress.compress(inputs["ints"], codec=codec)
    frames["update_fedsz"] = fedpress.encode_update(
        {"conv.weight": inputs["weights"], "fc.weight": inputs["smooth"],
         "bn.num_batches_tracked": np.array(3, np.int64), "emb.weight": inputs["half"]},
        plan="fedsz", eb=1e-2, lossy="sz3")
    for name, blob in frames.items():
        (DATA / f"golden_v1_{name}.fpz").write_bytes(blob)
        if name.startswith("update"):
            for k, v in fedpress.decode_update(blob).items():
                expected[f"{name}/{k}"] = v
        else:
            expected[name] = fedpress.decompress(blob)
    np.savez(DATA / "golden_v1_expected.npz", **expected)
    print(f"wrote {len(frames)} golden frames to {DATA}")


if __name__ == "__main__":
    main()
