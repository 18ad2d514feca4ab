"""CPU time and memory of a server process (and its workers) from /proc, and
which of its processes holds a TCP connection.

Every reader takes the /proc directory as ``root`` so that the tests can
hand it a made-up one.
"""

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


def tree(pid: int, root: str = "/proc") -> list[int]:
    """``pid`` and its live descendants (nginx master → workers, pushd parent → workers)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir(root):
        if name.isdigit():
            try:
                ppid = parse_ppid(_read(f"{root}/{name}/stat"))
            except (OSError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_each(pid: int, root: str = "/proc") -> dict[int, Cpu]:
    """CPU of ``pid`` and of each live descendant (each with its reaped children)."""
    out = {}
    for p in tree(pid, root):
        try:
            out[p] = parse_stat(_read(f"{root}/{p}/stat"), children=True)
        except (OSError, ValueError):
            pass
    return out


def cpu(pid: int, root: str = "/proc") -> Cpu:
    """CPU of ``pid`` and every live descendant, plus their reaped children: a
    server's whole cost, however many processes it runs as."""
    total = Cpu(0.0, 0.0)
    for c in cpu_each(pid, root).values():
        total = total + c
    return total


def rss_kb(pid: int, root: str = "/proc") -> int:
    """Resident memory of ``pid`` and its descendants, KiB."""
    total = 0
    for p in tree(pid, root):
        try:
            total += parse_rss_kb(_read(f"{root}/{p}/status"))
        except OSError:
            pass
    return total


# -- which process holds a connection ---------------------------------------------

Address = tuple[str, int]


def _address(hex_addr: str) -> Address:
    """``0100007F:1F90`` (/proc/net/tcp: the IPv4 address in host byte order,
    little-endian here, the port big-endian) → ``("127.0.0.1", 8080)``."""
    ip, port = hex_addr.split(":")
    octets = bytes.fromhex(ip)[::-1]
    return ".".join(str(b) for b in octets), int(port, 16)


def parse_tcp(text: str) -> dict[int, tuple[Address, Address]]:
    """/proc/PID/net/tcp → {socket inode: (local address, remote address)}."""
    out = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        out[int(fields[9])] = (_address(fields[1]), _address(fields[2]))
    return out


def socket_inodes(pid: int, root: str = "/proc") -> set[int]:
    """The inodes of the sockets ``pid`` has open (its ``fd/*`` → ``socket:[N]``)."""
    out = set()
    try:
        fds = os.listdir(f"{root}/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"{root}/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def peers(pid: int, root: str = "/proc") -> dict[Address, int]:
    """{client address: pid} for every TCP connection held by ``pid`` or its descendants.

    The client address is the remote end as the server sees it, which is the
    load generator's local address for that connection: so the harness can
    tell which server process serves each subscriber and the publisher.
    A socket open in several processes (a listening one) is not a connection
    to anybody and has no remote port; inherited ones are left to the first
    owner found.
    """
    out: dict[Address, int] = {}
    pids = tree(pid, root)
    try:
        table = parse_tcp(_read(f"{root}/{pid}/net/tcp"))
    except OSError:
        return out
    for p in pids:
        for inode in socket_inodes(p, root):
            ends = table.get(inode)
            if ends is not None and ends[1][1] != 0:
                out.setdefault(ends[1], p)
    return out
