"""``/v1/sweeps`` without workers: the scheduler's steps driven by hand (trial jobs ended by writing their rows as a
worker would), on SQLite and PostgreSQL: trials are ordinary jobs with the sampled values and a selection split,
max_parallel in flight, budget exhaustion (max_trials, max_runtime_s, grid), the front, cancel, and 422s naming
the field of a search space that cannot be built. tests/e2e/test_sweeps_e2e.py runs real workers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner
from sqlalchemy import select, update

from tests.api.test_files import assert_error
from client import cli
from tests.api.test_cli_reports import http_url  # noqa: F401 - fixture
from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.api.test_webhooks import pass_until_idle, private_ok  # noqa: F401 - fixture
from tests.webhooks import WebhookReceiver

SPACE = {"student.architecture.kwargs.hidden_sizes": {"type": "layers", "widths": [8, 32], "depths": [1, 2]},
         "method.temperature": {"type": "float", "low": 1.0, "high": 8.0}}


def sweep_body(teacher: str, **over) -> dict:
    body = {"name": "s", "base": spec_for(teacher), "search_space": SPACE, "sampler": {"name": "random", "seed": 0},
            "budget": {"max_trials": 4, "max_parallel": 2}}
    body.update(over)
    return body


def _jobs(sweep_id: str):
    from stillhouse.db import session_factory
    from stillhouse.models import Job

    with session_factory()() as s:
        return list(s.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at)))


def _end(job_id: str, status: str = "succeeded", top1: float = 0.9, nbytes: int = 1000, p50: float = 0.1) -> None:
    """End a trial job as a worker would (status and report), then let the scheduler step."""
    from stillhouse.db import session_factory
    from stillhouse.models import Job
    from stillhouse.sweeps import scheduler

    report = {"student": {"val_top1": top1, "bytes": nbytes, "parameters": nbytes // 4, "latency_ms": {"1": {"p50": p50, "p95": p50}}},
              "training": {"training_time_s": 0.5}, "cache": {"shared": {"teacher_outputs": "reused"}},
              "holdout": {"rows": 360, "student_val_top1": top1 - 0.01, "student_interval95": [top1 - 0.05, top1 + 0.02],
                          "teacher_val_top1": 0.97, "teacher_interval95": [0.95, 0.98], "agreement": 0.9},
              "teacher": {"bytes": 99999, "parameters": 9999, "latency_ms": {"1": {"p50": 1.0, "p95": 1.0}}}}
    with session_factory()() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, report=report if status == "succeeded" else None))
        s.commit()
    with session_factory()() as s:
        sweep_id = s.get(Job, job_id).sweep_id
    scheduler.advance(sweep_id)


async def test_sweep_trials_are_jobs_and_budget_ends_it_with_a_front(api, teacher_id):  # noqa: F811
    resp = await api.post("/v1/sweeps", json=sweep_body(teacher_id))
    assert resp.status_code == 201, resp.text
    sw = resp.json()
    assert sw["id"].startswith("swp_") and sw["status"] == "running" and sw["trials"]["created"] == 2
    jobs = _jobs(sw["id"])
    assert len(jobs) == 2 and all(j.status == "queued" and j.enqueued_at is not None for j in jobs)  # sent like any job
    trials = (await api.get(f"/v1/sweeps/{sw['id']}/trials")).json()["data"]
    for t, j in zip(trials, jobs):
        assert t["job_id"] == j.id
        hs = t["params"]["student.architecture.kwargs.hidden_sizes"]
        assert j.spec["student"]["architecture"]["kwargs"]["hidden_sizes"] == hs and hs[0] in (8, 32) and len(hs) in (1, 2)
        assert j.spec["method"]["temperature"] == pytest.approx(t["params"]["method.temperature"])
        assert j.spec["data"]["selection"] == {"fraction": 0.2, "seed": 0}  # scored on a selection split
        assert j.spec["evaluation"]["compare_baseline"] is False  # no second training of the student alone per trial
        assert (await api.get(f"/v1/jobs/{j.id}")).status_code == 200  # an ordinary job
    # a trial ends: the next one is asked for at once, never more than max_parallel in flight
    _end(jobs[0].id, top1=0.95, nbytes=4000, p50=0.3)
    assert [j.status for j in _jobs(sw["id"])].count("queued") == 2 and len(_jobs(sw["id"])) == 3
    _end(jobs[1].id, top1=0.80, nbytes=1000, p50=0.1)
    jobs = _jobs(sw["id"])
    assert len(jobs) == 4
    _end(jobs[2].id, top1=0.70, nbytes=5000, p50=0.5)  # dominated by trial 0
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "running" and got["stop_reason"] == "max_trials" and got["trials"]["created"] == 4
    assert got["best"]["job_id"] == jobs[0].id
    _end(jobs[3].id, status="failed")
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "succeeded" and got["trials"]["created"] == 4 and len(_jobs(sw["id"])) == 4  # budget exhausted
    front = (await api.get(f"/v1/sweeps/{sw['id']}/front")).json()
    assert front["final"] and [m["job_id"] for m in front["data"]] == [jobs[0].id, jobs[1].id]
    assert front["data"][0]["holdout"]["student_interval95"] == pytest.approx([0.90, 0.97])
    assert front["objectives"] == ["top1", "latency_p50_ms@1", "bytes"]
    states = {t["number"]: t["state"] for t in (await api.get(f"/v1/sweeps/{sw['id']}/trials")).json()["data"]}
    assert states == {0: "complete", 1: "complete", 2: "complete", 3: "failed"}
    page = await api.get(f"/v1/sweeps/{sw['id']}/front.html")
    assert page.status_code == 200 and "<svg" in page.text and jobs[0].id in page.text
    assert [s["id"] for s in (await api.get("/v1/sweeps")).json()["data"]] == [sw["id"]]


async def test_cancel_cancels_queued_and_running_trials(api, teacher_id):  # noqa: F811
    from stillhouse.db import session_factory
    from stillhouse.models import Job
    from stillhouse.sweeps import scheduler

    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id))).json()
    running, queued = _jobs(sw["id"])
    with session_factory()() as s:
        s.execute(update(Job).where(Job.id == running.id).values(status="running"))
        s.commit()
    resp = await api.post(f"/v1/sweeps/{sw['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    status = {j.id: j.status for j in _jobs(sw["id"])}
    assert status == {running.id: "cancelling", queued.id: "cancelled"}
    assert (await api.post(f"/v1/sweeps/{sw['id']}/cancel")).status_code == 200  # twice is harmless
    _end(running.id, status="cancelled")
    scheduler.advance(sw["id"])
    assert len(_jobs(sw["id"])) == 2  # no new trial after the cancel
    front = (await api.get(f"/v1/sweeps/{sw['id']}/front")).json()
    assert front["final"] and front["data"] == []


async def test_max_runtime_cancels_live_trials_and_ends_the_sweep(api, teacher_id):  # noqa: F811
    from stillhouse.db import session_factory
    from stillhouse.models import Sweep
    from stillhouse.sweeps import scheduler

    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 10, "max_parallel": 2,
                                                                             "max_runtime_s": 60}))).json()
    first, second = _jobs(sw["id"])
    _end(first.id, top1=0.9)
    with session_factory()() as s:
        row = s.get(Sweep, sw["id"])
        s.execute(update(Sweep).where(Sweep.id == sw["id"]).values(created_at=row.created_at - timedelta(seconds=61)))
        s.commit()
    scheduler.advance(sw["id"])
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["stop_reason"] == "max_runtime_s" and got["trials"]["created"] == 3
    assert sorted(j.status for j in _jobs(sw["id"])) == ["cancelled", "cancelled", "succeeded"]
    scheduler.advance(sw["id"])
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "succeeded" and len((await api.get(f"/v1/sweeps/{sw['id']}/front")).json()["data"]) == 1


async def test_grid_sampler_stops_when_the_grid_is_done(api, teacher_id):  # noqa: F811
    body = sweep_body(teacher_id, sampler={"name": "grid"}, budget={"max_trials": 50, "max_parallel": 8},
                      search_space={"method.temperature": {"type": "categorical", "choices": [2.0, 4.0, 8.0]}})
    sw = (await api.post("/v1/sweeps", json=body)).json()
    jobs = _jobs(sw["id"])
    assert sorted(j.spec["method"]["temperature"] for j in jobs) == [2.0, 4.0, 8.0]
    for j in jobs:
        _end(j.id)
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "succeeded" and got["stop_reason"] == "search_space_exhausted" and got["trials"]["created"] == 3


@pytest.mark.parametrize("space,param", [
    ({"method.temprature": {"type": "float", "low": 1, "high": 4}}, "search_space.method.temprature"),
    ({"student.architecture.kwargs.hidden_sizes": {"type": "categorical", "choices": [[8], [-4]]}},
     "search_space.student.architecture.kwargs.hidden_sizes"),
    ({"method.alpha": {"type": "float", "low": 0.5, "high": 1.5}}, "search_space.method.alpha"),
    ({"training.optimizer.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "search_space.training.optimizer.lr"),
])
async def test_search_space_that_cannot_be_built_is_422_naming_the_field(api, teacher_id, space, param):  # noqa: F811
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, search_space=space)), 422)
    assert err["param"] == param or err["param"].startswith(param), err
    assert _no_sweeps()


@pytest.mark.parametrize("bounds", [{"low": float("nan"), "high": 4.0}, {"low": 1.0, "high": float("inf")},
                                    {"low": 1.0, "high": 4.0, "step": float("nan")}])
async def test_non_finite_bounds_are_a_422_saying_so(api, teacher_id, bounds):  # noqa: F811
    """A NaN or infinite bound (JSON's NaN/Infinity literals, YAML's .nan/.inf) is refused at its own field; NaN used to
    pass the range rule (every comparison with it is false) and fail the trial spec with "should be <= 100"."""
    import json

    body = json.dumps(sweep_body(teacher_id, search_space={"method.temperature": {"type": "float", **bounds}}))  # NaN, Infinity
    err = assert_error(await api.post("/v1/sweeps", content=body, headers={"content-type": "application/json"}), 422)
    assert err["param"].startswith("search_space.method.temperature") and "finite" in err["message"], err
    assert "100" not in err["message"]
    assert _no_sweeps()


async def test_a_method_parameter_searched_over_a_base_without_a_method_is_a_422_saying_what_to_add(api, teacher_id):  # noqa: F811
    """The base names no method (a job's default is 'auto'): every trial would get a method object holding only the
    searched parameter, and creation answered "method needs 'name'" without saying why."""
    base = spec_for(teacher_id)
    base.pop("method", None)
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, base=base)), 422)
    assert err["param"] == "search_space.method.temperature" and "base.method.name" in err["message"], err
    assert _no_sweeps()
    ok = await api.post("/v1/sweeps", json=sweep_body(teacher_id, base={**base, "method": {"name": "kd"}}))
    assert ok.status_code == 201, ok.text


async def test_bad_base_and_grid_over_floats_are_422(api, teacher_id):  # noqa: F811
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body("file_" + "0" * 24)), 422, "file_not_found")
    assert err["param"] == "base.teacher.file_id"
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, base=spec_for(teacher_id, training={"epochs": 0}))), 422)
    assert err["param"] == "base.training.epochs"
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, sampler={"name": "grid"})), 422)
    assert "grid" in err["message"] and "method.temperature" in err["message"]
    assert err["param"] == "search_space.method.temperature", err  # a rule over several fields still names its field
    assert _no_sweeps()


async def test_a_nul_character_in_the_sweeps_name_is_422_and_stores_nothing(api, teacher_id):  # noqa: F811
    """Trials are jobs named after the sweep and a job name may hold no NUL: such a sweep used to be stored, answer 500
    and never start a trial (each repair pass failing on its first trial's name)."""
    err = assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, name="a\x00b")), 422, "invalid_request")
    assert err["param"] == "name" and "NUL" in err["message"], err
    assert _no_sweeps()


