"""Analysis on top of the settlement log: export as tidy tables, the researcher's report, and
the sample log generator.

Everything here imports `bridge` (the log's format and checks in `bridge.log`, the settlement
engine and stores for the sample generator); nothing in `bridge` imports `analysis`, and a test
keeps it so.
"""
