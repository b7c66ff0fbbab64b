"""Generated from protos/bridge; regenerate with `python scripts/gen_protos.py`."""
