"""Generate the Python protobuf and gRPC code of the wire contract.

Usage, from the repository root:

    python scripts/gen_protos.py            # regenerate bridge/_proto/ from protos/
    python scripts/gen_protos.py --check    # only compare; exit 1 when bridge/_proto/ is stale

Runs `grpc_tools.protoc -I protos` with `--python_out`, `--grpc_python_out`, `--mypy_out` and
`--mypy_grpc_out`, so `protos/bridge/v1/types.proto` becomes
`bridge/_proto/bridge/v1/types_pb2.py` (with `.pyi` stubs and `_pb2_grpc` modules).

protoc writes imports by proto package path (`from bridge.v1 import types_pb2`), which would
resolve against this project's own top-level `bridge` package. The generated imports, and the
module names given to the protobuf runtime, are therefore rewritten to the real location
(`from bridge._proto.bridge.v1 import types_pb2`). gRPC method paths (`/bridge.v1.X/Y`) and
descriptor names are left untouched: they are the wire contract.

Output is deterministic: the same protos and tool versions give byte-identical files, which
tests/unit/test_protos_fresh.py checks against the committed copy.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT_ROOT = ROOT / "bridge" / "_proto"
PACKAGE_PREFIX = "bridge._proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PACKAGE_INIT = (
    '"""Generated from protos/{path}; regenerate with `python scripts/gen_protos.py`."""\n'
)
HAND_WRITTEN = frozenset({"__init__.py"})  # bridge/_proto/__init__.py is not generated

_IMPORT = re.compile(r"^(from|import) (bridge\.v\d+)\b", re.MULTILINE)
_MODULE_NAME = re.compile(r"'(bridge\.v\d+\.\w+_pb2)'")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto under the root, in a fixed order."""
    return sorted(proto_root.rglob("*.proto"))


def _plugin(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install mypy-protobuf into this environment")
    return found


def _run_protoc(proto_root: Path, out_dir: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # lazy: --help needs no grpc_tools

    well_known = Path(protoc.__file__).parent / "_proto"
    relative = [str(path.relative_to(proto_root)) for path in proto_files(proto_root)]
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def fix_imports(source: str) -> str:
    """Point generated imports and runtime module names at `bridge._proto.<package>`."""
    source = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE_PREFIX}.{m.group(2)}", source)
    return _MODULE_NAME.sub(lambda m: f"'{PACKAGE_PREFIX}.{m.group(1)}'", source)


def _add_package_inits(out_dir: Path) -> None:
    for directory in sorted({path.parent for path in out_dir.rglob("*_pb2.py")}):
        current = directory
        while current != out_dir:
            init = current / "__init__.py"
            if not init.exists():
                init.write_text(PACKAGE_INIT.format(path=current.relative_to(out_dir).as_posix()))
            current = current.parent


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Generate all code from `proto_root` into the empty directory `out_dir`."""
    _run_protoc(proto_root, out_dir)
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            path.write_text(fix_imports(path.read_text(encoding="utf-8")), encoding="utf-8")
    _add_package_inits(out_dir)


def _generated_files(root: Path) -> dict[str, bytes]:
    """Files of a generated tree by relative path, leaving out hand-written and cache files."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or relative in HAND_WRITTEN:
            continue
        files[relative] = path.read_bytes()
    return files


def differences(expected_root: Path, actual_root: Path) -> list[str]:
    """Readable list of how `actual_root` differs from freshly generated `expected_root`."""
    expected = _generated_files(expected_root)
    actual = _generated_files(actual_root)
    problems = [f"missing: {name}" for name in sorted(expected.keys() - actual.keys())]
    problems += [
        f"not generated from protos/: {name}" for name in sorted(actual.keys() - expected.keys())
    ]
    problems += [
        f"stale: {name}"
        for name in sorted(expected.keys() & actual.keys())
        if expected[name] != actual[name]
    ]
    return problems


def write(fresh_root: Path, output_root: Path) -> list[str]:
    """Make `output_root` hold exactly the generated files of `fresh_root`; return what changed."""
    fresh = _generated_files(fresh_root)
    changes = []
    for name in sorted(_generated_files(output_root).keys() - fresh.keys()):
        (output_root / name).unlink()
        changes.append(f"removed: {name}")
    for name, data in fresh.items():
        target = output_root / name
        if not target.exists() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            changes.append(f"wrote: {name}")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare only; exit 1 if bridge/_proto/ is stale"
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if options.check:
            problems = differences(fresh, OUTPUT_ROOT)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(
                    "bridge/_proto/ is stale: run `python scripts/gen_protos.py`", file=sys.stderr
                )
                return 1
            print("bridge/_proto/ is up to date")
            return 0
        changes = write(fresh, OUTPUT_ROOT)
    for change in changes:
        print(change)
    print(f"bridge/_proto/: {len(changes)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
