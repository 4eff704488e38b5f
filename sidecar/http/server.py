"""The helper's HTTP server: uvicorn with h11, and the connection limits uvicorn lacks
(docs/security.md#limits).

- A connection must deliver a request's complete line and headers within `header_timeout_s`
  of opening, and a later request on it within that long of its first byte; otherwise it is
  closed, after a 408 when part of a request came (slowloris: a client that sends a few bytes
  now and then would hold it for ever). Between requests uvicorn closes a connection idle
  for `keep_alive_timeout_s`.
- A request line and headers over `max_header_bytes` are answered 400 and the connection
  closed, as JSON like every other error.
- An answer given before the request's body arrived (401, 408, 413) closes the connection: the
  rest of that body is never read.
- At most `max_connections` connections: while as many are open (or requests run), uvicorn's
  limit_concurrency answers 503.
- A body must arrive within `body_timeout_s` of being read: BodyLimitMiddleware (408).
"""
from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sidecar.config import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_HEADER_BYTES, HelperConfig
from sidecar.errors import HelperError, InvalidRequest, RequestTimeout

log = logging.getLogger(__name__)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline and a size limit for each request's headers."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        # what arrived of the request whose headers are awaited (at most max_header_bytes)
        self._head = bytearray()

    # -- the headers' deadline and size -------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                      self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        """A request has begun (or the connection is new) and its headers are incomplete."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
        log.warning("closed a connection that sent no complete request headers in %g s",
                    self.header_timeout_s,
                    extra={"client": client, "header_timeout_s": self.header_timeout_s,
                           "received_bytes": len(self._head)})
        if self._head:  # a request was begun: say why it ends
            self._answer_and_close(RequestTimeout(
                f"the request line and headers did not arrive within {self.header_timeout_s:g} "
                "s", timeout_s=self.header_timeout_s))
        else:
            self.transport.close()

    def _headers_too_large(self, data: bytes) -> bool:
        """Whether the headers being received, with `data`, exceed max_header_bytes (h11's own
        limit sees only what is incomplete after a read, and a read may bring 256 KiB)."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        size = len(self._head) if end < 0 else end + 4
        if size <= self.max_header_bytes:
            if len(self._head) > self.max_header_bytes:  # the rest is body: not ours to keep
                del self._head[self.max_header_bytes:]
            return False
        return True

    # -- asyncio.Protocol and uvicorn's hooks --------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that sends nothing is closed too

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers() and self._headers_too_large(data):
            self._unset_keepalive_if_required()
            self._answer_and_close(InvalidRequest(
                f"the request line and headers exceed {self.max_header_bytes} bytes",
                limit_bytes=self.max_header_bytes))
            return
        super().data_received(data)
        if self._waiting_for_headers():
            self._arm_header_timer()  # from the first byte of a request on a kept-alive one
        else:
            self._cancel_header_timer()
            self._head.clear()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.conn.their_state is h11.SEND_BODY:
            # answered before its body arrived (refused, or timed out): the rest is not read
            self._cancel_header_timer()
            self._unset_keepalive_if_required()
            self.transport.close()
        elif self._waiting_for_headers() and self.conn.trailing_data[0]:
            self._arm_header_timer()  # part of the next request is already here

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (uvicorn's call): a JSON error, then the connection is
        closed."""
        self._answer_and_close(InvalidRequest(
            f"not a valid HTTP/1.1 request, or its request line and headers exceed "
            f"{self.max_header_bytes} bytes", limit_bytes=self.max_header_bytes))

    def _answer_and_close(self, error: HelperError) -> None:
        """Answer `error` as JSON with `Connection: close`, outside any request cycle (h11 lets
        a server answer a request it could not read), and close."""
        self._cancel_header_timer()
        body = json.dumps(error.body()).encode()
        start = h11.Response(status_code=error.status, reason=_reason(error.status), headers=[
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")])
        try:
            for event in (start, h11.Data(data=body), h11.EndOfMessage()):
                output = self.conn.send(event)
                if output:
                    self.transport.write(output)
        except h11.LocalProtocolError:
            pass  # too late for an answer: the connection just closes
        self.transport.close()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def protocol_for(config: HelperConfig) -> type[LimitedH11Protocol]:
    """The protocol class uvicorn makes one of per connection, with this helper's limits."""

    class HelperProtocol(LimitedH11Protocol):
        header_timeout_s = config.header_timeout_s
        max_header_bytes = config.max_header_bytes

    return HelperProtocol


def server_config(app: Any, config: HelperConfig, host: str, port: int,
                  log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_for(config),
        timeout_keep_alive=config.keep_alive_timeout_s,
        limit_concurrency=config.max_connections or None,
        h11_max_incomplete_event_size=config.max_header_bytes,
        log_config=None, access_log=False, log_level=log_level.lower())


def serve(app: Any, config: HelperConfig, host: str, port: int, log_level: str = "info"
          ) -> None:
    """Serve `app` until the process is told to stop (SIGTERM, SIGINT)."""
    uvicorn.Server(server_config(app, config, host, port, log_level)).run()
