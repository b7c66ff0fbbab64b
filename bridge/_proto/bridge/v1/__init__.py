"""Generated from protos/bridge/v1; regenerate with `python scripts/gen_protos.py`."""
