"""Before/after on one scenario, interleaved: ``python -m bench.ab BEFORE AFTER``.

BEFORE and AFTER are directories holding a ``pushd`` package (for example
``git archive <commit> pushd twisted | tar -x -C DIR``). Runs alternate
(before, after, before, after, ...) so a change in the machine's load hits
both sides; each prints server CPU per delivery, latency and client load.
"""

from __future__ import annotations

import argparse

from bench import run
from bench.servers import SERVERS


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--transports", default="sse,ws")
    p.add_argument("--subs", type=int, default=1000)
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    for _ in range(a.rounds):
        for label, src in (("before", a.before), ("after", a.after)):
            SERVERS["pushd"].source = src
            for t in a.transports.split(","):
                server = run.fresh("pushd")
                try:
                    r = run.measure(server, t, channels=[run.channel("ab")],
                                    subs_per_channel=a.subs, messages=a.messages,
                                    rate=a.rate, timeout=a.messages / max(a.rate, 1) + 60)
                finally:
                    server.cleanup()
                print(f"{label:6} {t:6} {r['us_per_delivery']:5.1f} µs/delivery "
                      f"({r['us_user']:.1f} user + {r['us_system']:.1f} sys)  "
                      f"p50 {r['lat_p50_ms']:.1f} ms  p99 {r['lat_p99_ms']:.1f} ms  "
                      f"client {r['client_util']:.0%}  ok={r['ok']}", flush=True)


if __name__ == "__main__":
    main()
