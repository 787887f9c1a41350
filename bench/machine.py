"""Facts about the machine that every benchmark prints beside its figures:
what CPU it is, how loaded it is, and how much CPU each process burns."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, from /proc; None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_text() -> str:
    """The 1-minute load average: other work on the machine shows in every figure."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"
