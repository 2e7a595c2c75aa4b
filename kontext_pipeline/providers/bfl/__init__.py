"""The BFL FLUX.1 Kontext client: submit, poll the returned ``polling_url``, download the signed
result. The only package of kontext-pipeline whose client code imports httpx.

Retry policy (what the API documents, and what mature clients do):

* **Submit** is not idempotent: a retry after the API accepted it would be billed twice. It is
  retried only when the API did not take it: the connection could not be made, the request
  could not be sent whole, the connection closed before any answer, or the answer said the
  API did not fulfil it: 429 (throttled; the account's concurrency is lowered for a while),
  500, 502, 503 or 504, honouring ``Retry-After``. Any other failure after the request was
  sent (a timeout waiting for the answer, an accepted answer cut short, an answer without a
  task id, an unexpected status) fails the step with the reason and is *not* retried.
* **Polls and downloads** are safe to repeat: 404/202/429/5xx answers, timeouts and dropped
  connections are retried with exponential back-off and jitter, honouring ``Retry-After``.
  A poll answered 422 whose body is a task result (``id``, ``status``) is that result.
* 401/403 (key) and 402 (credits) stop the run; 400/422 fail the step with the API's ``detail``.
* ``Pending``, ``Reasoning`` and ``Generating`` are in flight, and so is any status this client
  does not know (with one warning naming it), until the polling deadline: the API adds
  statuses, and failing a paid task on one would lose its image. ``Request Moderated`` /
  ``Content Moderated`` fail the step and are never retried; ``Error``, ``Failed`` and ``Task
  not found`` fail it, showing ``details.error`` (else ``result.error``, else ``details``).

Every answer is input: bodies are read within bounds (1 MB of JSON, ``max_result_bytes`` of
image, counted after decompression), each exchange within a deadline, a result must be the
format the step asked for, and no URL holding the key is requested.

Modules: :mod:`._provider` (one request, start to finish), :mod:`._exchanges` (the HTTP
requests and their retries), :mod:`._reading` (bodies and deadlines bounded), :mod:`._answers`
(what answers mean), :mod:`._urls` (URLs that may hold a secret), :mod:`._body` (the submit's
JSON), :mod:`._task` (a request's state), :mod:`._clients` (the HTTP clients), :mod:`._signing`
(how webhooks are signed).
"""

from kontext_pipeline.providers.bfl._clients import asgi_client, http_client
from kontext_pipeline.providers.bfl._provider import DEFAULT_API_BASE, MAX_RESULT_BYTES, BflProvider

__all__ = ["DEFAULT_API_BASE", "MAX_RESULT_BYTES", "BflProvider", "asgi_client", "http_client"]
