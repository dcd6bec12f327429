"""A Hugging Face Hub stand-in on loopback: answers the file-resolve requests huggingface_hub sends
(``HEAD``/``GET {HF_ENDPOINT}/{repo}/resolve/{revision}/{filename}``) from files held in memory, and
counts them. ``mode`` "serve" answers with the file, "404" answers Not Found to everything."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "4f2c0d8e9b1a7c6d5e3f20119a8b7c6d5e4f3a2b"  # the revision every file is served at


class FakeHub:
    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.mode = "serve"
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
                filename = rest.partition("/")[2].split("?")[0]
                data = hub.files.get((repo, filename)) if sep and hub.mode == "serve" else None
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802 -- http.server's naming
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> int:
        return sum(1 for method, _ in self.requests if method == "GET")


def hub_env(hub_url: str, hf_home, offline: bool = False) -> dict[str, str]:
    """Environment for a cvstudy subprocess that talks to the stand-in with an empty cache in hf_home."""
    return {
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "10",
    }
