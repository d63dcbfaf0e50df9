"""Import direction and purity rules of ARCHITECTURE.md, enforced by walking every module's AST.

``errors <- core <- providers <- runtime <- sim <- testing <- cli``: nothing imports upward.
``core`` stays pure (no clock, randomness, threads, I/O); wall time and threads live only in
``runtime/realtime.py``; sqlite3 only in ``providers/sqlite.py``; pytest/hypothesis only in
``testing/``; ``runtime`` never sees a concrete provider or ``sim``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "duroxide_sim"
LAYERS = ["errors", "core", "providers", "runtime", "sim", "testing", "cli"]
NONDETERMINISTIC = {"time", "datetime", "random", "uuid", "threading", "asyncio", "socket", "subprocess", "secrets"}
# Deliberate exceptions: the sandbox references these modules to *detect* their use, and the
# harness creates the run's seeded random.Random instances (never the module-level functions).
EXEMPT = {"sim/sandbox.py": NONDETERMINISTIC, "sim/harness.py": {"random"},
          # async activities on a virtual-time asyncio loop (its clock is the simulation's), in
          # a thread of their own when the simulation itself runs inside an event loop
          "sim/vloop.py": {"asyncio", "threading"}}


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(rel: pathlib.Path) -> str | None:
    first = rel.parts[0]
    name = first[:-3] if first.endswith(".py") else first
    return name if name in LAYERS else None  # __init__/__main__ at top level: unrestricted


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """Absolute dotted names imported by a module (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    out.extend((f"{mod}.{alias.name}", node.lineno) for alias in node.names)
                else:
                    out.append((mod, node.lineno))
            else:
                out.append((node.module or "", node.lineno))
    return out


CASES = [p for p in _modules()]


@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(PKG)) for p in CASES])
def test_module_respects_layering(path: pathlib.Path) -> None:
    """No module imports a layer above its own, nor a forbidden library for its layer."""
    rel = path.relative_to(PKG)
    layer = _layer(rel)
    problems = []
    for name, line in _imports(path):
        top = name.split(".")[0]
        where = f"{rel}:{line} imports {name}"
        if top == "duroxide_sim":
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else None
            if layer is not None and target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                problems.append(f"{where} (upward: {layer} -> {target})")
            if layer == "runtime" and name.startswith(("duroxide_sim.providers.", "duroxide_sim.sim")) and name != "duroxide_sim.providers.base":
                problems.append(f"{where} (runtime sees only the Provider protocol)")
        if top == "scenarios":
            problems.append(f"{where} (package code never imports scenarios)")
        exempt = EXEMPT.get(rel.as_posix(), set())
        if top in NONDETERMINISTIC and top not in exempt and layer in ("core", "providers", "sim") and not (layer == "providers" and top == "threading"):
            problems.append(f"{where} (nondeterminism source in {layer})")
        if top in NONDETERMINISTIC and layer == "runtime" and rel.name != "realtime.py" and top not in ("threading",):
            problems.append(f"{where} (wall time / ids only in runtime/realtime.py)")
        if top == "sqlite3" and rel.as_posix() != "providers/sqlite.py":
            problems.append(f"{where} (sqlite3 only in providers/sqlite.py)")
        if top in ("pytest", "hypothesis", "_pytest") and layer != "testing":
            problems.append(f"{where} (test libraries only in testing/)")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_an_upward_import(tmp_path: pathlib.Path) -> None:
    """Planted violation: a core module importing runtime is reported."""
    fake = PKG / "core" / "_planted_violation_for_test.py"
    fake.write_text("from ..runtime import client\nimport time\n", encoding="utf-8")
    try:
        with pytest.raises(AssertionError) as err:
            test_module_respects_layering(fake)
        assert "upward: core -> runtime" in str(err.value)
        assert "nondeterminism source in core" in str(err.value)
    finally:
        fake.unlink()
