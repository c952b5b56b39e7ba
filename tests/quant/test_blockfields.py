"""Block fields (slimedge.quant.blockfields): codes + scale fields out of real blocks and back, bit-exact."""

import numpy as np
import pytest

from slimedge.quant import dequantize, quantize
from slimedge.quant.blockfields import SUPPORTED, code_bits, dequantize_fields, pack, spec_of, unpack
from slimedge.quant.types import block_size, type_size

TYPES = sorted(SUPPORTED)


def _weights(seed: int, rows: int = 8, cols: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[0, :40] = 0.0                                # an all-zero block / sub-block
    w[1] += 0.03                                   # shifted rows: non-trivial mins
    w[2, 7] = 0.9                                  # an outlier
    return w


@pytest.mark.parametrize("qtype", TYPES)
def test_round_trip_is_bit_exact(qtype):
    w = _weights(1)
    q = quantize(w, qtype)
    f = unpack(q, qtype)
    assert f.codes.shape == (q.size // type_size(qtype), spec_of(qtype).n_sub, block_size(qtype) // spec_of(qtype).n_sub)
    assert np.array_equal(pack(f, q), q.reshape(-1, type_size(qtype)))


@pytest.mark.parametrize("qtype", TYPES)
def test_fields_dequantize_like_the_registry(qtype):
    w = _weights(2)
    q = quantize(w, qtype)
    got = dequantize_fields(unpack(q, qtype)).reshape(w.shape)
    want = dequantize(q, qtype, w.shape[-1])
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit (signed zeros aside)


@pytest.mark.parametrize("qtype", TYPES)
def test_changed_fields_are_written_where_dequantize_reads_them(qtype):
    """New d / dmin / sub-scales packed into the bytes dequantize (registry) to the fields' formula."""
    rng = np.random.default_rng(3)
    s = spec_of(qtype)
    q = quantize(_weights(3), qtype)
    f = unpack(q, qtype)
    codes0 = f.codes.copy()
    f.d = (f.d * rng.uniform(0.5, 1.5, f.d.shape)).astype(np.float32)
    if f.dmin is not None:
        f.dmin = (f.dmin * rng.uniform(0.5, 1.5, f.dmin.shape) + 1e-3).astype(np.float32)
    if f.sc is not None:
        f.sc = rng.integers(s.sc_range[0], s.sc_range[1] + 1, f.sc.shape).astype(np.int16)
    if f.mn is not None:
        f.mn = rng.integers(s.mn_range[0], s.mn_range[1] + 1, f.mn.shape).astype(np.int16)
    q2 = pack(f, q)
    back = unpack(q2, qtype)
    assert np.array_equal(back.codes, codes0)                       # codes untouched
    assert np.array_equal(back.d, f.d.astype(np.float16).astype(np.float32))
    if f.sc is not None:
        assert np.array_equal(back.sc, f.sc)
    if f.mn is not None:
        assert np.array_equal(back.mn, f.mn)
    want = dequantize(q2, qtype, block_size(qtype)).reshape(-1)
    assert np.array_equal(dequantize_fields(back).reshape(-1), want)


# the code ranges ggml's dequantization gives each type's bits (q - 32 for Q6_K, q - 4 for Q3_K's clear high bit...)
CODE_RANGES = {"Q2_K": (0, 3), "Q3_K": (-4, 3), "Q4_K": (0, 15), "Q5_K": (0, 31), "Q6_K": (-32, 31),
               "Q4_0": (-8, 7), "Q4_1": (0, 15), "Q5_0": (-16, 15), "Q5_1": (0, 31), "Q8_0": (-128, 127),
               "IQ4_NL": (0, 15), "IQ4_XS": (0, 15)}


@pytest.mark.parametrize("qtype", TYPES)
def test_new_codes_are_written_where_gguf_py_reads_them(qtype):
    """pack(codes=True): the bit map probed on slimedge's dequantization, checked against gguf-py's own."""
    import gguf

    cb = code_bits(qtype)
    assert (cb.lo, cb.hi) == CODE_RANGES[qtype]
    q = quantize(_weights(5), qtype)
    f = unpack(q, qtype)
    assert np.array_equal(pack(f, q, codes=True), q.reshape(-1, type_size(qtype)))   # same codes: same bytes
    rng = np.random.default_rng(5)
    f.codes = rng.integers(cb.lo, cb.hi + 1, f.codes.shape).astype(np.int16)
    f.codes[0] = cb.lo
    f.codes[1] = cb.hi                                              # both ends of the range
    q2 = pack(f, q, codes=True)
    back = unpack(q2, qtype)
    assert np.array_equal(back.codes, f.codes) and np.array_equal(back.d, f.d)
    want = gguf.quants.dequantize(q2, gguf.GGMLQuantizationType[qtype]).reshape(-1)
    assert np.array_equal(dequantize_fields(back).reshape(-1), want)
    f.codes[0, 0, 0] = cb.hi + 1
    with pytest.raises(ValueError, match=f"{qtype}: codes outside"):
        pack(f, q, codes=True)


def test_out_of_range_sub_scale_is_refused():
    q = quantize(_weights(4), "Q4_K")
    f = unpack(q, "Q4_K")
    f.sc = f.sc.copy()
    f.sc[0, 0] = 64
    with pytest.raises(ValueError, match="Q4_K: sub-scales outside 0..63"):
        pack(f, q)


def test_unsupported_type():
    with pytest.raises(KeyError):
        spec_of("IQ2_XXS")
