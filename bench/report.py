"""The results file: markdown tables and a hand-written SVG chart."""

# ruff: noqa: RUF001 - the multiplication sign is meant

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

COLORS = {"pushd": "#2b6cb0", "nchan": "#38a169", "node": "#d69e2e", "bare": "#718096"}


def _find(results: list[dict[str, Any]], scenario: str, server: str,
          transport: str) -> dict[str, Any] | None:
    for r in results:
        if (r.get("scenario"), r.get("server"), r.get("transport")) == (
            scenario, server, transport):
            return r
    return None


def _usable(r: dict[str, Any] | None) -> bool:
    return r is not None and not r.get("na") and "error" not in r


def flags(r: dict[str, Any]) -> str:
    out = []
    if not r.get("ok"):
        out.append(
            f"✗ verify: missing {r.get('missing')}, dup {r.get('duplicates')}, "
            f"out of order {r.get('out_of_order')}"
        )
    if r.get("client_saturated"):
        out.append(f"⚠ client saturated ({r['client_util']:.0%})")
    return "; ".join(out)


def cell(r: dict[str, Any] | None, key: str, fmt: str) -> str:
    if r is None or r.get("na"):
        return "n/a"
    if "error" in r:
        return "error"
    return format(r[key], fmt)


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not (_usable(a) and _usable(b)) or not b[key]:  # type: ignore[index]
        return "n/a"
    return f"{a[key] / b[key]:.2f}×"  # type: ignore[index]


