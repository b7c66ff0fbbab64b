"""Reliability suites: crash loops against the durable stores."""
