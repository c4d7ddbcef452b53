"""Local Celery processes (worker, beat, Flower) run as child processes of a riskscore command."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scoring.embedded import parent_death_hook
from scoring.errors import ServerError

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One child process, the command that started it, and the log file it writes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None
    command: list[str] = field(default_factory=list)


def celery_command(*args: str) -> list[str]:
    """Return the command line that runs `celery -A tasks ARGS` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "tasks", *args]


@dataclass
class Stack:
    """Starts and stops a set of Celery processes sharing one environment.

    Children run in their own session, so Ctrl-C in the terminal reaches only the parent command,
    which then stops them in reverse start order: for `riskscore run` Flower, beat (no new
    drains), then the worker (a warm shutdown finishes running tasks).
    """

    env: Mapping[str, str]
    workdir: Path
    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)
    _restarts: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def start(self, name: str, command: list[str]) -> Child:
        """Start one child; its output goes to `<log_dir>/<name>.log`, or to this terminal."""
        log_path = self.log_dir / f"{name}.log" if self.log_dir else None
        output = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed when the child stops
        process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env={**os.environ, **self.env},
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # The child gets SIGTERM (a warm shutdown for a worker) if this process dies without
            # stopping it, for example when it is killed.
            preexec_fn=parent_death_hook(),
        )
        if output:
            output.close()
        child = Child(name, process, log_path, list(command))
        self.children.append(child)
        log.info("started %s pid=%d", name, process.pid)
        return child

    def start_worker(
        self, concurrency: int, loglevel: str = "INFO", name: str | None = None, extra: tuple[str, ...] = ()
    ) -> Child:
        """Start a Celery worker; `extra` are further `celery worker` options."""
        node = f"{name or 'worker'}-{uuid.uuid4().hex[:6]}@%h"
        return self.start(
            name or "worker",
            celery_command("worker", "--loglevel", loglevel, "--concurrency", str(concurrency), "-n", node, *extra),
        )

    def start_beat(self, loglevel: str = "INFO") -> Child:
        schedule = self.workdir / "celerybeat-schedule"
        return self.start("beat", celery_command("beat", "--loglevel", loglevel, "--schedule", str(schedule)))

    def start_flower(self, port: int, user: str, password: str) -> Child:
        # Flower reads FLOWER_* variables; the credentials stay out of the process list.
        flower_env = {"FLOWER_BASIC_AUTH": f"{user}:{password}"}
        self.env = {**self.env, **flower_env}
        return self.start("flower", celery_command("flower", "--address=127.0.0.1", f"--port={port}"))

    def check_alive(self) -> None:
        """Raise ServerError when a child has exited, naming it and its log file."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                where = f"; see {child.log_path}" if child.log_path else ""
                raise ServerError(f"{child.name} exited with code {code}{where}")

    def restart_exited(self, max_restarts: int = 5, window_s: float = 300.0) -> list[Child]:
        """Start again, with the same command, each child that exited; return the new children.

        Celery 5.7.0 workers can exit with "Unrecoverable error" when the broker connection drops
        (a Redis restart, say), so a long-running stack restarts them as a process supervisor
        would. A child that exits more than `max_restarts` times within `window_s` seconds is
        failing for good: ServerError names it and its log file.
        """
        restarted = []
        now = time.monotonic()
        for index, child in enumerate(self.children):
            code = child.process.poll()
            if code is None:
                continue
            recent = [at for at in self._restarts.get(child.name, []) if now - at < window_s]
            where = f"; see {child.log_path}" if child.log_path else ""
            if len(recent) >= max_restarts:
                raise ServerError(
                    f"{child.name} exited with code {code}, {len(recent) + 1} exits within {window_s:.0f} s; "
                    f"not starting it again{where}"
                )
            log.warning("%s pid=%d exited with code %s%s; starting it again", child.name, child.process.pid, code, where)
            self._restarts[child.name] = [*recent, now]
            replacement = self.start(child.name, child.command)
            # start() appended the replacement; put it in the old child's place to keep the stop order.
            self.children.pop()
            self.children[index] = replacement
            restarted.append(replacement)
        return restarted

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop children in reverse start order: SIGTERM, then SIGKILL after `timeout_s`."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", child.name, timeout_s)
                    child.process.kill()
                    child.process.wait()
            log.info("stopped %s pid=%d code=%s", child.name, child.process.pid, child.process.returncode)
        self.children.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, stack: Stack | None = None) -> bool:  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns true or `timeout_s` passes; check children meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if stack is not None:
            stack.check_alive()
        time.sleep(interval_s)
    return bool(predicate())
