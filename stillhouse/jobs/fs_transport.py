"""kombu's filesystem transport (the embedded broker) with messages written atomically.

kombu's ``filesystem`` transport creates a message file and then writes it; a consumer polling the folder can move
and read the file in between, get an empty payload, and die with ``JSONDecodeError`` ("Unrecoverable error"), and
the message is lost (kombu issue #1551, open). Here a message is written to a hidden temporary file in the same
folder (a name consumers never pick: they only take ``*.<queue>.msg``) and renamed into place, which is atomic, so a
consumer sees either no message or all of it. Everything else is kombu's.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


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
    """The filesystem transport with ``Channel`` above (``broker_transport = "stillhouse.jobs.fs_transport:Transport"``)."""

    Channel = Channel
