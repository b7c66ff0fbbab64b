"""Whether a central bank node can reach the bridge: one log line per outage, not per retry.

Every part of the node that talks to the bridge (block follower, attestations, the Submit
link) reports what it sees here. The first failure of an outage logs one WARNING with its
cause; the first success after it logs one INFO line with how long the bridge was away.
Retries in between log nothing.
"""

from __future__ import annotations

import logging
import time

import grpc

log = logging.getLogger("participants.central_bank")

# What a call sees while the peer is away: UNAVAILABLE (refused, or the connection dropped),
# or CANCELLED for a call that reached it while it was shutting down (this node's own
# cancellations surface as asyncio.CancelledError, never as a failed call).
OUTAGE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class Reachability:
    """The state of one peer (e.g. "bridge"): reachable, or unreachable since a given time."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.down_since: float | None = None

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def failed(self, error: grpc.aio.AioRpcError) -> bool:
        """Record a failed call; True if it is an outage (see OUTAGE_CODES), logged once per
        outage."""
        if error.code() not in OUTAGE_CODES:
            return False
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                f"{self.peer} unreachable",
                extra={"code": error.code().name, "cause": error.details()},
            )
        return True

    def succeeded(self, started: float) -> None:
        """Record a call (begun at `started`, time.monotonic()) that reached the peer; ends the
        outage, if any, with one line. A call begun before the outage proves nothing: one
        answered by a peer shutting down gracefully would end the outage as it begins."""
        if self.down_since is None or started < self.down_since:
            return
        away = time.monotonic() - self.down_since
        self.down_since = None
        log.info(
            f"{self.peer} reachable again after {away:.1f} s", extra={"away_s": round(away, 3)}
        )
