"""The ASGI middleware in front of Gradio that lets only this machine's own pages drive the app.

Every request (page, config, queue join and its event stream, uploads, files, login) must name an allowed Host
(localhost, 127.0.0.1, [::1] or the configured `--host`, with the configured port): a page on a rebound name such as
`evil.example` that resolves to 127.0.0.1 sends its own name as Host and is refused. When the browser says where a
request comes from, that must be one of the app's own origins, exactly (scheme, host and port): an `Origin` header
must match, and without one, `Sec-Fetch-Site` must not be `cross-site` or `same-site` (a page on another localhost
port is "same-site": the login cookie, SameSite=Lax, would go along, so only this check stops it), except for a plain
navigation to a page. Request bodies are limited in total, not only per file: a larger `Content-Length`, or a
streamed body that grows past the limit, gets 413. A call of an event that names a file must name one this server
received as an upload (inside Gradio's upload folder), and a file input must get a file, not a path string: anything
else gets 400 and a one-line reason (Gradio itself would answer `{'error': None}` and log a traceback).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Listening on every interface: the page may be reached by any of the machine's addresses, so any IP literal is a
# fine Host (an IP literal cannot be rebound to another machine), but names still have to be allowed.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# The routes that run an event with the data in their JSON body.
EVENT_ROUTE = re.compile(r"/gradio_api/(queue/join|run/|api/|call/)")


class BodyTooLarge(Exception):
    """The request body grew past the total limit while it was being read."""


def _bracketed(host: str) -> str:
    """A host as it appears in a Host header or URL: IPv6 literals in brackets, names lower-cased."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def split_authority(authority: str) -> tuple[str, int | None] | None:
    """`host[:port]` from a Host header into (host as written, port or None); None when it is malformed."""
    authority = authority.strip().lower()
    if not authority or any(c in authority for c in "/\\@ \t"):
        return None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[:end + 1], authority[end + 1:]
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if rest == "":
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit():
        return None
    return host, int(rest[1:])


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass
class Policy:
    """Which Hosts and Origins may reach the app, and how large a request body may be in total."""

    port: int
    configured_host: str = "127.0.0.1"
    max_body_bytes: int = 16 * 1024 * 1024
    # Public URLs the app is also served at (a `--share` link), added once Gradio has opened them.
    public_urls: list[str] = field(default_factory=list)
    # Where uploads land (Gradio's upload folder); None: request bodies are not looked into.
    upload_root: Path | None = None
    # Positions of file inputs per event, by fn_index (as text) and by api_name.
    file_inputs: dict[str, set[int]] = field(default_factory=dict)

    @property
    def any_ip_literal(self) -> bool:
        return self.configured_host.strip().lower() in WILDCARD_HOSTS

    def host_names(self) -> set[str]:
        names = {_bracketed(name) for name in LOOPBACK_NAMES}
        if not self.any_ip_literal:
            names.add(_bracketed(self.configured_host))
        return names

    def add_public_url(self, url: str) -> None:
        self.public_urls.append(url.rstrip("/"))

    def _public_authorities(self) -> dict[str, str]:
        """Host header value -> origin, for each public URL."""
        found = {}
        for url in self.public_urls:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.netloc:
                found[parts.netloc.lower()] = f"{parts.scheme}://{parts.netloc.lower()}"
        return found

    def allows_host(self, host_header: str) -> bool:
        return host_header.strip().lower() in self._public_authorities() or self._is_local_address(host_header)

    def _is_local_address(self, host_header: str) -> bool:
        """An allowed host name or address with the configured port."""
        parsed = split_authority(host_header)
        if parsed is None:
            return False
        host, port = parsed
        port_ok = port == self.port or (port is None and self.port == 80)
        if not port_ok:
            return False
        return host in self.host_names() or (self.any_ip_literal and _is_ip_literal(host))

    def allows_origin(self, origin: str) -> bool:
        """Exactly one of the app's own origins: http://<allowed host>:<port>, or a public URL's origin."""
        origin = origin.strip().lower()
        if origin in self._public_authorities().values():
            return True
        parts = urlsplit(origin)
        if parts.scheme != "http" or parts.path or parts.query or parts.fragment or parts.username:
            return False
        return f"http://{parts.netloc}" == origin and self._is_local_address(parts.netloc)

    def _is_uploaded(self, path: str) -> bool:
        if "://" in path:
            # Gradio would fetch a URL into its cache from the server: no input of ours takes one.
            return False
        resolved = os.path.realpath(path)
        root = os.path.realpath(self.upload_root)
        return resolved.startswith(root + os.sep)

    def event_refusal(self, route: str, body: dict) -> str | None:
        """Why this event call's inputs may not be used (a server path where an upload belongs); None when fine."""
        data = body.get("data")
        if not isinstance(data, list):
            return None
        key = str(body.get("fn_index")) if route.endswith("queue/join") else route.rstrip("/").rsplit("/", 1)[-1]
        for position in sorted(self.file_inputs.get(key, set())):
            if position < len(data) and isinstance(data[position], str):
                return ("A file input takes a file uploaded through the page (POST /gradio_api/upload), "
                        "not a path on the server.")
        for path in _file_paths(data):
            if not self._is_uploaded(path):
                return (f"{Path(path).name or path} was not uploaded to this app: upload the file through the page "
                        "(or POST /gradio_api/upload); a path on the server is not accepted.")
        return None