async def test_values_that_only_fail_together_fail_the_sweep_saying_which(api, teacher_id):  # noqa: F811
    """Each dimension's edge values are checked alone at creation; ``method.name: hard_label`` with a sampled
    ``method.temperature`` only fails together (hard_label has no temperature). Such a sweep used to answer 500, stay
    ``running`` with no trial and fail every repair pass; now it fails at once, its error naming the trial's values and
    the field, and its stop reason ``invalid_search_space``."""
    from stillhouse.sweeps import scheduler

    base = spec_for(teacher_id)
    base["method"] = {"name": "kd"}
    space = {"method.name": {"type": "categorical", "choices": ["hard_label"]},
             "method.temperature": {"type": "float", "low": 1.0, "high": 8.0}}
    resp = await api.post("/v1/sweeps", json=sweep_body(teacher_id, base=base, search_space=space))
    assert resp.status_code == 201, resp.text
    sw = resp.json()
    assert sw["status"] == "failed" and sw["stop_reason"] == "invalid_search_space", sw
    assert "trial 0's values" in sw["error"] and "method.hard_label.temperature" in sw["error"], sw["error"]
    assert _jobs(sw["id"]) == []
    assert scheduler.advance(sw["id"]) == []  # a later pass has nothing to do and raises nothing
    again = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert (again["status"], again["error"]) == ("failed", sw["error"])