def servers_of(results: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in results:
        if r.get("server") not in seen:
            seen.append(r["server"])
    return seen


def headline(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server (SSE) | CPU µs/delivery (user+sys) | deliveries/s (max) | p50 / p99 / max ms "
        "| RSS per idle conn | CPU vs Nchan | CPU vs Node | deliveries/s vs Node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    nchan_r = _find(results, "fanout-rate", "nchan", "sse")
    node_r = _find(results, "fanout-rate", "node", "sse")
    node_m = _find(results, "fanout-max", "node", "sse")
    for s in servers_of(results):
        r = _find(results, "fanout-rate", s, "sse")
        m = _find(results, "fanout-max", s, "sse")
        sc = _find(results, "scale", s, "sse")
        if not _usable(r):
            continue
        assert r is not None
        cpu = f"{r['us_per_delivery']:.1f} ({r['us_user']:.1f}+{r['us_system']:.1f})"
        lat = f"{r['lat_p50_ms']:.1f} / {r['lat_p99_ms']:.1f} / {r['lat_max_ms']:.1f}"
        rss = f"{sc['rss_per_conn_b'] / 1024:.1f} KiB" if _usable(sc) else "n/a"  # type: ignore[index]
        lines.append(
            f"| {s} | {cpu} | {cell(m, 'deliveries_per_s', ',.0f')} | {lat} | {rss} "
            f"| {ratio(r, nchan_r, 'us_per_delivery')} | {ratio(r, node_r, 'us_per_delivery')} "
            f"| {ratio(m, node_m, 'deliveries_per_s')} |"
        )
    return lines


# Benchmark issue, point 6: (row, scenario, key, bound, lower is better, unit, format).
# The bound is the absolute figure; the anchors are Nchan and Node in
# the same run, which is how the developers' guide reads the targets.
TARGETS = (
    ("CPU per delivery, {fanout_subs:,} SSE × {fanout_rate} msg/s: no higher than Nchan's",
     "fanout-rate", "us_per_delivery", None, True, "µs", ".1f"),
    ("deliveries/s at full speed, {fanout_subs:,} SSE: at least Node's",
     "fanout-max", "deliveries_per_s", None, False, "", ",.0f"),
    ("p99 latency, {fanout_subs:,} SSE × {fast_rate} msg/s (median run): under 20 ms",
     "fanout-fast", "lat_p99_ms", 20.0, True, "ms", ".1f"),
    ("RSS per idle SSE connection ({scale_conns:,} open): under 8 KiB",
     "scale", "rss_kib", 8.0, True, "KiB", ".1f"),
)


def _value(r: dict[str, Any] | None, key: str) -> float | None:
    if not _usable(r):
        return None
    assert r is not None
    if key == "rss_kib":
        return float(r["rss_per_conn_b"]) / 1024
    return float(r[key])


def targets(results: list[dict[str, Any]], counts: dict[str, Any]) -> list[str]:
    """The issue's four targets, judged from this run: by the bound and against the anchors.

    ``results`` must already have its repeated rows collapsed
    (:func:`median_runs`). Rows pushd has no figure for are left out.
    """
    lines = [
        "| target | pushd | Nchan | Node | bare | pushd / Nchan | pushd / Node | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for text, scenario, key, bound, lower, unit, fmt in TARGETS:
        vals = {s: _value(_find(results, scenario, s, "sse"), key)
                for s in ("pushd", "nchan", "node", "bare")}
        mine = vals["pushd"]
        if mine is None:
            continue
        # as the issue words them: CPU against Nchan, deliveries/s against Node
        anchors = {"fanout-rate": ("nchan",), "fanout-max": ("node",)}.get(
            scenario, ("nchan", "node"))
        shown = [_shown(vals[s], unit, fmt) for s in ("pushd", "nchan", "node", "bare")]
        ratios = [_ratio(mine, vals[s]) for s in ("nchan", "node")]
        verdict = _verdict(mine, bound, unit, lower, {a: vals[a] for a in anchors})
        lines.append(f"| {text.format(**counts)} | " + " | ".join(shown + ratios)
                     + f" | {verdict} |")
    return lines


def _shown(v: float | None, unit: str, fmt: str) -> str:
    return "n/a" if v is None else f"{v:{fmt}}" + (f" {unit}" if unit else "")


def _ratio(mine: float, v: float | None) -> str:
    if not v:
        return "n/a"
    r = mine / v
    return f"{r:.2f}×" if r >= 0.01 else f"{r:.1g}×"  # 0.003, not 0.00


def _verdict(mine: float, bound: float | None, unit: str, lower: bool,
             anchors: dict[str, float | None]) -> str:
    """``20 ms: yes; vs Nchan and Node: yes``: met by the bound, met against the anchors.

    Against the anchors a target is met when pushd is at least as good as
    every anchor that ran; anchors that did not run are left out.
    """
    out = []
    if bound is not None:
        out.append(f"{bound:g} {unit}: " + ("yes" if mine < bound else "**no**"))
    present = {a: v for a, v in anchors.items() if v is not None}
    if present:
        ok = all(mine <= v if lower else mine >= v for v in present.values())
        names = " and ".join({"nchan": "Nchan", "node": "Node"}[a] for a in present)
        out.append(f"vs {names}: " + ("yes" if ok else "**no**"))
    return "; ".join(out) or "n/a"


# -- the request path (issue 17) ------------------------------------------------

#: long-poll keeps up when every message arrived and deliveries/s over the
#: run (publish start to last delivery, so a backlog stretches it) is at
#: least this share of the offered rate (subscribers times msg/s)
KEEP_UP = 0.95

# Issue 17's targets: (row, scenario, transport, key, at most this times Nchan's, unit, format);
# a factor of None is the long-poll "keeps up" target, judged on pushd's own run.
REQUEST_TARGETS = (
    ("CPU per `POST /channels/{{ch}}` ({publish_channels:,} channels, no subscribers): "
     "at most 2× Nchan's", "publish", "publish", "us_per_request", 2.0, "µs", ".1f"),
    ("long-poll, {longpoll_subs:,} subscribers × {longpoll_rate} msg/s: keeps up "
     "(no backlog)", "longpoll", "longpoll", "deliveries_per_s", None, "/s", ",.0f"),
    ("long-poll CPU per delivery: at most 1.5× Nchan's",
     "longpoll", "longpoll", "us_per_delivery", 1.5, "µs", ".1f"),
    ("long-poll p99 latency: no higher than Nchan's",
     "longpoll", "longpoll", "lat_p99_ms", 1.0, "ms", ".1f"),
    ("CPU per SSE connection ({connects:,} connects): at most 1.5× Nchan's",
     "connect", "sse", "us_per_request", 1.5, "µs", ".1f"),
    ("CPU per WebSocket connection ({connects:,} connects): at most 2× Nchan's",
     "connect", "ws", "us_per_request", 2.0, "µs", ".1f"),
)


def keeps_up(r: dict[str, Any]) -> bool:
    return bool(r.get("ok")) and r["deliveries_per_s"] >= KEEP_UP * r["offered_per_s"]


def request_targets(results: list[dict[str, Any]], counts: dict[str, Any]) -> list[str]:
    """Issue 17's targets judged from this run, each against Nchan's figure in it.

    Rows pushd has no figure for are left out; a target whose Nchan run is
    missing is shown but not judged. A run that failed its own check (lost
    messages, failed requests) is marked in the verdict, whatever the ratio.
    """
    lines = [
        "| target | pushd | Nchan | bare | pushd / Nchan | met |",
        "|---|---|---|---|---|---|",
    ]
    for text, scenario, transport, key, factor, unit, fmt in REQUEST_TARGETS:
        rows = {s: _find(results, scenario, s, transport) for s in ("pushd", "nchan", "bare")}
        vals = {s: _value(r, key) for s, r in rows.items()}
        mine = vals["pushd"]
        if mine is None:
            continue
        pushd_r = rows["pushd"]
        assert pushd_r is not None
        shown = [_shown(vals[s], unit, fmt) for s in ("pushd", "nchan", "bare")]
        if factor is None:  # keeps up: its own run, offered rate beside it
            offered = pushd_r["offered_per_s"]
            shown = [_shown(v, "", fmt) + (f" of {offered:,.0f}" if v is not None else "")
                     for v in vals.values()]
            share = mine / offered if offered else 0.0
            verdict = "yes" if keeps_up(pushd_r) else f"**no** ({share:.0%} of offered)"
        elif vals["nchan"] is None:
            verdict = "n/a (no Nchan figure)"
        else:
            bound = factor * vals["nchan"]
            ok = mine <= bound
            what = "Nchan's" if factor == 1.0 else f"{factor:g}× Nchan's"
            verdict = f"≤ {what}: " + ("yes" if ok else "**no**")
        failed = [s for s in ("pushd", "nchan") if _usable(rows[s]) and not rows[s]["ok"]]
        if failed:
            verdict += "; ✗ check failed: " + ", ".join(failed)
        lines.append(f"| {text.format(**counts)} | " + " | ".join(shown)
                     + f" | {_ratio(mine, vals['nchan'])} | {verdict} |")
    return lines


def request_flags(r: dict[str, Any]) -> str:
    """What a request row's reader must know: failed requests, a saturated client."""
    out = []
    failed = r.get("publish_failed", r.get("connect_failed", 0))
    if not r.get("ok"):
        out.append(f"✗ {r.get('requests')} of {r.get('expected')} answered as asked"
                   + (f", {failed} failed" if failed else ""))
    if r.get("client_saturated"):
        out.append(f"⚠ client saturated ({r['client_util']:.0%})")
    errors = r.get("errors") or []
    if errors and not r.get("ok"):
        out.append(escape(str(errors[0])[:60]))
    return "; ".join(out)


def request_table(results: list[dict[str, Any]], scenario: str, transports: tuple[str, ...],
                  cols: list[tuple[str, str, str]], ratio_keys: list[tuple[str, str]],
                  flagger: Any = None) -> list[str]:
    """One table of a request-path scenario: a row per server (and transport), the
    figures in ``cols`` and, per ``ratio_keys`` (title, key), pushd's ratio to
    Nchan's in the same run on pushd's row."""
    rows = [r for r in results if r.get("scenario") == scenario
            and r.get("transport") in transports]
    if not rows:
        return []
    flagger = flagger or flags
    lines = ["| server | " + ("transport | " if len(transports) > 1 else "")
             + " | ".join(c[0] for c in cols + ratio_keys) + " | notes |",
             "|---|" + ("---|" if len(transports) > 1 else "")
             + "---|" * (len(cols) + len(ratio_keys)) + "---|"]
    for r in rows:
        first = f"| {r['server']} | " + (f"{r['transport']} | " if len(transports) > 1 else "")
        n = len(cols) + len(ratio_keys)
        if r.get("na"):
            lines.append(first + " | ".join("n/a" for _ in range(n)) + " | not served |")
            continue
        if "error" in r:
            lines.append(first + " | ".join("—" for _ in range(n))
                         + f" | error: {escape(r['error'][:80])} |")
            continue
        vals = [cell(r, key, fmt) for _, key, fmt in cols]
        nchan_r = _find(results, scenario, "nchan", r["transport"])
        vals += [ratio(r, nchan_r, key) if r["server"] != "nchan" else "1.00×"
                 for _, key in ratio_keys]
        lines.append(first + " | ".join(vals) + f" | {flagger(r)} |")
    return lines


def request_section(results: list[dict[str, Any]], c: dict[str, Any]) -> list[str]:
    """The request-path rows: what one request costs, side by side with Nchan."""
    if not any(r.get("scenario") in ("publish", "longpoll", "polling", "connect")
               for r in results):
        return []
    return [
        "## The request path (issue 17)",
        "",
        "What one request costs: the server's CPU (user+sys from `/proc`) divided by the "
        "requests it answered, Nchan beside it in the same run (its ratio on each row).",
        "",
        f"### Publish: `POST` of 100 bytes to {c['publish_channels']:,} channels in turn, "
        f"no subscribers, {c['publish_conns']} keep-alive connections with one request "
        f"in flight on each, {c['publish_messages']:,} publishes",
        "",
        "Latency is each publish's round trip. A p50 near 40 ms means the answer left "
        "the server in two segments without `TCP_NODELAY`: Nagle's algorithm holds the "
        "second until the client's delayed ACK (40 ms on Linux), and with one request in "
        "flight the connection waits that long per publish (CPU per publish is not "
        "affected; publishes/s is).",
        "",
        *request_table(results, "publish", ("publish",), [
            ("CPU µs/publish", "us_per_request", ".1f"), ("user", "us_user", ".1f"),
            ("sys", "us_system", ".1f"), ("publishes/s", "requests_per_s", ",.0f"),
            ("p50 ms", "lat_p50_ms", ".2f"), ("p99 ms", "lat_p99_ms", ".1f"),
            ("client CPU", "client_util", ".0%")],
            [("CPU vs Nchan", "us_per_request")], request_flags),
        "",
        f"### Long-poll: {c['longpoll_subs']:,} subscribers on one channel, "
        f"{c['longpoll_messages']:,} messages at {c['longpoll_rate']} msg/s",
        "",
        "Each subscriber asks again with its cursor after every answer (pushd: "
        "`?since=`; Nchan: the answer's `Etag` and `Last-Modified` as `If-None-Match` "
        "and `If-Modified-Since`, one message per answer). Offered is subscribers × rate; "
        "a server that falls behind delivers less per second than offered and its "
        "latency grows. Requests counts the answers.",
        "",
        *request_table(results, "longpoll", ("longpoll",), [
            ("CPU µs/delivery", "us_per_delivery", ".1f"),
            ("deliveries/s", "deliveries_per_s", ",.0f"),
            ("offered/s", "offered_per_s", ",.0f"), ("requests", "answers", ",d"),
            ("p50 ms", "lat_p50_ms", ".1f"), ("p99 ms", "lat_p99_ms", ".1f"),
            ("max ms", "lat_max_ms", ".1f"), ("client CPU", "client_util", ".0%")],
            [("CPU vs Nchan", "us_per_delivery"), ("p99 vs Nchan", "lat_p99_ms")]),
        "",
        f"### Polling: {c['poll_clients']:,} clients, each polling every {c['poll_every']:g} s "
        f"with `If-None-Match`; {c['poll_messages']} messages at {c['poll_rate']:g} msg/s",
        "",
        "CPU per poll request counts every answer, 304s included. An Nchan interval-poll "
        "answer holds one message at most, so its clients ask again at once after a 200 "
        "(one more request, usually a 304, per message); pushd's answer holds everything "
        "new. Latency is publish to the poll that brought the message.",
        "",
        *request_table(results, "polling", ("poll",), [
            ("CPU µs/poll", "us_per_request", ".1f"), ("polls/s", "requests_per_s", ",.0f"),
            ("304s", "share_304", ".0%"), ("CPU µs/delivery", "us_per_delivery", ".1f"),
            ("p50 ms", "lat_p50_ms", ".0f"), ("p99 ms", "lat_p99_ms", ".0f")],
            [("CPU/poll vs Nchan", "us_per_request")]),
        "",
        f"### Connection setup: {c['connects']:,} connections, {c['connect_concurrency']} at "
        "a time: connect, subscribe, read the response head (SSE) or handshake (WebSocket), "
        "close",
        "",
        "Latency is connect to the whole response head.",
        "",
        *request_table(results, "connect", ("sse", "ws"), [
            ("CPU µs/connection", "us_per_request", ".1f"), ("user", "us_user", ".1f"),
            ("sys", "us_system", ".1f"), ("connections/s", "requests_per_s", ",.0f"),
            ("p99 ms", "lat_p99_ms", ".1f"), ("client CPU", "client_util", ".0%")],
            [("CPU vs Nchan", "us_per_request")], request_flags),
        "",
    ]


# -- two processes per server, pushd on Redis (issue 19, point 5) ------------------

def opt(r: dict[str, Any], key: str, fmt: str) -> str:
    """A figure a row may not have (Nchan has no Redis; no subscriber crossed): "—"."""
    v = r.get(key)
    return "—" if v is None else format(v, fmt)


def processes_cell(r: dict[str, Any]) -> str:
    """Subscribers per server process, the publisher's first: ``412 + 588``."""
    subs = r.get("subs_by_process") or []
    return " + ".join(str(n) for n in subs) if subs else "—"


def shares_cell(r: dict[str, Any]) -> str:
    """Each serving process's share of the server's CPU, the busiest first.

    nginx's master (no share to speak of) is left out.
    """
    shares = [v for v in r.get("cpu_shares", []) if v >= 0.005]
    return " / ".join(f"{v:.0%}" for v in shares) if shares else "—"


def cross_flags(r: dict[str, Any]) -> str:
    out = [flags(r)] if flags(r) else []
    if r.get("subs_unplaced"):
        out.append(f"{r['subs_unplaced']} subscribers not found in /proc")
    if "cross_samples" in r and not r["cross_samples"]:
        out.append("⚠ no subscriber on another process than the publisher's")
    return "; ".join(out)


def redis_table(results: list[dict[str, Any]], scenario: str, cols: list[tuple[str, str, str]],
                ratio_key: str, flagger: Any) -> list[str]:
    """A row per server and transport of a redis scenario: ``cols`` (title, key,
    format; a key may be missing from a row, e.g. Redis's CPU on Nchan's), and the
    ratio of ``ratio_key`` (pushd's total with Redis's; Nchan's total is its own) to
    Nchan's in the same run."""
    rows = [r for r in results if r.get("scenario") == scenario]
    if not rows:
        return []
    lines = ["| server | transport | " + " | ".join(c[0] for c in cols) + " | vs Nchan | notes |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]
    for r in rows:
        first = f"| {r['server']} | {r['transport']} | "
        if r.get("na") or "error" in r:
            why = "not served" if r.get("na") else f"error: {escape(r['error'][:80])}"
            lines.append(first + " | ".join("—" for _ in range(len(cols) + 1)) + f" | {why} |")
            continue
        vals = [processes_cell(r) if key == "subs_by_process" else
                shares_cell(r) if key == "cpu_shares" else opt(r, key, fmt)
                for _, key, fmt in cols]
        nchan_r = _find(results, scenario, "nchan", r["transport"])
        vals.append("1.00×" if r["server"] == "nchan" else ratio(r, nchan_r, ratio_key))
        lines.append(first + " | ".join(vals) + f" | {flagger(r)} |")
    return lines


def redis_section(results: list[dict[str, Any]], c: dict[str, Any]) -> list[str]:
    """The redis scenario: two processes per server, pushd's on Redis, Nchan's on
    shared memory; what a delivery and a publish cost, Redis's share apart, and
    the latency of the deliveries that crossed from one process to the other."""
    if not any(str(r.get("scenario", "")).startswith("redis-") for r in results):
        return []
    fan = [
        ("pushd / nginx CPU µs/delivery", "us_per_delivery", ".1f"),
        ("Redis µs/delivery", "redis_us_per_delivery", ".1f"),
        ("total µs/delivery", "total_us_per_delivery", ".1f"),
        ("CPU per process", "cpu_shares", ""),
        ("deliveries/s", "deliveries_per_s", ",.0f"),
        ("p50 ms", "lat_p50_ms", ".1f"), ("p99 ms", "lat_p99_ms", ".1f"),
        ("cross-process p99 ms", "cross_p99_ms", ".1f"),
        ("same-process p99 ms", "same_p99_ms", ".1f"),
        ("subscribers per process", "subs_by_process", ""),
    ]
    return [
        "## Two processes per server: pushd `workers = 2` on Redis, Nchan with 2 workers "
        "(issue 19)",
        "",
        "pushd runs with `workers = 2` and `broker = \"redis://…\"` on a redis-server the "
        "bench starts for each run on a free port (no persistence); Nchan with "
        "`worker_processes 2` on its shared-memory store, a listening socket per worker "
        "(`reuseport`) so that the kernel spreads the connections over both, as it does over "
        "pushd's processes sharing one socket. CPU is summed over every process of the "
        "server (pushd's parent and worker; nginx's master and workers); Redis's CPU is "
        "measured apart, from its own `/proc/PID/stat`, and *total* adds it. *CPU per "
        "process* is each process's share of the server's CPU. The publisher's connection "
        "lands on one process; from `/proc` (which process holds which client's socket) the "
        "bench knows where each subscriber is: a delivery to a subscriber of the other "
        "process crossed processes (pushd: through Redis pub/sub; the publisher's own "
        "process delivers from the publish's answer), and *cross-process p99* is over those "
        "deliveries alone. *Subscribers per process* counts the publisher's process first. "
        "*vs Nchan* is pushd's total, Redis included, over Nchan's.",
        "",
        f"### Fan-out: {c['fanout_subs']:,} subscribers on one channel, "
        f"{c['fanout_messages']:,} messages at {c['fanout_rate']} msg/s",
        "",
        "*Redis µs/publish* is Redis's CPU per message published with both processes "
        "following the channel (the publish table below has it with none following).",
        "",
        *redis_table(results, "redis-rate", [
            *fan, ("Redis µs/publish", "redis_us_per_publish", ".1f"),
            ("RSS/conn bytes", "rss_per_conn_b", ",.0f"),
            ("Redis RSS KiB", "redis_rss_kb", ",d"), ("client CPU", "client_util", ".0%")],
            "total_us_per_delivery", cross_flags),
        "",
        f"### Fan-out at full speed: {c['fanout_subs']:,} subscribers, "
        f"{c['fanout_messages']:,} messages, 4 pipelined POSTs",
        "",
        *redis_table(results, "redis-max", [*fan, ("client CPU", "client_util", ".0%")],
                     "total_us_per_delivery", cross_flags),
        "",
        f"### Idle connections: {c['scale_conns']:,} SSE subscribers, then "
        f"{c['trickle_messages']} messages at {c['trickle_rate']} msg/s",
        "",
        "RSS is summed over the server's processes (Redis's apart): what a node needs per "
        "open connection; *vs Nchan* here is RSS per connection.",
        "",
        *redis_table(results, "redis-scale", [
            ("connect all s", "connect_s", ".2f"), ("RSS/conn bytes", "rss_per_conn_b", ",.0f"),
            ("RSS after KiB", "rss_after_kb", ",d"), ("Redis RSS KiB", "redis_rss_kb", ",d"),
            ("total µs/delivery", "total_us_per_delivery", ".1f"),
            ("p99 ms", "lat_p99_ms", ".1f"), ("cross-process p99 ms", "cross_p99_ms", ".1f"),
            ("subscribers per process", "subs_by_process", "")],
            "rss_per_conn_b", cross_flags),
        "",
        f"### Publish through Redis: `POST` of 100 bytes to {c['publish_channels']:,} "
        f"channels in turn, no subscribers, {c['publish_conns']} keep-alive connections with "
        f"one request in flight on each, {c['publish_messages']:,} publishes",
        "",
        *redis_table(results, "redis-publish", [
            ("pushd / nginx CPU µs/publish", "us_per_request", ".1f"),
            ("Redis µs/publish", "redis_us_per_request", ".1f"),
            ("total µs/publish", "total_us_per_request", ".1f"),
            ("CPU per process", "cpu_shares", ""),
            ("publishes/s", "requests_per_s", ",.0f"),
            ("p50 ms", "lat_p50_ms", ".2f"), ("p99 ms", "lat_p99_ms", ".1f"),
            ("client CPU", "client_util", ".0%")], "total_us_per_request", request_flags),
        "",
    ]


def table(results: list[dict[str, Any]], scenario: str, cols: list[tuple[str, str, str]]
          ) -> list[str]:
    rows = [r for r in results if r.get("scenario") == scenario]
    if not rows:
        return []
    lines = ["| server | transport | " + " | ".join(c[0] for c in cols) + " | notes |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for r in rows:
        if r.get("na"):
            lines.append(f"| {r['server']} | {r['transport']} | " + " | ".join(
                "n/a" for _ in cols) + " | not served |")
            continue
        if "error" in r:
            lines.append(f"| {r['server']} | {r['transport']} | " + " | ".join(
                "—" for _ in cols) + f" | error: {escape(r['error'][:80])} |")
            continue
        vals = [runs_cell(r) if key == "p99_runs" else cell(r, key, fmt) for _, key, fmt in cols]
        lines.append(f"| {r['server']} | {r['transport']} | " + " | ".join(vals)
                     + f" | {flags(r)} |")
    return lines


def median_runs(results: list[dict[str, Any]], scenario: str) -> list[dict[str, Any]]:
    """``results`` with the runs of ``scenario`` collapsed, one per server and transport.

    The one kept is the run with the median p99 (the lower middle one of an
    even count), so its figures stay those of one real run; ``p99_runs``
    lists every run's p99 in the order they ran, failed runs left out.
    """
    out: list[dict[str, Any]] = []
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("scenario") != scenario:
            out.append(r)
            continue
        key = (r["server"], r["transport"])
        if key not in runs:
            runs[key] = []
            out.append(r)  # holds the place of the group in the report's order
        runs[key].append(r)
    for i, r in enumerate(out):
        if r.get("scenario") != scenario:
            continue
        group = runs[(r["server"], r["transport"])]
        usable = [g for g in group if _usable(g)]
        if not usable:
            out[i] = group[0]
            continue
        ranked = sorted(usable, key=lambda g: g["lat_p99_ms"])
        out[i] = dict(ranked[(len(ranked) - 1) // 2], p99_runs=[g["lat_p99_ms"] for g in usable])
    return out


def runs_cell(r: dict[str, Any]) -> str:
    return " / ".join(f"{v:.1f}" for v in r.get("p99_runs", []))


def chart(results: list[dict[str, Any]]) -> str:
    """Two bar panels: deliveries/s (fan-out, max rate) and p99 ms (fan-out at rate)."""
    panels = [("fanout-max", "deliveries_per_s", "deliveries/s, 1 channel, max rate"),
              ("fanout-rate", "lat_p99_ms", "p99 latency ms, fixed rate")]
    bars_per = [[r for r in results if r.get("scenario") == sc and _usable(r)]
                for sc, _, _ in panels]
    n = max([len(b) for b in bars_per] + [1])
    bw, gap, left, top, ph = 34, 10, 60, 40, 220
    width = left + n * (bw + gap) + 40
    height = len(panels) * (ph + 90) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, ((_, key, title), bars) in enumerate(zip(panels, bars_per, strict=True)):
        y0 = top + i * (ph + 90)
        out.append(f'<text x="{left}" y="{y0 - 12}" font-size="13">{escape(title)}</text>')
        vmax = max([b[key] for b in bars] + [1e-9])
        out.append(f'<line x1="{left}" y1="{y0 + ph}" x2="{width - 20}" y2="{y0 + ph}" '
                   'stroke="#444"/>')
        for k in range(5):
            v = vmax * k / 4
            y = y0 + ph - ph * k / 4
            out.append(f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">'
                       f'{v:,.0f}</text>' if vmax >= 10 else
                       f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">{v:.1f}</text>')
        for j, b in enumerate(bars):
            h = ph * b[key] / vmax
            x = left + 8 + j * (bw + gap)
            color = COLORS.get(b["server"], "#718096")
            out.append(f'<rect x="{x}" y="{y0 + ph - h:.1f}" width="{bw}" height="{h:.1f}" '
                       f'fill="{color}"><title>{escape(b["server"])} {escape(b["transport"])}: '
                       f'{b[key]:,.1f}</title></rect>')
            label = f"{b['server']} {b['transport']}"
            out.append(f'<text x="{x + bw / 2}" y="{y0 + ph + 12}" text-anchor="end" '
                       f'transform="rotate(-40 {x + bw / 2} {y0 + ph + 12})">'
                       f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _request_targets_part(results: list[dict[str, Any]], c: dict[str, Any]) -> list[str]:
    lines = request_targets(results, c)
    if len(lines) <= 2:
        return []
    return [
        "### Request-path targets (issue 17)",
        "",
        "Against Nchan in this run. Long-poll keeps up when every message arrived and "
        f"deliveries/s, from the first publish to the last delivery, reach {KEEP_UP:.0%} of "
        "the offered rate.",
        "",
        *lines,
        "",
    ]


def write_report(out: Path, name: str, meta: dict[str, Any],
                 results: list[dict[str, Any]]) -> Path:
    c = meta["counts"]
    results = median_runs(results, "fanout-fast")
    rounds = c.get("fast_rounds", 1)
    svg = out / f"{name}.svg"
    svg.write_text(chart(results))
    md: list[str] = [
        f"# pushd benchmark {meta['date']}{' (quick)' if meta['quick'] else ''}"
        + (f" — {meta['label']}" if meta.get("label") else ""),
        "",
        f"`{meta['command']}` on {meta['cpus']} CPUs, Linux {meta['kernel']}, CPython "
        f"{meta['python']} ({meta['seconds']:.0f} s). Servers and load generator share the "
        "machine, on loopback; compare ratios within this run, not absolute figures.",
        "CPU is the server's user+system time from `/proc/PID/stat` between the first "
        "publish and the last delivery (nginx: master + worker), divided by deliveries; "
        "it includes handling the publish requests. From 1,000 subscribers up the load "
        "generator is two processes (each holds every other subscriber; the first also "
        "publishes), and \"client CPU\" is the busier one's share of a core. ✗ marks a "
        "run whose per-subscriber check failed; ⚠ one where a load generator was saturated.",
        "",
        "Servers: pushd as shipped; Nchan (nginx module, one worker); the Node/Express "
        "baseline (`bench/node/server.js`, an array of responses written in turn); and "
        "**bare**, the floor (`bench/bare/server.py`): a Twisted `Protocol` with no broker, "
        "history, HTTP library or limits that sends each publish straight to every idle "
        "socket. What pushd costs beyond bare is the price of its features; where bare "
        "misses a target, the machine does.",
        "",
        f"## Headline: fan-out to {c['fanout_subs']} SSE subscribers",
        "",
        f"CPU and latency at {c['fanout_rate']} msg/s × {c['fanout_messages']} messages of "
        "100 bytes; deliveries/s with publishing as fast as the server answers "
        "(4 pipelined POSTs); RSS from the scale scenario.",
        "",
        *headline(results),
        "",
        f"![deliveries/s and p99 latency]({svg.name})",
        "",
        "## Targets (benchmark issue, point 6)",
        "",
        "Each judged twice: by the issue's absolute figure, where it gives one (measured on "
        "another machine), and against Nchan and Node in this run, which is how the "
        "developers' guide reads it. p99 is from the median of the repeated runs below.",
        "",
        *targets(results, c),
        "",
        *_request_targets_part(results, c),
        f"## Fan-out: {c['fanout_subs']} subscribers, one channel, {c['fanout_messages']} "
        f"messages at {c['fanout_rate']} msg/s",
        "",
        *table(results, "fanout-rate", [
            ("CPU µs/delivery", "us_per_delivery", ".1f"), ("user", "us_user", ".1f"),
            ("sys", "us_system", ".1f"), ("p50 ms", "lat_p50_ms", ".1f"),
            ("p99 ms", "lat_p99_ms", ".1f"), ("max ms", "lat_max_ms", ".1f"),
            ("client CPU", "client_util", ".0%")]),
        "",
        f"## Fan-out at {c['fast_rate']} msg/s (SSE)",
        "",
        f"Each server ran this {rounds} time{'s' if rounds > 1 else ''}, in turns with the "
        "others; the row is the run with the median p99, and the last column has every "
        "run's p99 in the order they ran.",
        "",
        *table(results, "fanout-fast", [
            ("CPU µs/delivery", "us_per_delivery", ".1f"),
            ("deliveries/s", "deliveries_per_s", ",.0f"),
            ("p50 ms", "lat_p50_ms", ".1f"), ("p99 ms", "lat_p99_ms", ".1f"),
            ("max ms", "lat_max_ms", ".1f"), ("client CPU", "client_util", ".0%"),
            ("p99 each run ms", "p99_runs", "")]),
        "",
        "## Fan-out at full speed",
        "",
        *table(results, "fanout-max", [
            ("deliveries/s", "deliveries_per_s", ",.0f"),
            ("CPU µs/delivery", "us_per_delivery", ".1f"), ("p50 ms", "lat_p50_ms", ".1f"),
            ("p99 ms", "lat_p99_ms", ".1f"), ("max ms", "lat_max_ms", ".1f"),
            ("client CPU", "client_util", ".0%")]),
        "",
        f"## Scale: {c['scale_conns']} idle connections, then {c['trickle_messages']} "
        f"messages at {c['trickle_rate']} msg/s",
        "",
        *table(results, "scale", [
            ("connect all s", "connect_s", ".2f"), ("RSS/conn bytes", "rss_per_conn_b", ",.0f"),
            ("RSS after KiB", "rss_after_kb", ",d"),
            ("CPU µs/delivery", "us_per_delivery", ".1f"), ("p50 ms", "lat_p50_ms", ".1f"),
            ("p99 ms", "lat_p99_ms", ".1f"), ("max ms", "lat_max_ms", ".1f")]),
        "",
        f"## Transport cost: one client, {c['cost_messages']} messages at {c['cost_rate']} "
        f"msg/s (poll every {c['poll_interval']} s)",
        "",
        "Bytes are what the subscriber's connection carried both ways (requests, "
        "headers, framing, heartbeats) per delivered message; CPU includes the publish.",
        "",
        *table(results, "cost", [
            ("bytes/delivery", "bytes_per_delivery", ",.0f"),
            ("CPU µs/delivery", "us_per_delivery", ".0f"), ("p50 ms", "lat_p50_ms", ".1f"),
            ("p99 ms", "lat_p99_ms", ".1f")]),
        "",
        f"## Many channels: {c['channels']} channels × 1 SSE subscriber, "
        f"{c['channel_messages']} messages to random channels, full speed",
        "",
        *table(results, "channels", [
            ("deliveries/s", "deliveries_per_s", ",.0f"),
            ("CPU µs/delivery", "us_per_delivery", ".1f"),
            ("RSS/conn bytes", "rss_per_conn_b", ",.0f"),
            ("connect all s", "connect_s", ".2f"), ("p99 ms", "lat_p99_ms", ".1f")]),
        "",
    ]
    md += request_section(results, c)
    md += redis_section(results, c)
    path = out / f"{name}.md"
    path.write_text("\n".join(md))
    return path
