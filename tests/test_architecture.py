"""The import graph of oculi points one way (issue 12): no cycles, and each part imports only the layers below.

Every ``import`` counts, also one inside a function: an import hidden in a function is still a dependency,
only a later one. A node is a package of ``oculi/`` (``oculi.training``) or a top-level module (``oculi.cli``);
``oculi`` itself is the package's ``__init__``.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import oculi

ROOT = Path(oculi.__file__).resolve().parent

# Bottom to top: a node imports only nodes of lower layers, so the nodes of one layer never import each other
# (evaluate and report are run one after the other by the CLI and the API, never by one another).
LAYERS = (
    ("oculi.version", "oculi.errors", "oculi.io"),
    ("oculi.config", "oculi.console", "oculi.metrics", "oculi.calibration", "oculi.plots", "oculi.pages",
     "oculi.rundir"),  # pages: the HTML kit of report.html, compare.html and check.html
    ("oculi.route", "oculi.selection"),  # which way a run trains, in words; choosing between two models on val
    ("oculi.multilabel",),  # scores and decisions of label sets (mAP, thresholds), by selection's rule
    ("oculi.data",),
    ("oculi.models",),
    ("oculi.defaults", "oculi.runtime"),  # what auto means; running a model: bundles, engines, ONNX
    ("oculi.plan",),  # everything a run will do, decided once
    ("oculi.check",),  # can the data be trusted: duplicates, leaks, profile, label errors (train runs its cheap part)
    ("oculi.training",),
    ("oculi.deploy",),  # using a trained model: predict, explain, export, serve, the Hub (deploy.hub)
    ("oculi.evaluate", "oculi.report"),  # scores and report.html of a trained model, through deploy's Classifier
    ("oculi.api",),
    ("oculi.tune",),  # oculi tune: Optuna's search over api.train_and_report runs
    ("oculi.app",),  # oculi app: the web page for the whole loop, its projects and jobs (never needed by the CLI)
    ("oculi.cli",),
    ("oculi", "oculi.__main__"),
)
LAYER = {node: i for i, nodes in enumerate(LAYERS) for node in nodes}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node_of(module: str) -> str:
    """The package or top-level module ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path):
    """(module name, line) of every oculi module ``path`` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for statement in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(statement, ast.Import):
            yield from ((alias.name, statement.lineno) for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in statement.names:  # `from . import api` imports the module oculi.api
                submodule = f"{base}.{alias.name}"
                is_module = (ROOT.parent / submodule.replace(".", "/")).is_dir() or \
                    (ROOT.parent / (submodule.replace(".", "/") + ".py")).is_file()
                yield (submodule if is_module else base), statement.lineno


def import_edges() -> dict[tuple[str, str], list[str]]:
    """{(node, imported node): ["file:line", ...]} between different nodes of oculi."""
    edges = defaultdict(list)  # a list, not a set: the places in file order
    for path in sorted(ROOT.rglob("*.py")):
        source = node_of(module_name(path))
        for module, line in imported_modules(path):
            target = node_of(module)
            place = f"{path.relative_to(ROOT.parent)}:{line}"
            if module.split(".")[0] == "oculi" and target != source and place not in edges[source, target]:
                edges[source, target].append(place)
    return edges


def cycles(edges) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan's algorithm)."""
    graph = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def _listed(edges, pairs) -> str:
    return "\n".join(f"  {s} -> {t}: {', '.join(edges[s, t])}" for s, t in sorted(pairs))


def test_no_import_cycles():
    edges = import_edges()
    found = cycles(edges)
    inside = [(s, t) for s, t in edges if any(s in group and t in group for group in found)]
    assert not found, f"import cycles among {found}:\n{_listed(edges, inside)}"


def test_every_part_has_a_layer():
    nodes = {node for edge in import_edges() for node in edge}
    nodes |= {node_of(module_name(path)) for path in ROOT.rglob("*.py")}
    assert not nodes - set(LAYER), f"place these in LAYERS: {sorted(nodes - set(LAYER))}"


def test_imports_point_down_the_layers():
    edges = import_edges()
    upward = [(s, t) for s, t in edges if s in LAYER and t in LAYER and LAYER[t] >= LAYER[s]]
    assert not upward, f"imports of a layer at or above the importer's own:\n{_listed(edges, upward)}"


# Where the route is decided (defaults fills "auto", plan saves it, route gives its words) and where the setting
# itself is defined: every other module reads ``plan.route``.
ROUTE_DECIDERS = {"defaults.py", "plan.py", "route.py", "config.py"}
ROUTE_REDERIVATION = re.compile(r"\.mode\s*(==|!=|in\b)|isinstance\([^)]*BackboneClassifier")


def test_the_route_is_decided_in_one_place():
    """No module outside the deciders works out which way a run trains again from ``cfg.mode`` or from the
    model's class: the six re-derivations that once let the top-stages route ignore ``--augment none``."""
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted(ROOT.rglob("*.py")) if path.relative_to(ROOT).as_posix() not in ROUTE_DECIDERS
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if ROUTE_REDERIVATION.search(line) and "image.mode" not in line]
    assert not found, "route worked out outside plan.route:\n" + "\n".join(found)
