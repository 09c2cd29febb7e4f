"""IDX reading, load_mnist's search order, and downloads against a local HTTP server."""

import gzip
import hashlib
import http.server
import io
import socket
import sys
import threading
import time

import numpy as np
import pytest

from xpnet import datasets
from xpnet.datasets import (
    FILES,
    DatasetError,
    DatasetNotFoundError,
    DownloadWarning,
    load_idx,
    load_idx_pair,
    load_mnist,
)

# ---------------------------------------------------------------------------
# Generated IDX files
# ---------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 <ndim> unless given)."""
    if magic is None:
        magic = 0x0800 | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def tiny_split(n, seed, rows=28, cols=28):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, rows, cols), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8))


def tiny_files(seed=0, n_train=6, n_test=3):
    """The four standard files of a tiny dataset: {file name: gzipped bytes}, and the arrays."""
    (xi, yi), (xt, yt) = tiny_split(n_train, seed), tiny_split(n_test, seed + 1)
    arrays = {"train_img": xi, "train_label": yi, "test_img": xt, "test_label": yt}
    files = {FILES[k]: gzip.compress(idx_bytes(a), mtime=0) for k, a in arrays.items()}
    return files, arrays


def write_files(directory, files, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (directory / name).write_bytes(data)
        else:
            (directory / name.removesuffix(".gz")).write_bytes(gzip.decompress(data))
    return directory


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """No test reads or fills the user's real cache."""
    monkeypatch.setenv("XPNET_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------
# load_idx
# ---------------------------------------------------------------------------


def test_load_idx_gzipped_or_not_detected_by_content(tmp_path):
    images, labels = tiny_split(4, seed=3)
    raw = idx_bytes(images)
    (tmp_path / "plain.gz").write_bytes(raw)  # the name lies: the content decides
    (tmp_path / "packed.bin").write_bytes(gzip.compress(raw))
    for name in ("plain.gz", "packed.bin"):
        out = load_idx(tmp_path / name, magic=2051)
        assert out.dtype == np.uint8 and out.shape == (4, 28, 28)
        np.testing.assert_array_equal(out, images)
        assert out.flags.writeable
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(load_idx(tmp_path / "labels", magic=2049), labels)


def test_load_idx_other_types_in_native_byte_order(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    header = (0x0C02).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    (tmp_path / "ints").write_bytes(header + arr.tobytes())
    out = load_idx(tmp_path / "ints")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(-6, 6).reshape(3, 4))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_names_file_and_byte_counts(tmp_path, gz):
    images, _ = tiny_split(3, seed=0)
    data = idx_bytes(images)[:-100]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError) as info:
        load_idx(path)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg
    assert f"need {3 * 784} bytes" in msg and f"has {3 * 784 - 100}" in msg


def test_trailing_garbage_is_an_error(tmp_path):
    _, labels = tiny_split(5, seed=0)
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(labels) + b"\0\0")
    with pytest.raises(DatasetError, match=r"labels\.idx is followed by trailing data.* has 7"):
        load_idx(path)


def test_truncated_gzip_stream(tmp_path):
    images, _ = tiny_split(3, seed=0)
    packed = gzip.compress(idx_bytes(images))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DatasetError, match=r"cut\.gz is a truncated gzip file"):
        load_idx(path)


def test_wrong_magic_names_file_and_number(tmp_path):
    images, labels = tiny_split(2, seed=0)
    labels_path = tmp_path / "labels"
    labels_path.write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetError, match=r"labels has magic number 2049, expected 2051"):
        load_idx(labels_path, magic=2051)
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DatasetError, match=r"junk\.gz is not an IDX file: magic number"):
        load_idx(junk)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match="too short"):
        load_idx(tiny)
    with pytest.raises(DatasetError, match="does not exist"):
        load_idx(tmp_path / "absent")


def test_forged_huge_dimensions_do_not_overflow(tmp_path):
    header = (0x0803).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") * 3
    path = tmp_path / "forged"
    path.write_bytes(header + b"\0" * 10)
    with pytest.raises(DatasetError, match="truncated"):
        load_idx(path)


# ---------------------------------------------------------------------------
# Pairs and the book's formats
# ---------------------------------------------------------------------------


