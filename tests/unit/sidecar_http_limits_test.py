"""The helper's connection limits (docs/security.md#limits), on a real `cedana-helper serve`
process on loopback spoken to over raw sockets: a request's headers and body each have a
deadline, idle keep-alive connections close, headers and connections are capped; a slow but
complete request is served."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.sidecar_support import helper_process

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1
MAX_HEADER_BYTES = 4096
SLACK_S = 1.0


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    home = tmp_path_factory.mktemp("helper")
    with helper_process(home, "--authorization", "none",
                        "--header-timeout", str(HEADER_TIMEOUT_S),
                        "--body-timeout", str(BODY_TIMEOUT_S),
                        "--keep-alive-timeout", str(KEEP_ALIVE_S),
                        "--max-header-bytes", str(MAX_HEADER_BYTES)) as url:
        yield int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it
    (seconds from now)."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    sock.close()
    return received, time.monotonic() - started


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (its head and Content-Length bytes of body) from `sock`."""
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < int(
            answer_head(raw).get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    return raw


def answer_head(raw: bytes) -> dict[str, str]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head if ":" in h)}


def answer_of(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON body of the first HTTP answer in `raw`."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.decode("latin-1").split("\r\n")[0]
    headers = answer_head(raw)
    length = int(headers.get("content-length", len(body)))
    return int(status_line.split()[1]), headers, json.loads(body[:length])


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    _, elapsed = until_closed(connect(port))
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S


def test_half_a_request_line_then_nothing_is_closed_with_408(port: int) -> None:
    sock = connect(port)
    sock.sendall(b"GET /heal")
    raw, elapsed = until_closed(sock)
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S
    status, headers, body = answer_of(raw)
    assert (status, body["code"], headers["connection"]) == (408, "request_timeout", "close")


def test_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_deadline(port: int) -> None:
    """The deadline is for the whole of the headers, not between bytes (slowloris)."""
    sock = connect(port)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    closed_after = None
    for _ in range(40):  # 8 s of one header byte every 0.2 s, if nobody stopped it
        try:
            sock.sendall(b"X")
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.2)
    if closed_after is None:
        raw, _ = until_closed(sock)
        closed_after = time.monotonic() - started
        assert answer_of(raw)[0] == 408
    assert closed_after <= HEADER_TIMEOUT_S + SLACK_S


def test_a_body_that_never_completes_is_408_and_closed(port: int) -> None:
    sock = connect(port)
    sock.sendall(b"POST /checkpoints/prune HTTP/1.1\r\nHost: helper\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"dry_run\"")
    raw, elapsed = until_closed(sock)
    assert BODY_TIMEOUT_S - 0.2 <= elapsed <= BODY_TIMEOUT_S + SLACK_S
    status, headers, body = answer_of(raw)
    assert (status, body["code"], body["timeout_s"]) == (408, "request_timeout", BODY_TIMEOUT_S)
    assert headers["connection"] == "close"


def test_a_slow_but_complete_request_is_served(port: int) -> None:
    body = b'{"dry_run": true}'
    pieces = [b"POST /checkpoints/pr", b"une HTTP/1.1\r\nHost: helper\r\n",
              b"Content-Type: application/json\r\n",
              b"Content-Length: %d\r\n\r\n" % len(body), body[:5], body[5:]]
    sock = connect(port)
    for piece, pause in zip(pieces, (0.15, 0.15, 0.15, 0.6, 0.6, 0), strict=True):
        # headers over 0.45 s (< the header deadline), the body over 1.2 s (> it)
        sock.sendall(piece)
        time.sleep(pause)
    raw = read_answer(sock)
    sock.close()
    status, _, answer = answer_of(raw)
    assert status == 200 and answer["dry_run"] is True


def test_kept_alive_connections_serve_again_then_close_when_idle(port: int) -> None:
    sock = connect(port)
    request = b"GET /healthz HTTP/1.1\r\nHost: helper\r\n\r\n"
    for _ in range(2):
        sock.sendall(request)
        assert answer_of(read_answer(sock))[2] == {"status": "ok"}
    # a third request begun 0.6 s after the last answer has the whole header deadline from
    # its first byte (not from the answer: that one would have passed at 1 s)
    time.sleep(0.6)
    sock.sendall(request[:10])
    time.sleep(0.6)
    sock.sendall(request[10:])
    assert answer_of(read_answer(sock))[2] == {"status": "ok"}
    raw, elapsed = until_closed(sock)
    assert raw == b"" and elapsed <= KEEP_ALIVE_S + SLACK_S


def test_headers_over_the_limit_are_400_and_closed(port: int) -> None:
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: helper\r\nX-Padding: "
                 + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
    raw, elapsed = until_closed(sock)
    status, headers, body = answer_of(raw)
    assert (status, body["code"], body["limit_bytes"]) == (400, "invalid_request",
                                                          MAX_HEADER_BYTES)
    assert headers["connection"] == "close" and elapsed < SLACK_S
    # just under it is fine
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: helper\r\nX-Padding: "
                 + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\n\r\n")
    assert answer_of(read_answer(sock))[0] == 200
    sock.close()


def test_an_answer_before_the_body_closes_the_connection(port: int) -> None:
    """Refused for its declared size: the body is never read, the connection not kept."""
    sock = connect(port)
    sock.sendall(b"POST /checkpoint HTTP/1.1\r\nHost: helper\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{")
    raw, elapsed = until_closed(sock)
    status, _, body = answer_of(raw)
    assert (status, body["code"]) == (413, "body_too_large") and elapsed < SLACK_S


def test_connections_beyond_the_limit_are_503_until_idle_ones_are_reaped(
        tmp_path: Path) -> None:
    with helper_process(tmp_path, "--authorization", "none", "--max-connections", "3",
                        "--header-timeout", str(HEADER_TIMEOUT_S)) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [connect(port) for _ in range(3)]
        sock = connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: helper\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 503")
        sock.close()
        for each in idle:  # the header deadline frees their places
            until_closed(each)
        time.sleep(0.2)
        sock = connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: helper\r\n\r\n")
        assert answer_of(read_answer(sock))[0] == 200
        sock.close()
