"""The redis scenario's measuring code (issue 19, point 5): CPU summed over a
server's processes with redis-server's apart, which process holds each
connection (from a made-up /proc), cross-process latency, and its report rows."""

# ruff: noqa: RUF001 - the report's multiplication sign

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any

import pytest

from bench import procstat
from bench.client import local_address
from bench.report import write_report
from bench.run import Driven, _processes, cross_node
from bench.servers import Nchan, Pushd

TICK = procstat.CLK_TCK


def stat_line(pid: int, ppid: int, utime: int, stime: int, cutime: int = 0) -> str:
    return (f"{pid} (python3) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} 0 20 0 1 0 1000 1000000 200")


def fake_proc(root: Path, procs: dict[int, tuple[int, int, int, int]]) -> str:
    """A /proc with ``{pid: (ppid, utime, stime, cutime)}`` and their stat files."""
    for pid, (ppid, utime, stime, cutime) in procs.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "stat").write_text(stat_line(pid, ppid, utime, stime, cutime))
        (root / str(pid) / "status").write_text(f"Name:\tx\nVmRSS:\t{pid} kB\n")
    (root / "self").mkdir()  # not a pid: skipped
    return str(root)


def test_a_servers_cpu_is_its_parent_and_workers_summed_and_redis_is_apart(
        tmp_path: Path) -> None:
    # pushd's parent 100 and its worker 101 (whose reaped child counts too);
    # redis-server 200 and the load generator 300 are nobody's child of 100
    root = fake_proc(tmp_path, {
        100: (1, 300, 100, 0), 101: (100, 200, 50, 10),
        200: (1, 40, 10, 0), 300: (1, 999, 999, 0),
    })
    each = procstat.cpu_each(100, root)
    assert sorted(each) == [100, 101]
    assert each[101] == procstat.Cpu(210 / TICK, 50 / TICK)
    assert procstat.cpu(100, root) == procstat.Cpu(510 / TICK, 150 / TICK)
    assert procstat.cpu(200, root) == procstat.Cpu(40 / TICK, 10 / TICK)
    assert procstat.rss_kb(100, root) == 100 + 101


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5000 1 0
   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 5001 1 0
   2: 0100007F:1F90 0200007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 5002 1 0
   3: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 7001 1 0
"""


def test_tcp_table_addresses_are_read_as_ip_and_port() -> None:
    table = procstat.parse_tcp(TCP)
    assert table[5000] == (("127.0.0.1", 8080), ("0.0.0.0", 0))
    assert table[5002] == (("127.0.0.1", 8080), ("127.0.0.2", 0xA001))


def test_peers_says_which_process_holds_each_clients_connection(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, {100: (1, 0, 0, 0), 101: (100, 0, 0, 0), 300: (1, 0, 0, 0)})
    (tmp_path / "100" / "net").mkdir()
    (tmp_path / "100" / "net" / "tcp").write_text(TCP)
    links = {100: {"3": "socket:[5000]", "7": "socket:[5001]", "8": "pipe:[9]"},
             101: {"4": "socket:[5000]", "9": "socket:[5002]", "1": "/dev/null"},
             300: {"5": "socket:[7001]"}}  # the client's own end: not the server's
    for pid, fds in links.items():
        for fd, target in fds.items():
            os.symlink(target, tmp_path / str(pid) / "fd" / fd)
    # the shared listening socket (no remote port) is no client's
    assert procstat.peers(100, root) == {("127.0.0.1", 0xA000): 100, ("127.0.0.2", 0xA001): 101}


def write_run(tmp_path: Path, shard: int, subs: list[tuple[str, int, list[int]]]) -> None:
    """A load generator's files: samples subscriber after subscriber, and who had them."""
    lat = array("q", [v for _, _, values in subs for v in values])
    (tmp_path / f"lat-{shard}.bin").write_bytes(lat.tobytes())
    (tmp_path / f"conns-{shard}.json").write_text(
        json.dumps([[ip, port, len(values)] for ip, port, values in subs]))


