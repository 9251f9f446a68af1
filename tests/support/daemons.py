"""Airflow components as processes for the end-to-end tier (and `make bench`): started with a log file each,
stopped by pid, gently first; the metadata database queried directly; a free port on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import psycopg2

STOP_GRACE_SECONDS = 30


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class Daemons:
    """Airflow components as processes, each with its log file; stopped by pid, gently first."""

    def __init__(self, executable: Path, env: dict[str, str], logs: Path):
        self.airflow_bin, self.env, self.logs = executable, env, logs
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, prefix: Iterable[str] = ()) -> None:
        """`prefix` runs before the command and execs it (the process stays the one signals reach)."""
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen([*prefix, str(self.airflow_bin), *args], env=env or self.env,
                                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail(self, name: str, characters: int = 2500) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else ""

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"airflow {name} exited with {process.returncode}:\n{self.log_tail(name)}"

    def stop(self, names: Iterable[str]) -> dict[str, int]:
        """SIGTERM (a stopped child is continued first so it can wind down), then SIGKILL after the grace time."""
        names = [n for n in names if n in self.processes]
        family = {name: _descendants(self.processes[name].pid) for name in names}
        for name in names:
            _signal(family[name], signal.SIGCONT)
            _signal([self.processes[name].pid], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        codes = {}
        for name in names:
            process = self.processes[name]
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal([process.pid], signal.SIGKILL)
                codes[name] = process.wait(timeout=10)
            _signal([pid for pid in family[name] + _descendants(process.pid) if Path(f"/proc/{pid}").exists()],
                    signal.SIGKILL)
        return codes


def _query(url: str, sql: str, *params) -> list[tuple]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
