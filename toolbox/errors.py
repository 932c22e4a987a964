"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class ToolboxError(Exception):
    """A mistake in a recipe, a command line, an input file or a plugin.

    The message says what is wrong, where (file and key path) and what to do next.
    """


class RecipeError(ToolboxError):
    """A recipe that does not fit the schema or names something that does not exist."""

    def __init__(self, message: str, source: str | None = None, path: str | None = None):
        where = ", ".join(part for part in (source, f"key '{path}'" if path else None) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.path = path
