"""A child process whose output is read as it comes and which can be stopped with its children.

The plugin runs training and evaluation as ``python -m ...`` children, never in the GUI's own
process: a crash, a leak or a hard stop there cannot take napari down. :class:`ChildProcess`
merges stdout and stderr, splits them into lines *and* carriage-return updates (a progress bar
redraws its line with ``\\r``), and :meth:`ChildProcess.stop` ends the whole process group (the
DataLoader workers of a training run too).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["ChildProcess", "Output"]

_BREAK = re.compile(rb"[\r\n]")
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class Output:
    """A piece of the child's output: a line, or (``redraw``) one a carriage return then draws
    over (a progress bar's update)."""

    text: str
    redraw: bool = False


class ChildProcess:
    """``argv`` run in a process group of its own, read line by line by one thread."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.stopped = False
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        options: dict = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own group: stop() reaches the workers
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
            **options,
        )

    @property
    def pid(self) -> int:
        """The child's process id (its process group's id too, outside Windows)."""
        return self._process.pid

    def output(self) -> Iterator[Output]:
        """The child's output as it comes, until it closes it (it ends or is stopped)."""
        stream = self._process.stdout
        pending = b""
        while True:
            chunk = stream.read1(65536)  # what is there, without waiting for more
            if not chunk:
                break
            pending += chunk
            while True:
                match = _BREAK.search(pending)
                if match is None:
                    break
                piece, pending = pending[: match.start()], pending[match.end() :]
                if piece.strip():
                    yield Output(piece.decode(errors="replace"), redraw=match.group() == b"\r")
        if pending.strip():
            yield Output(pending.decode(errors="replace"))

    def wait(self) -> int:
        """Wait for the child; its exit status (negative: the signal that ended it)."""
        return self._process.wait()

    def stop(self) -> None:
        """Ask the child and its children to end, and kill what is left after a grace time;
        returns at once (any thread may call it)."""
        if self.stopped:
            return
        self.stopped = True
        if sys.platform == "win32":
            self._signal(None)
            return
        self._signal(signal.SIGTERM)
        killer = threading.Timer(STOP_GRACE_S, self._signal, (signal.SIGKILL,))
        killer.daemon = True
        killer.start()

    def _signal(self, number: int | None) -> None:
        if number is None:  # Windows has no process groups to signal: taskkill ends the tree
            if self._process.poll() is None:
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self.pid)],
                    capture_output=True,
                    check=False,
                )
            return
        # the group, even when its leader has ended: workers it left would hold the pipe open
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, number)
