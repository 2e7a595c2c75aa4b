"""The preview provider: the real client code over the bundled server, in-process."""

from __future__ import annotations

import pytest

from kontext_pipeline._support.images import inspect_bytes
from kontext_pipeline.errors import ModerationError, UsageError
from kontext_pipeline.providers._base import EditRequest
from kontext_pipeline.providers._inbox import Webhook
from kontext_pipeline.providers.bfl import BflProvider
from kontext_pipeline.runner._providers import open_provider
from kontext_pipeline.server._preview import PREVIEW_BASE, preview_config, preview_provider
from tests.bfl_helpers import generate, png, run


def test_preview_makes_a_marked_deterministic_image() -> None:
    request = EditRequest("flux-kontext-pro", "Make the car blue", 5, images=(png(),))
    first = run(generate(preview_provider(latency=0.01), request))
    second = run(generate(preview_provider(latency=0.01), request))
    assert first.image == second.image
    assert inspect_bytes(first.image).format == "PNG"
    assert first.cost == 4


def test_preview_is_the_bfl_client_under_another_name() -> None:
    provider = preview_provider(latency=0.01)
    assert isinstance(provider, BflProvider)
    assert provider.name == "preview"
    run(provider.aclose())


def test_preview_reports_moderation_like_bfl() -> None:
    with pytest.raises(ModerationError):
        run(generate(preview_provider(latency=0.01),
                     EditRequest("flux-kontext-pro", "x [[content-moderated]]", 1)))


def test_bfl_without_a_key_stops_before_any_work() -> None:
    with pytest.raises(UsageError) as caught:
        open_provider("bfl", environ={})
    assert str(caught.value) == (
        "BFL_API_KEY is not set: the bfl provider needs an API key. Set BFL_API_KEY, or run "
        "offline with --provider preview")


def test_open_provider_reads_the_environment() -> None:
    provider = open_provider("bfl", environ={"BFL_API_KEY": "bfl_x",
                                             "BFL_API_BASE": "http://127.0.0.1:9/"})
    assert isinstance(provider, BflProvider)
    assert provider.api_base == "http://127.0.0.1:9"
    run(provider.aclose())
    preview = open_provider("preview", environ={})
    assert preview.name == "preview"
    run(preview.aclose())
    with pytest.raises(UsageError, match="unknown provider 'dall-e'"):
        open_provider("dall-e", environ={})


def test_the_preview_server_hands_out_its_own_urls_and_posts_to_the_runs_webhook() -> None:
    plain = preview_config(0.1, None)
    assert (plain.public_url, plain.webhook_hosts, plain.webhooks_anywhere) == (
        PREVIEW_BASE, frozenset(), False)
    hooked = preview_config(0.1, Webhook("https://Hooks.Example:8443/run"))
    assert hooked.webhook_hosts == frozenset({"hooks.example"})
