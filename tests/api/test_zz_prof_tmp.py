import cProfile, pstats, time
import pytest
from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401

@pytest.mark.postgres
async def test_prof(api, teacher_id, backend):  # noqa: F811
    if backend.name != "postgres":
        pytest.skip()
    from stillhouse.jobs.runner import execute
    import worker.tasks as wt
    wt._init_child()
    ids = [(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.epochs": 3, "data.selection": {"fraction": 0.2, "seed": 0}, "evaluation.compare_baseline": False}))).json()["id"] for _ in range(2)]
    for n, jid in enumerate(ids):
        pr = cProfile.Profile(); pr.enable(); t0 = time.perf_counter()
        assert execute(jid) == "succeeded"
        pr.disable(); print("job", n, time.perf_counter() - t0)
        rep = (await api.get(f"/v1/jobs/{jid}/report")).json()
        print(rep["wall_time_s"])
        pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
