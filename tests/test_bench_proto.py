"""The load generator's parsers and sequence checking (bench.proto)."""

from __future__ import annotations

import json

from bench.proto import (
    BodyReader,
    MarkCounter,
    SeqScanner,
    SequenceChecker,
    make_body,
    parse_head,
    percentile,
    replay,
    ws_client_frame,
    ws_frames,
)


def test_body_is_json_of_the_asked_size() -> None:
    body = make_body(7, 123456, 100)
    assert len(body) == 100
    assert json.loads(body)["s"] == 7 and json.loads(body)["t"] == 123456


def sse(seq: int) -> bytes:
    return b"id: x-%d\ndata: " % seq + make_body(seq, 1000 + seq) + b"\n\n"


def test_scanner_finds_each_message_once_however_the_bytes_are_split() -> None:
    stream = b"retry: 3000\n\n" + b"".join(sse(i) for i in range(1, 21))
    for step in (1, 2, 3, 7, 50, 101, len(stream)):
        scanner = SeqScanner()
        seen = []
        for i in range(0, len(stream), step):
            seen += scanner.feed(stream[i : i + step])
        assert seen == [(i, 1000 + i) for i in range(1, 21)], step


def test_scanner_in_ws_envelope_and_ndjson() -> None:
    line = b'{"type":"message","id":"e-1","data":' + make_body(1, 5) + b',"time":1}\n'
    assert SeqScanner().feed(line) == [(1, 5)]


def test_scanner_tail_stays_small_on_noise() -> None:
    scanner = SeqScanner()
    for _ in range(100):
        scanner.feed(b":\n\n" * 50)
    assert len(scanner.tail) <= 64


def test_checker_in_order() -> None:
    c = SequenceChecker(3)
    for s in (1, 2, 3):
        c.see(s)
    assert c.ok and c.complete and c.missing() == 0


def test_checker_counts_gaps_duplicates() -> None:
    c = SequenceChecker(5)
    for s in (1, 3, 3, 2, 4, 5):
        c.see(s)
    assert c.gaps == 1  # 2 skipped when 3 arrived
    assert c.duplicates == 2  # the second 3, and the late 2
    assert c.complete and not c.ok


def test_checker_incomplete() -> None:
    c = SequenceChecker(4)
    c.see(1)
    c.see(2)
    assert not c.complete and c.missing() == 2


def test_checker_with_expected_list_for_one_of_many_channels() -> None:
    c = SequenceChecker(0, [2, 5, 9])
    for s in (2, 5, 9):
        c.see(s)
    assert c.ok
    c = SequenceChecker(0, [2, 5, 9])
    c.see(2)
    c.see(9)
    assert c.gaps == 1 and c.complete and not c.ok
    c = SequenceChecker(0, [2, 5, 9])
    c.see(4)  # never sent to this channel
    assert c.out_of_order == 1 and not c.ok


def test_parse_head() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A:  b \r\n\r\nrest"
    head = parse_head(raw)
    assert head is not None
    assert head.status == 200
    assert head.headers["content-type"] == "text/event-stream"
    assert head.headers["x-a"] == "b"
    assert raw[head.size :] == b"rest"
    assert parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None


def test_body_reader_content_length_in_pieces() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert head is not None
    r = BodyReader(head)
    assert r.feed(b"ab") is None
    assert r.feed(b"cdeHTTP") == (b"abcde", b"HTTP")


def test_body_reader_chunked() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert head is not None
    wire = b"3\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\nnext"
    for cut in range(len(wire)):
        r = BodyReader(head)
        out = r.feed(wire[:cut])
        if out is None:
            out = r.feed(wire[cut:])
        else:
            out = (out[0], out[1] + wire[cut:])
        assert out == (b"abc0123456789", b"next"), cut


def test_ws_frames_small_medium_and_partial() -> None:
    small = b"\x81\x05hello"
    medium = b"\x81\x7e\x01\x00" + b"m" * 256
    frames, rest = ws_frames(small + medium + b"\x89\x02p")
    assert frames == [(1, b"hello"), (1, b"m" * 256)]
    assert rest == b"\x89\x02p"
    frames, rest = ws_frames(rest + b"q")
    assert frames == [(9, b"pq")] and rest == b""


def test_ws_client_frame_is_masked() -> None:
    frame = ws_client_frame(10, b"abc", mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x8A and frame[1] == 0x80 | 3
    assert frame[2:6] == b"\x01\x02\x03\x04"
    assert bytes(b ^ m for b, m in zip(frame[6:], b"\x01\x02\x03", strict=True)) == b"abc"


def test_percentile() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 99) == 0.0


def test_mark_counter_counts_each_message_once_however_split() -> None:
    stream = b"retry: 3000\n\n" + b"".join(sse(i) for i in range(1, 21))
    for step in (1, 2, 3, 4, 5, 64, len(stream)):
        counter = MarkCounter()
        total = sum(counter.feed(stream[i : i + step]) for i in range(0, len(stream), step))
        assert total == 20, step


def test_replay_stream_gives_seq_send_time_and_arrival_of_the_completing_read() -> None:
    stream = sse(1) + sse(2)
    cut = len(sse(1)) + 10  # message 2 is completed by the second read
    found, pings = replay([(5_000_000, stream[:cut]), (9_000_000, stream[cut:])])
    assert found == [(1, 1001, 5000), (2, 1002, 9000)] and pings == 0


def test_replay_ws_frames_split_across_reads_and_counts_pings() -> None:
    def frame(opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        head = bytes([0x80 | opcode, n]) if n < 126 else bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        return head + payload

    wire = frame(1, make_body(1, 7)) + frame(9, b"hi") + frame(1, make_body(2, 8))
    reads = [(1000 * (i + 1), wire[i : i + 50]) for i in range(0, len(wire), 50)]
    found, pings = replay(reads, ws=True)
    assert [(s, t) for s, t, _ in found] == [(1, 7), (2, 8)] and pings == 1
    last_read_us = reads[-1][0] // 1000
    assert found[-1][2] == last_read_us
