"""`cbdc-bridge log ...`: verify, prove, export and report on the settlement log."""

from __future__ import annotations

import typer

log_app = typer.Typer(help="Verify, prove, export and study the settlement log.", no_args_is_help=True)