def test_cross_node_latency_is_over_the_subscribers_of_the_other_process(
        tmp_path: Path) -> None:
    # the publisher's connection is held by 100; subscribers on 100 and 101
    peers = {("127.0.0.1", 1): 100, ("127.0.0.1", 2): 101, ("127.0.0.1", 3): 101,
             ("127.0.0.1", 4): 100, ("127.0.0.1", 9): 100}
    write_run(tmp_path, 0, [("127.0.0.1", 1, [1000, 2000]), ("127.0.0.1", 2, [50000, 60000])])
    write_run(tmp_path, 1, [("127.0.0.1", 3, [70000]), ("127.0.0.1", 4, [3000]),
                            ("127.0.0.1", 5, [999999])])  # gone from /proc: left out
    out = cross_node([tmp_path / "lat-0.bin", tmp_path / "lat-1.bin"],
                     [tmp_path / "conns-0.json", tmp_path / "conns-1.json"],
                     peers, ["127.0.0.1", 9])
    assert out["subs_by_process"] == [2, 2]  # the publisher's process first
    assert out["cross_share"] == 0.5 and out["subs_unplaced"] == 1
    assert out["cross_samples"] == 3
    assert out["cross_p50_ms"] == 60.0 and out["cross_max_ms"] == 70.0
    assert out["same_p99_ms"] == 3.0  # 1, 2 and 3 ms: never the unplaced one's 1 s


def test_no_subscriber_on_another_process_gives_no_cross_node_figure(tmp_path: Path) -> None:
    write_run(tmp_path, 0, [("127.0.0.1", 1, [1000])])
    out = cross_node([tmp_path / "lat-0.bin"], [tmp_path / "conns-0.json"],
                     {("127.0.0.1", 1): 100, ("127.0.0.1", 9): 100}, ["127.0.0.1", 9])
    assert out["subs_by_process"] == [1] and out["cross_share"] == 0.0
    assert out["cross_p99_ms"] is None and out["cross_samples"] == 0


def test_redis_cpu_is_per_delivery_apart_and_added_into_the_total() -> None:
    class Srv:
        workers = 2
        redis = object()

    cpu = procstat.Cpu
    driven = Driven([], [], cpu(3.0, 1.0), 0, 0, {"redis": cpu(0.5, 0.5)}, {"redis": 8000},
                    {100: cpu(2.25, 0.75), 101: cpu(0.75, 0.25)}, {})
    out = {"us_per_delivery": 4.0}  # 4 s over a million deliveries
    _processes(out, Srv(), driven, 1_000_000, "delivery")  # type: ignore[arg-type]
    assert out["redis_us_per_delivery"] == 1.0 and out["redis_rss_kb"] == 8000
    assert out["total_us_per_delivery"] == 5.0
    assert out["cpu_shares"] == [0.75, 0.25]
    assert (out["workers"], out["broker"]) == (2, "redis")


def test_local_address_is_what_the_server_sees_as_the_peer() -> None:
    class Transport:
        def get_extra_info(self, name: str) -> Any:
            return ("127.0.0.3", 40000) if name == "sockname" else None

    assert local_address(Transport()) == ["127.0.0.3", 40000]  # type: ignore[arg-type]
    assert local_address(None) == ["", 0]


@pytest.fixture
def cleanup() -> Any:
    made: list[Any] = []
    yield made.append
    for server in made:
        server.cleanup()


def test_pushd_runs_two_workers_on_a_redis_of_its_own(cleanup: Any) -> None:
    server = Pushd(workers=2, redis=True)
    cleanup(server)
    server.command()
    config = (server.dir / "pushd.toml").read_text()
    assert server.redis is not None and server.redis.port != server.port
    assert f'broker = "redis://127.0.0.1:{server.redis.port}/0"\nworkers = 2\n' in config
    alone = Pushd()
    cleanup(alone)
    alone.command()
    assert "broker" not in (alone.dir / "pushd.toml").read_text() and alone.redis is None


def test_nchan_with_two_workers_has_a_listening_socket_for_each(cleanup: Any) -> None:
    two, one = Nchan(workers=2), Nchan()
    cleanup(two)
    cleanup(one)
    two.command()
    one.command()
    conf2 = (two.dir / "nginx.conf").read_text()
    conf1 = (one.dir / "nginx.conf").read_text()
    assert "worker_processes 2;" in conf2 and "backlog=4096 reuseport;" in conf2
    assert "worker_processes 1;" in conf1 and "reuseport" not in conf1


