"""The committed generated code (bridge/_proto/) matches what protos/ generates today."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"


@pytest.fixture(scope="module")
def gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(gen_protos: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fresh_protos")
    gen_protos.generate(out)
    return out


def test_committed_generated_code_is_fresh(gen_protos: ModuleType, fresh: Path) -> None:
    """Regenerating from protos/ reproduces bridge/_proto/ byte for byte."""
    problems = gen_protos.differences(fresh, gen_protos.OUTPUT_ROOT)
    assert not problems, "run `python scripts/gen_protos.py`:\n" + "\n".join(problems)


def test_generation_is_deterministic(gen_protos: ModuleType, fresh: Path, tmp_path: Path) -> None:
    """Two generations from the same protos are byte-identical."""
    gen_protos.generate(tmp_path)
    assert gen_protos.differences(fresh, tmp_path) == []


def test_every_proto_is_generated(gen_protos: ModuleType, fresh: Path) -> None:
    """Each .proto under protos/ has its message and gRPC modules, with stubs."""
    for proto in gen_protos.proto_files():
        stem = proto.relative_to(gen_protos.PROTO_ROOT).with_suffix("").as_posix()
        for suffix in gen_protos.GENERATED_SUFFIXES:
            assert (fresh / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"


def test_imports_point_inside_bridge_proto(gen_protos: ModuleType) -> None:
    """Generated imports and module names are rewritten; gRPC method paths are not."""
    source = (
        "from bridge.v1 import types_pb2 as t\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'bridge.v1.types_pb2', _globals)\n"
        "channel.unary_unary('/bridge.v1.CentralBank/Pay')\n"
    )
    assert gen_protos.fix_imports(source) == (
        "from bridge._proto.bridge.v1 import types_pb2 as t\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'bridge._proto.bridge.v1.types_pb2',"
        " _globals)\n"
        "channel.unary_unary('/bridge.v1.CentralBank/Pay')\n"
    )


def test_generated_modules_import_under_bridge_proto() -> None:
    """Generated modules import as bridge._proto.bridge.v1.*, and so do their classes."""
    for name in ("types_pb2", "central_bank_pb2_grpc", "bridge_ledger_pb2_grpc"):
        module = importlib.import_module(f"bridge._proto.bridge.v1.{name}")
        assert module.__name__ == f"bridge._proto.bridge.v1.{name}"
    from bridge._proto.bridge.v1 import types_pb2

    assert types_pb2.Receipt.__module__ == "bridge._proto.bridge.v1.types_pb2"


def test_check_command_passes_on_the_committed_tree() -> None:
    """`python scripts/gen_protos.py --check` exits 0 when nothing is stale."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_tree(gen_protos: ModuleType, fresh: Path, tmp_path: Path) -> None:
    """A changed, missing or stray generated file is reported."""
    stale = tmp_path / "stale"
    gen_protos.write(fresh, stale)
    assert gen_protos.differences(fresh, stale) == []
    (stale / "bridge" / "v1" / "types_pb2.py").write_text("# edited by hand\n")
    (stale / "bridge" / "v1" / "central_bank_pb2.pyi").unlink()
    (stale / "bridge" / "v1" / "old_pb2.py").write_text("")
    assert gen_protos.differences(fresh, stale) == [
        "missing: bridge/v1/central_bank_pb2.pyi",
        "not generated from protos/: bridge/v1/old_pb2.py",
        "stale: bridge/v1/types_pb2.py",
    ]
