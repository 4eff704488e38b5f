"""A small OCI registry on loopback that authenticates the way Docker Hub and docker
distribution's token servers do: `GET /v2/` challenges with Bearer, a token service grants each
user only the actions it is allowed on a repository, tokens expire, and every repository
request checks that its token grants the action (401 `insufficient_scope` otherwise).

Enough of the distribution API for the helper's client: blobs (HEAD, GET, monolithic and
streamed uploads), manifests, tags. Tests flip `patch_delay_s`, `fail_patch` and
`opaque_tokens`, and read what happened in `token_requests`, `refused`, `requests` and
`open_connections`. A registry that misbehaves: `realm` names a token service elsewhere,
`upload_location` sends uploads elsewhere, `blob_redirect` sends blob GETs to another server
(as registries backed by object storage do), `broken` answers a kind of request with a status
and body of the test's choosing.
`Elsewhere` is such another server: it records what reaches it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.unit.loopback import LoopbackServer

if TYPE_CHECKING:
    from typing import Self

SERVICE = "fake-registry"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@dataclass
class Grant:
    user: str
    actions: dict[str, set[str]]  # repository -> actions
    expires: float


@dataclass
class FakeRegistry:
    users: dict[str, tuple[str, set[str]]]  # user -> (password, actions it may have)
    token_lifetime_s: float = 60.0
    opaque_tokens: bool = False
    patch_delay_s: float = 0.0
    fail_patch: bool = False
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[tuple[str, str]] = field(default_factory=list)  # (user, scope)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, why)
    open_connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # misbehaviour, for the tests of what the client refuses
    realm: str | None = None  # the token service the challenge names (default: our /token)
    blob_redirect: str | None = None  # blob GETs answer 307 to this URL + /blobs/DIGEST
    upload_location: str | None = None  # where a started upload is told to go on
    broken: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # "GET manifests"
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def __post_init__(self) -> None:
        self.server = LoopbackServer(type("Handler", (_Handler,), {"registry": self}))
        self.host, self.url = self.server.host, self.server.url

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    # -- the token service ------------------------------------------------------------------
    def issue(self, user: str, scope: str) -> str:
        kind, _, rest = scope.partition(":")
        repository, _, actions = rest.rpartition(":")
        allowed = self.users[user][1]
        granted = {a for a in actions.split(",") if a in allowed} if kind == "repository" \
            else set()
        token = (uuid.uuid4().hex if self.opaque_tokens else
                 ".".join([_b64({"alg": "none"}), _b64({"sub": user, "access": [
                     {"type": "repository", "name": repository,
                      "actions": sorted(granted)}]}), "sig"]))
        with self.lock:
            self.token_requests.append((user, scope))
            self.grants[token] = Grant(user, {repository: granted},
                                       time.monotonic() + self.token_lifetime_s)
        return token

    def grant(self, authorization: str) -> Grant | None:
        scheme, _, token = authorization.partition(" ")
        found = self.grants.get(token) if scheme == "Bearer" else None
        return found if found is not None and time.monotonic() < found.expires else None


class _Handler(BaseHTTPRequestHandler):
    registry: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        with self.registry.lock:
            self.registry.open_connections += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.registry.lock:
                self.registry.open_connections -= 1

    # -- plumbing ---------------------------------------------------------------------------
    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._answer(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _refuse(self, scope: str, error: str) -> None:
        self.registry.refused.append((self.command, self.path, error))
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": error}]}).encode()
        realm = self.registry.realm or f"{self.registry.url}/token"
        value = (f'Bearer realm="{realm}",service="{SERVICE}"'
                 + (f',scope="{scope}"' if scope else "") + (f',error="{error}"' if error else ""))
        self._answer(401, body, {"WWW-Authenticate": value, "Content-Type": "application/json"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
                if self.registry.fail_patch and self.command == "PATCH":
                    return bytes(data)  # enough: the upload is refused after its first chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- routes -----------------------------------------------------------------------------
    def _serve(self) -> None:
        split = urlsplit(self.path)
        with self.registry.lock:
            self.registry.requests.append((self.command, split.path))
        if split.path == "/token":
            return self._token(parse_qs(split.query))
        if split.path == "/v2/":
            if self.registry.grant(self.headers.get("Authorization", "")) is None:
                return self._refuse("", "")
            return self._answer(200)
        match = re.fullmatch(r"/v2/(.+?)/(blobs/uploads/?|blobs|manifests|tags)/?(.*)",
                             split.path)
        if not match:
            return self._answer(404)
        repository, kind, rest = match.groups()
        action = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(self.command, "push")
        scope = f"repository:{repository}:{action}"
        grant = self.registry.grant(self.headers.get("Authorization", ""))
        if grant is None:
            return self._refuse(scope, "invalid_token")
        if action not in grant.actions.get(repository, set()):
            return self._refuse(scope, "insufficient_scope")
        broken = self.registry.broken.get(f"{self.command} {kind.rstrip('/')}")
        if broken is not None:
            self._body()
            return self._answer(broken[0], broken[1], {"Content-Type": "application/json"})
        if kind.startswith("blobs/uploads"):
            return self._upload(repository, rest, parse_qs(split.query))
        if kind == "blobs":
            blob = self.registry.blobs.get((repository, rest))
            if blob is None:
                return self._answer(404)
            if self.registry.blob_redirect and self.command == "GET":
                return self._answer(307, headers={
                    "Location": f"{self.registry.blob_redirect}/blobs/{rest}?sig=presigned"})
            return self._answer(200, blob, {"Content-Type": "application/octet-stream"})
        if kind == "manifests":
            return self._manifest(repository, rest)
        tags = sorted(ref for repo, ref in self.registry.manifests
                      if repo == repository and not ref.startswith("sha256:"))
        return self._json(200, {"name": repository, "tags": tags})

    def _token(self, query: dict[str, list[str]]) -> None:
        user, _, password = base64.b64decode(
            self.headers.get("Authorization", "Basic ").split(" ", 1)[1] or b"").decode(
            ).partition(":")
        known = self.registry.users.get(user)
        if known is None or known[0] != password:
            return self._json(401, {"details": "incorrect username or password"})
        token = self.registry.issue(user, query.get("scope", [""])[0])
        return self._json(200, {"token": token, "expires_in": self.registry.token_lifetime_s})

    def _upload(self, repository: str, session: str, query: dict[str, list[str]]) -> None:
        if self.command == "POST":
            self._body()
            ident = uuid.uuid4().hex
            self.registry.uploads[ident] = bytearray()
            return self._answer(202, headers={"Location": self.registry.upload_location or
                                              f"/v2/{repository}/blobs/uploads/{ident}"})
        data = self.registry.uploads.get(session)
        if data is None:
            return self._answer(404)
        data += self._body()
        if self.command == "PATCH":
            if self.registry.fail_patch:
                self.close_connection = True
                return self._json(500, {"errors": [{"code": "UNKNOWN",
                                                    "message": "storage is full"}]})
            time.sleep(self.registry.patch_delay_s)
            return self._answer(202, headers={"Location": f"/v2/{repository}/blobs/uploads/"
                                                          f"{session}"})
        digest = query.get("digest", [""])[0]
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return self._json(400, {"errors": [{"code": "DIGEST_INVALID"}]})
        self.registry.blobs[(repository, digest)] = bytes(data)
        del self.registry.uploads[session]
        return self._answer(201, headers={"Location": f"/v2/{repository}/blobs/{digest}"})

    def _manifest(self, repository: str, ref: str) -> None:
        if self.command == "PUT":
            body = self._body()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            media_type = self.headers.get("Content-Type", "")
            for key in (ref, digest):
                self.registry.manifests[(repository, key)] = (body, media_type)
            return self._answer(201, headers={"Docker-Content-Digest": digest})
        found = self.registry.manifests.get((repository, ref))
        if found is None:
            return self._answer(404)
        if self.command == "DELETE":
            for same in [k for k, v in self.registry.manifests.items() if v == found]:
                del self.registry.manifests[same]
            return self._answer(202)
        return self._answer(200, found[0], {"Content-Type": found[1]})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class Elsewhere:
    """A server on another port (so another origin) that records every request reaching it
    and answers from `served` (path -> body), or a token for any path when `tokens`."""

    def __init__(self, tokens: bool = False) -> None:
        self.served: dict[str, bytes] = {}
        self.tokens = tokens
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.server = LoopbackServer(type("Handler", (_ElsewhereHandler,), {"owner": self}))
        self.host, self.url = self.server.host, self.server.url

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


class _ElsewhereHandler(BaseHTTPRequestHandler):
    owner: Elsewhere
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return None

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        self.owner.seen.append((self.command, path, dict(self.headers.items())))
        body = self.owner.served.get(path)
        if body is None and self.owner.tokens:
            body = json.dumps({"token": "from-elsewhere", "expires_in": 60}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body or b"")

    do_GET = do_HEAD = do_POST = _serve
