"""The S3 test server itself: it starts, holds buckets and objects, reports failures with its
output, and refuses connections once killed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import from_url

from tests.conftest import StartS3
from tests.s3_helpers import S3Bucket, S3Server, fresh_bucket


def test_objects_are_written_overwritten_and_read_back(s3_bucket: S3Bucket) -> None:
    server, name = s3_bucket.server, s3_bucket.name
    assert server.objects(name) == {}
    server.put(name, "team/a b/ü.bin", b"\x00\x01")
    server.put(name, "team/plain", b"first")
    server.put(name, "team/plain", b"tampered")
    assert server.objects(name) == {"team/a b/ü.bin": b"\x00\x01", "team/plain": b"tampered"}


def test_objects_are_listed_page_by_page(s3_bucket: S3Bucket) -> None:
    expected = {f"k{i}": bytes([i]) * i for i in range(5)}
    for key, data in expected.items():
        s3_bucket.server.put(s3_bucket.name, key, data)
    assert s3_bucket.server.objects(s3_bucket.name, page_size=2) == expected


def test_each_bucket_is_fresh(s3_server: S3Server) -> None:
    first, second = fresh_bucket(s3_server), fresh_bucket(s3_server)
    assert first.name != second.name
    assert re.fullmatch(r"s3://kp-[0-9a-f]{32}/team", first.url)
    s3_server.put(first.name, "x", b"1")
    assert s3_server.objects(second.name) == {}


def test_the_environ_reaches_the_bucket_through_obstore(
        s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_bucket.environ.items():
        monkeypatch.setenv(name, value)
    store = from_url(s3_bucket.url)
    obstore.put(store, "entries/ab.json", b"{}")
    assert bytes(obstore.get(store, "entries/ab.json").bytes()) == b"{}"
    assert s3_bucket.server.objects(s3_bucket.name) == {"team/entries/ab.json": b"{}"}


def test_a_missing_bucket_is_a_clear_error(s3_server: S3Server) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)^GET http://127\.0\.0\.1:\d+/kp-missing\?list-type"
                       r"=2&max-keys=1000 answered 404: .*<Code>NoSuchBucket</Code>"):
        s3_server.objects("kp-missing")


def test_a_killed_server_refuses_connections(s3_server_factory: StartS3) -> None:
    server = s3_server_factory()
    bucket = fresh_bucket(server)
    server.put(bucket.name, "k", b"v")
    server.kill()
    assert server.returncode == -9
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, trust_env=False)
    server.stop()
    assert server.returncode == -9


def test_a_stopped_server_has_ended(s3_server_factory: StartS3) -> None:
    server = s3_server_factory()
    server.stop()
    assert server.returncode == 0  # moto exits cleanly on SIGTERM
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, trust_env=False)


def test_a_server_that_exits_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as raised:
        S3Server(tmp_path, args=["--no-such-option"])
    message = str(raised.value)
    assert message.startswith("moto's S3 server exited with code 2 before it answered; the end "
                              f"of its output ({tmp_path}/moto-")
    assert message.endswith("error: unrecognized arguments: --no-such-option")


def test_a_server_that_does_not_answer_in_time_is_ended(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"^moto's S3 server did not answer within 0 s; the "
                       r"end of its output \(.*moto-[0-9a-f]{8}\.log\):\n"):
        S3Server(tmp_path, start_timeout=0)
