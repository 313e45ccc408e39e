"""Hostile inputs for sandbox tests: a drawing slow to parse, and a parser-process killer."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def slow_dxf(size: int = 19 * 1024 * 1024) -> bytes:
    """A valid drawing of plain LINEs that takes ezdxf about 35 s of CPU (19 MB) to read."""
    line = b"0\nLINE\n8\n0\n10\n1.5\n20\n2.5\n30\n0.0\n11\n3.5\n21\n4.5\n31\n0.0\n"
    return b"0\nSECTION\n2\nENTITIES\n" + line * ((size - 100) // len(line)) + \
        b"0\nENDSEC\n0\nEOF\n"


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def parser_children(root: int) -> dict[int, float]:
    """CPU seconds of every process forked by a multiprocessing fork server below `root`."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents[int(entry)], cpu[int(entry)] = st
    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False
    servers = set()
    for pid in parents:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.forkserver" in cmd and below(pid):
            servers.add(pid)
    return {pid: cpu[pid] for pid, parent in parents.items() if parent in servers}


class Killer(threading.Thread):
    """SIGKILLs every parser child below `root` that has used more than `cpu` seconds:
    an OOM killer's view of a drawing that is too much. `kills` counts them."""

    def __init__(self, root: int, cpu: float) -> None:
        super().__init__(daemon=True)
        self.root, self.cpu, self.kills = root, cpu, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            for pid, used in parser_children(self.root).items():
                if used > self.cpu:
                    os.kill(pid, signal.SIGKILL)
                    self.kills += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join()
