"""The package reads one way: no import cycle, layers import downwards only, one update function,
one staleness schedule, one collapse definition (checked on the source, with `ast`)."""

import ast
import os

import pytest

from tests.helpers import repo_root

PKG = os.path.join(repo_root(), "async_grpo")

# Lower layers never import higher ones (a module may import its own layer and below).
LAYERS = [
    # 0: leaves and libraries
    {"files", "staleness", "collapse", "diagnostics", "losses", "tasks", "models", "sharding",
     "distributed", "checkpoint", "metrics", "sampling", "generator", "signals", "figures",
     "workdir", "scaling", "lr_control", "metric_names", "learning", "results", "grid_runner",
     "grid_axes"},
    # 1: built on the leaves
    {"config", "simulate", "testbeds"},
    # 2: the RL pieces
    {"rl.objectives", "rl.rollout", "rl.learner", "rl.components"},
    # 3: the loops
    {"rl.pipeline", "rl.population", "sft"},
]


def _modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    for root, _, names in os.walk(PKG):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PKG))
                mod = rel[:-3].replace(os.sep, ".")
                out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = \
                    os.path.join(root, name)
    return out


def _imports(path, modules):
    """[(imported module, lineno, at module level?)] of the package's own modules."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules and name.startswith("async_grpo"):
                found.append((name, node.lineno, id(node) in top))
    return found


def _graph():
    modules = _modules()
    graph = {}
    for mod, path in modules.items():
        graph[mod] = {(m, line, top) for m, line, top in _imports(path, modules) if m != mod}
    return graph


def _layer(mod):
    name = mod[len("async_grpo."):] if mod.startswith("async_grpo.") else ""
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or name.startswith(entry + "."):
                return i
    return None


def test_no_import_cycle():
    graph = {m: {d for d, _, _ in deps} for m, deps in _graph().items()}
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle


def test_layers_import_downwards_only_and_at_module_level():
    bad, hidden = [], []
    for mod, deps in _graph().items():
        mine = _layer(mod)
        for dep, line, top in deps:
            if not top and not dep.endswith(("__init__",)):
                hidden.append(f"{mod}:{line} imports {dep} inside a function")
            theirs = _layer(dep)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{mod} (layer {mine}) imports {dep} (layer {theirs}) at line {line}")
    assert not bad, bad
    assert not hidden, hidden
    unplaced = [m for m in _graph() if m.count(".") >= 1 and _layer(m) is None
                and m != "async_grpo.rl"]   # the rl package itself holds only a docstring
    assert not unplaced, f"modules missing from LAYERS: {unplaced}"


def _calls(path, attr):
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = []

    class Visitor(ast.NodeVisitor):
        def __init__(self):
            self.stack = []

        def visit_FunctionDef(self, node):  # pylint: disable=invalid-name
            self.stack.append(node.name)
            self.generic_visit(node)
            self.stack.pop()

        def visit_Attribute(self, node):  # pylint: disable=invalid-name
            if node.attr == attr:
                out.append(".".join(self.stack))
            self.generic_visit(node)

        def visit_Call(self, node):  # pylint: disable=invalid-name
            if isinstance(node.func, ast.Name) and node.func.id == attr:
                out.append(".".join(self.stack))
            self.generic_visit(node)

    Visitor().visit(tree)
    return out


def test_one_function_applies_an_optimizer_update():
    """`optax.apply_updates` appears in `simulate.apply_update` only: the engine's scan step
    (model problems, the exact testbed, the LM population) and the learner's `update` (the
    pipeline, SFT) both call it."""
    where = {}
    for mod, path in _modules().items():
        for fn in _calls(path, "apply_updates"):
            where.setdefault(mod, []).append(fn)
    assert where == {"async_grpo.simulate": ["apply_update"]}, where
    callers = {mod for mod, path in _modules().items() if _calls(path, "apply_update")}
    assert callers == {"async_grpo.simulate", "async_grpo.rl.learner"}, callers


def test_one_engine_owns_the_stale_loop():
    """Only the engine (`simulate.make_train`) draws a scheduled lag inside a program and holds
    the snapshot ring; the LM population and the exact testbed plug an update into it. (The
    pipeline's thread draws its lags through `staleness.StalenessPolicy`.)"""
    where = {}
    for mod, path in _modules().items():
        for fn in _calls(path, "scheduled_lag"):
            where.setdefault(mod, []).append(fn)
    assert set(where) == {"async_grpo.simulate", "async_grpo.staleness"}, where
    assert where["async_grpo.simulate"] == ["make_train.lag_of"], where
    for mod in ("async_grpo.rl.population", "async_grpo.testbeds.exact"):
        assert _calls(_modules()[mod], "scan") == [], f"{mod} runs its own scan over steps"
        assert "make_train" in open(_modules()[mod], encoding="utf-8").read()


@pytest.mark.parametrize("name,home", [
    ("scheduled_lag", "async_grpo.staleness"), ("CollapseRules", "async_grpo.collapse"),
    ("tree_cosine", "async_grpo.diagnostics"), ("write_json_atomic", "async_grpo.files"),
    ("parse_mesh_spec", "async_grpo.sharding")])
def test_one_definition_each(name, home):
    defs = []
    for mod, path in _modules().items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        defs += [mod for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                 and n.name == name]
    assert defs == [home], defs


# Binaries that tests, notebooks or other binaries import in-process. (Most other binaries still
# define their flags at import, so they are only ever run as programs.)
IMPORTED_BINARIES = ("experiments.reproduce", "experiments.study", "experiments.report",
                     "experiments.exact_sweep", "experiments.sweep", "experiments.lr_controller",
                     "experiments.plot_staleness", "experiments.delayed_quadratic",
                     "bench.decode_gpu", "experiments.warm_start")


def test_binaries_imported_in_process_can_be_imported_together():
    """These binaries define their absl flags only when run as the binary (or define none
    another one defines): importing all of them in one process, as a test worker or a notebook
    does, must not raise DuplicateFlagError."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % (
        IMPORTED_BINARIES,)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
