"""The rich console every command prints through."""

from __future__ import annotations


def make_console(quiet: bool = False):
    """A rich console; logs and CI (not a terminal) get 120 columns so tables do not wrap."""
    from rich.console import Console

    if quiet:
        return Console(quiet=True)
    console = Console()
    return console if console.is_terminal else Console(width=120)
