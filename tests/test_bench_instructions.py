"""``python -m bench.instructions`` drives a real in-process daemon: its workloads
must get real answers (a 201 per publish, a cursor per long-poll answer), or the
counts it prints would be of errors."""

from __future__ import annotations

from bench.instructions import workload


def test_the_workloads_are_answered() -> None:
    workload("publish", 50)  # asserts every answer is a 201
    workload("longpoll", 1)  # parses every held answer's cursor
