"""A Mosquitto broker for one network: find the binary, start it on a loopback port, stop it.

Mosquitto comes from Debian (`apt-get install mosquitto mosquitto-clients`); the network
directory holds its password file and ACL (`NetworkConfig.write_mqtt_credentials`), and this
module writes the configuration (`mqtt/mosquitto.conf`) for the port chosen at start.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.notify import broker_config_text

SEARCH_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"


def mosquitto_binary() -> str | None:
    """Path of the `mosquitto` broker if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=SEARCH_PATH)


@dataclass
class Broker:
    """One Mosquitto process serving the files in `directory` on 127.0.0.1:`port`."""

    directory: Path
    port: int
    persistence: Path | None = None  # keep sessions and queued messages across restarts
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> Broker:
        """Start the broker (a no-op if it runs) and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.config_path.write_text(
            broker_config_text(self.port, self.directory.resolve(), persistence=self.persistence)
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.process.returncode}; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {self.port}; see {self.log_path}")

    def stop(self, grace: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