def test_count_mismatch_between_images_and_labels(tmp_path):
    images, _ = tiny_split(5, seed=0)
    _, labels = tiny_split(4, seed=1)
    (tmp_path / "i").write_bytes(idx_bytes(images))
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetError, match="holds 5 images but .* holds 4 labels"):
        load_idx_pair(tmp_path / "i", tmp_path / "l")


def test_label_out_of_range(tmp_path):
    images, labels = tiny_split(3, seed=0)
    labels[1] = 12
    (tmp_path / "i").write_bytes(idx_bytes(images))
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetError, match="label 12; labels must be 0..9"):
        load_idx_pair(tmp_path / "i", tmp_path / "l")


def test_load_mnist_formats_match_the_book(tmp_path):
    files, arrays = tiny_files(seed=5)
    d = write_files(tmp_path / "d", files)
    (x, t), (xt, tt) = load_mnist(data_dir=d)
    assert x.shape == (6, 784) and x.dtype == np.float32
    assert xt.shape == (3, 784) and t.shape == (6,) and t.dtype == np.uint8
    np.testing.assert_array_equal(x, arrays["train_img"].reshape(6, 784).astype(np.float32) / 255)
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(t, arrays["train_label"])

    (x, t), _ = load_mnist(normalize=False, flatten=False, data_dir=d)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0], arrays["train_img"])

    (x, t), (xt, tt) = load_mnist(False, True, True, data_dir=d)  # positional, as the book
    assert x.dtype == np.uint8 and x.shape == (6, 784)
    assert t.shape == (6, 10) and t.dtype == np.float64  # the book's np.zeros((N, 10))
    np.testing.assert_array_equal(t.argmax(axis=1), arrays["train_label"])
    np.testing.assert_array_equal(t.sum(axis=1), np.ones(6))
    np.testing.assert_array_equal(tt.argmax(axis=1), arrays["test_label"])


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*fashion-mnist"):
        load_mnist(dataset="cifar")


# ---------------------------------------------------------------------------
# Search order
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny_dataset(monkeypatch, tmp_path):
    """Register a dataset 'tiny' with no mirrors and one system directory."""
    files, arrays = tiny_files(seed=7)
    entry = {
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "mirrors": [],
        "system_dirs": [str(tmp_path / "system")],
        "package": None,
    }
    monkeypatch.setitem(datasets.DATASETS, "tiny", entry)
    return entry, files, arrays


def test_search_order_data_dir_then_xpnet_data_then_system(tmp_path, tiny_dataset):
    entry, files, _ = tiny_dataset
    other, other_arrays = tiny_files(seed=20)
    third, third_arrays = tiny_files(seed=40)
    write_files(tmp_path / "system", files)
    (x, _), _ = load_mnist(normalize=False, dataset="tiny")
    np.testing.assert_array_equal(x.reshape(-1, 28, 28), tiny_dataset[2]["train_img"])

    write_files(tmp_path / "cache" / "tiny", other, gz=False)  # ungzipped names work too
    (x, _), _ = load_mnist(normalize=False, dataset="tiny")
    np.testing.assert_array_equal(x.reshape(-1, 28, 28), other_arrays["train_img"])

    explicit = write_files(tmp_path / "explicit", third)
    (x, _), _ = load_mnist(normalize=False, dataset="tiny", data_dir=explicit)
    np.testing.assert_array_equal(x.reshape(-1, 28, 28), third_arrays["train_img"])

    # An incomplete explicit directory is an error, never a fall-back to another copy.
    (explicit / FILES["test_label"]).unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"not in data_dir {explicit}: missing "
                       r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(normalize=False, dataset="tiny", data_dir=explicit)
    with pytest.raises(DatasetNotFoundError, match="directory does not exist"):
        load_mnist(normalize=False, dataset="tiny", data_dir=tmp_path / "nowhere")


def test_corrupt_file_in_the_chosen_directory_is_an_error_not_a_fallback(tmp_path, tiny_dataset):
    _, files, _ = tiny_dataset
    write_files(tmp_path / "system", files)
    d = write_files(tmp_path / "d", files)
    raw = gzip.decompress(files[FILES["train_img"]])
    (d / FILES["train_img"]).write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is truncated"):
        load_mnist(dataset="tiny", data_dir=d)


