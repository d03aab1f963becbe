"""Stopping a run on SIGTERM or SIGINT without losing it.

SLURM, Kubernetes and ``timeout`` send SIGTERM some seconds before they kill a job; a person
presses Ctrl-C (SIGINT). While :class:`StopSignals` is installed, either signal only *asks* the
training loop to stop: the loop finishes the optimizer step it is in (and the validation due at
that step), writes a checkpoint of that step, verifies it, and returns; the run's lock is then
released and the command exits ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), naming
the command that continues the run. A resumed run ends with the same weights as one that was
never stopped (DESIGN invariant 8), because a checkpoint at any step is a full one.

Before the loop starts (loading the model, encoding data) nothing is worth saving, and a second
signal means "stop now": in both cases the handler raises :class:`Preempted` at once, which the
caller turns into the same exit code. Several processes each see their own signal; the loop sends
the request through its per-step all-reduce, so every process stops after the same step.

    >>> import os, signal
    >>> with StopSignals() as stop:
    ...     stop.defer()                         # inside the loop: only ask
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.received, stop.exit_code
    (<Signals.SIGTERM: 15>, 143)
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
    """A stop signal that could not wait for the end of a step. A ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` on the way turns it into an error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopSignals:
    """``with StopSignals() as stop``: SIGTERM and SIGINT set ``stop.received`` instead of killing
    the process; until :meth:`defer` is called (and on a second signal) they raise ``Preempted``.
    Outside the main thread signals cannot be caught, and nothing is installed."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self.deferred = False
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def defer(self) -> None:
        """From now on a first signal only asks to stop; the loop reads :attr:`received`."""
        self.deferred = True

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + int(self.received)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum)
        if not (self.deferred and first):
            raise Preempted(signum)
