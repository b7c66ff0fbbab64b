"""Locust scenarios, one locustfile each: `locust -f loadtest/scenarios/<name>.py`."""
