"""The dependency between the log's contract and the analysis built on it points one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "bridge"
ANALYSIS = "analysis"


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every absolute module an import statement names (at any depth), with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.append((node.lineno, node.module))
    return found


def analysis_imports(source: str) -> list[tuple[int, str]]:
    return [
        (line, module)
        for line, module in imported_modules(source)
        if module == ANALYSIS or module.startswith(ANALYSIS + ".")
    ]


def test_bridge_never_imports_analysis() -> None:
    """No module under bridge/ imports the analysis package, at top level or inside a function."""
    assert (ROOT / ANALYSIS / "__init__.py").is_file()
    modules = sorted(BRIDGE.rglob("*.py"))
    assert len(modules) > 20
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in modules
        for line, module in analysis_imports(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "bridge must not depend on analysis:\n" + "\n".join(offenders)


def test_check_sees_every_form_of_import() -> None:
    """The check catches `import analysis`, `from analysis import`, and imports in functions."""
    source = (
        "import analysis\n"
        "import analysis.sample as sample\n"
        "from analysis import export\n"
        "def late() -> None:\n"
        "    from analysis.report import build_report\n"
        "import analysis_tools\n"
        "from bridge.log import verify\n"
    )
    assert analysis_imports(source) == [
        (1, "analysis"),
        (2, "analysis.sample"),
        (3, "analysis"),
        (5, "analysis.report"),
    ]
