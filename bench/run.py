"""``python -m bench``: every scenario against every server, one report.

Each measurement starts the server fresh, starts one load-generator process
(:mod:`bench.client`), reads the server's CPU time (``/proc/PID/stat``,
nginx's worker included) just before publishing and just after the last
delivery, and its RSS before and after the subscribers connect.

The request-path rows (``publish``, ``longpoll``, ``polling``, ``connect``)
divide that CPU by what one request costs instead: a publish, a delivery
or a poll answered, a connection set up and closed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import procstat
from bench.proto import percentile
from bench.report import write_report
from bench.servers import ROOT, SERVERS, Server, available

TRANSPORTS = ("sse", "stream", "ws", "longpoll", "poll")
CLIENT_SATURATED = 0.90  # client CPU / wall above this: the client was the limit


@dataclass
class Counts:
    fanout_subs: int = 1000
    fanout_messages: int = 2000
    fanout_rate: int = 50
    fast_rate: int = 100  # SSE only: the p99 target's rate
    fast_rounds: int = 3  # runs of that row per server; the report shows the median
    scale_conns: int = 10000
    trickle_messages: int = 20
    trickle_rate: int = 4
    cost_messages: int = 100
    cost_rate: int = 10
    poll_interval: float = 1.0
    channels: int = 10000
    # 2,000 publishes measured under a second of CPU at pushd's rate: /proc's
    # 10 ms ticks and the first publishes' warm-up made the figure move by 30%
    channel_messages: int = 10000
    # -- the request path (issue 17) --
    # POST /channels/{ch}, no subscribers, channels round-robin, one request in
    # flight on each keep-alive connection
    publish_messages: int = 30000
    publish_channels: int = 10000
    publish_conns: int = 8
    # long-poll: each subscriber asks again with its cursor after every answer
    longpoll_subs: int = 1000
    longpoll_rate: int = 20
    longpoll_messages: int = 200
    # interval polling with If-None-Match. At one message per poll interval
    # nearly every poll finds exactly one new message and the 304 path hardly
    # runs; at half that rate about half the polls are 304s.
    poll_clients: int = 1000
    poll_every: float = 1.0
    poll_rate: float = 0.5
    poll_messages: int = 10
    # connection setup: connect, response head (or handshake), close
    connects: int = 10000
    connect_concurrency: int = 50


QUICK = Counts(
    fanout_subs=200, fanout_messages=300, fanout_rate=50, fast_rate=100, fast_rounds=1,
    scale_conns=1000,
    trickle_messages=5, trickle_rate=5, cost_messages=20, cost_rate=10,
    poll_interval=0.5, channels=1000, channel_messages=500,
    publish_messages=3000, publish_channels=1000, publish_conns=8,
    longpoll_subs=200, longpoll_rate=20, longpoll_messages=60,
    poll_clients=200, poll_every=1.0, poll_rate=0.5, poll_messages=4,
    connects=1000, connect_concurrency=50,
)
SCENARIOS = "fanout,scale,cost,channels,publish,longpoll,polling,connect,redis"
REDIS_WORKERS = 2  # processes per server in the redis scenario
REDIS_TRANSPORTS = ("sse", "ws")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _readline(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            line = proc.stdout.readline()
            if not line:
                break
            try:
                return json.loads(line)  # type: ignore[no-any-return]
            except ValueError:
                continue
        elif proc.poll() is not None:
            break
    raise RuntimeError("load generator gave no answer")


@dataclass
class Driven:
    """What one run of the load generators measured on the server's side."""

    readies: list[dict[str, Any]]
    dones: list[dict[str, Any]]
    cpu: procstat.Cpu  # the server's whole process tree
    rss0: int  # KiB, before the subscribers connected
    rss1: int  # KiB, once they had
    # the sidecars' (redis-server's) CPU over the same window, and RSS after
    sidecar_cpu: dict[str, procstat.Cpu]
    sidecar_rss: dict[str, int]
    cpu_each: dict[int, procstat.Cpu]  # per server process, over the same window
    peers: dict[procstat.Address, int]  # client address -> server pid holding it