def _file_paths(value):
    """The `path` of every file object (a dict with a string `path`) inside an event's data."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            yield value["path"]
        for item in value.values():
            yield from _file_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_paths(item)


def refusal(scope: dict, policy: Policy) -> str | None:
    """Why this request may not reach the app, in one line; None when it may."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    host = headers.get("host", "")
    if not policy.allows_host(host):
        return f"Host {host!r} is not this app's address; open it at http://127.0.0.1:{policy.port}/."
    origin = headers.get("origin")
    if origin is not None:
        if not policy.allows_origin(origin):
            return f"Requests from the page at {origin!r} are not accepted: only this app's own pages may use it."
        return None
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        method = scope.get("method", "GET")
        navigation = headers.get("sec-fetch-mode", "").lower() == "navigate" and method in ("GET", "HEAD")
        if not navigation:
            return "Requests from another site's page are not accepted: only this app's own pages may use it."
    return None


class HostOriginGuard:
    """ASGI middleware: `refusal(...)` decides, a refused HTTP request gets 403 and a one-line text; a request body
    past `policy.max_body_bytes` gets 413."""

    def __init__(self, app, policy: Policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = refusal(scope, self.policy)
        if reason is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            else:
                await _plain(send, 403, reason)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif self.policy.upload_root is not None and scope.get("method") == "POST" \
                and EVENT_ROUTE.match(scope.get("path", "")):
            await self._checked_event(scope, receive, send)
        else:
            await self._limited(scope, receive, send)

    async def _checked_event(self, scope, receive, send):
        """Read the whole (limited) JSON body, refuse server paths, then hand the same body on to Gradio."""
        declared = _content_length(scope)
        if declared is not None and declared > self.policy.max_body_bytes:
            await _plain(send, 413, _too_large(self.policy.max_body_bytes))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.policy.max_body_bytes:
                await _plain(send, 413, _too_large(self.policy.max_body_bytes))
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        reason = self.policy.event_refusal(scope["path"], parsed) if isinstance(parsed, dict) else None
        if reason is not None:
            await _plain(send, 400, reason)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _limited(self, scope, receive, send):
        limit = self.policy.max_body_bytes
        too_large = _too_large(limit)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _plain(send, 413, too_large)
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _plain(send, 413, too_large)


def _too_large(limit: int) -> str:
    return f"The request is larger than the total upload limit of {limit // (1024 * 1024)} MB; nothing was saved."


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii"))]})
    await send({"type": "http.response.body", "body": body})
