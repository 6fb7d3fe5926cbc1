"""Where ``aef`` scripts installed before the move look for the command; it lives in :mod:`aeflib.orchestration.cli`.

A plain re-export for ``aeflib.cli:app`` entry points: it imports the command, nothing in aeflib imports it.
"""

from aeflib.orchestration.cli import app, main

__all__ = ["app", "main"]
