"""Parameter files: .npz round trips, atomic writes, and the restricted unpickler."""

import builtins
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

import xpnet
from xpnet.io import (
    ParameterFileError,
    UnsafePickleError,
    atomic_write,
    load_params,
    restricted_load,
    save_params,
)

BOOK_PICKLES = {
    "ch03_sample_weight.pkl": (
        np.float32,
        {"W1": (784, 50), "b1": (50,), "W2": (50, 100), "b2": (100,), "W3": (100, 10),
         "b3": (10,)},
    ),
    "ch07_simple_convnet_params.pkl": (
        np.float64,
        {"W1": (30, 1, 5, 5), "b1": (30,), "W2": (4320, 100), "b2": (100,), "W3": (100, 10),
         "b3": (10,)},
    ),
    "ch08_deep_convnet_params.pkl": (
        np.float64,
        {"W1": (16, 1, 3, 3), "b1": (16,), "W2": (16, 16, 3, 3), "b2": (16,),
         "W3": (32, 16, 3, 3), "b3": (32,), "W4": (32, 32, 3, 3), "b4": (32,),
         "W5": (64, 32, 3, 3), "b5": (64,), "W6": (64, 64, 3, 3), "b6": (64,),
         "W7": (1024, 50), "b7": (50,), "W8": (50, 10), "b8": (10,)},
    ),
}


# ---------------------------------------------------------------------------
# The book's pickles
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BOOK_PICKLES))
def test_book_pickles_load_with_keys_shapes_dtypes(book_fixture, name, tmp_path):
    dtype, shapes = BOOK_PICKLES[name]
    params = load_params(book_fixture(name))
    assert set(params) == set(shapes)
    for key, shape in shapes.items():
        arr = params[key]
        assert type(arr) is np.ndarray
        assert arr.shape == shape, key
        assert arr.dtype == dtype, key
        assert np.all(np.isfinite(arr)), key
    # Trained weights are not constant: a loader that returned zeros would fail here.
    assert all(np.std(params[k]) > 0 for k in shapes if k.startswith("W"))
    # .pkl -> .npz -> dict keeps every value bit for bit.
    out = save_params(params, tmp_path / "p.npz")
    again = load_params(out)
    for key in shapes:
        np.testing.assert_array_equal(again[key], params[key])
        assert again[key].dtype == params[key].dtype


def test_truncated_book_pickle_is_a_clear_error(book_fixture, tmp_path):
    data = book_fixture("ch03_sample_weight.pkl").read_bytes()
    bad = tmp_path / "cut.pkl"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ParameterFileError, match="cut.pkl"):
        load_params(bad)


# ---------------------------------------------------------------------------
# Plain data and NumPy arrays of every pickle protocol load
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_load_rebuilds_arrays_and_plain_data(protocol):
    obj = {
        "W": np.arange(12, dtype=np.float32).reshape(3, 4),
        "F": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "i": np.array([1, -2], dtype=">i4"),
        "s": np.float64(2.5),
        "plain": [1, 2.5, "x", b"y", (None, True), {"k": -3}],
    }
    data = pickle.dumps(obj, protocol=protocol)
    back = restricted_load(io.BytesIO(data))
    # The oracle is the unrestricted unpickler on the same (harmless) bytes.
    expected = pickle.loads(data)
    for key in ("W", "F", "i"):
        np.testing.assert_array_equal(back[key], obj[key])
        # the same type; the byte order may come back native (as NumPy's own setstate does)
        assert back[key].dtype.newbyteorder("=") == expected[key].dtype.newbyteorder("=")
    assert back["F"].flags.f_contiguous
    assert back["s"] == 2.5 and back["s"].dtype == np.float64
    assert back["plain"] == obj["plain"]


def test_load_params_from_pickle_of_scalars_and_arrays(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"W": np.ones((2, 2), np.float32), "lr": np.float64(0.1)}))
    params = load_params(path)
    assert params["W"].dtype == np.float32 and params["lr"].shape == ()


