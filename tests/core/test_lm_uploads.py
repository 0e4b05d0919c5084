"""Uploads of causal-LM teachers and LM datasets through ``distill.formats``: a GGUF file and a Hugging Face causal-LM
archive are sniffed, loaded and described; unsafe archives, missing tokenizers, unknown or oversized GGUF models and
truncated files are refused; prompt/completion and chat JSONL are recognised as LM datasets."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from distill.errors import DistillError
from distill.formats import inspect_file, sniff
from distill.lm.models import load_causal_lm, parameter_count
from tests.models import zip_folder


def rewrite_gguf(src: Path, dst: Path, *, drop_prefix: str | None = None, arch: str | None = None) -> Path:
    """Copy a GGUF file's metadata and tensors into ``dst``, leaving out keys under ``drop_prefix`` and renaming the
    architecture to ``arch``."""
    import gguf

    r = gguf.GGUFReader(str(src))
    old = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch or old)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or (drop_prefix and name.startswith(drop_prefix)):
            continue
        if arch and name.startswith(old + "."):
            name = arch + name[len(old):]
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_gguf_teacher_upload(tiny_llama_gguf, tiny_llama_dir):
    assert sniff(tiny_llama_gguf) == "gguf"
    info = inspect_file(tiny_llama_gguf, "teacher")
    d = info.details
    assert info.format == "gguf" and d["task"] == "causal_lm" and d["model_type"] == "llama"
    assert info.parameters == parameter_count(load_causal_lm(tiny_llama_dir, "hf")) == d["parameters"]
    assert d["tie_word_embeddings"] and d["tokenizer"]["chat_template"] and d["num_hidden_layers"] == 4
    assert d["gguf"]["quantisations"] == {"F32": d["gguf"]["tensors"]} and d["dequantised_bytes"] == 4 * info.parameters
    assert info.output_shape == [None, None, d["vocab_size"]]


def test_gguf_refusals(tiny_llama_gguf, tmp_path):
    with pytest.raises(DistillError, match="dequantises to .* over the limit"):
        inspect_file(tiny_llama_gguf, "teacher", max_unpacked_bytes=1000)
    no_tok = rewrite_gguf(tiny_llama_gguf, tmp_path / "no-tok.gguf", drop_prefix="tokenizer.")
    with pytest.raises(DistillError, match="no tokenizer"):
        inspect_file(no_tok, "teacher")
    unknown = rewrite_gguf(tiny_llama_gguf, tmp_path / "unknown.gguf", arch="rwkv6")
    with pytest.raises(DistillError) as e:
        inspect_file(unknown, "teacher")
    assert e.value.code == "invalid_file" and "rwkv6" in e.value.message
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_llama_gguf.read_bytes()[:5000])
    with pytest.raises(DistillError, match="GGUF"):
        inspect_file(cut, "teacher")
    with pytest.raises(DistillError, match="expected a dataset"):
        inspect_file(tiny_llama_gguf, "dataset")


def test_hf_causal_lm_archive_upload(tiny_llama_zip, tiny_gpt2_dir, tmp_path):
    info = inspect_file(tiny_llama_zip, "teacher")
    assert info.format == "hf" and info.details["task"] == "causal_lm"
    assert info.details["architectures"] == ["LlamaForCausalLM"] and info.details["chat_template"]
    assert info.details["tie_word_embeddings"]
    tgz = tmp_path / "gpt2.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(tiny_gpt2_dir, arcname="gpt2")
    info = inspect_file(tgz, "teacher")
    assert info.details["task"] == "causal_lm" and info.details["model_type"] == "gpt2"


def test_non_causal_hf_archive_is_not_a_causal_lm(tiny_classifier_zip):
    assert inspect_file(tiny_classifier_zip, "teacher").details["task"] == "sequence_classification"


def test_hf_archive_refusals(tiny_llama_dir, tmp_path):
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (no_tok / name).write_bytes((tiny_llama_dir / name).read_bytes())
    with pytest.raises(DistillError, match="no tokenizer files"):
        inspect_file(zip_folder(no_tok, tmp_path / "no-tok.zip"), "teacher")
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as z:
        for p in sorted(tiny_llama_dir.iterdir()):
            z.write(p, f"m/{p.name}")
        z.writestr("m/../../escape.txt", "x")
    with pytest.raises(DistillError, match="'..'"):
        inspect_file(unsafe, "teacher")
    assert not (tmp_path / "escape.txt").exists()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for p in tiny_llama_dir.iterdir():
        (wrong / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["num_hidden_layers"] = 6  # the weights hold 4
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DistillError, match="do not match config.json"):
        inspect_file(zip_folder(wrong, tmp_path / "wrong.zip"), "teacher")


def test_lm_jsonl_datasets(tmp_path):
    def upload(rows):
        p = tmp_path / f"d{len(list(tmp_path.iterdir()))}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return inspect_file(p, "dataset")

    pc = upload([{"prompt": "a?", "completion": "b"}, {"prompt": "c?"}])
    assert pc.format == "jsonl" and pc.details["kind"] == "lm" and pc.details["transfer_set"] == 1
    chat = upload([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    assert chat.details["record_kind"] == "chat" and chat.details["with_completions"]
    assert upload([{"text": "plain text"}]).details["kind"] == "text"  # plain text stays a text dataset
    with pytest.raises(DistillError, match="line 2"):
        upload([{"prompt": "a"}, {"text": "b"}])
