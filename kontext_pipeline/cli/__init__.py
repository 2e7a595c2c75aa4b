"""The ``kontext-pipeline`` command: parse options, call the library, render, map errors to exit
codes. No logic lives here."""

from kontext_pipeline.cli import (
    _checking,
    _inspecting,
    _maintenance,
    _recipes,
    _reporting,
    _running,
    _scaffolding,
)
from kontext_pipeline.cli._base import EXIT_CODES, cli, exit_code

__all__ = ["EXIT_CODES", "cli", "exit_code", "main"]

_COMMANDS = (_checking, _inspecting, _maintenance, _recipes, _reporting, _running,
             _scaffolding)  # imported for the commands they register


def main() -> None:
    """The console-script entry point (exits with the documented code)."""
    cli(prog_name="kontext-pipeline")
