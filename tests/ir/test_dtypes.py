"""Sub-byte storage: pack/unpack are exact inverses; sizes agree with TensorType.nbytes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ir
from ir.dtypes import DTYPES, from_numpy, pack, packed_len, unpack

PACKED = [d for d in DTYPES.values() if d.packed]
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def codes(draw, dt):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9))
    return draw(hnp.arrays(dt.np, shape, elements=st.integers(dt.lo, dt.hi)))


@pytest.mark.parametrize("dt", PACKED, ids=str)
def test_pack_unpack_roundtrip(dt) -> None:
    @SETTINGS
    @given(codes(dt))
    def check(v: np.ndarray) -> None:
        n = v.shape[-1]
        p = pack(v, dt)
        assert p.dtype == np.uint8
        assert p.shape == v.shape[:-1] + (packed_len(n, dt),)  # ragged rows get a padded byte
        assert p.nbytes == ir.TensorType(dt, v.shape).nbytes()
        u = unpack(p, dt, n)
        assert u.dtype == dt.np and u.shape == v.shape
        np.testing.assert_array_equal(u, v)
        if dt.name == "tern":  # padding trits are 0
            assert (unpack(p, dt, p.shape[-1] * 5)[..., n:] == 0).all()
        elif (n * dt.bits) % 8:  # padding bits are zero
            assert not (p[..., -1] >> ((n * dt.bits) % 8)).any()

    check()


@pytest.mark.parametrize("dt", [d for d in PACKED if d.name != "tern"], ids=str)  # tern: base 3, tested below
def test_bytes_unpack_pack_roundtrip(dt) -> None:
    """Any bytes whose padding bits are zero (and whose codes are valid) are the packing of their unpacking."""

    @SETTINGS
    @given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5)),
           st.integers(0, 7))
    def check(b: np.ndarray, drop: int) -> None:
        nbits = b.shape[-1] * 8
        n = max(nbits // dt.bits - drop, 0)
        while n and packed_len(n, dt) < b.shape[-1]:  # keep exactly b.shape[-1] bytes per row
            n += 1
        if packed_len(n, dt) != b.shape[-1]:
            return
        bits = np.unpackbits(b, axis=-1, bitorder="little")
        bits[..., n * dt.bits:] = 0  # padding bits are zero
        b = np.packbits(bits, axis=-1, bitorder="little")
        u = unpack(b, dt, n)
        assert u.shape == b.shape[:-1] + (n,)
        assert u.min(initial=dt.lo) >= dt.lo and u.max(initial=dt.hi) <= dt.hi
        np.testing.assert_array_equal(pack(u, dt), b)

    check()


@SETTINGS
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5), elements=st.integers(0, 242)),
       st.integers(0, 4))
def test_trit_bytes_unpack_pack_roundtrip(b: np.ndarray, drop: int) -> None:
    """Bytes below 243 whose padding trits are 0 are the packing of their unpacking; 243.. are rejected."""
    tern = DTYPES["tern"]
    n = max(b.shape[-1] * 5 - drop, 0) if b.shape[-1] else 0
    t = unpack(b, tern, b.shape[-1] * 5)
    t[..., n:] = 0
    b = pack(t, tern)
    u = unpack(b, tern, n)
    np.testing.assert_array_equal(pack(u, tern), b)
    with pytest.raises(ValueError, match="not five base-3 trits"):
        unpack(np.array([243], np.uint8), tern, 5)


def test_byte_layout_is_little_endian_within_a_byte() -> None:
    """Golden bytes: the first code sits in the lowest bits."""
    assert pack(np.array([1, 2], np.uint8), DTYPES["u4"]).tolist() == [0x21]
    assert pack(np.array([-1, 7, -8], np.int8), DTYPES["i4"]).tolist() == [0x7F, 0x08]
    assert pack(np.array([3, 0, 1, 2, 3], np.uint8), DTYPES["u2"]).tolist() == [0b10010011, 0b11]
    # 3-bit codes straddle bytes: 5 | 6<<3 | 7<<6 = 0b11_110_101, then the last 1 bit of 7
    assert pack(np.array([5, 6, 7], np.uint8), DTYPES["u3"]).tolist() == [0b11110101, 0b1]
    assert pack(np.array([-2, -1, 0, 1], np.int8), DTYPES["i2"]).tolist() == [0b01001110]
    assert pack(np.array([-1, 0, 1], np.int8), DTYPES["tern"]).tolist() == [0 + 1 * 3 + 2 * 9 + 1 * 27 + 1 * 81]  # base 3, padded with 0
    assert unpack(np.array([0xF8], np.uint8), DTYPES["i4"], 2).tolist() == [-8, -1]


@pytest.mark.parametrize("dt", PACKED, ids=str)
def test_out_of_range_values_are_rejected(dt) -> None:
    for bad in (dt.lo - 1, dt.hi + 1):
        v = np.array([dt.lo, bad, dt.hi], np.int16)
        with pytest.raises(ValueError, match=str(dt)):
            pack(v, dt)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 0), (0, 3), (4, 8), (1, 1)])
def test_nbytes(shape) -> None:
    for dt in DTYPES.values():
        t = ir.TensorType(dt, shape)
        if dt.packed:
            want = int(np.prod(shape[:-1])) * packed_len(shape[-1], dt)
            assert t.nbytes() == want == pack(np.zeros(shape, dt.np), dt).nbytes
        else:
            assert t.nbytes() == np.zeros(shape, dt.np).nbytes
    assert ir.TensorType(DTYPES["i4"], (3, 7)).nbytes() == 12
    assert ir.TensorType(DTYPES["tern"], (10,)).nbytes() == 2  # five trits a byte
    assert ir.TensorType(DTYPES["u2"], (2, 4)).nbytes() == 2


def test_param_bytes_sums_packed_params() -> None:
    g = ir.parse("graph @g(%x: f32[2]) {\n  param @a: i4[3, 7]\n  param @b: f16[3]\n  return %x\n}\n")
    assert g.param_bytes() == 12 + 6


def test_dtype_values_and_lookup() -> None:
    for name, dt in DTYPES.items():
        assert str(dt) == name and ir.dtype(name) is dt
        assert hash(dt) == hash(ir.DType(**dt.__dict__)) and dt == ir.DType(**dt.__dict__)
        if not dt.packed:
            assert from_numpy(dt.np) is dt
            assert dt.np.itemsize * 8 == dt.bits
        else:
            assert dt.np.itemsize == 1 and dt.lo < dt.hi
            assert dt.hi - dt.lo + 1 <= 1 << dt.bits
    with pytest.raises(KeyError, match="unknown dtype 'f8'"):
        ir.dtype("f8")
    with pytest.raises(KeyError):
        from_numpy(np.dtype(np.complex64))
    assert DTYPES["bf16"].np == np.dtype("bfloat16") and DTYPES["bf16"].is_float