def _no_sweeps() -> bool:
    from stillhouse.db import session_factory
    from stillhouse.models import Job, Sweep

    with session_factory()() as s:
        return s.scalar(select(Sweep.id)) is None and s.scalar(select(Job.id).where(Job.sweep_id.is_not(None))) is None


async def test_cli_sweep_submit_wait_front(http_url, teacher_id, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cli, "console", Console(width=250))
    body = sweep_body(teacher_id, sampler={"name": "grid"}, search_space={"method.alpha": {"type": "categorical", "choices": [0.5, 0.9]}})
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(body))
    runner = CliRunner()
    out = runner.invoke(cli.app, ["--api", http_url, "sweep", "submit", str(tmp_path / "sweep.yaml")])
    assert out.exit_code == 0, out.output
    sweep_id = out.stdout.strip().splitlines()[-1]
    assert sweep_id.startswith("swp_")
    jobs = _jobs(sweep_id)
    _end(jobs[0].id, top1=0.9, nbytes=2000, p50=0.2)
    _end(jobs[1].id, top1=0.8, nbytes=1000, p50=0.1)
    waited = runner.invoke(cli.app, ["--api", http_url, "sweep", "wait", sweep_id, "--json"])
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["status"] == "succeeded"
    front = runner.invoke(cli.app, ["--api", http_url, "sweep", "front", sweep_id])
    assert front.exit_code == 0 and jobs[0].id in front.stdout and jobs[1].id in front.stdout and "teacher" in front.stdout
    missing = runner.invoke(cli.app, ["--api", http_url, "sweep", "front", "swp_" + "0" * 24])
    assert missing.exit_code == 2


