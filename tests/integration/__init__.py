"""Integration suites: real bridge and central bank node processes over gRPC."""
