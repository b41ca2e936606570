"""The shape of the code: no import circle among the project's modules, and the
Twilio door (``webhooks.py``) importing only what stands below it.

The layers and the doors themselves are import-linter's contracts in
``pyproject.toml`` (``lint-imports``, run by ``.ci/run``). import-linter cannot
analyse a single top-level module, so webhooks.py's own imports are read here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGES = ("core", "dialogs", "ivrs", "locales")
ROOT = Path(__file__).resolve().parents[1]


def import_circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, iterative): each is a set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in graph.modules:
                    continue
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(sorted(graph.find_modules_directly_imported_by(other)))))
                    break
                if other in on_stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert import_circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.one", "a.two", "a.three", "a.four"):
        graph.add_module(module)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.three")
    graph.add_import(importer="a.three", imported="a.one")
    graph.add_import(importer="a.three", imported="a.four")
    assert import_circles(graph) == [["a.one", "a.three", "a.two"]]


# What the Twilio door may use: the conversations it runs, their rendering, the
# outbox (delivery status callbacks), the settings, the core; never another door
# nor what composes the doors.
WEBHOOKS_MAY_IMPORT = ("ivrs.conversations", "ivrs.render", "ivrs.outbound", "ivrs.config", "core")
PROJECT = ("core", "dialogs", "ivrs", "locales", "webhooks")


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_twilio_door_imports_only_what_stands_below_it():
    ours = {name for name in _imported_modules(ROOT / "webhooks.py")
            if name.split(".")[0] in PROJECT}
    assert ours, "webhooks.py imports nothing of ours: this test reads the wrong file"
    # "from ivrs.conversations import calls" names the package and the module.
    above = sorted(name for name in ours if name != "ivrs" and not any(
        name == allowed or name.startswith(f"{allowed}.") for allowed in WEBHOOKS_MAY_IMPORT))
    assert above == [], f"webhooks.py imports {above}, which it may not"
