"""A local stand-in for the Hugging Face Hub's file endpoint, for the download tests.

`hf_hub_download` asks `HEAD {endpoint}/{repo}/resolve/{revision}/{filename}` for the file's
commit (`X-Repo-Commit`), digest (`X-Linked-Etag`: the SHA-256 of an LFS file) and size
(`X-Linked-Size`), then GETs the same URL. This server answers both from a dict of files and
counts the requests for files, so tests can tell a download from a cache hit (other calls, such
as huggingface_hub's own API probes, get 404 and are not counted). Unknown files get 404 with the
Hub's `X-Error-Code: EntryNotFound`.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import threading
import urllib.parse


@dataclasses.dataclass
class ServedFile:
  """What the server holds for one (repo, revision, filename): the bytes it sends and the digest
  it states (the true SHA-256 unless a test states another)."""

  content: bytes
  commit: str = "0123456789abcdef0123456789abcdef01234567"
  stated_sha256: str | None = None

  @property
  def sha256(self) -> str:
    return self.stated_sha256 or hashlib.sha256(self.content).hexdigest()


class FakeHub:
  """`with FakeHub() as hub:` serves `hub.files[(repo, revision, filename)]` at `hub.endpoint`."""

  def __init__(self):
    self.files: dict[tuple[str, str, str], ServedFile] = {}
    self.requests: collections.Counter = collections.Counter()
    hub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def _answer(self, body: bool) -> None:
        parts = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/").split("/")
        key = None
        if len(parts) >= 5 and parts[2] == "resolve":
          key = ("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
          hub.requests[self.command] += 1
        file = hub.files.get(key)
        if file is None:
          self.send_response(404)
          self.send_header("X-Error-Code", "EntryNotFound")
          self.send_header("Content-Length", "0")
          self.end_headers()
          return
        self.send_response(200)
        self.send_header("X-Repo-Commit", file.commit)
        self.send_header("X-Linked-Etag", f'"{file.sha256}"')
        self.send_header("X-Linked-Size", str(len(file.content)))
        self.send_header("ETag", f'"{file.sha256}"')
        self.send_header("Content-Length", str(len(file.content)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
          self.wfile.write(file.content)

      def do_HEAD(self):  # noqa: N802 (http.server's name)
        self._answer(body=False)

      def do_GET(self):  # noqa: N802
        self._answer(body=True)

      def log_message(self, *args):
        pass

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def __enter__(self) -> "FakeHub":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def stop(self) -> None:
    """Stops answering: the endpoint refuses connections, as an unreachable Hub."""
    if self._thread.is_alive():
      self._server.shutdown()
    self._server.server_close()