META_COUNTS = {"fanout_subs": 1000, "fanout_messages": 2000, "fanout_rate": 50,
               "fast_rate": 100, "fast_rounds": 1, "scale_conns": 1, "trickle_messages": 1,
               "trickle_rate": 1, "cost_messages": 1, "cost_rate": 1, "poll_interval": 1.0,
               "channels": 1, "channel_messages": 1, "publish_messages": 30000,
               "publish_channels": 10000, "publish_conns": 8}


def report(tmp_path: Path, results: list[dict[str, Any]]) -> str:
    meta = {"date": "d", "quick": False, "label": "", "command": "c", "cpus": 2,
            "kernel": "k", "python": "3.11", "seconds": 1.0, "counts": META_COUNTS}
    return write_report(tmp_path, "r", meta, results).read_text()


def fan(server: str, **kw: Any) -> dict[str, Any]:
    return {"scenario": "redis-rate", "server": server, "transport": "sse", "ok": True,
            "deliveries_per_s": 50000.0, "lat_p50_ms": 2.0, "lat_p99_ms": 9.0,
            "lat_max_ms": 20.0, "client_util": 0.3, "rss_per_conn_b": 3000.0, **kw}


def cells(text: str, prefix: str) -> list[str]:
    found = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, prefix
    return [c.strip() for c in found[0].strip("|").split("|")]


def test_the_report_has_redis_apart_and_pushds_total_against_nchans(tmp_path: Path) -> None:
    results = [
        fan("pushd", us_per_delivery=9.0, redis_us_per_delivery=1.5, total_us_per_delivery=10.5,
            cpu_shares=[0.6, 0.4], cross_p99_ms=12.0, same_p99_ms=8.0, cross_samples=900,
            subs_by_process=[450, 550], redis_rss_kb=9000, redis_us_per_publish=1500.0),
        fan("nchan", us_per_delivery=7.0, total_us_per_delivery=7.0,
            cpu_shares=[0.55, 0.45, 0.001], cross_p99_ms=None, same_p99_ms=4.0,
            cross_samples=0, subs_by_process=[1000]),
        {"scenario": "redis-publish", "server": "pushd", "transport": "publish", "ok": True,
         "us_per_request": 200.0, "redis_us_per_request": 60.0, "total_us_per_request": 260.0,
         "cpu_shares": [0.5, 0.5], "requests_per_s": 4000.0, "lat_p50_ms": 1.0,
         "lat_p99_ms": 4.0, "client_util": 0.2},
        {"scenario": "redis-publish", "server": "nchan", "transport": "publish", "ok": True,
         "us_per_request": 20.0, "total_us_per_request": 20.0, "cpu_shares": [0.5, 0.5],
         "requests_per_s": 20000.0, "lat_p50_ms": 0.4, "lat_p99_ms": 1.0, "client_util": 0.5},
    ]
    text = report(tmp_path, results)
    section = text[text.index("## Two processes per server"):]
    pushd = cells(section, "| pushd | sse |")
    # CPU, Redis's, total, shares, deliveries/s, p50, p99, cross, same, split, Redis's per
    # publish, RSS, Redis RSS
    # and Redis's CPU per publish
    assert pushd[2:15] == ["9.0", "1.5", "10.5", "60% / 40%", "50,000", "2.0", "9.0", "12.0",
                           "8.0", "450 + 550", "1500.0", "3,000", "9,000"]
    assert pushd[-2] == "1.50×"  # 10.5 with Redis's CPU, over Nchan's 7.0
    nchan = cells(section, "| nchan | sse |")
    assert nchan[3] == "—" and nchan[5] == "55% / 45%"  # no Redis; the master left out
    assert nchan[9] == "—" and nchan[-2] == "1.00×"
    assert nchan[-1] == "⚠ no subscriber on another process than the publisher's"
    publish = cells(section, "| pushd | publish |")
    assert publish[2:5] == ["200.0", "60.0", "260.0"] and publish[-2] == "13.00×"


def test_no_redis_section_without_redis_rows(tmp_path: Path) -> None:
    text = report(tmp_path, [{"scenario": "cost", "server": "node", "transport": "poll",
                              "na": True}])
    assert "Two processes per server" not in text