def _live(tenant_id: str = "default") -> int:
    from stillhouse.db import session_factory
    from stillhouse.jobs.limits import live_jobs

    with session_factory()() as s:
        return live_jobs(s, tenant_id)


async def test_trials_count_against_the_tenants_live_job_limit(api, teacher_id, monkeypatch):  # noqa: F811
    """Limit 3, one ordinary job live: a sweep with max_parallel 4 starts 2 trials and waits (never over the limit);
    at the limit both POST /v1/jobs and POST /v1/sweeps answer 429; each freed slot (a trial's or another job's end)
    starts one more trial, and the sweep still runs its whole budget."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.settings import get_settings
    from stillhouse.sweeps import scheduler

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "3")
    get_settings.cache_clear()
    other = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 5, "max_parallel": 4}))).json()
    assert sw["status"] == "running" and sw["trials"]["created"] == 2 and sw["waiting_for_job_slot"] is True
    assert _live() == 3
    assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id)), 429, "too_many_jobs")
    resp = await api.post("/v1/sweeps", json=sweep_body(teacher_id))
    err = assert_error(resp, 429, "too_many_jobs")
    assert "limit is 3" in err["message"] and resp.headers["retry-after"]
    assert [s["id"] for s in (await api.get("/v1/sweeps")).json()["data"]] == [sw["id"]]  # nothing created
    scheduler.advance(sw["id"], force=True)  # a step at the limit creates nothing
    assert len(_jobs(sw["id"])) == 2
    # the ordinary job ends: its worker's hook gives the freed slot to the waiting sweep
    with session_scope() as s:
        assert states.transition(s, other, states.RUNNING, attempt=1) and states.transition(s, other, states.SUCCEEDED)
    scheduler.job_finished(other)
    assert len(_jobs(sw["id"])) == 3 and _live() == 3
    seen = 3
    while (jobs := [j for j in _jobs(sw["id"]) if j.status == "queued"]):
        _end(jobs[0].id)
        assert _live() <= 3
        seen = max(seen, len(_jobs(sw["id"])))
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "succeeded" and got["trials"]["created"] == 5 and got["trials"]["succeeded"] == 5
    assert got["waiting_for_job_slot"] is False and seen == 5


async def test_an_api_cancel_gives_the_freed_slot_to_a_waiting_sweep_at_once(api, teacher_id, monkeypatch):  # noqa: F811
    """Limit 3: an ordinary queued job and a sweep that waits with 2 trials; cancelling the job through the API starts
    the sweep's third trial in the same request (not at the next repair pass). Then a second sweep waits behind the
    first; cancelling the first sweep (its 3 queued trials cancelled) starts the second one's trials at once."""
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "3")
    get_settings.cache_clear()
    other = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 6, "max_parallel": 4}))).json()
    assert sw["trials"]["created"] == 2 and sw["waiting_for_job_slot"] is True
    assert (await api.post(f"/v1/jobs/{other}/cancel")).json()["status"] == "cancelled"
    assert len(_jobs(sw["id"])) == 3 and _live() == 3  # no repair pass ran in between
    assert (await api.get(f"/v1/sweeps/{sw['id']}")).json()["waiting_for_job_slot"] is True
    second = (await api.post("/v1/jobs", json=spec_for(teacher_id)))
    assert_error(second, 429, "too_many_jobs")
    # a queued trial cancelled through the job API: its own sweep tells Optuna and takes the slot back
    first_trial = _jobs(sw["id"])[0].id
    assert (await api.post(f"/v1/jobs/{first_trial}/cancel")).json()["status"] == "cancelled"
    trials = (await api.get(f"/v1/sweeps/{sw['id']}/trials")).json()["data"]
    assert trials[0]["state"] == "cancelled" and len(_jobs(sw["id"])) == 4 and _live() == 3
    # a second sweep waits behind the first; cancelling the first frees its 3 slots for it in the same request
    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "4")
    get_settings.cache_clear()
    later = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 4, "max_parallel": 2}))).json()
    assert later["trials"]["created"] == 1 and later["waiting_for_job_slot"] is True
    assert (await api.post(f"/v1/sweeps/{sw['id']}/cancel")).json()["status"] == "cancelled"
    assert len(_jobs(later["id"])) == 2 and all(j.status == "queued" for j in _jobs(later["id"]))
    got = (await api.get(f"/v1/sweeps/{later['id']}")).json()
    assert got["trials"]["created"] == 2 and got["waiting_for_job_slot"] is False


