"""The embedded broker (kombu's filesystem transport) never hands a consumer a half-written message: kombu creates
the file and then writes it, and a consumer polling the folder in between read an empty payload, lost the message
and (in a worker) died with "Unrecoverable error: JSONDecodeError". ``stillhouse.jobs.fs_transport`` writes and renames."""

from __future__ import annotations

import threading
import time

from stillhouse.settings import Settings
from stillhouse.jobs.queue import RUN_JOB_TASK, make_celery


def test_every_message_published_while_a_consumer_polls_arrives_whole(tmp_path):
    app = make_celery(Settings(data_dir=tmp_path, queue="race"))
    assert app.conf.broker_transport == "stillhouse.jobs.fs_transport:Transport"
    n, got, errors = 2000, [], []

    def consume() -> None:
        with app.connection_for_read() as conn:
            ch, deadline = conn.default_channel, time.monotonic() + 120
            while len(got) < n and time.monotonic() < deadline:
                try:
                    msg = ch.basic_get("race", no_ack=True)
                except Exception as e:  # noqa: BLE001 - what kombu's own transport raised here
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if msg is not None:
                    got.append(msg.decode()[0][0])

    reader = threading.Thread(target=consume)
    reader.start()
    with app.connection_for_write() as conn:
        for i in range(n):
            app.send_task(RUN_JOB_TASK, args=[f"job_{i}"], queue="race", connection=conn)
    reader.join()
    assert errors == [] and sorted(got) == sorted(f"job_{i}" for i in range(n))  # (order within a millisecond is not kept)
    assert not list((tmp_path / "broker" / "queue").iterdir())  # no temporary file left behind