def _drive(server: Server, spec: dict[str, Any], clients: int, settle: float = 0.0) -> Driven:
    """Start ``clients`` load generators on ``spec``, wait until all are ready, say go.

    Returns their ``ready`` and ``done`` lines, the server's CPU between go
    and ``settle`` seconds after the last ``done`` (and its sidecars' apart),
    its RSS before and after they got ready, and which server process held
    each connection (read from /proc while they are all still open).
    """
    rss0 = procstat.rss_kb(server.pid)
    sidecars = server.sidecars
    procs = []
    try:
        for shard in range(clients):
            # the spec goes in a file: 10,000 channel names overflow one argv string
            spec_file = server.dir / f"client-spec-{shard}.json"
            spec_file.write_text(json.dumps({
                **spec,
                "shard": [shard, clients],
                "latency_file": str(server.dir / f"latency-{shard}.bin"),
                **({"conns_file": str(server.dir / f"conns-{shard}.json")}
                   if spec.get("by_connection") else {}),
            }))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.client", "@" + str(spec_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            ))
        readies = [_readline(proc, 120) for proc in procs]
        for ready in readies:
            if ready.get("event") != "ready":
                raise RuntimeError(f"load generator: {ready}")
        time.sleep(0.3)  # let the server settle after the connection burst
        rss1 = procstat.rss_kb(server.pid)
        each0 = procstat.cpu_each(server.pid)
        side0 = {name: procstat.cpu(pid) for name, pid in sidecars.items()}
        for proc in reversed(procs):  # the publisher (shard 0) last
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        dones = [_readline(proc, spec["timeout"] + 60) for proc in procs]
        time.sleep(settle)
        each1 = procstat.cpu_each(server.pid)
        side1 = {name: procstat.cpu(pid) for name, pid in sidecars.items()}
        peers = procstat.peers(server.pid) if spec.get("by_connection") else {}
        side_rss = {name: procstat.rss_kb(pid) for name, pid in sidecars.items()}
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        for proc in procs:
            proc.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # a process that was there at the end but not at the start (a restarted
    # worker) counts from zero
    zero = procstat.Cpu(0.0, 0.0)
    each = {p: c - each0.get(p, zero) for p, c in each1.items()}
    return Driven(
        readies, dones, sum_cpu(each.values()), rss0, rss1,
        {name: side1[name] - side0[name] for name in sidecars}, side_rss, each, peers,
    )


def sum_cpu(cpus: Any) -> procstat.Cpu:
    total = procstat.Cpu(0.0, 0.0)
    for c in cpus:
        total = total + c
    return total


def _spec(server: Server, transport: str, **kw: Any) -> dict[str, Any]:
    path = server.paths.get(transport, {"kind": transport, "path": ""})  # "publish"
    return {
        "host": f"127.0.0.1:{server.port}",
        "kind": path["kind"],
        "path": path["path"],
        "headers": path.get("headers", []),
        "resume": path.get("resume", "since"),
        "one_per_answer": path.get("one_per_answer", False),
        "publish_path": server.publish_path,
        "size": 100,
        "source_ips": [f"127.0.0.{i}" for i in range(1, 9)],
        **kw,
    }


