"""BFL's official Python SDK (``blackforest`` 0.1.3) running a chained workload as its README
shows it: ``client.generate(model, inputs, ClientConfig(sync=True))`` with its default polling
(a poll a second), one thread per variant, each with a client of its own (a requests session
is not meant to be shared), each step's result downloaded and sent base64-encoded as the next
step's ``input_image``. Run with the SDK's interpreter by ``bench_throughput.py``:

    python sdk_chain.py BASE_URL WORKLOAD.json

The workload is a list of variants, each a list of steps ``{"model", "prompt", "seed"}`` as the
recipe renders them. The API key comes from ``BFL_API_KEY``. Exit 1 if any step failed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from typing import Any

import requests
from blackforest import BFLClient  # type: ignore[import-not-found]
from blackforest.types.general.client_config import ClientConfig  # type: ignore[import-not-found]


def chain(base: str, key: str, steps: list[dict[str, Any]], failures: list[str]) -> None:
    try:
        client = BFLClient(api_key=key, base_url=base)
        image: bytes | None = None
        for step in steps:
            inputs: dict[str, Any] = {"prompt": step["prompt"], "seed": step["seed"],
                                      "output_format": "png"}
            if image is not None:
                inputs["input_image"] = base64.b64encode(image).decode()
            response = client.generate(step["model"], inputs, ClientConfig(sync=True))
            download = requests.get(response.result["sample"], timeout=60)
            download.raise_for_status()
            image = download.content
    except Exception as error:  # reported, and the process fails
        failures.append(f"{steps[0]['prompt']}: {error!r}")


def main() -> None:
    base, workload = sys.argv[1], sys.argv[2]
    with open(workload, encoding="utf-8") as source:
        variants: list[list[dict[str, Any]]] = json.load(source)
    failures: list[str] = []
    threads = [threading.Thread(target=chain, args=(base, os.environ["BFL_API_KEY"], steps,
                                                    failures)) for steps in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
