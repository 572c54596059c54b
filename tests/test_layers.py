"""The layers of docs/architecture.md, held by the imports each module makes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import webapp

PACKAGE = Path(webapp.__file__).parent


def _imports(path: Path) -> set[str]:
    """The webapp modules a file imports, as dotted names (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name for name in [target, *names] if name.startswith("webapp"))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("webapp"))
    return found


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


RULES = {
    # layer: layers it must never import
    "engine": {"services", "web", "api", "live", "auth"},
    "services": {"web", "api", "live", "auth"},
    "web": {"api", "live"},
    "api": {"web", "live"},
    "live": {"web", "api"},
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_a_layer_imports_only_what_it_may(layer):
    broken = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            if _layer(name) in RULES[layer]:
                broken.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not broken


def test_the_engine_imports_nothing_else_of_the_package():
    """The engine runs in sandboxed workers: it needs nothing of the web application."""
    outside = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        outside += [f"{path.name}: {name}" for name in _imports(path) if not name.startswith("webapp.engine")]
    assert not outside
