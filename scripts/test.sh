#!/usr/bin/env bash
# Quick start, tests: set up, install the services the tests need, then lint, type-check and
# run the whole suite. Under CI=true a test whose service is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy bridge participants loadtest analysis
echo "== pytest"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
