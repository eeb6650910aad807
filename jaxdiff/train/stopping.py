"""Stopping a training run on a signal: Ctrl-C (SIGINT) or SIGTERM (the warning before a
preemption) ends the run after the step in flight, with a checkpoint; a second Ctrl-C ends the
process at once.

The signals are read by a thread from the wakeup file descriptor Python's own signal handler
writes each signal's number to (``signal.set_wakeup_fd``), so they are answered even while the main
thread is inside a long XLA call such as the compilation of the first step. Ending at once never
harms the newest complete checkpoint: a checkpoint is written under a temporary name and renamed
when complete, and the temporary folder of a cut-short save is removed at the next start.

With several processes, SIGTERM is noticed through JAX's preemption sync point, so all processes
stop at the same step; signals are then left to JAX and Python's defaults.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import jax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}  # the signals, as messages name them


def stop_report(number: int, step: int, steps: int, checkpoint: object) -> str:
    """The line that ends a run stopped by signal ``number`` after ``step`` of ``steps``."""
    return (
        f"stopped by {NAMES[number]} after step {step} of {steps}; checkpoint saved in "
        f"{checkpoint}; rerun the same command to resume"
    )


def exit_code(number: int) -> int:
    """The exit status of a command ended by signal ``number``, as shells report it: 130 after
    Ctrl-C, 143 after SIGTERM."""
    return 128 + number


class StopRequests:
    """Within ``with``: Ctrl-C and SIGTERM handled as requests to stop, the previous handlers
    restored on exit. ``requested(step)`` says whether the run stops after ``step``."""

    def __enter__(self) -> StopRequests:
        self.received = 0  # the first signal's number
        self._previous: dict[signal.Signals, object] = {}
        self._listener: threading.Thread | None = None
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for number in NAMES:
            self._previous[number] = signal.signal(number, _noticed_by_the_listener)
        self._listener = threading.Thread(target=self._listen, name="stop-requests", daemon=True)
        self._listener.start()
        return self

    def _listen(self) -> None:
        """Answers each signal as it arrives; ends when the wakeup descriptor is closed."""
        while numbers := self._reader.recv(64):
            for number in numbers:
                if number in NAMES:
                    self._answer(signal.Signals(number))

    def _answer(self, number: signal.Signals) -> None:
        if not self.received:
            self.received = int(number)
            _say(
                f"{NAMES[number]}: stopping after this step with a checkpoint "
                "(Ctrl-C again stops at once)"
            )
        elif number == signal.SIGINT:  # a second SIGTERM leaves the final save to finish
            _say(
                "Ctrl-C again: stopped at once; the newest complete checkpoint is kept, rerun "
                "the same command to resume from it"
            )
            os._exit(exit_code(number))

    def requested(self, step: int) -> int:
        """The number of the signal that stops the run after ``step``, or 0 to go on; with
        several processes, the same answer in all of them."""
        if jax.process_count() > 1:
            preempted = multihost_utils.reached_preemption_sync_point(step)
            return int(signal.SIGTERM) if preempted else 0
        return self.received

    def __exit__(self, *exc) -> None:
        if self._listener is None:
            return
        for number, previous in self._previous.items():
            signal.signal(number, signal.SIG_DFL if previous is None else previous)
        signal.set_wakeup_fd(self._previous_fd)
        self._writer.close()  # the listener reads the end of the stream and returns
        self._listener.join()
        self._reader.close()


def _noticed_by_the_listener(number: int, frame) -> None:
    """The Python-level handler: the listener thread has already answered the signal."""
    del number, frame


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # above the progress bar
