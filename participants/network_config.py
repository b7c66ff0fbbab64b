"""The layout of one bridge network on disk: who runs which node where, and their keys.

A network lives in one working directory:

    network.json          this file's data: chain id, quorum, bridge and central bank nodes
                          (each node: a bank-facing port, and an admin port for its operators,
                          on loopback unless `admin_host` says otherwise)
    keys/<ID>.pem         PKCS#8 private key of a central bank or bank (0600)
    keys/<ID>.pub.pem     its public key
    bridge.sqlite         the bridge ledger (embedded default store)
    state/<CB>.replica.sqlite  a central bank node's replica checkpoint (its own cache)
    keys/<ID>.mqtt-password  MQTT password of a central bank, bank or the bridge (0600)
    mqtt/                 the broker's password file (hashed), ACL and configuration
    pki/                  optional demo CA and TLS certificates (`cbdc-bridge pki`)
    logs/                 node logs when started by `cbdc-bridge up` / `demo`
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bridge.crypto import PrivateKey
from bridge.domain import Genesis, GenesisBank
from bridge.notify import BRIDGE_USER, MqttSettings, write_broker_files

CONFIG_FILE = "network.json"


@dataclass(frozen=True, slots=True)
class BankConfig:
    id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class CentralBankConfig:
    id: str
    name: str
    jurisdiction: str
    currency: str
    exponent: int
    port: int
    banks: tuple[BankConfig, ...] = ()
    admin_port: int = 0  # the operators' listener (CentralBankAdmin); 0: any free port
    admin_host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_address(self) -> str:
        host = "127.0.0.1" if self.admin_host in ("", "0.0.0.0") else self.admin_host
        return f"{host}:{self.admin_port}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Paths (relative to the network directory) of the demo CA and per-node certificates."""

    ca: str = "pki/ca.pem"
    directory: str = "pki"


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    chain_id: str
    quorum: int
    bridge_port: int
    central_banks: tuple[CentralBankConfig, ...]
    directory: Path = field(default=Path("."), compare=False)
    tls: TlsConfig | None = None
    # several bridge processes on one PostgreSQL database: every one's port (the first is
    # `bridge_port`), and the database's URL; empty: one bridge on NETWORK/bridge.sqlite
    bridge_ports: tuple[int, ...] = ()
    bridge_store: str = ""
    mqtt_port: int = 0  # the MQTT broker's port while one runs; 0: no broker

    @property
    def mqtt_directory(self) -> Path:
        return self.directory / "mqtt"

    def mqtt_password_path(self, user: str) -> Path:
        return self.directory / "keys" / f"{user}.mqtt-password"

    def mqtt_settings(self, user: str) -> MqttSettings | None:
        """How `user` (a participant id, or `bridge`) reaches the broker; None without one."""
        if not self.mqtt_port:
            return None
        password = self.mqtt_password_path(user).read_text().strip()
        return MqttSettings("127.0.0.1", self.mqtt_port, user, password)

    def write_mqtt_credentials(self) -> None:
        """A password per central bank, bank and the bridge (kept if present), and the
        broker's hashed password file and ACL to match."""
        users = [BRIDGE_USER]
        for cb in self.central_banks:
            users += [cb.id, *(bank.id for bank in cb.banks)]
        passwords = {}
        for user in users:
            path = self.mqtt_password_path(user)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(secrets.token_urlsafe(24) + "\n")
                path.chmod(0o600)
            passwords[user] = path.read_text().strip()
        banks = {cb.id: [bank.id for bank in cb.banks] for cb in self.central_banks}
        write_broker_files(self.mqtt_directory, passwords, banks)

    @property
    def bridge_address(self) -> str:
        return f"127.0.0.1:{self.bridge_port}"

    @property
    def bridge_addresses(self) -> tuple[str, ...]:
        """Every bridge process's address; central bank nodes fail over between them."""
        return tuple(f"127.0.0.1:{p}" for p in self.bridge_ports or (self.bridge_port,))

    @property
    def bridge_db(self) -> Path:
        return self.directory / "bridge.sqlite"

    def replica_checkpoint_path(self, central_bank: str) -> Path:
        return self.directory / "state" / f"{central_bank}.replica.sqlite"

    def refusals_path(self, central_bank: str) -> Path:
        """The instructions a central bank's node refused itself (`central_bank.refusals`)."""
        return self.directory / "state" / f"{central_bank}.refusals.sqlite"

    def key_path(self, participant: str) -> Path:
        return self.directory / "keys" / f"{participant}.pem"

    def load_key(self, participant: str) -> PrivateKey:
        return PrivateKey.load(self.key_path(participant))

    def central_bank(self, central_bank_id: str) -> CentralBankConfig:
        for cb in self.central_banks:
            if cb.id == central_bank_id:
                return cb
        raise KeyError(f"no central bank {central_bank_id} in {self.directory / CONFIG_FILE}")

    def home_of(self, bank_id: str) -> CentralBankConfig:
        for cb in self.central_banks:
            if any(bank.id == bank_id for bank in cb.banks):
                return cb
        raise KeyError(f"no bank {bank_id} in {self.directory / CONFIG_FILE}")

    def genesis(self) -> Genesis:
        return Genesis(
            chain_id=self.chain_id,
            quorum=self.quorum,
            central_banks=tuple(
                GenesisBank(
                    cb.id,
                    cb.jurisdiction,
                    self.load_key(cb.id).public_key,
                    cb.currency,
                    cb.exponent,
                )
                for cb in self.central_banks
            ),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        for optional in ("bridge_ports", "bridge_store"):  # the single-bridge form stays as it was
            if not data[optional]:
                data.pop(optional)
        return data

    def save(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / CONFIG_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> NetworkConfig:
        path = directory / CONFIG_FILE
        data = json.loads(path.read_text())
        tls = data.get("tls")
        return cls(
            chain_id=data["chain_id"],
            quorum=int(data["quorum"]),
            bridge_port=int(data["bridge_port"]),
            central_banks=tuple(
                CentralBankConfig(
                    id=cb["id"],
                    name=cb["name"],
                    jurisdiction=cb["jurisdiction"],
                    currency=cb["currency"],
                    exponent=int(cb["exponent"]),
                    port=int(cb["port"]),
                    banks=tuple(BankConfig(**bank) for bank in cb["banks"]),
                    admin_port=int(cb.get("admin_port", 0)),
                    admin_host=str(cb.get("admin_host", "127.0.0.1")),
                )
                for cb in data["central_banks"]
            ),
            directory=directory,
            tls=None if tls is None else TlsConfig(**tls),
            bridge_ports=tuple(int(p) for p in data.get("bridge_ports", ())),
            bridge_store=str(data.get("bridge_store", "")),
            mqtt_port=int(data.get("mqtt_port", 0)),
        )


# The corridor of the scenario: mBridge members plus Singapore, two banks each.
DEFAULT_CENTRAL_BANKS: tuple[tuple[str, str, str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "PBOC",
        "People's Bank of China",
        "CN",
        "CNY",
        (("ICBC", "ICBC Chongqing"), ("BOCQ", "Bank of Chongqing")),
    ),
    (
        "HKMA",
        "Hong Kong Monetary Authority",
        "HK",
        "HKD",
        (("HSBCHK", "HSBC Hong Kong"), ("BOCHK", "Bank of China (Hong Kong)")),
    ),
    (
        "BOT",
        "Bank of Thailand",
        "TH",
        "THB",
        (("KBANK", "Kasikornbank"), ("SCB", "Siam Commercial Bank")),
    ),
    (
        "CBUAE",
        "Central Bank of the UAE",
        "AE",
        "AED",
        (("ENBD", "Emirates NBD"), ("FAB", "First Abu Dhabi Bank")),
    ),
    (
        "SAMA",
        "Saudi Central Bank",
        "SA",
        "SAR",
        (("SNB", "Saudi National Bank"), ("RJHI", "Al Rajhi Bank")),
    ),
    (
        "MAS",
        "Monetary Authority of Singapore",
        "SG",
        "SGD",
        (("DBS", "DBS Bank"), ("OCBC", "OCBC Bank")),
    ),
)


def tolerant_quorum(central_banks: int) -> int:
    """The default quorum: finality goes on with up to (n - 1) // 3 central bank nodes down
    (3 of 4, 5 of 7), and any two quorums share more than a third of the central banks."""
    return central_banks - (central_banks - 1) // 3


def generate_network(
    directory: Path,
    *,
    central_banks: int = 4,
    banks_per_central_bank: int = 2,
    ports: list[int],
    quorum: int | None = None,
    chain_id: str = "mbridge-demo",
) -> NetworkConfig:
    """Write keys and network.json for a fresh network: `ports[0]` is the bridge's port, then
    one bank-facing port per central bank, then (optional) one admin port per central bank."""
    if len(ports) < central_banks + 1:
        raise ValueError("need one port for the bridge and one per central bank")
    admin_ports = ports[central_banks + 1 : 2 * central_banks + 1]
    cbs = []
    for index in range(central_banks):
        if index < len(DEFAULT_CENTRAL_BANKS):
            cb_id, name, jurisdiction, currency, named_banks = DEFAULT_CENTRAL_BANKS[index]
        else:
            cb_id, name = f"CB{index:02d}", f"Central Bank {index:02d}"
            jurisdiction = f"{chr(65 + index // 26 % 26)}{chr(65 + index % 26)}"
            currency, named_banks = f"X{chr(65 + index // 26 % 26)}{chr(65 + index % 26)}", ()
        banks = [
            BankConfig(*named_banks[i])
            for i in range(min(banks_per_central_bank, len(named_banks)))
        ]
        banks += [
            BankConfig(f"{cb_id}B{i:02d}", f"{name} member bank {i:02d}")
            for i in range(len(banks), banks_per_central_bank)
        ]
        cbs.append(
            CentralBankConfig(
                cb_id,
                name,
                jurisdiction,
                currency,
                2,
                ports[index + 1],
                tuple(banks),
                admin_port=admin_ports[index] if index < len(admin_ports) else 0,
            )
        )
    config = NetworkConfig(
        chain_id=chain_id,
        quorum=quorum if quorum is not None else tolerant_quorum(central_banks),
        bridge_port=ports[0],
        central_banks=tuple(cbs),
        directory=directory,
    )
    for cb in cbs:
        for participant in (cb.id, *(bank.id for bank in cb.banks)):
            path = config.key_path(participant)
            if not path.exists():
                PrivateKey.generate().save(path)
        token = directory / "keys" / f"{cb.id}.admin-token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(32) + "\n")
            token.chmod(0o600)
    config.write_mqtt_credentials()
    config.save()
    return config
