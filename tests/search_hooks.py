"""Search processes a test can hold and watch, so that it waits on events, never on
sleeps: `python tests/search_hooks.py ARGS...` runs `mcgen ARGS...` whose worker
processes, like itself, report to the test over a loopback socket.

Each worker, as a trial's training begins, sends "training <pid>" and waits for the
test's answer before training (so a test can kill it, or stop the database, while the
trial is surely running). Every process sends "notice <pid> <text>" for each line it
says about its database. The socket is 127.0.0.1:$MCGEN_TEST_HOOK_PORT (a Hub's).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PORT_VARIABLE = "MCGEN_TEST_HOOK_PORT"
HERE = Path(__file__).resolve()


# --- the processes' side -----------------------------------------------------------------


def _connect() -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(os.environ[PORT_VARIABLE])))


def _send(message: str) -> None:
    with _connect() as connection:
        connection.sendall(f"{message}\n".encode())


def _held(train: Callable[..., Any]) -> Callable[..., Any]:
    """train(...), once the test has answered "training <pid>" (or hung up)."""

    def held(*args: Any, **kwargs: Any) -> Any:
        with _connect() as connection:
            connection.sendall(f"training {os.getpid()}\n".encode())
            connection.recv(64)
        return train(*args, **kwargs)

    return held


def _install() -> None:
    import mcgen.search.database as database
    import mcgen.search.local_run as local_run
    import mcgen.search.worker as worker

    say = database.notify

    def notify(message: str) -> None:
        say(message)
        _send(f"notice {os.getpid()} {message}")

    database.notify = notify
    worker.evaluate = _held(worker.evaluate)
    worker.attention_baseline = _held(worker.attention_baseline)
    start = local_run.worker_command

    def worker_command(*args: Any, **kwargs: Any) -> list[str]:
        python, _, _, *rest = start(*args, **kwargs)  # python -m mcgen.search.worker ...
        return [python, str(HERE), "--worker", *rest]

    local_run.worker_command = worker_command


def main() -> int:
    _install()
    if sys.argv[1:2] == ["--worker"]:
        from mcgen.search.worker import main as worker_main

        return worker_main(sys.argv[2:])
    from mcgen.cli import app

    app(sys.argv[1:])
    return 0


# --- the test's side --------------------------------------------------------------------


@dataclass
class Message:
    kind: str  # "training" | "notice"
    pid: int
    text: str
    connection: socket.socket

    def answer(self) -> None:
        """Let a held training go on."""
        self.connection.sendall(b"go\n")
        self.connection.close()


class Hub:
    """The test's end: starts a hooked `mcgen ...` and hands over its messages."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(1.0)  # how often next() looks whether the process ended
        self.process: subprocess.Popen[str] | None = None

    def start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = dict(os.environ if env is None else env)
        env[PORT_VARIABLE] = str(self.listener.getsockname()[1])
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        return self.process

    def next(self) -> Message:
        """The next message; AssertionError (with the output) if the process ended first."""
        assert self.process is not None
        while True:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                if self.process.poll() is not None:
                    output = self.process.stdout.read() if self.process.stdout else ""
                    raise AssertionError(
                        f"the process ended ({self.process.returncode}) before the "
                        f"message awaited:\n{output}"
                    ) from None
                continue
            connection.settimeout(None)
            line = connection.makefile("r").readline().rstrip("\n")
            kind, pid, *text = line.split(" ", 2)
            if kind != "training":
                connection.close()  # nothing to answer
            return Message(kind, int(pid), " ".join(text), connection)

    def until(self, wanted: Callable[[Message], bool]) -> list[Message]:
        """Messages up to the first that is wanted (trainings in between are let go)."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if wanted(message):
                return seen
            if message.kind == "training":
                message.answer()

    def let_run(self) -> str:
        """Let every training go on until the process ends; its output."""
        assert self.process is not None and self.process.stdout is not None
        self.listener.settimeout(0.2)
        while self.process.poll() is None:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):  # a notice's sender does not wait for this
                connection.sendall(b"go\n")
            connection.close()
        return self.process.stdout.read()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.listener.close()


if __name__ == "__main__":
    sys.exit(main())
