"""The benchmark report: rows run several times, and the targets judged from a run."""

# ruff: noqa: RUF001 - the report's multiplication sign

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import median_runs, request_targets, targets, write_report


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


# -- the request path (issue 17) ------------------------------------------------

REQ_COUNTS = {**COUNTS, "publish_channels": 10000, "longpoll_subs": 1000, "longpoll_rate": 20,
              "connects": 10000}


def req(scenario: str, server: str, transport: str, **kw: Any) -> dict[str, Any]:
    return {"scenario": scenario, "server": server, "transport": transport, "ok": True,
            "client_util": 0.3, **kw}


def request_rows(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    out = {}
    for line in request_targets(results, REQ_COUNTS)[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0].split(":")[0].split(" (")[0]] = cells
    return out


def test_request_targets_are_bounds_on_the_ratio_to_nchan_in_the_same_run() -> None:
    results = [
        req("publish", "pushd", "publish", us_per_request=50.0),
        req("publish", "nchan", "publish", us_per_request=20.0),
        req("publish", "bare", "publish", us_per_request=30.0),
        req("connect", "pushd", "sse", us_per_request=150.0),
        req("connect", "nchan", "sse", us_per_request=100.0),
        req("connect", "pushd", "ws", us_per_request=200.0),
        req("connect", "nchan", "ws", us_per_request=100.0),
    ]
    rows = request_rows(results)
    publish = rows["CPU per `POST /channels/{ch}`"]
    assert publish[0].startswith("CPU per `POST /channels/{ch}` (10,000 channels")
    assert publish[1:5] == ["50.0 µs", "20.0 µs", "30.0 µs", "2.50×"]
    assert publish[-1] == "≤ 2× Nchan's: **no**"
    assert rows["CPU per SSE connection"][-1] == "≤ 1.5× Nchan's: yes"  # exactly at the bound
    assert rows["CPU per WebSocket connection"][-1] == "≤ 2× Nchan's: yes"
    assert rows["CPU per SSE connection"][3] == "n/a"  # bare did not run
    assert set(rows) == {"CPU per `POST /channels/{ch}`", "CPU per SSE connection",
                         "CPU per WebSocket connection"}  # no long-poll run: no rows


def lp(server: str, delivered_per_s: float, **kw: Any) -> dict[str, Any]:
    return req("longpoll", server, "longpoll", deliveries_per_s=delivered_per_s,
               offered_per_s=20000.0, **kw)


def test_long_poll_keeps_up_only_when_nothing_is_lost_and_the_rate_holds() -> None:
    results = [lp("pushd", 19400.0, us_per_delivery=40.0, lat_p99_ms=30.0),
               lp("nchan", 19900.0, us_per_delivery=30.0, lat_p99_ms=43.0)]
    rows = request_rows(results)
    keep = rows["long-poll, 1,000 subscribers × 20 msg/s"]
    assert keep[1:3] == ["19,400 of 20,000", "19,900 of 20,000"]
    assert keep[-1] == "yes"
    assert rows["long-poll CPU per delivery"][-1] == "≤ 1.5× Nchan's: yes"
    assert rows["long-poll p99 latency"][-1] == "≤ Nchan's: yes"

    behind = request_rows([lp("pushd", 2800.0, us_per_delivery=361.0, lat_p99_ms=947.0),
                           lp("nchan", 19900.0, us_per_delivery=30.7, lat_p99_ms=43.0)])
    assert behind["long-poll, 1,000 subscribers × 20 msg/s"][-1] == "**no** (14% of offered)"
    assert behind["long-poll p99 latency"][-1] == "≤ Nchan's: **no**"

    # the rate held, but a subscriber lost messages: neither keeps up nor passes unmarked
    lost = request_rows([lp("pushd", 20000.0, us_per_delivery=20.0, lat_p99_ms=10.0, ok=False),
                         lp("nchan", 19900.0, us_per_delivery=30.7, lat_p99_ms=43.0)])
    assert lost["long-poll, 1,000 subscribers × 20 msg/s"][-1].startswith("**no** (100%")
    assert lost["long-poll CPU per delivery"][-1] == (
        "≤ 1.5× Nchan's: yes; ✗ check failed: pushd")


