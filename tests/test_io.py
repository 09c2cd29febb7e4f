"""Parameter files: .npz round trips, atomic writes, and the restricted unpickler."""

import builtins
import io
import os
import pickle

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
        "rec": np.zeros(2, dtype=[("a", "<f4"), ("b", "u1")]),
        "s": np.float64(2.5),
        "plain": [1, 2.5, "x", b"y", (None, True), {"k": -3}],
    }
    data = pickle.dumps(obj, protocol=protocol)
    back = restricted_load(io.BytesIO(data))
    # The oracle is the unrestricted unpickler on the same (harmless) bytes.
    expected = pickle.loads(data)
    for key in ("W", "F", "i", "rec"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == expected[key].dtype
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

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
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
