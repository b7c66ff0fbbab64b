#!/usr/bin/env bash
# Quick start, main job: set up, then run the demo network (SQLite, no server to install).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cbdc-bridge demo "$@"
