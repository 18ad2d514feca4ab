"""Reading CPU time and memory from /proc (bench.procstat), and merging the
load generators' results (bench.run.merge)."""

from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Any

from bench import procstat
from bench.client import plan
from bench.run import SUMMED, merge


def stat_line(comm: str, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
    # majflt cmajflt utime stime cutime cstime ...
    return (f"42 ({comm}) S 1 42 42 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 1000 1000000 200")


def test_parse_stat_own_and_children() -> None:
    line = stat_line("nginx", 300, 100, 50, 25)
    cpu = procstat.parse_stat(line)
    assert cpu.user == 300 / procstat.CLK_TCK and cpu.system == 100 / procstat.CLK_TCK
    both = procstat.parse_stat(line, children=True)
    assert both.user == 350 / procstat.CLK_TCK and both.system == 125 / procstat.CLK_TCK


def test_parse_stat_command_with_spaces_and_parens() -> None:
    cpu = procstat.parse_stat(stat_line("a) b (c", 7, 3, 0, 0))
    assert cpu.total == 10 / procstat.CLK_TCK
    assert procstat.parse_ppid(stat_line("x y)", 1, 1, 0, 0)) == 1


def test_cpu_difference() -> None:
    d = procstat.Cpu(3.0, 2.0) - procstat.Cpu(1.0, 0.5)
    assert (d.user, d.system, d.total) == (2.0, 1.5, 3.5)


def test_parse_rss() -> None:
    status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n"
    assert procstat.parse_rss_kb(status) == 4321
    assert procstat.parse_rss_kb("Name:\tzombie\n") == 0


def test_this_process_reads() -> None:
    assert os.getpid() in procstat.tree(os.getpid())
    assert procstat.cpu(os.getpid()).total >= 0
    assert procstat.rss_kb(os.getpid()) > 0


def test_plan_one_channel_and_many() -> None:
    subs, targets, expected = plan({"channels": ["a"], "subs_per_channel": 3, "messages": 4})
    assert subs == ["a", "a", "a"] and targets == ["a"] * 4 and expected is None
    spec = {"channels": ["a", "b", "c"], "messages": 30, "seed": 3}
    subs, targets, expected = plan(spec)
    assert subs == ["a", "b", "c"] and len(targets) == 30
    assert expected is not None
    assert sorted(s for seqs in expected.values() for s in seqs) == list(range(1, 31))
    for ch, seqs in expected.items():
        assert seqs == sorted(seqs)
        assert all(targets[s - 1] == ch for s in seqs)


def test_merge_two_load_generators(tmp_path: Path) -> None:
    def done(delivered: int, start: int, last: int, util: float) -> dict[str, Any]:
        d: dict[str, Any] = dict.fromkeys(SUMMED, 0)
        d.update(delivered=delivered, expected=delivered, start_us=start,
                 last_delivery_us=last, wall_s=1.0, client_util=util, errors=[],
                 published=10)
        return d

    files = []
    for i, values in enumerate(([1000, 3000], [2000, 4000, 100000])):
        path = tmp_path / f"lat-{i}.bin"
        path.write_bytes(array("q", values).tobytes())
        files.append(path)
    out = merge([done(2, 5_000_000, 6_000_000, 0.5), done(3, 5_000_100, 7_000_000, 0.95)], files)
    assert out["delivered"] == 5 and out["expected"] == 5
    assert out["span_s"] == 2.0 and out["deliveries_per_s"] == 2.5  # publisher start → last
    assert out["lat_p50_ms"] == 3.0 and out["lat_max_ms"] == 100.0  # both processes' samples
    assert out["client_util"] == 0.95  # the busiest process decides "saturated"
    assert out["published"] == 10