def measure(
    server: Server,
    transport: str,
    *,
    channels: list[str],
    subs_per_channel: int,
    messages: int,
    rate: float,
    timeout: float,
    poll_interval: float = 1.0,
    pipeline: int = 4,
    clients: int | None = None,
    by_connection: bool = False,
) -> dict[str, Any]:
    """One load-generator run against a started server; the numbers of both sides.

    ``by_connection`` (streaming transports only): also split the latency by
    whether each subscriber's server process is the publisher's
    (:func:`cross_node`).
    """
    spec = _spec(
        server, transport, channels=channels, subs_per_channel=subs_per_channel,
        messages=messages, rate=rate, pipeline=pipeline, timeout=timeout,
        poll_interval=poll_interval, connect_concurrency=100, by_connection=by_connection,
    )
    n = len(channels) * subs_per_channel
    if clients is None:
        clients = 2 if n >= 1000 else 1
    driven = _drive(server, spec, clients)
    readies, dones, cpu, rss0, rss1 = (driven.readies, driven.dones, driven.cpu, driven.rss0,
                                       driven.rss1)
    done = merge(dones, [server.dir / f"latency-{i}.bin" for i in range(clients)])
    ready = {"connect_s": max(r["connect_s"] for r in readies)}
    delivered = max(1, done["delivered"])
    answers = max(1, done.get("answers", 0))
    out = dict(done)
    out.update(
        server=server.name,
        transport=transport,
        connect_s=ready["connect_s"],
        server_cpu_s=cpu.total,
        us_per_delivery=cpu.total / delivered * 1e6,
        us_user=cpu.user / delivered * 1e6,
        us_system=cpu.system / delivered * 1e6,
        # polling kinds: per request answered (304s included) and the 304s' share
        us_per_request=cpu.total / answers * 1e6,
        requests_per_s=done.get("answers", 0) / max(1e-6, done["wall_s"]),
        share_304=done.get("not_modified", 0) / answers,
        offered_per_s=n * rate,
        bytes_per_delivery=(done["bytes_in"] + done["bytes_out"]) / delivered,
        rss_before_kb=rss0,
        rss_after_kb=rss1,
        rss_per_conn_b=(rss1 - rss0) * 1024 / n if n else 0,
        client_saturated=done["client_util"] > CLIENT_SATURATED,
        ok=done["bad_subscribers"] == 0 and done["delivered"] == done["expected"],
    )
    _processes(out, server, driven, delivered, "delivery")
    if "redis_cpu_s" in out:
        # Redis's work grows with publishes and the nodes that follow the channel,
        # not with subscribers: per publish is the figure that scales
        out["redis_us_per_publish"] = out["redis_cpu_s"] / max(1, done["messages"]) * 1e6
    if spec.get("by_connection"):
        out.update(cross_node(
            [server.dir / f"latency-{i}.bin" for i in range(clients)],
            [server.dir / f"conns-{i}.json" for i in range(clients)],
            driven.peers, done.get("publisher_addr"),
        ))
    return out


def _processes(out: dict[str, Any], server: Server, driven: Driven, count: int,
               per: str) -> None:
    """The server's processes and sidecars in a row: how many served, each one's
    share of the CPU, and each sidecar's CPU per ``per`` (``delivery``,
    ``request``) and RSS; the total per ``per`` adds the sidecars' to the server's."""
    out["workers"] = server.workers
    out["broker"] = "redis" if server.redis is not None else "memory"
    total = driven.cpu.total
    # the busiest first: how evenly the work was spread over the processes
    out["cpu_shares"] = sorted((c.total / total if total else 0.0
                                for c in driven.cpu_each.values()), reverse=True)
    for name, cpu in driven.sidecar_cpu.items():
        out[f"{name}_cpu_s"] = cpu.total
        out[f"{name}_us_per_{per}"] = cpu.total / count * 1e6
        out[f"{name}_rss_kb"] = driven.sidecar_rss.get(name, 0)
    # what the host spends: the server's processes and its broker's
    out[f"total_us_per_{per}"] = out[f"us_per_{per}"] + sum(
        out[f"{name}_us_per_{per}"] for name in driven.sidecar_cpu)


