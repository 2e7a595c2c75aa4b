"""A real S3-compatible server for the shared-cache tests: moto's server in its own process on
a loopback port, read and written with plain HTTP (moto accepts unsigned requests)."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote
from xml.etree import ElementTree

import httpx

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# werkzeug's start-up line: moto binds port 0, so the kernel picks a free port with no race
# between choosing it and binding it, and this line says which one it picked
_LISTENING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
_TAIL_LINES = 20
# moto serves an anonymous request only what public ACLs allow (no reading or overwriting an
# object) and never checks signatures: a well-formed header with the dummy key is enough
_AUTHORIZATION = ("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                  "SignedHeaders=host, Signature=0")


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


class S3Server:
    """``python -m moto.server`` on 127.0.0.1, started by the constructor, which returns once
    the server answers (or raises ``RuntimeError`` with the end of its output). Its output goes
    to ``log`` (a file in ``log_dir``), never to a pipe that could fill. The process is reaped
    by ``stop``/``kill``, or at the latest when this object is collected or the interpreter
    exits."""

    def __init__(self, log_dir: Path, *, start_timeout: float = 30.0,
                 args: Sequence[str] = ()) -> None:
        self.log = log_dir / f"moto-{uuid.uuid4().hex[:8]}.log"
        with self.log.open("wb") as sink:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0", *args],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        self._finalizer = weakref.finalize(self, _reap, self._process)
        try:
            self.url = self._wait_until_answering(start_timeout)
        except BaseException:
            self._finalizer()
            raise

    def _wait_until_answering(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        url: str | None = None
        while True:
            if url is None:
                found = _LISTENING.search(self.log.read_text(encoding="utf-8", errors="replace"))
                url = f"http://127.0.0.1:{found.group(1)}" if found else None
            if url is not None:
                try:
                    httpx.get(url, timeout=1, trust_env=False)
                    return url
                except httpx.TransportError:
                    pass
            code = self._process.poll()
            if code is not None:
                self._fail(f"exited with code {code} before it answered")
            if time.monotonic() >= deadline:
                self._fail(f"did not answer within {timeout:g} s")
            time.sleep(0.05)

    def _fail(self, what: str) -> NoReturn:
        self._finalizer()
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(lines[-_TAIL_LINES:]) or "(no output)"
        raise RuntimeError(f"moto's S3 server {what}; the end of its output ({self.log}):\n"
                           f"{tail}")

    @property
    def returncode(self) -> int | None:
        """The process's exit status once it has ended (``-9`` after ``kill``)."""
        return self._process.poll()

    def stop(self) -> None:
        """End the server gracefully (SIGTERM, then SIGKILL after 10 s); harmless if ended."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
        self._finalizer()

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would: connections are refused from
        the moment this returns."""
        self._finalizer()

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, trust_env=False,
                            headers={"Authorization": _AUTHORIZATION})

    def create_bucket(self, name: str) -> None:
        with self._client() as client:
            _check(client.put(f"/{name}"))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write (or overwrite) one object, behind the back of whatever uses the store."""
        with self._client() as client:
            _check(client.put(f"/{bucket}/{quote(key, safe='/')}", content=data))

    def objects(self, bucket: str, *, page_size: int = 1000) -> dict[str, bytes]:
        """Every object in ``bucket`` by key, listed page by page and read in full."""
        with self._client() as client:
            keys: list[str] = []
            token: str | None = None
            while True:
                params = {"list-type": "2", "max-keys": str(page_size)}
                if token is not None:
                    params["continuation-token"] = token
                response = _check(client.get(f"/{bucket}", params=params))
                # the document comes from the test's own server on loopback
                page = ElementTree.fromstring(response.content)  # noqa: S314
                keys += [key.text or "" for key in page.iter(f"{S3_NS}Key")]
                token = page.findtext(f"{S3_NS}NextContinuationToken")
                if page.findtext(f"{S3_NS}IsTruncated") != "true" or token is None:
                    break
            return {key: _check(client.get(f"/{bucket}/{quote(key, safe='/')}")).content
                    for key in keys}


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url} answered "
                           f"{response.status_code}: {response.text}")
    return response


@dataclass(frozen=True)
class S3Bucket:
    """A fresh, empty bucket on ``server``: ``url`` is the shared-cache URL to give the
    runner (``s3://<name>/team``), ``environ`` the standard AWS variables that reach it."""

    server: S3Server
    name: str
    url: str
    environ: dict[str, str]


def s3_environ(server: S3Server) -> dict[str, str]:
    """Dummy credentials and the loopback endpoint, as the object-store library reads them
    from the environment (plain HTTP needs ``AWS_ALLOW_HTTP``)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.url,
            "AWS_ALLOW_HTTP": "true"}


def fresh_bucket(server: S3Server, prefix: str = "team") -> S3Bucket:
    """Create a bucket with a name no other test uses."""
    name = f"kp-{uuid.uuid4().hex}"
    server.create_bucket(name)
    return S3Bucket(server, name, f"s3://{name}/{prefix}", s3_environ(server))
