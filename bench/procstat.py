"""CPU time and memory of a server process (and its workers) from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Cpu:
    user: float  # seconds
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.user + other.user, self.system + other.system)


def parse_stat(text: str, children: bool = False) -> Cpu:
    """utime+stime (fields 14, 15), plus cutime+cstime (16, 17) with ``children``.

    The command name (field 2) may hold spaces and parentheses, so fields
    are counted from the last ``)``.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3]
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    if children:
        utime += cutime
        stime += cstime
    return Cpu(utime / CLK_TCK, stime / CLK_TCK)


def parse_ppid(text: str) -> int:
    return int(text[text.rindex(")") + 2 :].split()[1])


def parse_rss_kb(status: str) -> int:
    """VmRSS in KiB from /proc/PID/status (0 if absent, e.g. a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (nginx master → worker)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = parse_ppid(_read(f"/proc/{name}/stat"))
            except (OSError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu(pid: int) -> Cpu:
    """CPU of ``pid`` and every live descendant, plus their reaped children."""
    total = Cpu(0.0, 0.0)
    for p in tree(pid):
        try:
            total = total + parse_stat(_read(f"/proc/{p}/stat"), children=True)
        except (OSError, ValueError):
            pass
    return total


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, KiB."""
    total = 0
    for p in tree(pid):
        try:
            total += parse_rss_kb(_read(f"/proc/{p}/status"))
        except OSError:
            pass
    return total