def test_trials_skip_the_baseline_unless_the_base_asks_for_it():
    """A trial's job spec turns evaluation.compare_baseline off (the student trained alone a second time, which no sweep
    score reads) unless the base or the search space sets it."""
    from stillhouse.sweeps.spec import SweepSpec, trial_spec

    base = spec_for("file_x")
    body = {"base": base, "search_space": SPACE}
    assert trial_spec(SweepSpec.model_validate(body), {})["evaluation"]["compare_baseline"] is False
    asked = {**base, "evaluation": {**base.get("evaluation", {}), "compare_baseline": True}}
    assert trial_spec(SweepSpec.model_validate({**body, "base": asked}), {})["evaluation"]["compare_baseline"] is True
    searched = {**body, "search_space": {"evaluation.compare_baseline": {"type": "categorical", "choices": [True, False]}}}
    assert trial_spec(SweepSpec.model_validate(searched), {"evaluation.compare_baseline": True})["evaluation"]["compare_baseline"] is True


async def test_a_sweep_under_a_roomy_limit_is_not_held_back(api, teacher_id, monkeypatch):  # noqa: F811
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "4")
    get_settings.cache_clear()
    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 8, "max_parallel": 3}))).json()
    assert sw["trials"]["created"] == 3 and sw["waiting_for_job_slot"] is False
    second = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 8, "max_parallel": 3}))).json()
    assert second["trials"]["created"] == 1 and second["waiting_for_job_slot"] is True and _live() == 4
    _end(_jobs(sw["id"])[0].id)  # the first sweep's slot: its own next trial takes it (the sweep of the ended trial first)
    assert len(_jobs(sw["id"])) == 4 and len(_jobs(second["id"])) == 1 and _live() == 4


async def test_sweep_webhooks_are_sent_once_when_a_sweep_ends(api, backend, teacher_id, private_ok):  # noqa: F811
    """sweep.succeeded / sweep.failed / sweep.cancelled through the job events' outbox: signed, thin (id, status,
    tenant, front size), only to endpoints subscribed to them, once per sweep however many steps follow; a cancelled
    sweep's event waits for its last running trial (its front is known then)."""
    from stillhouse.db import session_factory
    from stillhouse.models import Job
    from stillhouse.sweeps import scheduler

    with WebhookReceiver() as rx:
        every = (await api.post("/v1/webhooks", json={"url": rx.url + "?all"})).json()
        done = (await api.post("/v1/webhooks", json={"url": rx.url + "?done", "events": ["sweep.succeeded", "sweep.cancelled"]})).json()
        jobs_only = (await api.post("/v1/webhooks", json={"url": rx.url + "?jobs", "events": ["job.succeeded"]})).json()
        # succeeded, with a 2-member front
        ok = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 2, "max_parallel": 2}))).json()
        first, second = _jobs(ok["id"])
        _end(first.id, top1=0.95, nbytes=4000, p50=0.3)
        assert pass_until_idle() == 0  # nothing before the sweep's end
        _end(second.id, top1=0.80, nbytes=1000, p50=0.1)
        for _ in range(3):
            scheduler.advance(ok["id"], force=True)  # later steps announce nothing again
        assert pass_until_idle() == 2
        got = rx.wait_for(2)
        assert sorted(r.path.rsplit("?", 1)[-1] for r in got) == ["all", "done"]
        for r in got:
            secret = every["secret"] if r.path.endswith("?all") else done["secret"]
            payload = r.verify(secret)
            assert payload["type"] == "sweep.succeeded"
            assert payload["data"] == {"object": "sweep", "id": ok["id"], "status": "succeeded", "tenant_id": "default",
                                       "front_size": 2}
        log = (await api.get(f"/v1/webhooks/{every['id']}/deliveries")).json()["data"]
        assert [(d["event_type"], d["sweep_id"], d["job_id"], d["status"]) for d in log] == [("sweep.succeeded", ok["id"], None, "succeeded")]
        # failed: no trial completed -> only the endpoint subscribed to everything
        bad = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 1, "max_parallel": 1}))).json()
        _end(_jobs(bad["id"])[0].id, status="failed")
        assert pass_until_idle() == 1
        payload = rx.wait_for(3)[-1].verify(every["secret"])
        assert payload["type"] == "sweep.failed" and payload["data"]["id"] == bad["id"] and payload["data"]["front_size"] == 0
        # cancelled: announced once its running trial has stopped, not at the cancel
        sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id))).json()
        running, _ = _jobs(sw["id"])
        with session_factory()() as s:
            s.execute(update(Job).where(Job.id == running.id).values(status="running"))
            s.commit()
        assert (await api.post(f"/v1/sweeps/{sw['id']}/cancel")).json()["status"] == "cancelled"
        assert (await api.post(f"/v1/sweeps/{sw['id']}/cancel")).status_code == 200
        pass_until_idle()  # the queued trial's job.cancelled (its job is an ordinary job), no sweep event yet

        def sweep_events():
            return [(r.path.rsplit("?", 1)[-1], json.loads(r.body)) for r in rx.requests if json.loads(r.body)["type"].startswith("sweep.")]

        assert len(sweep_events()) == 3
        _end(running.id, status="cancelled")
        scheduler.advance(sw["id"], force=True)
        pass_until_idle()
        last = sorted((where, p["type"]) for where, p in sweep_events()[3:])
        assert last == [("all", "sweep.cancelled"), ("done", "sweep.cancelled")]
        assert sweep_events()[-1][1]["data"] == {"object": "sweep", "id": sw["id"], "status": "cancelled",
                                                 "tenant_id": "default", "front_size": 0}
        assert (await api.get(f"/v1/webhooks/{jobs_only['id']}/deliveries")).json()["data"] == []