# ---------------------------------------------------------------------------
# Malicious pickles are refused before anything runs
# ---------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)`` -- the shape of every pickle exploit."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_payloads(marker):
    return {
        "os.system": _Reduce(os.system, (f"touch '{marker}'",)),
        "builtins.eval": _Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        # A NumPy function that is not an array reconstructor, but writes a file.
        "numpy.savetxt": _Reduce(np.savetxt, (str(marker), np.zeros(1))),
    }


@pytest.mark.parametrize("refused", ["os.system", "builtins.eval", "numpy.savetxt"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path, refused, protocol):
    marker = tmp_path / "marker"
    payload = _evil_payloads(marker)[refused]
    # Hidden inside a legitimate-looking parameter dict, after a real array.
    data = pickle.dumps({"W1": np.ones(3), "b1": [payload]}, protocol=protocol)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)

    # The global's module path differs per platform (os.system pickles as posix.system).
    refused_re = r"refused to load global '\w+\.(system|eval|savetxt)'"
    with pytest.raises(UnsafePickleError, match=refused_re):
        load_params(path)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        load_params(path)
    with pytest.raises(UnsafePickleError):
        restricted_load(io.BytesIO(data))
    assert not marker.exists()

    # Sanity check of the test itself: an unrestricted load does run the payload.
    if refused == "numpy.savetxt":
        pickle.loads(data)
        assert marker.exists()


def test_refused_error_names_the_global():
    data = pickle.dumps(_Reduce(builtins.eval, ("1+1",)), protocol=2)
    with pytest.raises(UnsafePickleError, match=r"'builtins\.eval'"):
        restricted_load(io.BytesIO(data))
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_object_arrays_are_refused():
    data = pickle.dumps(np.array([1, "a"], dtype=object))
    with pytest.raises(UnsafePickleError, match="object dtype"):
        restricted_load(io.BytesIO(data))


def test_codecs_encode_only_for_latin1():
    # Protocol 2 spells bytes as _codecs.encode(str, 'latin1'); any other codec is refused.
    data = pickle.dumps(_Reduce(__import__("codecs").encode, ("x", "rot13")), protocol=2)
    with pytest.raises(UnsafePickleError, match="rot13"):
        restricted_load(io.BytesIO(data))


def test_pickle_that_is_not_a_dict_of_arrays(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([np.ones(2)]))
    with pytest.raises(ParameterFileError, match="expected a dict"):
        load_params(path)
    path.write_bytes(pickle.dumps({"W": "not an array"}))
    with pytest.raises(ParameterFileError, match="'W'.*expected a NumPy array"):
        load_params(path)


# ---------------------------------------------------------------------------
# .npz round trip and bad files
# ---------------------------------------------------------------------------


def test_npz_roundtrip_keeps_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(1)
    params = {
        "W1": rng.standard_normal((5, 3)).astype(np.float32),
        "b1": rng.standard_normal(3),
        "gamma1": np.ones(3, np.float16),
        "W2": rng.standard_normal((2, 3, 4, 4)),
        "step": np.int64(7),
    }
    path = save_params(params, tmp_path / "params.npz")
    assert path == tmp_path / "params.npz"
    with np.load(path, allow_pickle=False) as z:  # a plain .npz any NumPy can read
        assert sorted(z.files) == sorted(params)
    back = load_params(path)
    assert sorted(back) == sorted(params)
    for key, value in params.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == np.asarray(value).dtype
    assert [p.name for p in tmp_path.iterdir()] == ["params.npz"]  # no temporary left behind


def test_save_params_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="dict"):
        save_params([np.ones(2)], tmp_path / "p.npz")
    with pytest.raises(ValueError, match="non-empty strings"):
        save_params({1: np.ones(2)}, tmp_path / "p.npz")
    with pytest.raises(TypeError, match="object dtype"):
        save_params({"W": np.array([None])}, tmp_path / "p.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_params({"W": np.ones(2)}, tmp_path / "no" / "such" / "p.npz")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_params(tmp_path / "nothere.npz")


def test_truncated_and_corrupt_npz_name_the_file(tmp_path):
    good = save_params({"W": np.arange(1000.0)}, tmp_path / "good.npz")
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) - 300])
    with pytest.raises(ParameterFileError, match="cut.npz"):
        load_params(cut)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ParameterFileError, match="garbage.npz"):
        load_params(garbage)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ParameterFileError, match="empty.npz.*empty"):
        load_params(empty)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ParameterFileError, match="neither an .npz archive nor a pickle"):
        load_params(text)