def cross_node(latency_files: list[Path], conns_files: list[Path],
               peers: dict[procstat.Address, int], publisher: list[Any] | None
               ) -> dict[str, Any]:
    """Latency split by whether the subscriber's server process is the publisher's.

    Each load generator wrote its latency samples subscriber after
    subscriber, and in ``conns_files`` each subscriber's local address and
    how many samples it added, in the same order; ``peers`` (from /proc)
    says which server process holds each address. A sample is *cross-node*
    when its subscriber is held by another process than the publisher's
    connection: the message went from one process to the other through the
    broker (Redis pub/sub for pushd, shared memory for Nchan).
    """
    pub_pid = peers.get((publisher[0], publisher[1])) if publisher else None
    same, cross = array("q"), array("q")
    subs: dict[int, int] = {}
    unknown = 0
    for lat_file, conns_file in zip(latency_files, conns_files, strict=True):
        if not conns_file.exists():
            continue
        lat = array("q")
        if lat_file.exists():
            lat.frombytes(lat_file.read_bytes())
        at = 0
        for ip, port, n in json.loads(conns_file.read_text()):
            pid = peers.get((ip, port))
            samples = lat[at : at + n]
            at += n
            if pid is None or pub_pid is None:
                unknown += 1
                continue
            subs[pid] = subs.get(pid, 0) + 1
            (same if pid == pub_pid else cross).extend(samples)
    placed = sum(subs.values())
    same_s, cross_s = sorted(same), sorted(cross)
    others = sorted((n for p, n in subs.items() if p != pub_pid), reverse=True)
    return {
        # subscribers on the publisher's process first, then the others, busiest first
        "subs_by_process": [subs.get(pub_pid, 0), *others] if placed else [],
        "cross_share": (placed - subs.get(pub_pid, 0)) / placed if placed else 0.0,
        "subs_unplaced": unknown,
        "cross_samples": len(cross_s),
        "same_p99_ms": percentile(same_s, 99) / 1000 if same_s else None,
        "cross_p50_ms": percentile(cross_s, 50) / 1000 if cross_s else None,
        "cross_p99_ms": percentile(cross_s, 99) / 1000 if cross_s else None,
        "cross_max_ms": cross_s[-1] / 1000 if cross_s else None,
    }


def measure_requests(
    server: Server, transport: str, *, mode: str, channels: list[str], requests: int,
    timeout: float, publishers: int = 8, concurrency: int = 50, clients: int = 2,
) -> dict[str, Any]:
    """A request-cost run: ``publish`` (POSTs, one in flight per connection) or
    ``connect`` (connect, response head, close); CPU per request is the figure.

    ``transport`` names the subscribe path a ``connect`` run opens (``sse``,
    ``ws``); a ``publish`` run uses the server's publish path.
    """
    spec = _spec(
        server, transport, mode=mode, channels=channels, messages=requests,
        publishers=publishers, connect_concurrency=concurrency, timeout=timeout,
    )
    # a connect run's last connections are still being closed on the server
    # side when the client is done: their teardown belongs to the figure
    driven = _drive(server, spec, clients, 0.5 if mode == "connect" else 0.0)
    dones, cpu = driven.dones, driven.cpu
    done = merge_requests(dones, [server.dir / f"latency-{i}.bin" for i in range(clients)])
    count = done["published"] if mode == "publish" else done["connected"]
    failed = done["publish_failed"] if mode == "publish" else done["connect_failed"]
    n = max(1, count)
    out = dict(done)
    out.update(
        server=server.name,
        transport=transport,
        requests=count,
        server_cpu_s=cpu.total,
        us_per_request=cpu.total / n * 1e6,
        us_user=cpu.user / n * 1e6,
        us_system=cpu.system / n * 1e6,
        requests_per_s=count / done["span_s"],
        client_saturated=done["client_util"] > CLIENT_SATURATED,
        ok=failed == 0 and count == done["expected"],
    )
    _processes(out, server, driven, n, "request")
    return out


def merge_requests(dones: list[dict[str, Any]], latency_files: list[Path]) -> dict[str, Any]:
    """One result from a request mode's processes: counts add up, the span runs
    from the earliest start to the last answer anywhere, latency percentiles
    come from every process's samples together."""
    out = dict(dones[0])
    for key in ("expected", "published", "publish_failed", "connected", "connect_failed",
                "client_cpu_s", "client_user_s"):
        if key in out:
            out[key] = sum(d.get(key, 0) for d in dones)
    _latencies(out, latency_files)
    start = min(d["start_us"] for d in dones)
    out["span_s"] = max(1e-6, (max(d["last_delivery_us"] for d in dones) - start) / 1e6)
    out["wall_s"] = max(d["wall_s"] for d in dones)
    out["client_util"] = max(d["client_util"] for d in dones)
    out["client_processes"] = len(dones)
    out["errors"] = [e for d in dones for e in d["errors"]][:5]
    return out


