"""The shared cache as a library, against a real S3-compatible server on loopback (moto's): a
URL is checked before any request; an object is a result of its key or a miss with a warning,
never served; a read-only cache writes nothing; the store missing, slow or refusing is one
warning, and then off for the run."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline.errors import UsageError
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._shared import SharedCache, SharedStats
from kontext_pipeline.store._shared_location import SharedLocation
from kontext_pipeline.store._shared_objects import MAGIC, DamagedResultError, frame, unframe
from tests.s3_helpers import S3Bucket

FORM = "write s3://BUCKET/PREFIX (or gs://, az://)"
GOING_ON = "the run goes on with the local cache only"
KEY = "ab" * 32
OTHER_KEY = "cd" * 32


def image(fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(out, fmt)
    return out.getvalue()


def entry_of(data: bytes, key: str = KEY, fmt: str = "png") -> CacheEntry:
    return CacheEntry(key=key, object=hashlib.sha256(data).hexdigest(), size=len(data),
                      format=fmt, width=16, height=12, provider="preview",
                      model="flux-kontext-pro", seed=7, request_id="req-1", credits=4,
                      duration_s=0.5, created_at=1_700_000_000.0,
                      request={"prompt": "Paint the car red"})


@dataclass
class Warnings:
    """What a shared cache warned of, in order."""

    said: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        self.said.append(message)


@pytest.fixture
def aws(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """The bucket, with the environment the storage library reads pointing at it."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "KONTEXT_SHARED_CACHE"))]:
        monkeypatch.delenv(name)
    for name, value in s3_bucket.environ.items():
        monkeypatch.setenv(name, value)
    return s3_bucket


def shared(url: str, *, readonly: bool = False) -> tuple[SharedCache, Warnings]:
    warnings = Warnings()
    return SharedCache.open(url, os.environ, readonly=readonly, on_warning=warnings), warnings


def object_name(key: str = KEY) -> str:
    return f"team/v1/{key[:2]}/{key}"


