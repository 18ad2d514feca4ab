"""The benchmark report: rows run several times, and the targets judged from a run."""

# ruff: noqa: RUF001 - the report's multiplication sign

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import median_runs, targets, write_report


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


def row(scenario: str, server: str, **kw: Any) -> dict[str, Any]:
    return {"scenario": scenario, "server": server, "transport": "sse", "ok": True, **kw}


COUNTS = {"fanout_subs": 1000, "fanout_rate": 50, "fast_rate": 100, "scale_conns": 10000}


def target_rows(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    out = {}
    for line in targets(results, COUNTS)[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0].split(",")[0].split(" (")[0]] = cells
    return out


def test_a_target_is_judged_by_its_bound_and_against_the_anchors_apart() -> None:
    results = [
        row("fanout-fast", "pushd", lat_p99_ms=24.5),
        row("fanout-fast", "nchan", lat_p99_ms=9180.0),
        row("fanout-fast", "node", lat_p99_ms=32100.0),
        row("scale", "pushd", rss_per_conn_b=2867.0),
        row("scale", "nchan", rss_per_conn_b=10240.0),
    ]
    rows = target_rows(results)
    p99 = rows["p99 latency"]
    assert p99[1] == "24.5 ms" and p99[5] == "0.003×"
    # over the 20 ms, yet far under both anchors: both are shown
    assert p99[-1] == "20 ms: **no**; vs Nchan and Node: yes"
    rss = rows["RSS per idle SSE connection"]
    assert rss[1] == "2.8 KiB" and rss[3] == "n/a"  # Node did not run: left out
    assert rss[-1] == "8 KiB: yes; vs Nchan: yes"
    assert set(rows) == {"p99 latency", "RSS per idle SSE connection"}  # no CPU figure: no row


def test_cpu_is_held_against_nchan_and_throughput_against_node_only() -> None:
    results = [
        row("fanout-rate", "pushd", us_per_delivery=16.0),
        row("fanout-rate", "nchan", us_per_delivery=15.0),
        row("fanout-rate", "node", us_per_delivery=23.0),
        row("fanout-max", "pushd", deliveries_per_s=40000.0),
        row("fanout-max", "nchan", deliveries_per_s=60000.0),
        row("fanout-max", "node", deliveries_per_s=39000.0),
        row("fanout-rate", "bare", error="load generator: timeout"),
    ]
    rows = target_rows(results)
    cpu = rows["CPU per delivery"]
    assert cpu[-1] == "vs Nchan: **no**"  # cheaper than Node does not count
    assert cpu[4] == "n/a"  # bare failed
    assert rows["deliveries/s at full speed"][-1] == "vs Node: yes"  # Nchan's lead does not count
