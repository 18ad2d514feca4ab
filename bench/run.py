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
SCENARIOS = "fanout,scale,cost,channels,publish,longpoll,polling,connect"


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


def _drive(server: Server, spec: dict[str, Any], clients: int, settle: float = 0.0
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], procstat.Cpu, int, int]:
    """Start ``clients`` load generators on ``spec``, wait until all are ready, say go.

    Returns their ``ready`` and ``done`` lines, the server's CPU between go
    and ``settle`` seconds after the last ``done``, and its RSS before and
    after they got ready.
    """
    rss0 = procstat.rss_kb(server.pid)
    procs = []
    try:
        for shard in range(clients):
            # the spec goes in a file: 10,000 channel names overflow one argv string
            spec_file = server.dir / f"client-spec-{shard}.json"
            spec_file.write_text(json.dumps({
                **spec,
                "shard": [shard, clients],
                "latency_file": str(server.dir / f"latency-{shard}.bin"),
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
        cpu0 = procstat.cpu(server.pid)
        for proc in reversed(procs):  # the publisher (shard 0) last
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        dones = [_readline(proc, spec["timeout"] + 60) for proc in procs]
        time.sleep(settle)
        cpu1 = procstat.cpu(server.pid)
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
    return readies, dones, cpu1 - cpu0, rss0, rss1


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
) -> dict[str, Any]:
    """One load-generator run against a started server; the numbers of both sides."""
    spec = _spec(
        server, transport, channels=channels, subs_per_channel=subs_per_channel,
        messages=messages, rate=rate, pipeline=pipeline, timeout=timeout,
        poll_interval=poll_interval, connect_concurrency=100,
    )
    n = len(channels) * subs_per_channel
    if clients is None:
        clients = 2 if n >= 1000 else 1
    readies, dones, cpu, rss0, rss1 = _drive(server, spec, clients)
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
    return out


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
    _, dones, cpu, _, _ = _drive(server, spec, clients, 0.5 if mode == "connect" else 0.0)
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
        how: Callable[..., dict[str, Any]], unit: str, **kw: Any,
    ) -> None:
        """Measure one row on a fresh server, or note why it has no figures."""
        if not served:
            results.append({"scenario": scenario, "server": name, "transport": transport,
                            "na": True})
            return
        log(f"{scenario}: {name} {transport}")
        server = fresh(name)
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
            log(
                f"  {r[f'us_per_{per}']:.1f} us/{per}, {r[f'{unit}_per_s']:.0f}/s, "
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
    if "connect" in only:
        for t in ("sse", "ws"):
            for name in servers:
                run_requests("connect", name, t, mode="connect", channels=[channel("n")],
                             requests=c.connects, concurrency=c.connect_concurrency,
                             timeout=300)
    return results


def ensure_deps(servers: list[str]) -> list[str]:
    """Install what is missing (apt packages when root, then npm packages); usable servers."""
    node_dir = ROOT / "bench" / "node"
    packages = []
    if "node" in servers and not (shutil.which("node") and shutil.which("npm")):
        packages += ["nodejs", "npm"]
    if "nchan" in servers and available("nchan"):
        packages += ["nginx-light", "libnginx-mod-nchan"]
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
    servers = ensure_deps([s for s in args.servers.split(",") if s])
    only = set(args.scenarios.split(","))
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