def test_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, W=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafePickleError, match="obj.npz"):
        load_params(path)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def test_atomic_write_keeps_old_file_when_write_fails_midway(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as f:
            f.write(b"new contents, half")
            f.flush()
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_save_params_failing_midway_keeps_old_params(tmp_path, monkeypatch):
    path = save_params({"W": np.zeros(3)}, tmp_path / "p.npz")

    def broken_write_array(file, array, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write_array)
    with pytest.raises(OSError, match="no space"):
        save_params({"W": np.ones(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_params(path)["W"], np.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_atomic_write_text_mode_and_permissions(tmp_path):
    path = tmp_path / "log.txt"
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("é\n")
    assert path.read_text(encoding="utf-8") == "é\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(ValueError, match="writing only"):
        with atomic_write(path, "rb"):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not xpnet.gpu_available(), reason="needs a CUDA GPU with CuPy")
def test_save_params_copies_gpu_arrays_to_host(tmp_path):
    w = xpnet.to_device(np.arange(6, dtype=np.float32).reshape(2, 3), "gpu")
    back = load_params(save_params({"W": w}, tmp_path / "g.npz"))
    assert type(back["W"]) is np.ndarray and back["W"].dtype == np.float32
    np.testing.assert_array_equal(back["W"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_book_ch03_weights_give_the_books_accuracy(book_fixture, mnist10k_dir):
    # Values, not just shapes: the ch. 3 network with these weights scores 93.74% on the
    # 10k digits (the figure the book's own code gives, see the fixtures' README).
    from xpnet.datasets import load_idx_pair

    p = load_params(book_fixture("ch03_sample_weight.pkl"))
    x, t = load_idx_pair(mnist10k_dir / "images-idx3-ubyte.gz",
                         mnist10k_dir / "labels-idx1-ubyte.gz")

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    h = sigmoid(sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
    y = h @ p["W3"] + p["b3"]
    assert y.dtype == np.float32
    assert np.mean(y.argmax(axis=1) == t) == pytest.approx(0.9374, abs=5e-5)


# ---------------------------------------------------------------------------
# Hostile files: only plain numeric arrays of the size the file holds ever load
# ---------------------------------------------------------------------------
#
# The pickles below are written opcode by opcode (pickletools names), as an attacker would:
# NumPy's own reducers never emit them.


def _op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _op_str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _op_bytes(data):
    return b"B" + struct.pack("<I", len(data)) + data  # BINBYTES


def _op_int(n):
    return b"J" + struct.pack("<i", n)  # BININT


def _op_tuple(*items):
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


_NONE, _TRUE, _FALSE = b"N", b"\x88", b"\x89"
_REDUCE, _BUILD, _POP, _STOP = b"R", b"b", b"0", b"."


def _op_put(i):
    return b"q" + bytes([i])  # BINPUT


def _op_get(i):
    return b"h" + bytes([i])  # BINGET


def _op_dtype(type_string, state):
    """numpy.dtype(type_string, False, True), then BUILD ``state`` (opcodes for a tuple)."""
    return (_op_global("numpy", "dtype") + _op_tuple(_op_str(type_string), _FALSE, _TRUE)
            + _REDUCE + state + _BUILD)


def _dtype_state(order="|", names=_NONE, fields=_NONE, elsize=-1, alignment=-1, flags=0):
    return _op_tuple(_op_int(3), _op_str(order), _NONE, names, fields, _op_int(elsize),
                     _op_int(alignment), _op_int(flags))


def _op_array(shape, dtype_ops, raw):
    """_reconstruct(ndarray, (0,), b'b'), then BUILD (1, shape, dtype, False, raw)."""
    return (_op_global("numpy.core.multiarray", "_reconstruct")
            + _op_tuple(_op_global("numpy", "ndarray"), _op_tuple(_op_int(0)), _op_bytes(b"b"))
            + _REDUCE
            + _op_tuple(_op_int(1), _op_tuple(*map(_op_int, shape)), dtype_ops, _FALSE,
                        _op_bytes(raw))
            + _BUILD)


def _op_params(**entries):
    """A pickled dict {name: value opcodes}: what load_params expects."""
    body = b"".join(_op_str(k) + v for k, v in entries.items())
    return b"\x80\x03}(" + body + b"u" + _STOP  # EMPTY_DICT MARK ... SETITEMS STOP


def _load_bytes(tmp_path, data, name="hostile.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_params(path)


def test_opcode_helpers_build_a_real_array(tmp_path):
    # the helpers spell NumPy's own pickle of a float64 array: it loads
    ops = _op_array((2,), _op_dtype("f8", _dtype_state("<")), np.array([1.5, -2.0]).tobytes())
    np.testing.assert_array_equal(_load_bytes(tmp_path, _op_params(W1=ops))["W1"], [1.5, -2.0])


def test_void_dtype_with_a_field_outside_its_item_is_refused(tmp_path):
    # a V8 item whose float64 field sits 4096 bytes further on: reading it reads the heap
    field = _op_tuple(_op_dtype("f8", _dtype_state("<")), _op_int(4096))
    fields = b"}" + _op_str("f") + field + b"s"  # EMPTY_DICT key value SETITEM
    forged = _op_dtype("V8", _dtype_state("|", _op_tuple(_op_str("f")), fields, 8, 1, 16))
    data = _op_params(W1=_op_array((2,), forged, bytes(16)))
    with pytest.raises(UnsafePickleError, match="only plain numeric arrays"):
        _load_bytes(tmp_path, data)


@pytest.mark.parametrize("type_string", ["V8", "f8"])
def test_dtype_rebuilt_after_its_array_was_made_changes_nothing(tmp_path, type_string):
    # build an 8-byte array with the dtype, then BUILD the same dtype again with a 1 MB
    # itemsize: the array must not read 1 MB items out of its 8 bytes (today the V8 one does)
    state = _dtype_state("<") if type_string == "f8" else _dtype_state("|", elsize=8)
    dtype_ops = _op_dtype(type_string, state)
    array = _op_array((1,), dtype_ops, np.float64(3.0).tobytes())
    # memo 0 is the dtype: put it there right after REDUCE, then rebuild it after the array
    reduce_at = array.index(_REDUCE + b"(", array.index(b"numpy\ndtype"))
    array = array[: reduce_at + 1] + _op_put(0) + array[reduce_at + 1:]
    enlarge = _op_get(0) + _dtype_state("|", elsize=1 << 20) + _BUILD + _POP
    data = b"\x80\x03}(" + _op_str("W1") + array + enlarge + b"u" + _STOP
    try:
        params = _load_bytes(tmp_path, data)
    except (UnsafePickleError, ParameterFileError):
        return  # refused outright: as good
    assert params["W1"].dtype == np.float64 and params["W1"].dtype.itemsize == 8
    np.testing.assert_array_equal(params["W1"], [3.0])


def test_calling_ndarray_directly_is_refused(tmp_path):
    # ndarray(shape, dtype, buffer, offset, strides): an array over any memory
    call = (_op_global("numpy", "ndarray")
            + _op_tuple(_op_tuple(_op_int(4)), _op_str("f8"), _op_bytes(bytes(8)), _op_int(0),
                        _op_tuple(_op_int(8)))
            + _REDUCE)
    with pytest.raises(UnsafePickleError, match="numpy.ndarray"):
        _load_bytes(tmp_path, _op_params(W1=call))


def test_array_data_shorter_than_its_shape_is_refused(tmp_path):
    ops = _op_array((10**6,), _op_dtype("f8", _dtype_state("<")), bytes(8))
    with pytest.raises(ParameterFileError, match="declares .* but holds 8 bytes"):
        _load_bytes(tmp_path, _op_params(W1=ops))


def test_huge_declared_length_is_a_parameter_file_error(tmp_path):
    # BINBYTES8 declaring 2**62 bytes that are not there (today: MemoryError)
    data = b"\x80\x04}(" + _op_str("W1") + b"\x8e" + struct.pack("<Q", 1 << 62) + b"u."
    with pytest.raises(ParameterFileError, match="truncated or corrupt"):
        _load_bytes(tmp_path, data)


def test_pickle_larger_than_the_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps({"W": np.zeros(1000)}))
    monkeypatch.setattr(xpnet.io, "MAX_PARAMETER_BYTES", 4000)
    with pytest.raises(ParameterFileError, match="MAX_PARAMETER_BYTES"):
        load_params(path)


NON_NUMERIC = {
    "structured": [("a", "<f4"), ("b", "u1")],
    "subarray": [("a", "<f8", (2,))],
    "unicode": "<U3",
    "bytes": "S3",
    "void": "V8",
    "datetime": "<M8[s]",
    "timedelta": "<m8[s]",
    "complex": "<c16",
    "longdouble": np.longdouble,
}


@pytest.mark.parametrize("kind", sorted(NON_NUMERIC))
@pytest.mark.parametrize("protocol", [2, 5])
def test_non_numeric_pickled_arrays_are_refused(tmp_path, kind, protocol):
    data = pickle.dumps({"W1": np.zeros(2, NON_NUMERIC[kind])}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="only plain numeric arrays"):
        _load_bytes(tmp_path, data)


@pytest.mark.parametrize("kind", sorted(NON_NUMERIC))
def test_non_numeric_npz_arrays_are_refused(tmp_path, kind):
    path = tmp_path / "odd.npz"
    np.savez(path, W1=np.ones(3), b1=np.zeros(2, NON_NUMERIC[kind]))
    with pytest.raises(ParameterFileError, match="odd.npz.*'b1.npy'.*only bool, integer"):
        load_params(path)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.int32, np.uint64,
                                   np.float16, np.float32, ">f8", "<i8"])
def test_numeric_arrays_round_trip_in_both_formats(tmp_path, dtype):
    value = np.arange(6).reshape(2, 3).astype(dtype)
    for name in ("p.npz", "p.pkl"):
        back = load_params(save_params({"W": value}, tmp_path / name))["W"]
        np.testing.assert_array_equal(back, value)
        assert back.dtype.newbyteorder("=") == value.dtype.newbyteorder("=")
        assert type(back) is np.ndarray and back.flags.writeable


def _npz_with_header(tmp_path, header_shape, data):
    """An .npz whose W1.npy declares ``header_shape`` (float64) over ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("W1.npy", buf.getvalue() + data)
    return path


@pytest.mark.parametrize("shape", [(1 << 40,), (1 << 20, 1 << 20), (3,)])
def test_npz_declaring_more_than_it_holds_is_refused(tmp_path, shape):
    # today: MemoryError (or a wrong-sized read) for the huge ones
    path = _npz_with_header(tmp_path, shape, bytes(16))
    with pytest.raises(ParameterFileError, match="lying.npz.*declares"):
        load_params(path)


def test_npz_zip_bomb_is_refused(tmp_path):
    # 8 MiB of zeros deflate to 8 KB: a ratio of 1000 (a 2 MB file would inflate to 2 GiB)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, W1=np.zeros(1 << 20))
    assert path.stat().st_size < 20_000
    with pytest.raises(ParameterFileError, match="bomb.npz.*zip bomb"):
        load_params(path)


def test_npz_beyond_the_size_cap_is_refused(tmp_path, monkeypatch):
    path = save_params({"W1": np.zeros(1000)}, tmp_path / "big.npz")
    monkeypatch.setattr(xpnet.io, "MAX_PARAMETER_BYTES", 4000)
    with pytest.raises(ParameterFileError, match="big.npz.*MAX_PARAMETER_BYTES"):
        load_params(path)


def _rewrite_without(path, hidden):
    """The archive at ``path`` as a corrupt directory would show it: member ``hidden``
    gone from the directory, everything else (the manifest comment too) unchanged."""
    with zipfile.ZipFile(path) as src:
        members = [(i, src.read(i)) for i in src.infolist() if i.filename != hidden]
        comment = src.comment
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in members:
            dst.writestr(info, data)
        dst.comment = comment


def test_npz_directory_hiding_a_member_is_an_error(tmp_path):
    path = save_params({"W1": np.ones(3), "b1": np.zeros(3), "W2": np.ones(2)},
                       tmp_path / "params.npz")
    _rewrite_without(path, "b1.npy")
    with pytest.raises(ParameterFileError, match=r"params.npz is corrupt.*missing \['b1'\]"):
        load_params(path)


def test_npz_without_manifest_still_loads(tmp_path):
    # archives from np.savez (or older xpnet) have no manifest: nothing to check them by
    path = tmp_path / "plain.npz"
    np.savez(path, W1=np.ones(3), b1=np.zeros(2))
    back = load_params(path)
    assert sorted(back) == ["W1", "b1"]


def test_single_bit_flips_are_errors_or_harmless(tmp_path):
    # one flipped bit anywhere in an .npz (directory, headers, manifest, data) must give
    # ParameterFileError or exactly the arrays written -- never fewer, never other values
    params = {"W1": np.arange(4.0), "b1": np.ones(2, np.float32), "W2": np.arange(3)}
    good = save_params(params, tmp_path / "good.npz").read_bytes()
    path = tmp_path / "flipped.npz"
    directory = good.index(b"PK\x01\x02")  # the central directory, then its end record
    silent = []
    for pos in range(len(good)):
        # three bits a byte of the directory, one of the CRC-checked members, in turn
        for bit in {pos % 8, (pos + 3) % 8, (pos + 5) % 8} if pos >= directory else [pos % 8]:
            data = bytearray(good)
            data[pos] ^= 1 << bit
            path.write_bytes(bytes(data))
            try:
                back = load_params(path)
            except ParameterFileError:
                continue
            same = sorted(back) == sorted(params) and all(
                back[k].dtype == params[k].dtype and np.array_equal(back[k], params[k])
                for k in params)
            if not same:
                silent.append((pos, bit, sorted(back)))
    assert not silent, f"{len(silent)} flips loaded wrong parameters, e.g. {silent[:5]}"


# ---------------------------------------------------------------------------
# A .pkl name writes the book's format
# ---------------------------------------------------------------------------


def test_pkl_name_writes_a_pickle_the_books_reader_loads(tmp_path):
    from xpnet.models import TwoLayerNet

    net = TwoLayerNet(input_size=6, hidden_size=4, output_size=3)
    path = net.save_params(tmp_path / "params.pkl")
    assert path.read_bytes()[:1] == b"\x80"  # a pickle, not an .npz under a .pkl name
    with open(path, "rb") as f:  # the book's load_params: pickle.load, then params[key] = val
        params = pickle.load(f)
    assert type(params) is dict and sorted(params) == sorted(net.params)
    for key, value in net.params.items():
        assert type(params[key]) is np.ndarray and params[key].dtype == value.dtype
        np.testing.assert_array_equal(params[key], value)
    # and xpnet's restricted loader reads it back into another network
    other = TwoLayerNet(input_size=6, hidden_size=4, output_size=3)
    other.load_params(path)
    for key in net.params:
        np.testing.assert_array_equal(other.params[key], net.params[key])
    assert [p.name for p in tmp_path.iterdir()] == ["params.pkl"]


def test_npz_stays_the_default_format(tmp_path):
    from xpnet.models import TwoLayerNet

    path = TwoLayerNet(input_size=6, hidden_size=4, output_size=3).save_params(
        tmp_path / "weights")
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["W1", "W2", "b1", "b2"]