def _latencies(out: dict[str, Any], latency_files: list[Path]) -> None:
    """p50, p99 and max latency over every load-generator process's samples."""
    lat = array("q")
    for path in latency_files:
        if path.exists():
            with open(path, "rb") as f:
                lat.frombytes(f.read())
    samples = sorted(lat)
    out["lat_p50_ms"] = percentile(samples, 50) / 1000
    out["lat_p99_ms"] = percentile(samples, 99) / 1000
    out["lat_max_ms"] = samples[-1] / 1000 if samples else 0.0


SUMMED = (
    "subscribers", "expected", "delivered", "received", "bad_subscribers", "duplicates",
    "gaps", "out_of_order", "missing", "bytes_in", "bytes_out", "client_cpu_s", "client_user_s",
    "answers", "not_modified",
)


def merge(dones: list[dict[str, Any]], latency_files: list[Path]) -> dict[str, Any]:
    """One result from the load-generator processes' own (the first one published).

    Counts add up; latency percentiles come from every process's samples
    together; the span runs from the publisher's start to the last delivery
    anywhere (CLOCK_MONOTONIC is one clock for the machine); the client's
    load is its busiest process's, so any saturated one is flagged.
    """
    first = dones[0]
    if len(dones) == 1:
        return first
    out = dict(first)
    for key in SUMMED:
        out[key] = sum(d.get(key, 0) for d in dones)
    _latencies(out, latency_files)
    last = max(d["last_delivery_us"] for d in dones)
    out["span_s"] = max(1e-6, (last - first["start_us"]) / 1e6)
    out["deliveries_per_s"] = out["delivered"] / out["span_s"]
    out["wall_s"] = max(d["wall_s"] for d in dones)
    out["client_util"] = max(d["client_util"] for d in dones)
    out["client_processes"] = len(dones)
    out["errors"] = [e for d in dones for e in d["errors"]][:5]
    return out


def fresh(name: str, **kw: Any) -> Server:
    server = SERVERS[name](**kw)
    server.start()
    return server


def channel(tag: str) -> str:
    return f"b{tag}{uuid.uuid4().hex[:8]}"


