"""Causal-LM teachers and students on tiny Llama and GPT-2 models: loading (HF folder, GGUF), refusing a non-causal
config, layer-dropped students (copied layers, tied embeddings), narrower fresh students, and the exports (HF folder
that loads and generates, ONNX checked with onnxruntime, GGUF read back by transformers)."""

from __future__ import annotations

import json

import pytest
import torch

from distill.errors import DistillError
from distill.lm.export import check_folder_generates, export_gguf, export_onnx, save_student_folder
from distill.lm.models import decoder_layers, derive_student, load_causal_lm, load_tokenizer, parameter_count, tied_embeddings


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, "hf")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_causal_lm(tiny_gpt2_dir, "hf")


def ids_of(tok, text="the quick brown fox jumps over the lazy dog"):
    return torch.tensor([tok(text)["input_ids"]])


def test_teacher_is_inference_only(llama):
    assert not llama.training and not any(p.requires_grad for p in llama.parameters())


def test_non_causal_config_is_refused(tiny_llama_copy):
    cfg = json.loads((tiny_llama_copy / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (tiny_llama_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DistillError, match="not a causal language model.*LlamaForSequenceClassification") as e:
        load_causal_lm(tiny_llama_copy, "hf")
    assert e.value.code == "invalid_file"


@pytest.mark.parametrize("model_name,keep", [("llama", [0, 3]), ("gpt2", [1, 2])])
def test_layer_dropped_student_equals_the_teacher_with_those_layers(request, model_name, keep, lm_tokenizer):
    teacher = request.getfixturevalue(model_name)
    student, facts = derive_student(teacher, keep_layers=keep)
    assert facts["keep_layers"] == keep and facts["initialised"] == "copied from teacher"
    assert facts["tied_embeddings"] and tied_embeddings(student)
    assert parameter_count(student) < parameter_count(teacher)
    _, t_layers = decoder_layers(teacher)
    _, s_layers = decoder_layers(student)
    for s_i, t_i in enumerate(keep):
        for (ns, ps), (nt, pt) in zip(s_layers[s_i].named_parameters(), t_layers[t_i].named_parameters()):
            assert ns == nt and torch.equal(ps, pt)
    # a teacher with the other layers removed by hand computes exactly what the student computes
    import copy

    cut = copy.deepcopy(teacher)
    prefix, layers = decoder_layers(cut)
    parent = cut.get_submodule(prefix.rpartition(".")[0]) if "." in prefix else cut
    setattr(parent, prefix.rpartition(".")[2], torch.nn.ModuleList([layers[i] for i in keep]))
    cut.config.num_hidden_layers = len(keep)
    x = ids_of(lm_tokenizer)
    student.eval()
    with torch.inference_mode():
        assert torch.allclose(student(input_ids=x, use_cache=False).logits, cut(input_ids=x, use_cache=False).logits, atol=1e-5)


def test_tied_embeddings_stay_tied_while_training(llama, lm_tokenizer):
    student, _ = derive_student(llama, num_layers=2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x = ids_of(lm_tokenizer)
    student(input_ids=x, labels=x).loss.backward()
    opt.step()
    assert tied_embeddings(student)
    assert not torch.equal(student.get_input_embeddings().weight, llama.get_input_embeddings().weight)


def test_untied_teacher_gives_untied_student(lm_tokenizer, tmp_path):
    from tests.lm_fixtures import save_lm, tiny_llama

    folder = save_lm(tiny_llama(len(lm_tokenizer), tied=False), lm_tokenizer, tmp_path / "untied")
    teacher = load_causal_lm(folder, "hf")
    student, facts = derive_student(teacher, num_layers=2)
    assert not facts["tied_embeddings"]
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_narrower_student_is_fresh_and_seeded(llama, gpt2):
    a, facts = derive_student(llama, num_layers=2, hidden_size=16, num_attention_heads=2, seed=1)
    b, _ = derive_student(llama, num_layers=2, hidden_size=16, num_attention_heads=2, seed=1)
    assert facts["initialised"] == "fresh" and facts["hidden_size"] == 16 and a.config.head_dim == 8
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    g, _ = derive_student(gpt2, num_layers=1, hidden_size=16, intermediate_size=24, num_attention_heads=2)
    assert g.config.n_inner == 24 and g.config.n_embd == 16
    with pytest.raises(DistillError, match="not a multiple"):
        derive_student(llama, num_layers=2, hidden_size=18, num_attention_heads=4)
    with pytest.raises(DistillError, match="strictly increasing teacher layers"):
        derive_student(llama, keep_layers=[0, 9])
    with pytest.raises(DistillError, match="vocab_size"):
        derive_student(llama, num_layers=2, config={"vocab_size": 7})


def test_student_folder_loads_and_generates(llama, lm_tokenizer, tmp_path):
    student, _ = derive_student(llama, num_layers=2)
    folder = save_student_folder(student, lm_tokenizer, tmp_path / "student")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    x = ids_of(lm_tokenizer, "hello world")
    got = check_folder_generates(folder, x[0].tolist(), max_new_tokens=5)
    student.eval()
    with torch.inference_mode():
        want = student.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                pad_token_id=0)[0, x.shape[1]:].tolist()
    assert got["generated_ids"] == want
    assert load_tokenizer(folder, "hf").chat_template == lm_tokenizer.chat_template


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_onnx_export_matches_pytorch(request, model_name, lm_tokenizer, tmp_path):
    student, _ = derive_student(request.getfixturevalue(model_name), num_layers=2)
    student.train()  # dropout on: the export must still use eval mode
    x = ids_of(lm_tokenizer)
    info = export_onnx(student, torch.cat([x, x.flip(1)]), tmp_path / "s.onnx")
    assert info["max_abs_diff"] < 1e-3 and info["checked_shapes"] == [[2, x.shape[1]], [1, x.shape[1] // 2]]


def test_gguf_round_trip(llama, lm_tokenizer, tiny_llama_gguf, tmp_path):
    teacher = load_causal_lm(tiny_llama_gguf, "gguf")
    assert type(teacher).__name__ == "LlamaForCausalLM" and not hasattr(teacher.config, "quantization_config")
    x = ids_of(lm_tokenizer)
    with torch.inference_mode():
        assert torch.allclose(teacher(input_ids=x).logits, llama(input_ids=x).logits, atol=1e-5)
    tok = load_tokenizer(tiny_llama_gguf, "gguf")
    assert tok("hello world, what is this?")["input_ids"] == lm_tokenizer("hello world, what is this?")["input_ids"]
    assert tok.chat_template == lm_tokenizer.chat_template
    student, _ = derive_student(teacher, num_layers=2)
    info = export_gguf(student, tok, tmp_path / "s16.gguf", dtype="f16")
    assert info["dtype"] == "f16" and info["max_abs_diff"] < 5e-2


def test_gguf_export_refuses_other_architectures(gpt2, lm_tokenizer, tmp_path):
    with pytest.raises(DistillError, match="GGUF export supports"):
        export_gguf(gpt2, lm_tokenizer, tmp_path / "g.gguf")
