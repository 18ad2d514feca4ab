"""The benchmark report's handling of a row run several times (``bench.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import median_runs, write_report


def run(server: str, p99: float, **kw: Any) -> dict[str, Any]:
    return {"scenario": "fanout-fast", "server": server, "transport": "sse",
            "lat_p99_ms": p99, "us_per_delivery": p99 / 10, **kw}


def test_the_median_run_is_kept_whole_with_every_p99_in_order() -> None:
    other = {"scenario": "fanout-rate", "server": "pushd", "transport": "sse"}
    results = [other, run("pushd", 25.0), run("nchan", 900.0), run("pushd", 18.0),
               run("nchan", 700.0), run("pushd", 21.0), run("nchan", 800.0)]
    out = median_runs(results, "fanout-fast")
    assert out[0] is other
    pushd, nchan = out[1], out[2]
    assert (pushd["server"], nchan["server"]) == ("pushd", "nchan")
    # the median run's own figures, not a mix of runs
    assert pushd["lat_p99_ms"] == 21.0 and pushd["us_per_delivery"] == 2.1
    assert pushd["p99_runs"] == [25.0, 18.0, 21.0]
    assert nchan["lat_p99_ms"] == 800.0 and nchan["p99_runs"] == [900.0, 700.0, 800.0]
    assert len(out) == 3


def test_failed_runs_are_left_out_and_an_even_count_keeps_the_lower_middle() -> None:
    failed = {"scenario": "fanout-fast", "server": "pushd", "transport": "sse",
              "error": "load generator: timeout"}
    out = median_runs([run("pushd", 30.0), failed, run("pushd", 10.0)], "fanout-fast")
    assert len(out) == 1
    assert out[0]["lat_p99_ms"] == 10.0 and out[0]["p99_runs"] == [30.0, 10.0]
    only_failed = median_runs([failed], "fanout-fast")
    assert only_failed == [failed]


def test_the_report_shows_the_median_row_and_each_run(tmp_path: Path) -> None:
    base = {"ok": True, "client_util": 0.4, "deliveries_per_s": 99000.0,
            "lat_p50_ms": 9.0, "lat_max_ms": 40.0, "us_user": 3.0, "us_system": 6.0}
    results = [run("pushd", p, **base) for p in (22.5, 19.5, 24.0)]
    meta = {"date": "d", "quick": False, "label": "", "command": "c", "cpus": 2,
            "kernel": "k", "python": "3.11", "seconds": 1.0,
            "counts": {"fanout_subs": 1000, "fanout_messages": 2000, "fanout_rate": 50,
                       "fast_rate": 100, "fast_rounds": 3, "scale_conns": 1,
                       "trickle_messages": 1, "trickle_rate": 1, "cost_messages": 1,
                       "cost_rate": 1, "poll_interval": 1.0, "channels": 1,
                       "channel_messages": 1}}
    text = write_report(tmp_path, "r", meta, results).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| pushd | sse |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")]
    assert cells[6] == "22.5"  # p99 of the median run
    assert cells[9] == "22.5 / 19.5 / 24.0"
    assert "ran this 3 times" in text
