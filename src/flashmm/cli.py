"""The ``flashmm`` command."""

from __future__ import annotations

import typer

from flashmm import __version__

app = typer.Typer(
    name="flashmm",
    help="FlashMM: a predictive market maker for central-limit order books.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """FlashMM: a predictive market maker for central-limit order books."""


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def main() -> None:
    app()
