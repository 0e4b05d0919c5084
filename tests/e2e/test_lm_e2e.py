"""A causal-LM job end to end over HTTP from the CLI with a real worker process: the tests' tiny Llama (a Hugging Face
zip) distilled into 2 layers on prompts without answers (the teacher writes the transfer set first), then the
artifacts checked as a user would (the student folder loads with AutoModelForCausalLM and generates; the transfer
set is JSONL prompt/completion records) and the CLI report."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.e2e.test_text_e2e import cli
from tests.lm_fixtures import CORPUS

pytestmark = pytest.mark.e2e


@pytest.mark.backend_only("sqlite", reason="the causal-LM path is the core's, whatever the backend")
def test_causal_lm_job_from_the_cli(live, tiny_llama_zip, tmp_path):
    import yaml

    c = live.client
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a} ?"}) + "\n" for a in CORPUS * 4))
    spec = {"name": "tiny-llama-e2e", "teacher": {"path": str(tiny_llama_zip)},
            "student": {"from_teacher": {"num_layers": 2}},
            "data": {"train": {"path": str(prompts)}, "validation": {"fraction": 0.25, "seed": 0}, "max_seq_length": 48,
                     "generation": {"max_new_tokens": 6, "batch_size": 4}},
            "method": {"name": "kd", "alpha": 0.5}, "cache": {"top_k": 16},
            "training": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0},
            "evaluation": {"compare_baseline": True, "speed_repeats": 1, "generation_prompts": 3},
            "export": {"formats": ["safetensors", "onnx"]}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    from client import Stillhouse

    with Stillhouse(live.url, timeout=600) as patient:  # the first upload loads torch in the API: slow on a busy machine
        teacher = patient.upload(tiny_llama_zip, "teacher")  # `submit` below finds both by sha256 and uploads nothing
        patient.upload(prompts, "dataset")
    job_id = cli(live, "submit", str(tmp_path / "job.yaml")).strip().splitlines()[-1]
    cli(live, "wait", job_id)
    job = c.get_job(job_id)
    assert job.status == "succeeded", (job.error, live.log("worker"))
    assert job.spec["teacher"]["file_id"] == teacher.id and teacher.details["task"] == "causal_lm"
    phases = [e.data["phase"] for e in c.events(job.id) if e.type == "phase"]
    assert phases == ["loading_teacher", "generating_transfer_set", "caching_teacher_outputs", "training", "evaluating", "exporting"]
    assert [m.epoch for m in c.metrics(job.id, name="perplexity", split="val")] == [1, 2]
    assert [m.epoch for m in c.metrics(job.id, name="perplexity", split="baseline_val")] == [1, 2]

    r = c.report(job.id)
    assert r.task == "causal_lm" and r.student.layers == 2 and r.teacher.layers == 4
    assert r.perplexity.alone is not None and r.perplexity.student.tokens == r.perplexity.teacher.tokens > 0
    assert r.cache.teacher_outputs and r.cache.bytes_per_token == 16 * 6 + 4
    assert r.data.transfer_set.generated == 15 and r.generations.prompts == 3
    assert r.onnx is not None and r.onnx.max_abs_diff < 1e-3

    names = {a.name for a in c.artifacts(job.id)}
    assert names == {"student_hf.zip", "student.safetensors", "student.json", "student.onnx", "transfer_set.jsonl"}
    zpath = c.download(job.id, "student_hf.zip", tmp_path)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp_path / "x")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "x" / "student_hf"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok("the quick brown", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    lines = [json.loads(x) for x in c.download(job.id, "transfer_set.jsonl", tmp_path).read_text().splitlines()]
    assert len(lines) == 15 and all(set(o) == {"prompt", "completion"} for o in lines)

    out = cli(live, "report", job.id)
    assert "held-out perplexity" in out and "student alone" in out and "decode tokens/s" in out


@pytest.mark.slow
@pytest.mark.backend_only("sqlite", reason="the data-parallel path is the core's, whatever the backend")
def test_causal_lm_job_on_two_processes_in_a_real_worker_then_a_cancel(live, tiny_llama_zip, tmp_path):
    """``training.devices: 2`` inside a Celery pool child: the job's process is rank 0 and starts the helper rank; the
    job succeeds with rank 0's metrics only; a second, long one is cancelled while training and ends cancelled, its
    helper gone."""
    import time

    import psutil

    from distill.training.parallel import usable_cores

    if usable_cores() < 2:
        pytest.skip("2 processes need 2 usable cores")
    c = live.client
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"{a} {b}"}) + "\n" for a in CORPUS for b in CORPUS))
    from client import Stillhouse

    with Stillhouse(live.url, timeout=600) as patient:
        teacher = patient.upload(tiny_llama_zip, "teacher")
        data = patient.upload(text, "dataset")

    def spec(epochs: int) -> dict:
        return {"task": "causal_lm", "teacher": {"file_id": teacher.id}, "student": {"from_teacher": {"num_layers": 2}},
                "data": {"train": {"file_id": data.id}, "validation": {"fraction": 0.2, "seed": 0}, "max_seq_length": 48},
                "method": {"name": "kd", "alpha": 0.5}, "cache": {"top_k": 16},
                "training": {"epochs": epochs, "batch_size": 5, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0,
                             "log_every_steps": 1, "devices": 2},
                "evaluation": {"speed_repeats": 1}, "export": {"formats": ["safetensors"]}}

    job = c.wait(c.create_job(spec(2)).id, timeout_s=600)
    assert job.status == "succeeded", (job.error, live.log("worker"))
    r = c.report(job.id)
    assert r.training.devices == 2 and r.training.steps == 2 * r.training.steps_per_epoch
    steps = [m.step for m in c.metrics(job.id, name="loss/total", split="train")]
    assert steps == list(range(1, r.training.steps + 1))  # one row per step: rank 0 alone records

    def helpers(job_id: str) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "distill.lm.parallel" in cmd and job_id in cmd:
                found.append(p)
        return found

    long = c.create_job(spec(10_000))
    deadline = time.monotonic() + 300
    while not c.metrics(long.id, name="loss/total", split="train"):
        assert time.monotonic() < deadline and not c.get_job(long.id).done, live.log("worker")
        time.sleep(0.5)
    assert helpers(long.id)
    t0 = time.monotonic()
    c.cancel(long.id)
    job = c.wait(long.id, timeout_s=120)
    assert job.status == "cancelled", (job.error, live.log("worker"))
    assert time.monotonic() - t0 < 30
    time.sleep(1.0)
    assert helpers(long.id) == []