def test_count_mismatch_through_load_mnist(tmp_path, tiny_dataset):
    _, files, _ = tiny_dataset
    d = write_files(tmp_path / "d", files)
    _, labels = tiny_split(5, seed=1)
    (d / FILES["train_label"]).write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetError, match="holds 6 images but .* holds 5 labels"):
        load_mnist(dataset="tiny", data_dir=d)


def test_data_home_default_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XPNET_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.data_home() == tmp_path / "xdg" / "xpnet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.data_home() == tmp_path / "home" / ".cache" / "xpnet"
    monkeypatch.setenv("XPNET_DATA", str(tmp_path / "mine"))
    assert datasets.data_home() == tmp_path / "mine"


def test_not_found_offline_names_every_place_and_how_to_fix(tmp_path, tiny_dataset):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(dataset="tiny", download=False)
    msg = str(info.value)
    for place in (tmp_path / "cache" / "tiny", tmp_path / "system"):
        assert str(place) in msg
    assert "download=False" in msg and "data_dir=DIR" in msg and "XPNET_DATA" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_not_found_message_for_fashion_names_the_debian_package(monkeypatch, tmp_path):
    entry = dict(datasets.DATASETS["fashion-mnist"], system_dirs=[str(tmp_path / "none")])
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", entry)
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist"):
        load_mnist(dataset="fashion_mnist", download=False)


# ---------------------------------------------------------------------------
# Downloads, for real, from a local HTTP server
# ---------------------------------------------------------------------------


