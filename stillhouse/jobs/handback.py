"""Graceful shutdown: the job a stopping worker runs is handed back, not lost and not waited for.

``SIGTERM`` to a worker's main process (``docker stop``, ``python -m app up``, Ctrl-C) starts Celery's warm
shutdown, which waits for running tasks; Celery resets ``SIGTERM`` to its default in prefork children, so they
would otherwise be killed or waited for. The main process therefore forwards ``HANDBACK_SIGNAL`` to its pool
children (``forward_to_children``, from Celery's ``worker_shutting_down`` signal); a child's handler
(``install_child_handler``, from ``worker_process_init`` and again at the start of every job) only sets a flag.
``HANDBACK_SIGNAL`` is a real-time signal (``SIGRTMIN + 1``) on Linux: billiard re-points every classic
termination signal (``SIGUSR1``, ``SIGUSR2``, ...) of a pool child at its own exit handler after the child's
initializer ran, but leaves real-time signals alone. Elsewhere it is ``SIGUSR2``, re-installed at each job start. The job's reporter reads the flag
before every training step: the job saves a checkpoint of the step it reached, moves back to ``queued``
(``handbacks + 1``, not counted as an attempt), releases its lease and sends its message again; the task
returns, and the worker exits.

Send ``SIGTERM`` to the main process only (``docker stop`` does; under systemd use ``KillMode=mixed``): a
child that receives ``SIGTERM`` itself dies at once, and its job resumes from its last checkpoint after the lease
expires, as after a crash.
"""

from __future__ import annotations

import os
import signal
import threading

import psutil

HANDBACK_SIGNAL = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
_requested = threading.Event()


def requested() -> bool:
    """True once this process was told to hand its job back (its worker is shutting down)."""
    return _requested.is_set()


def request() -> None:
    """Mark this process as shutting down (what the ``HANDBACK_SIGNAL`` handler does)."""
    _requested.set()


def _on_signal(*_: object) -> None:
    _requested.set()


def install_child_handler() -> None:
    """In a pool child: make ``HANDBACK_SIGNAL`` set the hand-back flag (it would otherwise end the process).
    Idempotent and cheap; call it from the process's main thread."""
    if signal.getsignal(HANDBACK_SIGNAL) is not _on_signal:
        signal.signal(HANDBACK_SIGNAL, _on_signal)


def forward_to_children(pid: int | None = None) -> list[int]:
    """Send ``HANDBACK_SIGNAL`` to every child process of ``pid`` (default: this process); returns their pids.
    Safe inside a signal handler (no locks taken)."""
    sent = []
    try:
        children = psutil.Process(pid or os.getpid()).children()
    except psutil.Error:
        return sent
    for child in children:
        try:
            os.kill(child.pid, HANDBACK_SIGNAL)
            sent.append(child.pid)
        except ProcessLookupError:
            pass
    return sent
