"""NPZ uploads are inspected from their .npy headers and streamed data: same facts and errors as loading them
whole, memory independent of the file's size, zip bombs and corrupt members refused."""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

from distill.errors import DistillError
from distill.formats import dataset_details, inspect_npz, read_dataset


def _expect(fn, *args, **kw) -> DistillError:
    with pytest.raises(DistillError) as e:
        fn(*args, **kw)
    assert e.value.code == "invalid_file", e.value
    return e.value


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("x_dtype,y_dtype", [(np.float32, np.int64), (">f8", np.int32), (np.uint8, np.float64), (np.float16, np.int8)])
def test_streamed_details_equal_those_of_the_loaded_arrays(tmp_path, save, x_dtype, y_dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((1001, 3, 5)) * 100).astype(x_dtype)
    y = rng.integers(-1, 7, 1001).astype(y_dtype)
    path = tmp_path / "d.npz"
    save(path, X=x, y=y)
    expected = dataset_details(*read_dataset(path, "npz"))
    assert inspect_npz(path, chunk_bytes=100) == expected  # chunks split rows and elements' neighbours
    assert inspect_npz(path) == expected


def test_fortran_order_and_x_only(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, X=np.asfortranarray(np.arange(60, dtype=np.float32).reshape(6, 10)))
    assert inspect_npz(path, chunk_bytes=8) == {"samples": 6, "feature_shape": [10], "has_labels": False,
                                                "num_classes": None, "unlabelled": 6}


@pytest.mark.parametrize("where", [0, 4999])
def test_a_non_finite_value_in_any_chunk_is_found(tmp_path, where):
    x = np.zeros((100, 50), dtype=np.float64)
    x.flat[where] = np.nan
    path = tmp_path / "nan.npz"
    np.savez_compressed(path, X=x)
    assert "NaN or infinity" in _expect(inspect_npz, path, chunk_bytes=64).message


def test_float64_beyond_float32_range_is_infinite(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, X=np.array([[1e300, 0.0], [0.0, 0.0]]))
    assert "infinity" in _expect(inspect_npz, path).message


def test_label_errors_in_a_late_chunk(tmp_path):
    y = np.zeros(1000, dtype=np.int64)
    y[-1] = -5
    path = tmp_path / "y.npz"
    np.savez(path, X=np.zeros((1000, 2), dtype=np.float32), y=y)
    assert ">= -1" in _expect(inspect_npz, path, chunk_bytes=64).message


def test_zip_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((4096, 1024), dtype=np.float32))  # 16 MiB of zeros, a few KiB packed
    assert path.stat().st_size < 100_000
    err = _expect(inspect_npz, path, max_unpacked_bytes=1024 * 1024)
    assert "over the limit of 1048576 bytes" in err.message


def test_corrupt_member_data_is_refused(tmp_path):
    path = tmp_path / "crc.npz"
    np.savez(path, X=np.arange(4000, dtype=np.float32).reshape(100, 40))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("X.npy")
    raw[info.header_offset + 30 + len("X.npy") + 200] ^= 0xFF  # inside the array data: the CRC no longer matches
    path.write_bytes(bytes(raw))
    assert "unreadable NPZ" in _expect(inspect_npz, path).message


def test_header_declaring_more_data_than_stored(tmp_path):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1000, 10)})
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", buf.getvalue() + b"\0" * 400)  # 100 floats of the declared 10,000
    assert "truncated" in _expect(inspect_npz, path).message


def test_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, X=np.array([[{"a": 1}], [None]], dtype=object))
    assert "Python objects" in _expect(inspect_npz, path).message


def test_memory_stays_flat_for_a_large_file(tmp_path):
    """64 MiB of X is inspected with well under one chunk-sized multiple of memory (numpy reports to tracemalloc)."""
    path = tmp_path / "large.npz"
    np.savez(path, X=np.ones((16384, 1024), dtype=np.float32), y=np.arange(16384) % 10)
    tracemalloc.start()
    try:
        details = inspect_npz(path, chunk_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert details["samples"] == 16384 and details["num_classes"] == 10
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while inspecting a 64 MiB array"
