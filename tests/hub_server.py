"""A Hugging Face Hub stand-in on 127.0.0.1 that speaks the resolve protocol.

``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` answer as the real Hub does for
LFS files (what huggingface_hub 2.x reads): ``X-Repo-Commit``, an ``ETag`` that is the
file's sha256, ``X-Linked-Etag``/``X-Linked-Size``, ``Content-Length``; misses are 404s
with the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound). Every
request is recorded, and a file can be served truncated or tampered with while the
headers still describe the original, as a broken proxy or a compromised mirror would.
``portal = True`` answers everything with a login page, as a hospital's captive portal
or proxy does when the Hub is out of reach.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)")


class LoopbackHub:
    """Repos of files at commits, served over HTTP on loopback; use as a context manager."""

    def __init__(self) -> None:
        self.commits: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, commit) -> files
        self.refs: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit
        self.faults: dict[str, str] = {}  # filename -> "truncate" | "tamper"
        self.portal = False
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def reset(self) -> None:
        self.commits.clear()
        self.refs.clear()
        self.faults.clear()
        self.portal = False
        self.requests.clear()

    def publish(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` to ``repo_id`` on ``branch``; returns the 40-hex commit hash."""
        digest = hashlib.sha1(repo_id.encode())
        for name, data in sorted(files.items()):
            digest.update(name.encode() + hashlib.sha256(data).digest())
        commit = digest.hexdigest()
        self.commits[repo_id, commit] = dict(files)
        self.refs[repo_id, branch] = commit
        return commit

    def file_requests(self, filename: str) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if path.endswith(filename)]

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request (the body is sent for GET only)."""
        self.requests.append((method, path))
        if self.portal:
            page = b"<html>Sign in to the hospital network</html>"
            return 200, {"Content-Type": "text/html", "Content-Length": str(len(page))}, page
        match = _RESOLVE.fullmatch(urlsplit(path).path)
        if match is None:
            return _error("RepoNotFound", "Repository not found.")
        repo, revision = match["repo"], unquote(match["revision"])
        filename = unquote(match["filename"])
        if not any(known == repo for known, _ in self.commits):
            return _error("RepoNotFound", "Repository not found.")
        commit = self.refs.get((repo, revision), revision)
        if (repo, commit) not in self.commits:
            return _error("RevisionNotFound", f"Invalid rev id: {revision}")
        data = self.commits[repo, commit].get(filename)
        if data is None:
            status, headers, body = _error("EntryNotFound", f"{filename} does not exist.")
            return status, {**headers, "X-Repo-Commit": commit}, body
        served = data
        if self.faults.get(filename) == "truncate":
            served = data[: len(data) // 2]
        elif self.faults.get(filename) == "tamper":
            middle = len(data) // 2
            served = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {
            "X-Repo-Commit": commit,
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(len(data)),
            "Content-Length": str(len(served)),
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, served


def _error(code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = f'{{"error": "{message}"}}'.encode()
    headers = {
        "X-Error-Code": code,
        "X-Error-Message": message,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    return 404, headers, body


def _handler_for(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._reply(send_body=False)

        def do_GET(self) -> None:
            self._reply(send_body=True)

        def _reply(self, send_body: bool) -> None:
            status, headers, body = hub.answer(self.command, self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the request log is hub.requests

    return Handler
