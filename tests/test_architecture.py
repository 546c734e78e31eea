"""The package's shape: imports point one way and no module uses another's private names.

Both read the source (``ast``), so a function-level import counts like a module-level one:
it is a dependency all the same, only hidden.
"""

import ast

from helpers import REPO

PACKAGE = REPO / "dataseg"


def _modules():
    """{dotted module name: parsed tree} of every file of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = (path, ast.parse(path.read_text()))
    return modules


def _imports(name, path, tree, modules):
    """(imported module, imported names) of every import of the package in ``tree``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dataseg":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield (submodule, None) if submodule in modules else (target, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dataseg":
                    yield alias.name, None


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    found = []
    for name, (path, tree) in modules.items():
        module_aliases = {}
        for target, imported in _imports(name, path, tree, modules):
            if imported is None:
                module_aliases[target.rpartition(".")[2]] = target
            elif imported.startswith("_") and target != name:
                found.append(f"{name} imports {target}.{imported}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name} uses {module_aliases[node.value.id]}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(sorted(set(found)))


def test_module_imports_have_no_cycle():
    modules = _modules()
    graph = {name: {target for target, _ in _imports(name, path, tree, modules)
                    if target in modules and target != name}
             for name, (path, tree) in modules.items()}
    # A package's __init__ re-exports its modules: an edge into a package is an edge into
    # the module that defines the name, which the module-level edges already carry.
    packages = {name for name, (path, _) in modules.items() if path.name == "__init__.py"}
    graph = {name: targets - packages for name, targets in graph.items()}
    state, cycle = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle.extend(stack[stack.index(nxt):] + [nxt])
                return True
            if nxt not in state and visit(nxt, stack + [nxt]):
                return True
        state[node] = "done"
        return False

    for start in sorted(graph):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)
