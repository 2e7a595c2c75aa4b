"""What flushing the cache to disk costs: a store with and without its fsyncs.

A store writes the image (the object), then the entry that refers to it. Since the object is
flushed to disk (its bytes, then its directory) before the entry is written, and the entry
before the store returns, each store waits for four fsyncs. Timed here on the cache's own file
system (a temporary directory in the default cache directory's parent, or ``--dir``: a tmpfs
would make every flush free) for 1.5 MB images (a
1-megapixel PNG), one store at a time and 24 at once through the default thread pool, as the
executor stores results:

* before: neither flushed (the layout's writes, atomic but not durable);
* object: only the object flushed (its bytes and its name);
* after: object and entry flushed (what ``Cache.store`` does).

The throughput limits of README §Performance are measured by ``bench_throughput.py``, which
stores every result through ``Cache.store``.

    python benchmarks/bench_durability.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import table

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.store._cache import Cache, CacheEntry, default_cache_dir

SIZE = 1_500_000
SEQUENTIAL, CONCURRENT = 40, 96

Store = Callable[[Cache, bytes, CacheEntry], None]


def before(cache: Cache, data: bytes, entry: CacheEntry) -> None:
    write_atomic(cache.object_path(entry.object), data)
    write_atomic(cache.entry_path(entry.key), _document(entry))


def object_only(cache: Cache, data: bytes, entry: CacheEntry) -> None:
    write_atomic(cache.object_path(entry.object), data, durable=True)
    write_atomic(cache.entry_path(entry.key), _document(entry))


def after(cache: Cache, data: bytes, entry: CacheEntry) -> None:
    cache.store(data, entry)


def _document(entry: CacheEntry) -> bytes:
    return json.dumps(entry.to_json(), indent=1, sort_keys=True).encode()


def results(count: int, salt: str) -> list[tuple[bytes, CacheEntry]]:
    made = []
    for n in range(count):
        data = hashlib.sha256(f"{salt} {n}".encode()).digest() * (SIZE // 32)
        digest = hashlib.sha256(data).hexdigest()
        made.append((data, CacheEntry(
            key=hashlib.sha256(f"key {salt} {n}".encode()).hexdigest(), object=digest,
            size=len(data), format="png", width=1024, height=1024, provider="bfl",
            model="flux-kontext-pro", seed=n + 1, request_id=f"r-{n}", credits=4,
            duration_s=1.0, created_at=time.time(), request={"prompt": "p"})))
    return made


def one_at_a_time(store: Store, cache: Cache, salt: str) -> float:
    """Median milliseconds per store."""
    times = []
    for data, entry in results(SEQUENTIAL, salt):
        started = time.perf_counter()
        store(cache, data, entry)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def all_at_once(store: Store, cache: Cache, salt: str) -> float:
    """Wall seconds for storing CONCURRENT results, 24 at a time, through the thread pool."""
    made = results(CONCURRENT, salt)

    async def go() -> float:
        gate = asyncio.Semaphore(24)

        async def one(data: bytes, entry: CacheEntry) -> None:
            async with gate:
                await asyncio.to_thread(store, cache, data, entry)

        started = time.perf_counter()
        await asyncio.gather(*(one(data, entry) for data, entry in made))
        return time.perf_counter() - started

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=default_cache_dir(os.environ).parent,
                        help="where to make the temporary cache (its file system is measured)")
    directory = parser.parse_args().dir
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    first: float | None = None
    with tempfile.TemporaryDirectory(prefix="kontext-durability-", dir=directory) as name:
        for label, store in (("before: no flush", before), ("object flushed", object_only),
                             ("after: object and entry flushed", after)):
            cache = Cache(Path(name) / label.split(":")[0].replace(" ", "-"))
            sequential = one_at_a_time(store, cache, label)
            wall = all_at_once(store, cache, label + " concurrent")
            first = sequential if first is None else first
            rows.append([label, sequential, wall, wall / CONCURRENT * 1000,
                         f"+{sequential - first:.1f} ms"])
    table(f"durability: storing {SIZE / 1e6:.1f} MB results in {directory} "
          f"({os.cpu_count()} cores)",
          ["mode", "ms per store, one at a time (median)",
           f"s for {CONCURRENT}, 24 at a time", "ms per store, 24 at a time",
           "cost per store"], rows)


if __name__ == "__main__":
    main()