async def test_a_pruner_needs_the_single_objective_top1(api, teacher_id):  # noqa: F811
    """Optuna's pruners are single-objective: a multi-objective sweep (or one on latency/bytes) with a pruner is 422,
    naming the field; with the one objective top1 it is accepted."""
    for objectives in (None, [{"name": "bytes"}], [{"name": "top1"}, {"name": "bytes"}]):
        body = sweep_body(teacher_id, budget={"max_trials": 2, "pruner": "median"})
        if objectives is not None:
            body["objectives"] = objectives
        err = assert_error(await api.post("/v1/sweeps", json=body), 422)
        assert "budget.pruner" in err["message"] and "[top1]" in err["message"], err
        assert err["param"] == "budget.pruner" and not err["message"].startswith("Value error"), err
    assert_error(await api.post("/v1/sweeps", json=sweep_body(teacher_id, objectives=[{"name": "top1"}],
                                                              budget={"pruner": "hyperband"})), 422)
    assert _no_sweeps()
    resp = await api.post("/v1/sweeps", json=sweep_body(teacher_id, objectives=[{"name": "top1"}],
                                                        budget={"max_trials": 2, "pruner": "successive_halving"}))
    assert resp.status_code == 201 and resp.json()["spec"]["budget"]["pruner"] == "successive_halving"
    assert sweep_body(teacher_id)["budget"].get("pruner") is None and resp.json()["trials"]["pruned"] == 0


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
async def test_a_pruned_trial_stops_early_and_stays_off_the_front(api, teacher_id, pruner):  # noqa: F811
    """Median or successive-halving pruner, 3 epochs a trial: two trials report a selection top-1 of 0.95 per epoch
    (as their worker would) and complete; the third runs for real in this process (the worker's task body) with a
    learning rate too small to learn, is told by Optuna to stop after epoch 1, stops through the trainer's stop check,
    and ends cancelled with error code trial_pruned: one epoch of metrics, nothing published, trial state 'pruned' with
    the reason, off the front; the sweep still ends succeeded. (Successive halving: its minimum resource, estimated from
    the first completed trial, is 1 epoch; the second trial's epoch 1 enters rung 0, and at a reduction factor of 4 only
    the best of the rung's values goes on, so the third trial's low top-1 stops there.)"""
    from distill.reporter import MetricRow
    from stillhouse.db import session_factory
    from stillhouse.jobs.runner import execute
    from stillhouse.models import Artifact, Metric
    from stillhouse.settings import get_settings
    from stillhouse.sweeps import pruning, scheduler

    base = spec_for(teacher_id, **{"training.epochs": 3, "training.optimizer": {"name": "sgd", "lr": 1e-9}})
    body = sweep_body(teacher_id, base=base, objectives=[{"name": "top1"}], sampler={"name": "random", "seed": 0},
                      search_space={"method.alpha": {"type": "categorical", "choices": [0.5, 0.9]}},
                      budget={"max_trials": 3, "max_parallel": 1, "pruner": pruner})
    sw = (await api.post("/v1/sweeps", json=body)).json()
    for n in range(2):
        (job,) = [j for j in _jobs(sw["id"]) if j.status == "queued"]
        watch = pruning.for_job(session_factory(), job.id, get_settings())
        assert watch is not None and watch.epochs == 3
        assert [watch.observe([MetricRow("top1", "val", 10 * e, e, 0.95)]) for e in (1, 2)] == [None, None]
        _end(job.id, top1=0.95)
    (third,) = [j for j in _jobs(sw["id"]) if j.status == "queued"]
    assert execute(third.id) == "cancelled"
    with session_factory()() as s:
        job = s.get(type(third), third.id)
        assert job.error_code == "trial_pruned" and f"{pruner} pruner after epoch 1 of 3" in job.error_message
        epochs = sorted({m.epoch for m in s.scalars(select(Metric).where(Metric.job_id == third.id, Metric.split == "val"))})
        assert epochs == [1] and s.scalar(select(Artifact.id).where(Artifact.job_id == third.id)) is None
    scheduler.job_finished(third.id)
    trials = (await api.get(f"/v1/sweeps/{sw['id']}/trials")).json()["data"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert trials[2]["status"] == "cancelled" and f"pruned by the sweep's {pruner} pruner" in trials[2]["reason"]
    got = (await api.get(f"/v1/sweeps/{sw['id']}")).json()
    assert got["status"] == "succeeded" and got["trials"]["pruned"] == 1 and got["trials"]["cancelled"] == 0
    front = (await api.get(f"/v1/sweeps/{sw['id']}/front")).json()
    assert third.id not in [m["job_id"] for m in front["data"]] and front["data"]


async def test_concurrent_sweeps_and_jobs_cannot_pass_the_limit_together(api, teacher_id, monkeypatch):  # noqa: F811
    """Limit 3: three sweeps (max_parallel 2) and three jobs created at once; however they interleave, at most 3 of the
    tenant's jobs are live (the sweep steps count under the same tenant lock as job creation), and every refusal is a
    429 too_many_jobs."""
    import asyncio

    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "3")
    get_settings.cache_clear()
    calls = [api.post("/v1/sweeps", json=sweep_body(teacher_id, name=f"s{i}")) for i in range(3)]
    calls += [api.post("/v1/jobs", json=spec_for(teacher_id, name=f"j{i}")) for i in range(3)]
    responses = await asyncio.gather(*calls)
    assert all(r.status_code in (201, 429) for r in responses), [r.text for r in responses]
    assert all(r.json()["error"]["code"] == "too_many_jobs" for r in responses if r.status_code == 429)
    # no `any(429)`: all six may be accepted (three sweeps committed, then three jobs, before any sweep's first step,
    # which then finds no slot and waits); the 429s themselves are checked in test_trials_count_against_the_tenants_live_job_limit
    assert _live() == 3