def test_a_request_target_without_an_nchan_figure_is_not_judged() -> None:
    rows = request_rows([req("publish", "pushd", "publish", us_per_request=50.0),
                         req("publish", "nchan", "publish", error="nginx did not start")])
    assert rows["CPU per `POST /channels/{ch}`"][-2:] == ["n/a", "n/a (no Nchan figure)"]


META_COUNTS = {"fanout_subs": 1000, "fanout_messages": 2000, "fanout_rate": 50, "fast_rate": 100,
               "fast_rounds": 1, "scale_conns": 1, "trickle_messages": 1, "trickle_rate": 1,
               "cost_messages": 1, "cost_rate": 1, "poll_interval": 1.0, "channels": 1,
               "channel_messages": 1, "publish_messages": 30000, "publish_channels": 10000,
               "publish_conns": 8, "longpoll_subs": 1000, "longpoll_rate": 20,
               "longpoll_messages": 200, "poll_clients": 1000, "poll_every": 1.0,
               "poll_rate": 0.5, "poll_messages": 10, "connects": 10000,
               "connect_concurrency": 50}


def report(tmp_path: Path, results: list[dict[str, Any]]) -> str:
    meta = {"date": "d", "quick": False, "label": "", "command": "c", "cpus": 2,
            "kernel": "k", "python": "3.11", "seconds": 1.0, "counts": META_COUNTS}
    return write_report(tmp_path, "r", meta, results).read_text()


def test_the_report_has_a_row_per_server_with_its_ratio_to_nchan(tmp_path: Path) -> None:
    timing = {"us_user": 1.0, "us_system": 1.0, "lat_p50_ms": 1.0, "lat_p99_ms": 2.0,
              "lat_max_ms": 3.0}
    results = [
        req("publish", "pushd", "publish", us_per_request=52.0, requests_per_s=9000.0,
            **timing),
        req("publish", "nchan", "publish", us_per_request=26.0, requests_per_s=35000.0,
            **timing),
        req("polling", "pushd", "poll", us_per_request=90.0, requests_per_s=1000.0,
            share_304=0.5, us_per_delivery=180.0, **timing),
        req("polling", "nchan", "poll", us_per_request=30.0, requests_per_s=1500.0,
            share_304=0.667, us_per_delivery=90.0, **timing),
        req("connect", "pushd", "ws", us_per_request=240.0, requests_per_s=3000.0, ok=False,
            requests=9990, expected=10000, connect_failed=10, errors=["connect: status 503"],
            **timing),
        req("connect", "nchan", "ws", us_per_request=120.0, requests_per_s=9000.0, **timing),
        {"scenario": "connect", "server": "bare", "transport": "ws", "na": True},
    ]
    text = report(tmp_path, results)
    section = text[text.index("## The request path (issue 17)"):]

    def cells(prefix: str) -> list[str]:
        found = [ln for ln in section.splitlines() if ln.startswith(prefix)]
        assert len(found) == 1, prefix
        return [c.strip() for c in found[0].strip("|").split("|")]

    publish = cells("| pushd | 52.0 |")
    assert publish[4] == "9,000" and publish[-2] == "2.00×"
    assert cells("| nchan | 26.0 |")[-2] == "1.00×"
    poll = cells("| pushd | 90.0 |")
    assert poll[3] == "50%" and poll[-2] == "3.00×"
    ws = cells("| pushd | ws |")
    assert ws[2] == "240.0" and ws[-2] == "2.00×"
    assert ws[-1].startswith("✗ 9990 of 10000 answered as asked, 10 failed")
    assert cells("| bare | ws |")[-1] == "not served"
    # the targets section judges them too
    assert "### Request-path targets (issue 17)" in text
    assert "| CPU per WebSocket connection (10,000 connects): at most 2× Nchan's | 240.0 µs" in text


def test_no_request_section_without_request_rows(tmp_path: Path) -> None:
    text = report(tmp_path, [{"scenario": "cost", "server": "node", "transport": "poll",
                              "na": True}])
    assert "| node | poll | n/a |" in text
    assert "request path" not in text.lower()