# --- the URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("https://bucket/team", "--shared-cache 'https://bucket/team': the shared cache is on "
                            f"object storage; {FORM}"),
    ("team", f"--shared-cache 'team': the shared cache is on object storage; {FORM}"),
    ("s3://AKIAEXAMPLE:s3cr3t@bucket/team", "--shared-cache 's3://…@bucket/team' holds "
     "credentials, which logs would show; give them in the storage's environment variables "
     "(AWS_ACCESS_KEY_ID, …) instead"),
    ("s3://bucket/team?versionId=3", "--shared-cache 's3://bucket/team?…' has a query or "
                                     f"fragment (a signed URL?); {FORM}, with the credentials "
                                     "in the environment"),
    ("s3://bucket/team#top", "--shared-cache 's3://bucket/team?…' has a query or fragment (a "
                             f"signed URL?); {FORM}, with the credentials in the environment"),
    ("https://AKIAX:s3cr3t@minio.local/bucket", "--shared-cache 'https://…@minio.local/bucket' "
     "holds credentials, which logs would show; give them in the storage's environment "
     "variables (AWS_ACCESS_KEY_ID, …) instead"),
    ("az://acct/c?sv=1&sig=s3cr3t", "--shared-cache 'az://acct/c?…' has a query or fragment (a "
                                    f"signed URL?); {FORM}, with the credentials in the "
                                    "environment"),
    ("s3:///team", f"--shared-cache 's3:///team' names no bucket; {FORM}"),
    ("s3://buc ket/team", f"--shared-cache 's3://buc ket/team' names no bucket; {FORM}"),
    ("s3://bucket/team/../other", "--shared-cache 's3://bucket/team/../other': a prefix of '.' "
                                  f"or '..' segments names no folder; {FORM}"),
    ("gs://bucket/./team", "--shared-cache 'gs://bucket/./team': a prefix of '.' or '..' "
                           f"segments names no folder; {FORM}"),
])
def test_a_url_that_names_no_shared_cache_is_refused(text: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        SharedLocation.parse(text)
    assert str(raised.value) == message
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(("text", "parts", "url"), [
    ("s3://bucket/team/", ("s3", "bucket", "team"), "s3://bucket/team"),
    ("s3://bucket", ("s3", "bucket", ""), "s3://bucket"),
    ("gs://bucket/ci/main", ("gs", "bucket", "ci/main"), "gs://bucket/ci/main"),
    ("az://container/cache", ("az", "container", "cache"), "az://container/cache"),
])
def test_a_url_is_read_into_its_parts(text: str, parts: tuple[str, str, str],
                                      url: str) -> None:
    location = SharedLocation.parse(text)
    assert (location.scheme, location.bucket, location.prefix) == parts
    assert location.url == url


@pytest.mark.parametrize("value", ["soon", "0", "-5", "3601", "nan"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(value: str) -> None:
    with pytest.raises(UsageError) as raised:
        SharedCache.open("s3://bucket/team", {"KONTEXT_SHARED_CACHE_TIMEOUT": value})
    assert str(raised.value) == (f"KONTEXT_SHARED_CACHE_TIMEOUT='{value}' is not a number of "
                                 "seconds over 0 and at most 3600")


def test_the_timeout_comes_from_the_environment() -> None:
    assert SharedCache.open("s3://bucket/team", {}).timeout == 60
    assert SharedCache.open("s3://bucket/team", {"KONTEXT_SHARED_CACHE_TIMEOUT": "2.5"}
                            ).timeout == 2.5


# --- objects: a result of its key, or a miss -----------------------------------------------


def test_an_object_holds_its_entry_and_image() -> None:
    data = image()
    entry = entry_of(data)
    framed = frame(entry, data)
    assert framed.startswith(MAGIC)
    assert framed.endswith(b"\n" + data)
    assert unframe(KEY, framed, None) == (entry, data)
    assert unframe(KEY, framed, "png") == (entry, data)


@dataclass(frozen=True)
class Damage:
    """An object that is not a result of :data:`KEY`: ``why`` not (for the ``output_format``
    asked for); ``in_header``: what is wrong is in the header, which a plan reads, too."""

    what: str
    data: bytes
    why: str
    in_header: bool
    output_format: str | None = None


def _damaged_objects() -> list[Damage]:
    png, jpeg = image(), image("JPEG")
    framed = frame(entry_of(png), png)
    flipped = bytearray(framed)
    flipped[-20] ^= 0x01
    header_end = framed.index(b"\n", len(MAGIC))
    return [
        Damage("another magic", b"kontext-pipeline shared cache v9\n" + framed[len(MAGIC):],
               "is not a kontext-pipeline result", in_header=True),
        Damage("no entry", MAGIC + b"x" * 100, "has no whole entry", in_header=True),
        Damage("a cut header", framed[:header_end], "has no whole entry", in_header=True),
        Damage("an invalid entry", MAGIC + b'{"layout": 1}\n' + png, "holds no valid entry",
               in_header=True),
        Damage("another key's", frame(entry_of(png, key=OTHER_KEY), png),
               "is the result of another key", in_header=True),
        Damage("a truncated image", framed[:-10],
               f"holds {len(png) - 10} bytes of image, not {len(png)}", in_header=False),
        Damage("a flipped byte", bytes(flipped), "holds an image whose sha256 is not its entry's",
               in_header=False),
        Damage("a JPEG called a PNG", frame(entry_of(jpeg), jpeg),
               "holds a JPEG image, not a PNG", in_header=False),
        Damage("a PNG where a JPEG is asked for", framed, "holds a PNG image, not a JPEG",
               in_header=True, output_format="jpeg"),
    ]


DAMAGED = {damage.what: damage for damage in _damaged_objects()}


@pytest.mark.parametrize("what", DAMAGED)
def test_a_damaged_object_is_not_a_result(what: str) -> None:
    damage = DAMAGED[what]
    with pytest.raises(DamagedResultError) as raised:
        unframe(KEY, damage.data, damage.output_format)
    assert str(raised.value) == damage.why


@pytest.mark.parametrize("what", DAMAGED)
def test_a_damaged_object_in_the_store_is_a_miss_with_one_warning(
        aws: S3Bucket, tmp_path: Path, what: str) -> None:
    damage = DAMAGED[what]
    aws.server.put(aws.name, object_name(), damage.data)
    cache, warnings = shared(aws.url)
    local = Cache(tmp_path / "cache")
    assert cache.fetch_into(local, KEY, damage.output_format) is None
    assert cache.fetch(KEY, damage.output_format) is None  # asked again in the run: no warning
    assert warnings.said == [f"shared cache object v1/ab/{KEY[:14]}… {damage.why}; it is not "
                             "used"]
    assert (cache.damaged, cache.fetched, cache.on) == (1, 0, True)
    assert local.lookup(KEY).entry is None
    assert local.stats().entries == 0
    # a plan reads the header alone: it is told of a damaged header; a damaged image is
    # found (and refused) by the run that reads it
    plan, told = shared(aws.url)
    peeked = plan.peek(KEY, damage.output_format)
    if damage.in_header:
        assert peeked is None
        assert len(told.said) == 1
        assert told.said[0].startswith(f"shared cache object v1/ab/{KEY[:14]}… ")
    else:
        assert peeked is not None
        assert peeked.key == KEY
        assert told.said == []


def test_an_empty_object_is_a_miss_and_the_store_stays_on(aws: S3Bucket) -> None:
    """Reading the first bytes of an empty object is refused (HTTP 416): one bad object, not
    a store that fails."""
    aws.server.put(aws.name, object_name(), b"")
    warning = f"shared cache object v1/ab/{KEY[:14]}… is empty; it is not used"
    for peek in (True, False):
        cache, warnings = shared(aws.url)
        assert (cache.peek(KEY) if peek else cache.fetch(KEY)) is None
        assert warnings.said == [warning]
        assert (cache.on, cache.damaged) == (True, 1)


def test_a_plan_peeks_at_the_entry_without_the_image(aws: S3Bucket) -> None:
    data = image()
    entry = entry_of(data)
    aws.server.put(aws.name, object_name(), frame(entry, data))
    cache, warnings = shared(aws.url)
    assert cache.peek(KEY) == entry
    assert cache.peek(KEY, "png") == entry
    assert cache.peek(OTHER_KEY) is None  # a miss
    assert cache.peek(KEY, "jpeg") is None
    assert warnings.said == [f"shared cache object v1/ab/{KEY[:14]}… is a PNG image, not a "
                             "JPEG; it is not used"]
    assert cache.fetched == 0


# --- writing and reading ------------------------------------------------------------------


def test_an_upload_is_read_by_another_machine(aws: S3Bucket, tmp_path: Path) -> None:
    png, jpeg = image(), image("JPEG", (10, 200, 10))
    first, warnings = shared(aws.url)
    first.upload(entry_of(png), png)
    first.upload(entry_of(jpeg, key=OTHER_KEY, fmt="jpeg"), jpeg)
    first.close()
    assert first.uploaded == 2
    stored = aws.server.objects(aws.name)
    assert stored == {object_name(): frame(entry_of(png), png),
                      object_name(OTHER_KEY): frame(entry_of(jpeg, OTHER_KEY, "jpeg"), jpeg)}
    assert first.stats() == SharedStats(2, sum(len(data) for data in stored.values()))
    second, told = shared(aws.url)
    local = Cache(tmp_path / "cache")
    taken = second.fetch_into(local, KEY, "png")
    assert taken is not None
    assert (taken.object, taken.size) == (entry_of(png).object, len(png))
    looked = local.lookup(KEY, "png").entry
    assert looked is not None
    assert local.read(looked) == png
    assert second.fetch(OTHER_KEY) == (entry_of(jpeg, OTHER_KEY, "jpeg"), jpeg)
    assert second.fetch("ef" * 32) is None  # a miss is no warning
    assert (second.fetched, second.damaged) == (2, 0)
    assert warnings.said == told.said == []


def test_a_read_only_cache_reads_and_never_writes(aws: S3Bucket) -> None:
    png = image()
    aws.server.put(aws.name, object_name(), frame(entry_of(png), png))
    before = aws.server.objects(aws.name)
    cache, warnings = shared(aws.url, readonly=True)
    assert cache.fetch(KEY) == (entry_of(png), png)
    other = image(color=(1, 2, 3))
    cache.upload(entry_of(other, key=OTHER_KEY), other)
    cache.upload(replace(entry_of(other), request_id="req-2"), other)  # over an existing one
    cache.close()
    assert cache.uploaded == 0
    assert aws.server.objects(aws.name) == before
    assert warnings.said == []


def test_a_missing_bucket_is_one_warning_and_the_cache_is_off(aws: S3Bucket) -> None:
    url = aws.url.replace(aws.name, f"{aws.name}-missing")
    cache, warnings = shared(url)
    png = image()
    assert cache.fetch(KEY) is None
    assert cache.peek(OTHER_KEY) is None
    cache.upload(entry_of(png), png)
    cache.close()
    assert cache.stats() is None
    assert warnings.said == [f"shared cache {url}: the bucket does not exist (HTTP 404); "
                             f"{GOING_ON}"]
    assert (cache.on, cache.uploaded, cache.problem) == (
        False, 0, "the bucket does not exist (HTTP 404)")


# --- a store that does not answer, or refuses ----------------------------------------------


class SilentStore:
    """A TCP server on loopback that accepts connections and never answers a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.listener.close()
        self.thread.join()
        for connection in self.connections:
            connection.close()


class RefusingStore(ThreadingHTTPServer):
    """An HTTP server on loopback that answers every request with ``status`` and an S3 error
    document; ``requests`` lists what it was asked, in order."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code = status, code
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Refusing)
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


class _Refusing(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        server = self.server
        assert isinstance(server, RefusingStore)
        server.requests.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{server.code}</Code>'
                "<Message>refused</Message></Error>").encode()
        self.send_response(server.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads what was asked from ``requests``."""


@pytest.fixture
def store_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage library's environment, with no endpoint yet (each test sets its own)."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "KONTEXT_SHARED_CACHE"))]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("store_at")
def test_a_store_that_never_answers_is_one_warning_within_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    silent = SilentStore()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", silent.url)
        monkeypatch.setenv("KONTEXT_SHARED_CACHE_TIMEOUT", "1")
        cache, warnings = shared("s3://bucket/team")
        png = image()
        assert cache.fetch(KEY) is None
        assert cache.fetch(OTHER_KEY) is None
        assert cache.peek(KEY) is None
        cache.upload(entry_of(png), png)
        cache.close()
        assert warnings.said == [f"shared cache s3://bucket/team: no answer within 1 s; "
                                 f"{GOING_ON}"]
        assert not cache.on
        # the first request and at most its retries; nothing after the store was given up
        assert 1 <= len(silent.connections) <= 3
    finally:
        silent.close()


@pytest.mark.usefixtures("store_at")
@pytest.mark.parametrize(("status", "code", "problem", "requests"), [
    (403, "AccessDenied", "access denied (HTTP 403): check the storage credentials "
                          "(AWS_ACCESS_KEY_ID, …) and the bucket's policy", 1),
    (401, "Unauthorized", "the storage credentials were refused (HTTP 401)", 1),
    (503, "SlowDown", "the store answered HTTP 503", 3),  # tried twice more
])
def test_a_store_that_refuses_is_one_warning(monkeypatch: pytest.MonkeyPatch, status: int,
                                             code: str, problem: str, requests: int) -> None:
    server = RefusingStore(status, code)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        cache, warnings = shared("s3://bucket/team")
        png = image()
        assert cache.fetch(KEY) is None
        assert cache.peek(OTHER_KEY) is None
        cache.upload(entry_of(png), png)
        cache.close()
        assert warnings.said == [f"shared cache s3://bucket/team: {problem}; {GOING_ON}"]
        assert len(server.requests) == requests
        assert all(line.startswith("GET /bucket?list-type=2") for line in server.requests)
    finally:
        server.close()