async def test_the_repair_loop_finishes_a_cancelled_sweep_whose_worker_died(api, teacher_id):  # noqa: F811
    """A sweep cancelled while a trial runs waits for that trial; when its worker dies, the repair loop ends the
    ``cancelling`` job itself (no worker calls job_finished), and the same pass must then take the sweep's final step:
    its front is written and its sweep.cancelled webhook is added once (it was never sent: the pass looked at running
    sweeps only)."""
    from stillhouse.db import session_factory
    from stillhouse.jobs.sweep import sweep as repair_pass
    from stillhouse.models import Job, Sweep, WebhookDelivery, utcnow
    from stillhouse.settings import get_settings

    hook = (await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks", "events": ["sweep.cancelled"]})).json()
    sw = (await api.post("/v1/sweeps", json=sweep_body(teacher_id))).json()
    running, queued = _jobs(sw["id"])
    with session_factory()() as s:  # a worker claimed the first trial, then died (its lease expired)
        s.execute(update(Job).where(Job.id == running.id).values(status="running", attempt=1, lease_owner="dead-worker",
                                                               lease_expires_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    assert (await api.post(f"/v1/sweeps/{sw['id']}/cancel")).json()["status"] == "cancelled"

    def sweep_deliveries() -> list[str]:
        with session_factory()() as s:
            return list(s.scalars(select(WebhookDelivery.event_type).where(WebhookDelivery.endpoint_id == hook["id"])))

    assert sweep_deliveries() == []  # its running trial has not stopped yet
    with session_factory()() as s:
        assert s.get(Job, running.id).status == "cancelling" and s.get(Job, queued.id).status == "cancelled"
    result = repair_pass(session_factory(), utcnow(), get_settings(), send=lambda job_id: None)
    assert result.cancelled == [running.id]
    with session_factory()() as s:
        done = s.get(Sweep, sw["id"])
        assert done.status == "cancelled" and done.front == []
    assert sweep_deliveries() == ["sweep.cancelled"]
    repair_pass(session_factory(), utcnow(), get_settings(), send=lambda job_id: None)
    assert sweep_deliveries() == ["sweep.cancelled"]  # once
    front = (await api.get(f"/v1/sweeps/{sw['id']}/front")).json()
    assert front["final"] is True and front["data"] == []


async def test_a_sweep_with_nothing_left_to_start_is_not_waiting_for_a_job_slot(api, teacher_id, monkeypatch):  # noqa: F811
    """waiting_for_job_slot means "would start a trial but the tenant is at its limit": a grid sweep whose 2 grid
    points are both created, at the tenant's limit, has nothing left to start (its stop reason is set only at its next
    step), so it is not waiting; neither is a sweep past its max_runtime_s."""
    from stillhouse.db import session_factory
    from stillhouse.models import Sweep, utcnow
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "3")
    get_settings.cache_clear()
    await api.post("/v1/jobs", json=spec_for(teacher_id))
    grid = (await api.post("/v1/sweeps", json=sweep_body(
        teacher_id, sampler={"name": "grid", "seed": 0}, budget={"max_trials": 12, "max_parallel": 4},
        search_space={"method.alpha": {"type": "categorical", "choices": [0.5, 0.9]}}))).json()
    assert grid["trials"]["created"] == 2 and _live() == 3 and grid["stop_reason"] is None
    assert grid["waiting_for_job_slot"] is False
    await api.post(f"/v1/sweeps/{grid['id']}/cancel")  # frees the grid's 2 slots: the next sweep gets 2 of its 4
    late = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 8, "max_parallel": 4}))).json()
    assert late["trials"]["created"] == 2 and late["waiting_for_job_slot"] is True  # at the limit, with more to start
    with session_factory()() as s:
        s.execute(update(Sweep).where(Sweep.id == late["id"]).values(created_at=utcnow() - timedelta(days=2)))
        s.commit()
    assert (await api.get(f"/v1/sweeps/{late['id']}")).json()["waiting_for_job_slot"] is False  # past max_runtime_s


