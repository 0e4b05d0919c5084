"""kombu's filesystem transport (the embedded broker) with messages written atomically.

kombu's ``filesystem`` transport creates a message file and then writes it; a consumer polling the folder can move
and read the file in between, get an empty payload, and die with ``JSONDecodeError`` ("Unrecoverable error"), and
the message is lost (kombu issue #1551, open). Here a message is written to a hidden temporary file in the same
folder (a name consumers never pick: they only take ``*.<queue>.msg``) and renamed into place, which is atomic, so a
consumer sees either no message or all of it. Everything else is kombu's.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

log = logging.getLogger("stillhouse.broker")


class Channel(filesystem.Channel):
    """The filesystem channel, publishing by write-then-rename."""

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` on ``queue``: write ``.<uuid>.tmp``, then rename it to ``<ms>_<uuid>.<queue>.msg``.
        Raises ``ChannelError`` when the folder cannot be written."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(tmp, final)
        except OSError as exc:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """The filesystem transport with ``Channel`` above (``broker_transport = "stillhouse.jobs.fs_transport:Transport"``),
    usable by Celery's event loop.

    kombu's filesystem transport says it is not asynchronous, so a Celery worker on it runs without an event loop, and
    its prefork pool is then billiard's plain ``Pool``: every pool child reads its tasks from one shared pipe, and an
    idle child waits for the next task *blocked inside that pipe's read lock*. A child killed while idle (OOM killer,
    ``kill -9``) dies holding the lock, its replacement waits for the lock for ever, and the worker logs ``Task ...
    received`` for every later job and runs none of them (issue 15). Here the transport takes part in Celery's event
    loop instead (``implements.asynchronous``; ``register_with_event_loop`` polls the folder every
    ``polling_interval`` seconds from a hub timer), so the worker uses Celery's ``AsynPool`` as it does on Redis: one
    pipe per child, no shared lock, and a child that dies, idle or busy, is simply replaced.
    """

    Channel = Channel
    implements = filesystem.Transport.implements.extend(asynchronous=True)

    def register_with_event_loop(self, connection, loop) -> None:
        """Poll the folders every ``polling_interval`` seconds (s) from ``loop`` (a kombu ``Hub``): each tick delivers
        every message the consumers' prefetch allows."""
        loop.call_repeatedly(self.polling_interval or 0.2, self._drain_ready, connection)

    def _drain_ready(self, connection) -> None:
        for _ in range(1000):  # bounded: a tick never starves the loop
            try:
                self.drain_events(connection, timeout=0)
            except socket.timeout:
                return
            except Exception:  # noqa: BLE001 - a bad tick must not stop the hub; the next one retries
                log.exception("embedded broker: polling the queue folder failed")
                return
