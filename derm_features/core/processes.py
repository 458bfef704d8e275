"""Stopping child processes: one place for terminate, wait, then kill."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def stop_processes(processes: Iterable[subprocess.Popen], timeout_s: float = 20.0) -> None:
    """Asks every process to stop (SIGTERM, in the given order), then waits for each up to
    `timeout_s` seconds and kills (SIGKILL) and reaps any still running. Processes that
    already exited are fine. Raises nothing of its own."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
