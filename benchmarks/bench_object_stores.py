"""Which object-storage library the shared cache builds on: obstore against fsspec + s3fs.

Both are installed into a throwaway virtual environment (pip, from its configured index), and
measured there against moto's S3-compatible server on loopback:
- import: ``import obstore`` / ``import s3fs`` in a fresh interpreter (median of 5);
- installed size: the library and every distribution it requires, as installed on disk;
- PUT then GET of 300 objects of 64 KiB, 16 at a time, through each library's async API
  (obstore's ``put_async``/``get_async``, s3fs's ``_pipe_file``/``_cat_file``; median of 3);
- first request: client construction and one GET in a fresh interpreter (median of 20);
- aborted exits: runs of the last two that printed their figures and then died of SIGABRT at
  interpreter exit (obstore completes its async futures from tokio threads, which can race the
  interpreter's finalization; see PyO3/pyo3-async-runtimes issue 40). Their figures count.

    python benchmarks/bench_object_stores.py
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from _harness import create_bucket, moto_server, table, workdir

LIBRARIES = ("obstore", "s3fs")
OBJECTS, SIZE, CONCURRENCY = 300, 64 * 1024, 16
IMPORT_REPEAT, TRANSFER_REPEAT, FIRST_REPEAT = 5, 3, 20

# Runs in the throwaway environment (where both libraries are importable); prints one JSON value.
CHILD = r'''
import asyncio, importlib.metadata as md, json, random, sys, time

def data(i):
    return random.Random(i).randbytes(SIZE)

def imported(lib):
    started = time.perf_counter()
    if lib == "obstore":
        import obstore, obstore.store
    else:
        import s3fs
    return time.perf_counter() - started

def installed(lib):
    # pip's own copy of `packaging` evaluates the requirement markers (no extras asked for)
    from pip._vendor.packaging.requirements import Requirement
    seen, todo = {}, [lib]
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen[name] = sum(f.locate().stat().st_size for f in dist.files or ()
                         if f.locate().is_file())
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return {"dists": sorted(seen), "bytes": sum(seen.values())}

async def obstore_client(bucket):
    import obstore, obstore.store
    store = obstore.store.from_url(f"s3://{bucket}")
    async def put(key, body):
        await obstore.put_async(store, key, body)
    async def get(key):
        return bytes(await (await obstore.get_async(store, key)).bytes_async())
    async def close():
        pass
    return put, get, close

async def s3fs_client(bucket):
    import s3fs
    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True)
    session = await fs.set_session()
    async def put(key, body):
        await fs._pipe_file(f"{bucket}/{key}", body)
    async def get(key):
        return await fs._cat_file(f"{bucket}/{key}")
    return put, get, session.close

CLIENTS = {"obstore": obstore_client, "s3fs": s3fs_client}

async def transfer(lib, bucket):
    put, get, close = await CLIENTS[lib](bucket)
    gate = asyncio.Semaphore(CONCURRENCY)
    async def one(action, i):
        async with gate:
            return await action(i)
    bodies = [data(i) for i in range(OBJECTS)]
    started = time.perf_counter()
    await asyncio.gather(*(one(lambda i: put(f"o/{i:04d}", bodies[i]), i)
                           for i in range(OBJECTS)))
    middle = time.perf_counter()
    got = await asyncio.gather(*(one(lambda i: get(f"o/{i:04d}"), i) for i in range(OBJECTS)))
    ended = time.perf_counter()
    await close()
    assert got == bodies, f"{lib} read back other bytes than it wrote"
    return {"put": middle - started, "get": ended - middle}

async def first(lib, bucket):
    imported(lib)  # the library is loaded before the clock starts
    started = time.perf_counter()
    put, get, close = await CLIENTS[lib](bucket)
    body = await get("o/0000")
    elapsed = time.perf_counter() - started
    await close()
    assert body == data(0), f"{lib} read back other bytes than were written"
    return elapsed

mode, lib, *rest = sys.argv[1:]
SIZE, OBJECTS, CONCURRENCY = (int(v) for v in rest[1:4]) if rest else (0, 0, 0)
if mode == "import":
    result = imported(lib)
elif mode == "size":
    result = installed(lib)
elif mode == "transfer":
    result = asyncio.run(transfer(lib, rest[0]))
else:
    result = asyncio.run(first(lib, rest[0]))
print(json.dumps(result), flush=True)
'''


class Child:
    """Runs the child script in the throwaway environment; counts the runs that printed their
    figures and then aborted at exit."""

    def __init__(self, python: Path, script: Path, env: dict[str, str]) -> None:
        self.python, self.script, self.env = python, script, env
        self.runs = self.aborted = 0

    def __call__(self, *args: str) -> Any:
        result = subprocess.run([str(self.python), str(self.script), *args],
                                capture_output=True, text=True, env=self.env, check=False)
        self.runs += 1
        if result.returncode == -signal.SIGABRT and result.stdout.strip():
            self.aborted += 1
        elif result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return json.loads(result.stdout)


def environment(work: Path, endpoint: str) -> dict[str, str]:
    """The caller's environment without its AWS settings, plus dummy credentials for moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    absent = str(work / "no-such-file")
    return {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_CONFIG_FILE": absent, "AWS_SHARED_CREDENTIALS_FILE": absent,
            "AWS_EC2_METADATA_DISABLED": "true"}


