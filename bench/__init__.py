"""pushd's benchmark: pushd, Nchan and a Node.js baseline side by side.

``python -m bench`` (or ``make bench``) starts each server on loopback, drives
it from a separate uvloop process (:mod:`bench.client`), reads the server's
CPU time and memory from ``/proc``, and writes ``bench/results/<date>.md``.
"""
