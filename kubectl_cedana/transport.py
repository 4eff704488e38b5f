"""HTTP to the API server: http.client for the connections kubeconfig.py makes (the usual
case: ~35 ms less start-up than urllib3's import), urllib3 for those the official client's
configuration makes (proxies, auth-provider plugins). Both answer the same way and turn every
transport failure into the plugin's typed errors, so kube.py does not know which it uses.
Python 3.9-compatible (the krew zipapp)."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from kubectl_cedana.errors import CedanaError, ConfigError, OperationTimeout

if TYPE_CHECKING:
    from kubectl_cedana.kubeconfig import Connection

# seconds in all, or (connect, read)
Timeout = Union[float, tuple[float, float]]


@dataclass
class HttpResponse:
    status: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.data:
            return None
        return json.loads(self.data.decode("utf-8"))

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except ValueError:
            return None


class Stream:
    """A response read as it comes (a watch); close() before its end drops the connection."""

    def __init__(self, status: int, chunks: Callable[[int], Iterator[bytes]],
                 read_all: Callable[[], bytes], close: Callable[[], None]) -> None:
        self.status = status
        self.chunks = chunks
        self.read_all = read_all
        self.close = close


def _limits(timeout: Timeout, total: float | None) -> tuple[float, float]:
    """(connect, read) seconds; an explicit --request-timeout bounds both."""
    if total:
        return total, total
    if isinstance(timeout, tuple):
        return timeout
    return min(10.0, timeout), timeout


def transport_error(host: str, method: str, url: str, reason: BaseException) -> CedanaError:
    """What a transport failure means for the person at the terminal."""
    if isinstance(reason, ssl.SSLError):  # CertificateError is one
        return ConfigError(f"TLS error talking to {host}: {reason}")
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return OperationTimeout(f"{method} {url} timed out",
                                hint="raise --request-timeout if the cluster is slow")
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return CedanaError(f"cannot connect to the Kubernetes API server at {host}",
                           hint=str(reason))
    return CedanaError(f"{method} {url} failed: {reason}")


class _HTTPSConnection(http.client.HTTPSConnection):
    """http.client's, with the TLS server name the kubeconfig may give (tls-server-name)."""

    def __init__(self, host: str, port: int, *, timeout: float,
                 context: ssl.SSLContext | None, server_hostname: str | None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_hostname
        self._tls = context

    def connect(self) -> None:
        if not self._server_name or self._tls is None:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


class HttpClientTransport:
    """One kept-alive connection for requests, a fresh one for each stream."""

    def __init__(self, connection: Connection, total_timeout: float | None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(connection.host)
        self.host = connection.host
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")  # e.g. Rancher's /k8s/clusters/ID
        self.context = connection.ssl_context
        self.server_hostname = connection.server_hostname
        self.total_timeout = total_timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self, connect_s: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.https:
            conn = _HTTPSConnection(self.hostname, self.port, timeout=connect_s,
                                    context=self.context, server_hostname=self.server_hostname)
        else:
            conn = http.client.HTTPConnection(self.hostname, self.port, timeout=connect_s)
        conn.connect()
        return conn

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              body: bytes | None, headers: Mapping[str, str], read_s: float
              ) -> http.client.HTTPResponse:
        conn.putrequest(method, self.prefix + path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        if conn.sock is not None:
            conn.sock.settimeout(read_s)
        return conn.getresponse()

    def request(self, method: str, path: str, *, body: bytes | None,
                headers: Mapping[str, str], timeout: Timeout) -> HttpResponse:
        connect_s, read_s = _limits(timeout, self.total_timeout)
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = self._connect(connect_s)
                raw = self._send(self._conn, method, path, body, headers, read_s)
                data = raw.read()
                if raw.will_close:
                    self._drop()
                return HttpResponse(raw.status, data,
                                    {k.lower(): v for k, v in raw.getheaders()})
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                self._drop()
                # a kept-alive connection the server closed meanwhile: once more, afresh
                if reused and attempt == 1:
                    continue
                raise transport_error(self.host, method, self.host + path, exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise transport_error(self.host, method, self.host + path, exc) from exc
        raise AssertionError("unreachable")

    def stream(self, path: str, *, headers: Mapping[str, str], timeout: Timeout) -> Stream:
        connect_s, read_s = _limits(timeout, self.total_timeout)
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._connect(connect_s)
            raw = self._send(conn, "GET", path, None, headers, read_s)
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            raise transport_error(self.host, "GET", self.host + path, exc) from exc

        def chunks(size: int) -> Iterator[bytes]:
            try:
                while True:
                    chunk = raw.read1(size)
                    if not chunk:
                        return
                    yield chunk
            except (OSError, http.client.HTTPException) as exc:
                raise transport_error(self.host, "GET", self.host + path, exc) from exc

        def read_all() -> bytes:
            try:
                return raw.read()
            except (OSError, http.client.HTTPException):
                return b""

        return Stream(raw.status, chunks, read_all, conn.close)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Urllib3Transport:
    """The official client's urllib3 pool (kept for the configurations it reads itself)."""

    def __init__(self, pool: Any, host: str, total_timeout: float | None) -> None:
        self.pool = pool
        self.host = host
        self.total_timeout = total_timeout

    def _timeout(self, timeout: Timeout) -> Any:
        import urllib3

        if self.total_timeout:
            return urllib3.Timeout(total=self.total_timeout)
        connect_s, read_s = _limits(timeout, None)
        return urllib3.Timeout(connect=connect_s, read=read_s)

    def _error(self, method: str, url: str, exc: Exception) -> CedanaError:
        import urllib3

        reason: Any = exc
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            reason = exc.reason
        if isinstance(reason, urllib3.exceptions.NewConnectionError):  # before: a subclass
            return CedanaError(f"cannot connect to the Kubernetes API server at {self.host}",
                               hint=str(getattr(reason, "reason", None) or reason))
        if isinstance(reason, (urllib3.exceptions.ReadTimeoutError,
                               urllib3.exceptions.ConnectTimeoutError,
                               urllib3.exceptions.TimeoutError)):
            return OperationTimeout(f"{method} {url} timed out",
                                    hint="raise --request-timeout if the cluster is slow")
        if isinstance(reason, urllib3.exceptions.SSLError):
            return ConfigError(f"TLS error talking to {self.host}: {reason}")
        return CedanaError(f"{method} {url} failed: {reason}")

    def request(self, method: str, path: str, *, body: bytes | None,
                headers: Mapping[str, str], timeout: Timeout) -> HttpResponse:
        import urllib3

        url = self.host + path
        try:
            raw = self.pool.request(method, url, body=body, headers=dict(headers),
                                    timeout=self._timeout(timeout), preload_content=True,
                                    retries=urllib3.Retry(total=1, connect=1, read=0,
                                                          status=0, redirect=0))
        except urllib3.exceptions.HTTPError as exc:
            raise self._error(method, url, exc) from exc
        return HttpResponse(raw.status, raw.data or b"",
                            {k.lower(): v for k, v in raw.headers.items()})

    def stream(self, path: str, *, headers: Mapping[str, str], timeout: Timeout) -> Stream:
        import urllib3

        url = self.host + path
        try:
            raw = self.pool.request("GET", url, headers=dict(headers),
                                    timeout=self._timeout(timeout), preload_content=False,
                                    retries=urllib3.Retry(total=1, connect=1, read=0,
                                                          status=0, redirect=0))
        except urllib3.exceptions.HTTPError as exc:
            raise self._error("GET", url, exc) from exc

        def chunks(size: int) -> Iterator[bytes]:
            try:
                yield from raw.stream(size)
            except urllib3.exceptions.HTTPError as exc:
                raise self._error("GET", url, exc) from exc

        def close() -> None:
            raw.close()
            raw.release_conn()

        return Stream(raw.status, chunks, lambda: raw.read() or b"", close)
