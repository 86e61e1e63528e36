"""A local stand-in for the Hugging Face Hub's HTTP API, serving repositories from folders.

It answers the requests huggingface_hub's own client sends (repository info, tree listing,
file HEAD/GET under ``resolve/``, auth-check), with the status codes and ``X-Error-Code``
headers the real Hub uses, so the code under test runs the real client, cache and error
classes. ``serve(monkeypatch)`` points huggingface_hub at it for one test.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class _Repo:
    revisions: dict[str, tuple[str, Path]] = field(default_factory=dict)  # name -> (sha, folder)
    gated: bool = False


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_type: str, repo_id: str, folder: Path, revision: str = "main") -> str:
        """Serve ``folder`` as ``repo_id`` at ``revision``; returns that revision's commit."""
        sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        repo = self.repos.setdefault((repo_type, repo_id), _Repo())
        repo.revisions[revision] = (sha, Path(folder))
        repo.revisions[sha] = (sha, Path(folder))
        return sha

    def gate(self, repo_type: str, repo_id: str) -> None:
        """Answer every request for ``repo_id`` as the Hub does for a gated repository the
        caller has no access to."""
        self.repos.setdefault((repo_type, repo_id), _Repo()).gated = True

    # -- server --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def serve(self, monkeypatch) -> FakeHub:
        """Point huggingface_hub (and so transformers) at this server for one test."""
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            self.url + "/{repo_id}/resolve/{revision}/{filename}",
        )
        import transformers.utils.hub

        # transformers keeps one HfApi, made with the endpoint of its first use.
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
        return self

    # -- routing -------------------------------------------------------------------------
    def _match(self, parts: list[str], api: bool) -> tuple[str, str, _Repo, list[str]] | None:
        """(repo_type, repo_id, repo, rest) for a path after ``/api`` or the host (where
        model URLs have no ``models/`` prefix)."""
        for (repo_type, repo_id), repo in self.repos.items():
            prefix = [f"{repo_type}s"] if api or repo_type != "model" else []
            n = len(prefix) + len(repo_id.split("/"))
            if parts[:n] == prefix + repo_id.split("/"):
                return repo_type, repo_id, repo, parts[n:]
        return None

    def _handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = urlsplit(request.path).path
        self.requests.append(f"{request.command} {path}")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        api = parts[:1] == ["api"]
        found = self._match(parts[1:] if api else parts, api)
        if found is None:
            return self._error(request, 404, "RepoNotFound", "Repository not found")
        repo_type, repo_id, repo, rest = found
        if repo.gated:
            return self._error(
                request,
                403,
                "GatedRepo",
                f"Access to {repo_type} {repo_id} is restricted and you are not in the "
                "authorized list.",
            )
        if api and rest == ["auth-check"]:
            return self._json(request, {}, body)
        if not rest or rest[0] not in ("revision", "tree", "resolve") or len(rest) < 2:
            return self._error(request, 404, "EntryNotFound", "not served by the fake hub")
        if rest[1] not in repo.revisions:
            return self._error(request, 404, "RevisionNotFound", "Invalid rev id")
        sha, folder = repo.revisions[rest[1]]
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if api and rest[0] == "revision":
            siblings = [
                {"rfilename": str(p.relative_to(folder)), "size": p.stat().st_size} for p in files
            ]
            return self._json(request, {"id": repo_id, "sha": sha, "siblings": siblings}, body)
        if api and rest[0] == "tree":
            under = "/".join(rest[2:])
            entries = [
                {
                    "type": "file",
                    "path": str(p.relative_to(folder)),
                    "size": p.stat().st_size,
                    "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                }
                for p in files
                if str(p.relative_to(folder)).startswith(under)
            ]
            return self._json(request, entries, body)
        if not api and rest[0] == "resolve":
            target = folder / "/".join(rest[2:])
            if not target.is_file():
                return self._error(request, 404, "EntryNotFound", "Entry not found")
            data = target.read_bytes()
            request.send_response(200)
            request.send_header("Content-Length", str(len(data)))
            request.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            request.send_header("X-Repo-Commit", sha)
            request.end_headers()
            if body:
                request.wfile.write(data)
            return None
        return self._error(request, 404, "EntryNotFound", "not served by the fake hub")

    @staticmethod
    def _json(request: BaseHTTPRequestHandler, payload, body: bool) -> None:
        data = json.dumps(payload).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    @staticmethod
    def _error(request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        request.send_response(status)
        request.send_header("X-Error-Code", code)
        request.send_header("X-Error-Message", message)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