class _Server:
    """http.server on 127.0.0.1 (port 0) serving ``routes``: path -> bytes or int status."""

    def __init__(self):
        self.routes, self.hits = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                body = server.routes.get(self.path, 404)
                if callable(body):  # serves the request itself
                    body(self)
                    return
                if isinstance(body, int):
                    self.send_error(body)
                    return
                if isinstance(body, tuple):  # (claimed length, body): a cut-off response
                    length, body = body
                else:
                    length = len(body)
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, prefix, files):
        for name, data in files.items():
            self.routes[f"/{prefix}/{name}"] = data
        return f"{self.url}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def dead_url():
    """A URL on a port nothing listens on (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def remote(monkeypatch, tiny_dataset):
    """The 'tiny' dataset with no local copy; set ``entry['mirrors']`` to test downloads."""
    entry, files, arrays = tiny_dataset
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT", 5.0)
    return entry, files, arrays


def _check_loaded(result, arrays):
    (x, t), (xt, tt) = result
    np.testing.assert_array_equal(x.reshape(-1, 28, 28), arrays["train_img"])
    np.testing.assert_array_equal(t, arrays["train_label"])
    np.testing.assert_array_equal(xt.reshape(-1, 28, 28), arrays["test_img"])
    np.testing.assert_array_equal(tt, arrays["test_label"])


def test_download_good_files_verified_cached_then_not_fetched_again(
    server, remote, _private_cache, capsys
):
    entry, files, arrays = remote
    entry["mirrors"] = [server.serve("good", files)]
    _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal
    assert sorted(server.hits) == sorted(f"/good/{name}" for name in files)
    cached = _private_cache / "tiny"
    assert sorted(p.name for p in cached.iterdir()) == sorted(files)  # no temporaries
    for name, data in files.items():
        assert (cached / name).read_bytes() == data

    _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert len(server.hits) == 4  # the second call reads the cache only


def test_wrong_magic_file_fails_checksum_and_next_mirror_is_used(server, remote):
    entry, files, arrays = remote
    bad = dict(files)
    bad[FILES["train_img"]] = gzip.compress(b"\0\0\x08\x01" + b"\0" * 60)  # labels magic
    entry["mirrors"] = [server.serve("bad", bad), server.serve("good", files)]
    with pytest.warns(DownloadWarning, match=r"bad/train-images-idx3-ubyte\.gz.*checksum"):
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert "/good/train-images-idx3-ubyte.gz" in server.hits


def test_corrupt_content_is_refused_even_without_a_checksum(server, remote, _private_cache):
    entry, files, arrays = remote
    entry["sha256"] = {}  # no published checksum: the content check is all there is
    bad = dict(files)
    bad[FILES["train_label"]] = gzip.compress(b"\0\0\x08\x03" + b"\0" * 40)  # images magic
    bad[FILES["test_img"]] = files[FILES["test_img"]][:-20]  # cut-off gzip stream
    entry["mirrors"] = [server.serve("bad", bad), server.serve("good", files)]
    with pytest.warns(DownloadWarning) as record:
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    messages = [str(w.message) for w in record]
    assert any("train-labels" in m and "magic number 2051, expected 2049" in m for m in messages)
    assert any("t10k-images" in m and "corrupt gzip" in m for m in messages)


def test_checksum_mismatch_falls_through_to_next_mirror(server, remote, _private_cache):
    entry, files, arrays = remote
    other, _ = tiny_files(seed=99, n_test=4)  # valid IDX files, not the published ones
    entry["mirrors"] = [server.serve("stale", other), server.serve("good", files)]
    with pytest.warns(DownloadWarning, match="checksum mismatch") as record:
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert len(record) == 4
    assert all(entry["sha256"][n] in str(w.message) for w, n in zip(record, files))
    for name, data in files.items():
        assert (_private_cache / "tiny" / name).read_bytes() == data


def test_server_down_falls_through_to_next_mirror(server, remote, dead_url):
    entry, files, arrays = remote
    entry["mirrors"] = [dead_url, server.serve("good", files)]
    with pytest.warns(DownloadWarning, match="connection failed.*refused"):
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)


def test_cut_off_response_falls_through(server, remote):
    entry, files, arrays = remote
    name = FILES["train_img"]
    cut = dict(files)
    cut[name] = (len(files[name]), files[name][:100])  # claims the full length, sends less
    entry["mirrors"] = [server.serve("cut", cut), server.serve("good", files)]
    with pytest.warns(DownloadWarning, match=r"cut/train-images.*(closed after|ended after) 100"):
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)


def test_all_mirrors_failing_is_one_error_listing_each(server, remote, dead_url, _private_cache):
    entry, files, _ = remote
    other, _ = tiny_files(seed=99, n_test=4)
    stale = server.serve("stale", other)
    entry["mirrors"] = [dead_url, f"{server.url}/missing/", stale]
    with pytest.warns(DownloadWarning):
        with pytest.raises(DatasetNotFoundError) as info:
            load_mnist(dataset="tiny")
    msg = str(info.value)
    first = FILES["train_img"]
    assert f"{dead_url}{first}: connection failed" in msg
    assert f"{server.url}/missing/{first}: HTTP error 404" in msg
    assert f"{stale}{first}: checksum mismatch" in msg
    assert str(_private_cache / "tiny") in msg and "data_dir=DIR" in msg
    # Nothing partial is left in the cache, and the other files were not attempted.
    assert not (_private_cache / "tiny").exists() or not any((_private_cache / "tiny").iterdir())
    assert all(first in hit for hit in server.hits)


def test_partial_cache_downloads_only_the_missing_files(server, remote, _private_cache):
    entry, files, arrays = remote
    write_files(_private_cache / "tiny", {FILES["train_img"]: files[FILES["train_img"]]})
    entry["mirrors"] = [server.serve("good", files)]
    _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert f"/good/{FILES['train_img']}" not in server.hits and len(server.hits) == 3


def test_download_false_never_contacts_a_mirror(server, remote):
    entry, files, _ = remote
    entry["mirrors"] = [server.serve("good", files)]
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_mnist(dataset="tiny", download=False)
    assert server.hits == []


def test_progress_bar_only_on_a_terminal(server, remote, monkeypatch):
    entry, files, arrays = remote
    entry["mirrors"] = [server.serve("good", files)]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    fake = Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert "train-images-idx3-ubyte.gz" in fake.getvalue()


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------


def test_real_fashion_mnist(fashion_dir):
    (x, t), (xt, tt) = load_mnist(dataset="fashion-mnist", data_dir=fashion_dir)
    assert x.shape == (60000, 784) and xt.shape == (10000, 784)
    assert x.dtype == xt.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert t.dtype == tt.dtype == np.uint8 and t.shape == (60000,) and tt.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(t, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(tt, minlength=10), np.full(10, 1000))


def test_fashion_checksums_in_the_table_match_the_published_files(fashion_dir):
    table = datasets.DATASETS["fashion-mnist"]["sha256"]
    for name in FILES.values():
        assert hashlib.sha256((fashion_dir / name).read_bytes()).hexdigest() == table[name]


def test_mnist_10k_dev_set(mnist10k_dir):
    x, t = load_idx_pair(mnist10k_dir / "images-idx3-ubyte.gz",
                         mnist10k_dir / "labels-idx1-ubyte.gz")
    assert x.shape == (10000, 784) and x.dtype == np.float32 and t.dtype == np.uint8
    assert 0.0 <= x.min() and x.max() == 1.0
    expected = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.bincount(t, minlength=10).tolist() == expected
    x, t = load_idx_pair(mnist10k_dir / "images-idx3-ubyte.gz",
                         mnist10k_dir / "labels-idx1-ubyte.gz",
                         normalize=False, flatten=False, one_hot_label=True)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8 and t.shape == (10000, 10)


# ---------------------------------------------------------------------------
# Refused up front: odd image sizes, a slow mirror, a changed cache, XPNET_DATA a file
# ---------------------------------------------------------------------------


def test_training_and_test_images_of_different_sizes_are_refused(tmp_path, tiny_dataset):
    _, files, _ = tiny_dataset
    d = write_files(tmp_path / "d", files)
    images, _ = tiny_split(3, seed=2, rows=20, cols=20)
    (d / FILES["test_img"]).write_bytes(idx_bytes(images))
    with pytest.raises(DatasetError, match=r"training images .* are 28x28 pixels but the test "
                       r"images .* are 20x20"):
        load_mnist(dataset="tiny", data_dir=d)


@pytest.mark.parametrize("rows, cols", [(0, 0), (28, 0)])
def test_images_without_pixels_are_refused(tmp_path, tiny_dataset, rows, cols):
    _, files, _ = tiny_dataset
    d = write_files(tmp_path / "d", files)
    images, _ = tiny_split(6, seed=2, rows=rows, cols=cols)
    (d / FILES["train_img"]).write_bytes(idx_bytes(images))
    with pytest.raises(DatasetError, match=rf"images of {rows}x{cols} pixels"):
        load_mnist(dataset="tiny", data_dir=d)


def test_a_dripping_mirror_is_given_up_at_the_deadline(server, remote, monkeypatch):
    entry, files, arrays = remote
    name = FILES["train_img"]

    def drip(handler):  # a byte every 20 ms, well within the per-read timeout
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(files[name])))
        handler.end_headers()
        try:
            for byte in files[name][:400]:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.02)
        except OSError:  # the client gave up
            pass

    server.routes["/slow/" + name] = drip
    entry["mirrors"] = [f"{server.url}/slow/", server.serve("good", files)]
    monkeypatch.setattr(datasets, "DOWNLOAD_DEADLINE", 0.5)
    start = time.monotonic()
    with pytest.warns(DownloadWarning, match=r"slow/train-images.*longer than 0.5 s"):
        _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    assert time.monotonic() - start < 4


def test_a_cached_download_is_verified_again_on_use(server, remote, _private_cache):
    entry, files, arrays = remote
    entry["mirrors"] = [server.serve("good", files)]
    _check_loaded(load_mnist(normalize=False, dataset="tiny"), arrays)
    other, _ = tiny_files(seed=99)  # a valid IDX file, not the published one
    cached = _private_cache / "tiny" / FILES["test_img"]
    cached.write_bytes(other[FILES["test_img"]])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz does not match its "
                       "published SHA-256.*delete it to download it again"):
        load_mnist(normalize=False, dataset="tiny")
    with pytest.raises(DatasetError, match="does not match its published SHA-256"):
        load_mnist(normalize=False, dataset="tiny", download=False)


@pytest.mark.parametrize("download", [True, False])
def test_xpnet_data_naming_a_file_is_one_sentence(tmp_path, monkeypatch, tiny_dataset, download):
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a directory")
    monkeypatch.setenv("XPNET_DATA", str(a_file))
    with pytest.raises(DatasetError, match=rf"XPNET_DATA={a_file} is a file, not a directory"):
        load_mnist(dataset="tiny", download=download)
