"""Where the commands write: every message, listing and JSON document they print goes through
here, so that no control character from a recipe, an image or an API answer reaches the
terminal as it is (see :mod:`kontext_pipeline._support.text`)."""

from __future__ import annotations

import click

from kontext_pipeline._support.text import printable, printable_json

__all__ = ["echo", "echo_json"]


def echo(message: str, *, err: bool = False) -> None:
    """Print ``message`` (lines the tool laid out: its line feeds stay) on stdout, or stderr."""
    click.echo(printable(message, newlines=True), err=err)


def echo_json(text: str) -> None:
    """Print a JSON text (``json.dumps``'s) on stdout: still valid JSON, each escaped
    character the same value when parsed."""
    click.echo(printable_json(text))