def install(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *LIBRARIES],
                         capture_output=True, text=True, check=False)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(LIBRARIES)} failed:\n{pip.stderr}")
    return python


def measure(python: Path, script: Path, env: dict[str, str], url: str,
            lib: str) -> dict[str, Any]:
    sizes = [str(SIZE), str(OBJECTS), str(CONCURRENCY)]
    imports = [Child(python, script, env)("import", lib) for _ in range(IMPORT_REPEAT)]
    installed = Child(python, script, env)("size", lib)
    io = Child(python, script, env)
    transfers = []
    for _ in range(TRANSFER_REPEAT):
        bucket = f"kp-bench-{uuid.uuid4().hex[:12]}"
        create_bucket(url, bucket)
        transfers.append(io("transfer", lib, bucket, *sizes))
    firsts = [io("first", lib, bucket, *sizes) for _ in range(FIRST_REPEAT)]
    return {"import": statistics.median(imports),
            "put": statistics.median(t["put"] for t in transfers),
            "get": statistics.median(t["get"] for t in transfers),
            "first": statistics.median(firsts),
            "mib": installed["bytes"] / 2**20, "dists": installed["dists"],
            "aborted": io.aborted, "runs": io.runs}


def versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *LIBRARIES, "fsspec"], capture_output=True,
                         text=True, check=True).stdout
    found: dict[str, str] = json.loads(out)
    return found


def main() -> None:
    with workdir() as work:
        python = install(work)
        script = work / "child.py"
        script.write_text(CHILD, encoding="utf-8")
        with moto_server(work) as url:
            env = environment(work, url)
            figures = {lib: measure(python, script, env, url, lib) for lib in LIBRARIES}
        known = versions(python)
    ob, fs = figures["obstore"], figures["s3fs"]
    rows: list[list[Any]] = [
        [f"import, s (median of {IMPORT_REPEAT})", ob["import"], fs["import"]],
        ["installed with dependencies, MiB", ob["mib"], fs["mib"]],
        ["distributions installed", len(ob["dists"]), len(fs["dists"])],
        [f"PUT {OBJECTS} x {SIZE // 1024} KiB, {CONCURRENCY} at once, s", ob["put"], fs["put"]],
        [f"GET {OBJECTS} x {SIZE // 1024} KiB, {CONCURRENCY} at once, s", ob["get"], fs["get"]],
        [f"first request (client + 1 GET), s (median of {FIRST_REPEAT})", ob["first"],
         fs["first"]],
        [f"runs with async I/O that aborted at exit, of {ob['runs']}", ob["aborted"],
         fs["aborted"]],
    ]
    table(f"object-storage libraries against moto on loopback: obstore {known['obstore']}, "
          f"s3fs {known['s3fs']} (fsspec {known['fsspec']}); transfers median of "
          f"{TRANSFER_REPEAT}",
          ["measure", "obstore", "s3fs", "obstore/s3fs"],
          [[*row, row[1] / row[2] if row[2] else "-"] for row in rows])
    print("  obstore installs: " + ", ".join(ob["dists"]))
    print("  s3fs installs:    " + ", ".join(fs["dists"]))


if __name__ == "__main__":
    main()
