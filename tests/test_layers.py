"""The package's layering stays true: each subpackage imports only the layers beneath it.

The rules are the ones ``docs/architecture.md`` draws and each ``syncd/*/__init__.py`` states.
Imports are read from the source with :mod:`ast` (module-level and function-level alike), so a
lazy import inside a function counts the same as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "syncd"

FOUNDATION = "foundation"
# The layers, and which layers each may import (its own included).
MAY_IMPORT: dict[str, set[str]] = {
    FOUNDATION: {FOUNDATION},
    "ledger": {FOUNDATION, "ledger"},
    "ingest": {FOUNDATION, "ledger", "ingest"},
    "upload": {FOUNDATION, "ledger", "upload"},
    "after": {FOUNDATION, "ledger", "after"},
    "ops": {FOUNDATION, "ledger", "ingest", "upload", "after", "ops"},
    "emulator": {FOUNDATION, "emulator"},
    "daemon": {FOUNDATION, "ledger", "ingest", "upload", "after", "ops", "daemon"},
    "cli": {
        FOUNDATION,
        "ledger",
        "ingest",
        "upload",
        "after",
        "ops",
        "daemon",
        "emulator",
        "cli",
    },
}
SUBPACKAGES = {"ledger", "ingest", "upload", "after", "ops", "emulator"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name under ``syncd``."""
    parts = module.split(".")
    assert parts[0] == "syncd", module
    if len(parts) == 1:
        return FOUNDATION  # syncd/__init__.py: the version
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] in {"daemon", "cli", "__main__"}:
        return "cli" if parts[1] == "__main__" else parts[1]
    return FOUNDATION


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def syncd_imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every ``syncd.*`` module ``path`` (under ``root``) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "syncd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "syncd":
                continue
            found.add(target)
            # `from syncd.ops import report` imports the module syncd.ops.report.
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if _is_module(m, root)}


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_each_module_imports_only_the_layers_it_may(path: Path) -> None:
    me = module_name(path)
    mine = layer_of(me)
    wrong = sorted(
        f"{me} ({mine}) imports {other} ({layer_of(other)})"
        for other in syncd_imports(path)
        if layer_of(other) not in MAY_IMPORT[mine]
    )
    assert wrong == []


def test_nothing_but_the_cli_imports_the_daemon() -> None:
    importers = sorted(
        module_name(p)
        for p in MODULES
        if "syncd.daemon" in syncd_imports(p) and module_name(p) != "syncd.daemon"
    )
    assert importers == ["syncd.cli"]


def test_only_the_cli_sets_up_logging() -> None:
    """``logs.setup_logging`` and ``logging.basicConfig`` are called from ``cli.py`` alone."""
    callers = set()
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in {"setup_logging", "basicConfig"}:
                    callers.add(module_name(path))
    assert callers <= {"syncd.cli", "syncd.emulator.main"}


def test_the_checker_sees_forbidden_imports_at_any_depth(tmp_path: Path) -> None:
    """A lazy, a relative and a ``from package import module`` import are all found."""
    pkg = tmp_path / "syncd"
    for sub in ("", "upload", "ops"):
        (pkg / sub).mkdir(exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "ops" / "report.py").write_text("")
    (pkg / "daemon.py").write_text("")
    bad = pkg / "upload" / "bad.py"
    bad.write_text("from syncd.ops import report\ndef later():\n    from .. import daemon\n")
    found = syncd_imports(bad, tmp_path)
    assert {"syncd.ops.report", "syncd.daemon"} <= found
    assert {layer_of(m) for m in found} - MAY_IMPORT[layer_of("syncd.upload.bad")] == {
        "ops",
        "daemon",
    }


def test_the_pipeline_stages_know_the_ledger_only_through_its_protocol() -> None:
    """``upload/`` and ``ingest/`` are typed against ``syncd.ledger.store`` (its facets) and
    ``syncd.ledger.records``, never against a concrete store: either store can take its place."""
    concrete = ("syncd.ledger.sqlite", "syncd.ledger.postgres")
    found = sorted(
        f"{module_name(p)} imports {m}"
        for p in MODULES
        if module_name(p).startswith(("syncd.upload", "syncd.ingest"))
        for m in syncd_imports(p)
        if m.startswith(concrete)
    )
    assert found == []


def test_a_start_without_the_http_endpoint_imports_no_http_server() -> None:
    """``syncd run`` builds the whole command line and imports the daemon; aiohttp's server
    and the emulator's application are imported only when something serves HTTP."""
    code = (
        "import sys\n"
        "from syncd import cli\n"
        "cli.build_parser()\n"
        "import syncd.daemon\n"
        "loaded = [m for m in sys.modules if m.startswith(('aiohttp.web', 'syncd.emulator.app',"
        " 'syncd.emulator.server', 'syncd.ops.webapi', 'syncd.ops.dashboard'))]\n"
        "print(','.join(sorted(loaded)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
