"""``/v1/files``: every accepted format is recognised and described; every bad upload gets a clear 4xx
in the error shape and leaves nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import files as mk


def assert_error(resp, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and the one error shape (and ``code`` when given)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}, body
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


async def upload(api, path: Path, purpose: str = "teacher", filename: str | None = None):
    with path.open("rb") as fh:
        return await api.post("/v1/files", files={"file": (filename or path.name, fh)}, data={"purpose": purpose})


def stored_files(backend) -> list[Path]:
    root = backend.data_dir
    return [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] in ("files", "tmp")]


@pytest.mark.parametrize("maker,fmt", [
    (mk.safetensors_file, "safetensors"), (mk.state_dict_file, "state_dict"),
    (mk.torchscript_file, "torchscript"), (mk.onnx_file, "onnx"), (mk.torch_export_file, "torch_export"),
])
async def test_model_formats_are_detected_and_described(api, backend, tmp_path, maker, fmt):
    path = maker(tmp_path)
    resp = await upload(api, path)
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert f["id"].startswith("file_") and f["object"] == "file"
    assert f["format"] == fmt
    assert f["bytes"] == path.stat().st_size
    assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert f["filename"] == path.name
    if fmt == "onnx":
        assert f["input_shape"][1:] == [1, 8, 8] or f["input_shape"] == [1, 8, 8]
    if fmt == "safetensors":
        assert f["details"]["architecture"]["name"] == "mlp"
    if fmt == "torch_export":
        assert f["input_shape"] == [None, 1, 8, 8] and f["output_shape"] == [None, 10] and f["details"]["dynamic_batch"] is True
    if fmt != "state_dict":  # weights without an architecture: their layers are those of the architecture paired with them
        assert {"1", "3", "penultimate"} <= set(f["details"]["layers"]), f["details"]  # layer names, for job creation
    # stored under a server-generated name, byte for byte
    stored = backend.data_dir / "files" / f["id"]
    assert stored.read_bytes() == path.read_bytes()
    got = await api.get(f"/v1/files/{f['id']}")
    assert got.status_code == 200 and got.json()["sha256"] == f["sha256"]


@pytest.mark.parametrize("maker,fmt,labels", [(mk.npz_file, "npz", True), (mk.csv_file, "csv", True)])
async def test_dataset_formats(api, tmp_path, maker, fmt, labels):
    resp = await upload(api, maker(tmp_path), purpose="dataset")
    assert resp.status_code == 201, resp.text
    d = resp.json()
    assert d["format"] == fmt
    assert d["details"]["has_labels"] is labels
    assert d["details"]["num_classes"] == 10
    assert d["details"]["samples"] in (30, 40)


async def test_unlabelled_npz_is_a_transfer_set(api, tmp_path):
    resp = await upload(api, mk.npz_file(tmp_path, labels=False), purpose="dataset")
    assert resp.status_code == 201
    assert resp.json()["details"]["has_labels"] is False
    assert resp.json()["details"]["unlabelled"] == 40


async def test_code_running_pickle_is_refused_and_never_runs(api, backend, tmp_path):
    marker = tmp_path / "pwned"
    for path in (mk.malicious_checkpoint(tmp_path, marker), mk.raw_pickle(tmp_path, marker)):
        err = assert_error(await upload(api, path), 422, "unsafe_checkpoint")
        assert err["param"] == "file"
    assert not marker.exists(), "the pickle payload ran"
    assert stored_files(backend) == []


async def test_non_tensor_objects_are_named(api, tmp_path):
    resp = await upload(api, mk.namespace_checkpoint(tmp_path))
    if resp.status_code == 201:  # tensors extracted safely
        assert resp.json()["parameters"] == 1210
    else:
        err = assert_error(resp, 422)
        assert "Namespace" in err["message"]


@pytest.mark.parametrize("maker", [mk.truncated_safetensors, mk.random_bytes, mk.zip_without_model])
async def test_unreadable_model_files_get_422_saying_what_was_expected(api, backend, tmp_path, maker):
    err = assert_error(await upload(api, maker(tmp_path)), 422, "invalid_file")
    assert any(w in err["message"] for w in ("expected", "safetensors", "TorchScript")), err
    assert stored_files(backend) == []


async def test_dataset_uploaded_as_teacher_and_model_as_dataset(api, tmp_path):
    err = assert_error(await upload(api, mk.npz_file(tmp_path), purpose="teacher"), 422, "invalid_file")
    assert "NPZ" in err["message"] or "npz" in err["message"]
    err = assert_error(await upload(api, mk.safetensors_file(tmp_path), purpose="dataset"), 422, "invalid_file")
    assert "dataset" in err["message"]
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes\n")  # plain text, not a table: the message says what it was sniffed as
    err = assert_error(await upload(api, notes, purpose="teacher"), 422, "invalid_file")
    assert "got plain text (sniffed as CSV" in err["message"] and "'just some notes'" in err["message"], err


async def test_bad_datasets(api, tmp_path):
    import numpy as np

    no_x = tmp_path / "nox.npz"
    np.savez(no_x, features=np.zeros((3, 4)))
    err = assert_error(await upload(api, no_x, purpose="dataset"), 422, "invalid_file")
    assert "'X'" in err["message"] or "X" in err["message"]
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b,label\n1,hello,0\n2,3,1\n")
    err = assert_error(await upload(api, bad_csv, purpose="dataset"), 422, "invalid_file")
    assert "numeric" in err["message"] or "hello" in err["message"]


async def test_purpose_is_required_and_checked(api, tmp_path):
    p = mk.safetensors_file(tmp_path)
    with p.open("rb") as fh:
        err = assert_error(await api.post("/v1/files", files={"file": (p.name, fh)}), 422)
    assert err["param"] == "purpose"
    err = assert_error(await upload(api, p, purpose="weights"), 422)
    assert err["param"] == "purpose"


async def test_not_multipart_and_missing_file_part(api):
    assert_error(await api.post("/v1/files", content=b"hello", headers={"content-type": "application/octet-stream"}), 422)
    err = assert_error(await api.post("/v1/files", data={"purpose": "teacher"}, files={"other": ("x", b"1")}), 422)
    assert err["param"] == "file"


async def test_size_limit_answers_413_and_keeps_nothing(api, backend, tmp_path, monkeypatch):
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    err = assert_error(await upload(api, mk.safetensors_file(tmp_path)), 413, "file_too_large")
    assert "1000" in err["message"]
    assert stored_files(backend) == []


async def test_size_limit_without_content_length(api, backend, tmp_path, monkeypatch):
    """A chunked body (no Content-Length) is cut off at the limit while streaming."""
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "5000")
    get_settings.cache_clear()
    resp = await api.post("/v1/files", content=mk.streamed_upload(10, 1000), headers={"content-type": mk.STREAM_CTYPE})
    assert_error(resp, 413, "file_too_large")
    assert stored_files(backend) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path.safetensors", "..\\..\\win.safetensors", "nul\x00byte.safetensors"])
async def test_client_filename_is_never_a_path(api, backend, tmp_path, name):
    resp = await upload(api, mk.safetensors_file(tmp_path), filename=name)
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert "/" not in f["filename"] and "\\" not in f["filename"] and "\x00" not in f["filename"]
    assert (backend.data_dir / "files" / f["id"]).is_file()
    assert not (backend.data_dir.parent / "etc").exists()


async def test_list_paginates_and_delete(api, tmp_path):
    # three different contents (the same content twice would be the same file)
    ids = [(await upload(api, mk.npz_file(tmp_path, n=40 + i, name=f"d{i}.npz"), purpose="dataset")).json()["id"] for i in range(3)]
    page = (await api.get("/v1/files", params={"limit": 2})).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]
    rest = (await api.get("/v1/files", params={"limit": 2, "after": page["data"][-1]["id"]})).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    resp = await api.delete(f"/v1/files/{ids[0]}")
    assert resp.status_code == 200 and resp.json()["deleted"] is True
    assert_error(await api.get(f"/v1/files/{ids[0]}"), 404, "not_found")
    assert_error(await api.delete(f"/v1/files/{ids[0]}"), 404, "not_found")


async def test_csv_with_byte_order_mark(api, tmp_path):
    """Excel writes UTF-8 CSV with a byte-order mark; its first column must not be mangled."""
    p = mk.csv_file(tmp_path)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    resp = await upload(api, bom, purpose="dataset")
    assert resp.status_code == 201, resp.text
    assert resp.json()["details"]["columns"][0] == "f0" and resp.json()["details"]["has_labels"] is True


@pytest.mark.parametrize("member", ["../evil/config.json", "/abs/config.json"])
async def test_hf_archive_escaping_its_folder_is_refused(api, backend, tmp_path, member):
    import zipfile

    p = tmp_path / "model.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model/config.json", "{}")
        z.writestr(member, "{}")
    err = assert_error(await upload(api, p), 422)
    assert err["code"] in ("invalid_file", "unsafe_checkpoint")
    assert stored_files(backend) == []
    assert not (tmp_path / "evil").exists()


async def test_hf_archive_over_the_unpacked_limit(api, backend, tmp_path, monkeypatch):
    import zipfile

    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UNPACKED_BYTES", "1000")
    get_settings.cache_clear()
    p = tmp_path / "big.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/config.json", "{}")
        z.writestr("m/model.safetensors", b"\0" * 50_000)
    err = assert_error(await upload(api, p), 422, "invalid_file")
    assert "1000" in err["message"] or "limit" in err["message"]
    assert stored_files(backend) == []


async def test_layers_of_uploaded_models(api, tmp_path):
    f = (await upload(api, mk.safetensors_file(tmp_path))).json()
    layers = (await api.get(f"/v1/files/{f['id']}/layers")).json()["data"]
    by_name = {l["name"]: l for l in layers}
    assert by_name["1"]["type"] == "Linear" and by_name["1"]["output_shape"] == [16]
    assert by_name["penultimate"]["output_shape"] == [16]
    ts = (await upload(api, mk.torchscript_file(tmp_path))).json()
    err = assert_error(await api.get(f"/v1/files/{ts['id']}/layers"), 422)
    assert err["param"] == "input_shape"
    assert len((await api.get(f"/v1/files/{ts['id']}/layers", params={"input_shape": "1,8,8"})).json()["data"]) >= 3
    bad = assert_error(await api.get(f"/v1/files/{f['id']}/layers", params={"input_shape": "3,5"}), 422)
    assert bad["param"] == "input_shape"
    for maker in (mk.onnx_file, mk.torch_export_file):  # exported graphs list their layers too
        g = (await upload(api, maker(tmp_path))).json()
        got = {l["name"]: l for l in (await api.get(f"/v1/files/{g['id']}/layers")).json()["data"]}
        assert got["1"]["output_shape"] == [16] and got["penultimate"]["output_shape"] == [16], got
        assert got["3"]["output_shape"] == [10]
    data = (await upload(api, mk.npz_file(tmp_path), purpose="dataset")).json()
    assert_error(await api.get(f"/v1/files/{data['id']}/layers"), 422)
    assert_error(await api.get("/v1/files/file_nope/layers"), 404)