def scenarios(counts: Counts, servers: list[str], only: set[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    def attempt(
        scenario: str, name: str, transport: str, served: bool,
        how: Callable[..., dict[str, Any]], unit: str, setup: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        """Measure one row on a fresh server (built with ``setup``), or note why
        it has no figures."""
        if not served:
            results.append({"scenario": scenario, "server": name, "transport": transport,
                            "na": True})
            return
        log(f"{scenario}: {name} {transport}")
        server = fresh(name, **(setup or {}))
        try:
            r = how(server, transport, **kw)
        except Exception as e:
            log(f"  failed: {e}")
            r = {"server": name, "transport": transport, "error": str(e)}
        finally:
            server.cleanup()
        r["scenario"] = scenario
        results.append(r)
        if "error" not in r:
            per = "delivery" if unit == "deliveries" else "request"
            extra = ""
            if f"redis_us_per_{per}" in r:
                extra += f" + redis {r[f'redis_us_per_{per}']:.1f}"
            if r.get("cross_p99_ms") is not None:
                extra += (f", cross-node p99 {r['cross_p99_ms']:.1f} ms"
                          f" (subscribers {r['subs_by_process']})")
            log(
                f"  {r[f'us_per_{per}']:.1f} us/{per}{extra}, {r[f'{unit}_per_s']:.0f}/s, "
                f"p99 {r['lat_p99_ms']:.1f} ms, ok={r['ok']}, client {r['client_util']:.0%}"
            )

    def run(scenario: str, name: str, transport: str, **kw: Any) -> None:
        path = SERVERS[name].paths.get(transport)
        served = path is not None and not path.get("connect_only")
        attempt(scenario, name, transport, served, measure, "deliveries", **kw)

    def run_requests(scenario: str, name: str, transport: str, **kw: Any) -> None:
        cls = SERVERS[name]
        served = cls.publish_path if transport == "publish" else transport in cls.paths
        attempt(scenario, name, transport, bool(served), measure_requests, "requests", **kw)

    c = counts
    if "fanout" in only:
        for name in servers:
            for t in ("sse", "ws", "stream"):
                run("fanout-rate", name, t, channels=[channel("f")],
                    subs_per_channel=c.fanout_subs, messages=c.fanout_messages,
                    rate=c.fanout_rate, timeout=c.fanout_messages / c.fanout_rate + 30)
        # The p99 target's row: one run's p99 moves by a few ms with the machine,
        # so each server runs it several times, in turns, and the report shows
        # the median run with every run's p99 beside it.
        for k in range(c.fast_rounds):
            for name in servers:
                run("fanout-fast", name, "sse", channels=[channel("r")],
                    subs_per_channel=c.fanout_subs, messages=c.fanout_messages,
                    rate=c.fast_rate, timeout=c.fanout_messages / c.fast_rate + 30)
                results[-1]["round"] = k
        for name in servers:
            for t in ("sse", "ws", "stream"):
                run("fanout-max", name, t, channels=[channel("m")],
                    subs_per_channel=c.fanout_subs, messages=c.fanout_messages,
                    rate=0, timeout=120)
    if "scale" in only:
        for name in servers:
            for t in ("sse", "ws"):
                run("scale", name, t, channels=[channel("s")], subs_per_channel=c.scale_conns,
                    messages=c.trickle_messages, rate=c.trickle_rate,
                    timeout=c.trickle_messages / c.trickle_rate + 60)
    if "cost" in only:
        for name in servers:
            for t in TRANSPORTS:
                run("cost", name, t, channels=[channel("c")], subs_per_channel=1,
                    messages=c.cost_messages, rate=c.cost_rate,
                    timeout=c.cost_messages / c.cost_rate + 20,
                    poll_interval=c.poll_interval)
    if "channels" in only:
        for name in servers:
            chans = [channel(f"k{i}-") for i in range(c.channels)]
            run("channels", name, "sse", channels=chans, subs_per_channel=1,
                messages=c.channel_messages, rate=0, timeout=120)
    if "publish" in only:
        for name in servers:
            chans = [channel(f"p{i}-") for i in range(c.publish_channels)]
            run_requests("publish", name, "publish", mode="publish", channels=chans,
                         requests=c.publish_messages, publishers=c.publish_conns,
                         timeout=300)
    if "longpoll" in only:
        for name in servers:
            run("longpoll", name, "longpoll", channels=[channel("l")],
                subs_per_channel=c.longpoll_subs, messages=c.longpoll_messages,
                # a server that falls behind gets time to drain its backlog, so the
                # row shows its real rate rather than a timeout
                rate=c.longpoll_rate, timeout=c.longpoll_messages / c.longpoll_rate + 120)
    if "polling" in only:
        for name in servers:
            run("polling", name, "poll", channels=[channel("i")],
                subs_per_channel=c.poll_clients, messages=c.poll_messages, rate=c.poll_rate,
                timeout=c.poll_messages / c.poll_rate + 30, poll_interval=c.poll_every)
    if "redis" in only:
        # Two processes per server on one host: pushd workers = 2 on a redis-server
        # of its own, Nchan with worker_processes 2 (its workers share memory).
        # The fan-out's subscribers land on both processes (the kernel spreads
        # them), the publisher's connection on one: the rest cross processes.
        two = {"pushd": {"workers": REDIS_WORKERS, "redis": True},
               "nchan": {"workers": REDIS_WORKERS}}
        pair = [name for name in servers if name in two]
        for name in pair:
            for t in REDIS_TRANSPORTS:
                run("redis-rate", name, t, setup=two[name], channels=[channel("x")],
                    subs_per_channel=c.fanout_subs, messages=c.fanout_messages,
                    rate=c.fanout_rate, timeout=c.fanout_messages / c.fanout_rate + 30,
                    by_connection=True)
        for name in pair:
            for t in REDIS_TRANSPORTS:
                    # publishes through Redis wait for its answer: more time than fanout-max
                run("redis-max", name, t, setup=two[name], channels=[channel("y")],
                    subs_per_channel=c.fanout_subs, messages=c.fanout_messages,
                    rate=0, timeout=300, by_connection=True)
        # memory per idle connection on two processes (the 1M-connection estimate)
        for name in pair:
            run("redis-scale", name, "sse", setup=two[name], channels=[channel("w")],
                subs_per_channel=c.scale_conns, messages=c.trickle_messages,
                rate=c.trickle_rate, timeout=c.trickle_messages / c.trickle_rate + 60,
                by_connection=True)
        for name in pair:
            chans = [channel(f"z{i}-") for i in range(c.publish_channels)]
            run_requests("redis-publish", name, "publish", setup=two[name], mode="publish",
                         channels=chans, requests=c.publish_messages,
                         publishers=c.publish_conns, timeout=300)
    if "connect" in only:
        for t in ("sse", "ws"):
            for name in servers:
                run_requests("connect", name, t, mode="connect", channels=[channel("n")],
                             requests=c.connects, concurrency=c.connect_concurrency,
                             timeout=300)
    return results


def ensure_deps(servers: list[str], redis: bool = False) -> list[str]:
    """Install what is missing (apt packages when root, then npm packages); usable servers.

    ``redis``: the redis scenario runs, so redis-server is needed too.
    """
    node_dir = ROOT / "bench" / "node"
    packages = []
    if "node" in servers and not (shutil.which("node") and shutil.which("npm")):
        packages += ["nodejs", "npm"]
    if "nchan" in servers and available("nchan"):
        packages += ["nginx-light", "libnginx-mod-nchan"]
    if redis and available("redis"):
        packages += ["redis-server"]
    if packages and os.geteuid() == 0 and shutil.which("apt-get"):
        log("apt-get install " + " ".join(packages))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=False, env=env)
    if "node" in servers and shutil.which("npm") and not (node_dir / "node_modules").exists():
        log("npm ci in bench/node")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir, check=False)
    usable = []
    for name in servers:
        why = available(name)
        if why:
            log(f"skipping {name}: {why}")
        else:
            usable.append(name)
    return usable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--servers", default="pushd,nchan,node,bare")
    p.add_argument("--scenarios", default=SCENARIOS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--pushd-src", default=None,
                   help="run the pushd package found in this directory (before/after runs)")
    p.add_argument("--label", default="", help="added to the report's file name and title")
    for f, v in vars(Counts()).items():
        p.add_argument("--" + f.replace("_", "-"), type=type(v), default=None)
    args = p.parse_args(argv)
    counts = QUICK if args.quick else Counts()
    for f in vars(Counts()):
        v = getattr(args, f)
        if v is not None:
            setattr(counts, f, v)
    if args.pushd_src:
        SERVERS["pushd"].source = str(Path(args.pushd_src).resolve())
    only = set(args.scenarios.split(","))
    servers = ensure_deps([s for s in args.servers.split(",") if s], "redis" in only)
    if "redis" in only and available("redis"):
        log(f"skipping the redis scenario: {available('redis')}")
        only.discard("redis")
    started = time.time()
    results = scenarios(counts, servers, only)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    name = stamp + (f"-{args.label}" if args.label else "") + ("-quick" if args.quick else "")
    meta = {
        "date": stamp, "quick": args.quick, "counts": vars(counts),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "kernel": platform.release(), "seconds": time.time() - started,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "label": args.label,
    }
    (out / "raw" / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                         indent=1))
    md = write_report(out, name, meta, results)
    log(f"wrote {md}")
    return 0
