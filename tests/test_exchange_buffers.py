"""The float buffers a protocol leaves out of its own messages, coded (exchange/buffers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.errors import ConfigError, FormatError
from fedpress.exchange.buffers import BufferCoder, ErrorFeedback, float_buffers


def _bn(seed: int = 0, c: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"bn.running_mean": rng.standard_normal(c).astype(np.float32),
            "bn.running_var": rng.random(c).astype(np.float32) + 0.5}


def test_float_buffers_leaves_out_exchanged_and_integer_tensors() -> None:
    state = {"w": np.zeros(3, np.float32), "bn.running_mean": np.zeros(2, np.float32),
             "bn.num_batches_tracked": np.zeros((), np.int64)}
    assert float_buffers(state, {"w"}) == ["bn.running_mean"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 600),
       eb=st.sampled_from([1e-1, 1e-2, 1e-3]))
def test_fpz_keeps_the_bound_on_every_tensor(seed: int, c: int, eb: float) -> None:
    x = _bn(seed, c)
    coder = BufferCoder("fpz", eb)
    out = coder.decode(coder.encode(x), x)
    for k, v in x.items():
        span = float(v.max() - v.min())
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert float(np.abs(out[k].astype(np.float64) - v).max()) <= eb * span * (1 + 1e-6)


def test_lossless_codec_and_raw() -> None:
    x = _bn(1)
    z = BufferCoder("zstd")
    out = z.decode(z.encode(x), x)
    assert all(out[k].tobytes() == x[k].tobytes() for k in x)
    assert not BufferCoder("raw").codes and z.codes


def test_coded_buffers_are_smaller_than_raw() -> None:
    x = _bn(2, 512)
    assert BufferCoder("fpz").encode(x).size < 0.5 * sum(v.nbytes for v in x.values())


@pytest.mark.parametrize("spec", ["gaeb", "ef", "", 3, "sz2"])
def test_stateful_or_odd_specs_are_refused(spec: object) -> None:
    with pytest.raises(ConfigError):
        BufferCoder(spec)  # type: ignore[arg-type]


def test_hostile_frames_are_format_errors() -> None:
    x = _bn(3)
    coder = BufferCoder("fpz")
    blob = coder.encode(x)
    bad = [blob[: blob.size // 2], np.zeros(40, np.uint8), blob.astype(np.int16), b"abc",
           blob.reshape(1, -1)]
    for b in bad:
        with pytest.raises(FormatError):
            coder.decode(b, x)
    with pytest.raises(FormatError):  # other names than expected
        coder.decode(blob, {"other": x["bn.running_mean"]})
    with pytest.raises(FormatError):  # another shape
        coder.decode(blob, {k: np.zeros(7, np.float32) for k in x})
    # a valid frame of the right names that declares a huge tensor: refused from its
    # header, before decoding allocates anything
    huge = {k: np.zeros(1, np.float32) for k in x}
    with pytest.raises(FormatError, match="expected float32"):
        coder.decode(coder.encode({k: np.zeros(1 << 22, np.float32) for k in x}), huge)
    with pytest.raises(FormatError):  # a codec outside the plan (lz4's frame to fpz's)
        coder.decode(BufferCoder("lz4").encode(x), x)


def test_error_feedback_tracks_the_sum_of_true_messages() -> None:
    coder, fb = BufferCoder("fpz", 1e-1), ErrorFeedback()
    true_sum = {k: np.zeros(64) for k in _bn()}
    got_sum = {k: np.zeros(64) for k in _bn()}
    for r in range(20):
        x = _bn(100 + r)
        _, decoded = fb.send(coder, x)
        for k in x:
            true_sum[k] += x[k]
            got_sum[k] += decoded[k]
    for k in true_sum:  # the gap is the last residual only, not 20 rounds of error
        gap = np.abs(true_sum[k] - got_sum[k]).max()
        assert gap == pytest.approx(np.abs(fb.residual[k]).max(), rel=1e-5, abs=1e-6)
        assert gap < 0.2 * 6  # within one message's bound (REL 0.1 of a range under ~6)
