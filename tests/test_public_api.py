"""`toolbox` is the only door: built-in plugins and benchmarks use only the public API,
and the core's modules import one another downward only (no cycle, at any level)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import toolbox
from conftest import ROOT

PUBLIC = {"toolbox", *toolbox.PUBLIC_MODULES}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute module a file imports (module level and inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            # `from toolbox import io` reaches the module toolbox.io
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file()]
    return found


@pytest.mark.parametrize("folder", ["plugins", "benchmarks"])
def test_built_ins_and_benchmarks_import_only_the_public_api(folder):
    private = [f"{path.relative_to(ROOT)}:{line} imports {module}"
               for path in sorted((ROOT / folder).rglob("*.py"))
               for module, line in _imports(path)
               if module.split(".")[0] == "toolbox" and module not in PUBLIC]
    assert not private, "\n".join(private)


def test_every_public_name_resolves():
    for name in toolbox.__all__:
        assert getattr(toolbox, name) is not None, name
    for module in toolbox.PUBLIC_MODULES:
        __import__(module)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_modules_import_downward_only():
    """The import graph of ``toolbox.*`` (function-level imports included) has no cycle.
    The package root is the facade the plugins use: only the CLI may import it; the plugin
    manager (the process-wide registry) is for the CLI and the plugin authors' kit."""
    graph = {}
    for path in sorted((ROOT / "toolbox").rglob("*.py")):
        name = _module_name(path)
        if name == "toolbox":
            continue
        targets = set()
        for module, line in _imports(path):
            while module and module not in graph and not (ROOT / (module.replace(".", "/") + ".py")).is_file() \
                    and not (ROOT / module.replace(".", "/") / "__init__.py").is_file():
                module = module.rpartition(".")[0]
            if module.startswith("toolbox.") and module != name:
                targets.add(module)
            elif module == "toolbox" and name not in ("toolbox.cli",):
                pytest.fail(f"{name}:{line} imports the package root (the plugins' facade); import the "
                            "module that defines the name")
        graph[name] = targets
    facade_users = sorted(n for n, targets in graph.items() if "toolbox.plugins" in targets)
    assert facade_users == ["toolbox.cli", "toolbox.testing"], f"only the CLI loads plugins, also: {facade_users}"
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            cycle = trail[trail.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if state.get(node) == 2:
            return
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def test_every_hook_is_documented_and_has_a_contract_check():
    """datasette's rule: a hook nobody documents or tests is not an API."""
    import toolbox.hookspecs as hookspecs
    import toolbox.testing as contract
    from toolbox.registry import KINDS

    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    hooks = sorted(name for name in dir(hookspecs) if name.startswith("register_"))
    assert hooks, "no hooks found"
    for hook in hooks:
        assert f"## {hook}" in page, f"docs/plugins.md has no section for {hook}"
    for kind, (hook, _) in KINDS.items():
        section = page.split(f"## {hook}")[1].split("\n## ")[0]
        checks = [name for name in dir(contract) if name.startswith("check_") and f"toolbox.testing.{name}" in section]
        assert checks, f"docs/plugins.md's {hook} section names no toolbox.testing check"
    contract_tests = (ROOT / "tests" / "test_contract.py").read_text(encoding="utf-8")
    for name in (n for n in dir(contract) if n.startswith("check_")):
        assert f"contract.{name}(" in contract_tests, f"tests/test_contract.py never runs {name}"
