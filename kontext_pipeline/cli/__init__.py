"""The ``kontext-pipeline`` command: parse options, call the library, render, map errors to exit
codes. No logic lives here."""

from kontext_pipeline.cli import inspecting, maintenance, recipes, reporting, running, scaffolding
from kontext_pipeline.cli.base import EXIT_CODES, cli, exit_code

__all__ = ["EXIT_CODES", "cli", "exit_code", "main"]

_COMMANDS = (inspecting, maintenance, recipes, reporting, running,
             scaffolding)  # imported for the commands they register


def main() -> None:
    """The console-script entry point (exits with the documented code)."""
    cli(prog_name="kontext-pipeline")
