"""Tiny causal language models made by the tests (registered through ``tests/models.py``): a byte-level BPE tokenizer
trained here on a few sentences (with a ChatML-style chat template), a 4-layer Llama with tied embeddings, a 4-layer
GPT-2, their Hugging Face folders and zips, and the Llama as a GGUF file written by ``distill.lm.export``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model learns from a large one by matching its next-token distribution",
    "knowledge distillation trains a student to imitate a teacher",
    "hello world, this is a test of the tokenizer with numbers 1 2 3 and punctuation!",
    "what is the capital of france? the capital of france is paris.",
]


def make_tokenizer():
    """A byte-level BPE tokenizer of 320 tokens (256 bytes, 3 specials, merges learnt on ``CORPUS``): EOS = pad =
    ``<|endoftext|>``, chat turns between ``<|im_start|>`` and ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, *, layers: int = 4, tied: bool = True, seed: int = 0):
    """A random LlamaForCausalLM: hidden 32, 4 heads (2 key/value heads), feed-forward 64, 128 positions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab_size: int, *, layers: int = 4, seed: int = 0):
    """A random GPT2LMHeadModel: width 32, 4 heads, 128 positions (tied embeddings, GPT-2's default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=128,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def save_lm(model, tokenizer, folder: Path) -> Path:
    """``save_pretrained`` of the model (safetensors) and the tokenizer into ``folder``."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_tokenizer():
    """The tiny byte-level BPE tokenizer (``make_tokenizer``)."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(lm_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny Llama (tied embeddings) and the tiny tokenizer saved with save_pretrained."""
    return save_lm(tiny_llama(len(lm_tokenizer)), lm_tokenizer, tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(lm_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny GPT-2 and the tiny tokenizer saved with save_pretrained."""
    return save_lm(tiny_gpt2(len(lm_tokenizer)), lm_tokenizer, tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama_zip(tiny_llama_dir: Path) -> Path:
    """``tiny_llama_dir`` zipped inside one top-level folder ``tiny-llama/``."""
    from tests.models import zip_folder

    return zip_folder(tiny_llama_dir, tiny_llama_dir.parent / "tiny-llama.zip", prefix="tiny-llama/")


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama_dir: Path, lm_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama written as a float32 GGUF file (``distill.lm.export.export_gguf``, checked on writing)."""
    from transformers import AutoModelForCausalLM

    from distill.lm.export import export_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf"
    export_gguf(model, lm_tokenizer, path)
    return path


@pytest.fixture()
def tiny_llama_copy(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A per-test copy of ``tiny_llama_dir`` that a test may break."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama"))