async def test_a_trials_slot_goes_to_its_own_sweep_first_then_to_the_oldest_waiting(api, teacher_id, monkeypatch):  # noqa: F811
    """Limit 4, two sweeps both waiting for a slot: the worker's hook (job_finished) gives the slot a trial freed to that
    trial's own sweep, even when an older sweep waits too (the other tests of the limit step the trial's sweep by hand;
    this one goes through job_finished as a worker does); slots freed by a cancelled sweep go to the waiting one in the
    cancel request itself (before, only at the repair loop's next pass), and that pass then has nothing left to do."""
    from stillhouse.db import session_factory
    from stillhouse.models import Job
    from stillhouse.settings import get_settings
    from stillhouse.sweeps import scheduler

    def finish(job_id: str, status: str = "failed") -> None:
        with session_factory()() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status=status))
            s.commit()

    monkeypatch.setenv("STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", "4")
    get_settings.cache_clear()
    other = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    older = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 8, "max_parallel": 4}))).json()
    assert older["trials"]["created"] == 3 and older["waiting_for_job_slot"] is True
    finish(other)  # ended without the hook: one slot free for the next sweep's creation
    newer = (await api.post("/v1/sweeps", json=sweep_body(teacher_id, budget={"max_trials": 8, "max_parallel": 2}))).json()
    assert newer["trials"]["created"] == 1 and newer["waiting_for_job_slot"] is True and _live() == 4
    (trial,) = _jobs(newer["id"])
    finish(trial.id)
    scheduler.job_finished(trial.id)  # the newer sweep's own trial ended: its slot stays with the newer sweep
    assert len(_jobs(newer["id"])) == 2 and len(_jobs(older["id"])) == 3 and _live() == 4
    await api.post(f"/v1/sweeps/{newer['id']}/cancel")  # its queued trial cancelled: a slot for the older sweep
    assert len(_jobs(older["id"])) == 4 and _live() == 4  # given in the cancel request
    scheduler.advance_live(session_factory(), get_settings())
    assert len(_jobs(older["id"])) == 4 and _live() == 4


def test_a_forked_child_does_not_reuse_the_parents_optuna_connections(backend):
    """A Celery pool child that replaces a dead one is forked from the worker's main process, whose repair loop has used
    the sweeps' Optuna storage (cached once per process): the child must open its own connections (its trials' pruner
    and job_finished use the storage) instead of the pooled ones it inherited, which belong to the parent."""
    import os

    from sqlalchemy import text

    from stillhouse.sweeps import scheduler

    rdb = scheduler.storage()
    with rdb.engine.connect() as c:
        c.execute(text("SELECT 1"))
    assert rdb.engine.pool.checkedin() >= 1  # the parent's connection, pooled
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only, never return into pytest
        code = 3
        try:
            same = scheduler.storage() is rdb
            inherited = rdb.engine.pool.checkedin()
            with rdb.engine.connect() as c:
                c.execute(text("SELECT 1"))
            code = 0 if same and inherited == 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with rdb.engine.connect() as c:  # the parent's own connection still works
        assert c.execute(text("SELECT 1")).scalar() == 1
