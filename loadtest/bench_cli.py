"""`cbdc-bridge bench ...`: benchmark commands that print one JSON object of figures."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks: print figures as JSON (ratios against a same-run baseline).", no_args_is_help=True)
