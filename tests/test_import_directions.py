"""design.md "Which way imports run", checked on the source with ``ast`` (no module is imported).

cli -> train -> tasks -> (models, diffusion, ood, data, checkpoints); diffusion imports no Flax and
nothing of diffjax outside diffusion, imports no ``_private`` name from another module and has no
import cycle; models never import tasks / train / cli; tasks never import train / cli; nothing but
``__main__`` and ``colab`` (the notebooks' helpers) import the CLI. Function-level (lazy) imports count as imports.
"""
from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "diffjax"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _parse_all():
    """{module: (path, ast tree)} for every .py under diffjax/."""
    return {_module_name(p): (p, ast.parse(p.read_text(), filename=str(p))) for p in sorted(PKG.rglob("*.py"))}


MODULES = _parse_all()


def _imports(module: str, tree: ast.AST):
    """Yields (imported module, imported name or None, line) for every import statement in ``tree``.

    ``from a.b import c`` yields ("a.b.c", None) when a.b.c is a module of diffjax, else ("a.b", "c").
    """
    is_pkg = MODULES[module][0].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module
            for alias in node.names:
                full = f"{src}.{alias.name}"
                if full in MODULES:
                    yield full, None, node.lineno
                else:
                    yield src, alias.name, node.lineno


def _where(module, line):
    return f"{MODULES[module][0].relative_to(ROOT)}:{line}"


def _top(name: str) -> str:
    """diffjax.<top>.x -> <top>; "" for names outside diffjax."""
    parts = name.split(".")
    if parts[0] != "diffjax":
        return ""
    return parts[1] if len(parts) > 1 else "diffjax"


def _violations(pred):
    out = []
    for module, (_, tree) in MODULES.items():
        for target, name, line in _imports(module, tree):
            why = pred(module, target, name)
            if why:
                out.append(f"{_where(module, line)}: {module} imports {target}{'.' + name if name else ''} ({why})")
    return out


# Layers, higher may import lower, never the other way. Top-level helpers outside these packages
# (e.g. diffjax/runtime.py) sit at the bottom with the leaf packages.
LEAVES = {"models", "diffusion", "ood", "data", "checkpoints"}
RANK = {"cli": 3, "inference": 3, "__main__": 4, "colab": 4, "train": 2, "tasks": 1}  # inference: the notebook API; colab: its helpers


# Modules ranked apart from their package: the evaluation harness adaptor serves a trained run (load_run), so it
# sits with inference; the rest of evaluation/ stays at the bottom.
MODULE_RANK = {"diffjax.evaluation.harness": 3, "diffjax.evaluation.lm_eval": 3}


def _rank(top: str) -> int:
    return RANK.get(top, 0)


def _module_rank(module: str) -> int:
    return MODULE_RANK.get(module, _rank(_top(module)))


def test_only_main_imports_the_cli():
    def pred(module, target, name):
        if _top(target) == "cli" or (target == "diffjax" and name == "cli"):
            entry = ("diffjax.__main__", "diffjax.colab")  # python -m diffjax, and the notebooks' in-process CLI
            return None if module in entry else "only diffjax/__main__.py and diffjax/colab.py may import diffjax.cli"
        return None

    assert _violations(pred) == []


def test_train_never_imports_cli():
    assert _violations(lambda m, t, n: "train -> cli is upward" if _top(m) == "train" and _top(t) == "cli" else None) == []


def test_tasks_never_import_train_or_cli():
    def pred(module, target, name):
        if _top(module) == "tasks" and _top(target) in ("train", "cli"):
            return "a task reaches the mesh through a runtime context, never the trainer"
        return None

    assert _violations(pred) == []


def test_models_never_import_tasks_train_or_cli():
    def pred(module, target, name):
        return "models know nothing of tasks or training" if _top(module) == "models" and _top(target) in (
            "tasks", "train", "cli") else None

    assert _violations(pred) == []


def test_no_upward_imports_between_layers():
    """cli -> train -> tasks -> leaves: a module never imports a higher layer."""

    def pred(module, target, name):
        src, dst = _top(module), _top(target)
        if not dst or dst == "diffjax" or (src == dst and _module_rank(module) >= _module_rank(target)):
            return None
        if _module_rank(target) > _module_rank(module):
            return f"{module} (rank {_module_rank(module)}) may not import {target} (rank {_module_rank(target)})"
        return None

    assert _violations(pred) == []


def test_diffusion_imports_no_flax_and_nothing_else_of_diffjax():
    def pred(module, target, name):
        if _top(module) != "diffusion":
            return None
        if target.split(".")[0] == "flax":
            return "diffusion is pure math: no Flax"
        if target.split(".")[0] == "diffjax" and _top(target) != "diffusion":
            return "diffusion imports nothing of diffjax outside diffusion"
        return None

    assert _violations(pred) == []


def test_diffusion_imports_no_private_names_across_modules():
    out = []
    for module, (_, tree) in MODULES.items():
        if _top(module) != "diffusion":
            continue
        aliases = {}  # local name -> imported diffusion module
        for target, name, line in _imports(module, tree):
            if _top(target) == "diffusion" and target != module:
                if name is not None and name.startswith("_"):
                    out.append(f"{_where(module, line)}: from {target} import {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffjax.diffusion"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("diffjax.diffusion.") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{_where(module, node.lineno)}: {node.value.id}.{node.attr} "
                           f"(private name of {aliases[node.value.id]})")
    assert out == [], "a helper two modules need is public in the lower one:\n" + "\n".join(out)


def test_no_import_cycles_among_diffusion_modules():
    graph = defaultdict(set)
    for module, (_, tree) in MODULES.items():
        if _top(module) != "diffusion":
            continue
        for target, _, _ in _imports(module, tree):
            if _top(target) == "diffusion" and target in MODULES and target != module and target != "diffjax.diffusion":
                graph[module].add(target)
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]) if n in stack else f"{m} -> {n}")
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def _flax_modules(module: str, tree: ast.AST):
    """Yields (class name, line) for every class of ``tree`` that subclasses a Flax ``Module``
    (``nn.Module``, ``linen.Module``, ``flax.linen.Module`` or a bare ``Module``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name == "Module":
                    yield node.name, node.lineno


def test_no_flax_module_under_tasks():
    """A task binds models; the Flax modules themselves live in diffjax/models/."""
    out = [f"{_where(m, line)}: class {name} (a Flax module: move it to diffjax/models/)"
           for m, (_, tree) in MODULES.items() if _top(m) == "tasks" for name, line in _flax_modules(m, tree)]
    assert out == []


def _package_imports(src: str, forbidden: tuple[str, ...], why: str) -> list[str]:
    """Violations of "package ``src`` never imports any of ``forbidden``" (top-level package names)."""
    return _violations(lambda m, t, n: why if _top(m) == src and _top(t) in forbidden else None)


def test_data_imports_no_ood_tasks_train_or_cli():
    """Readers of sets and user inputs sit below ood/ and tasks/ (their errors come from diffjax.errors)."""
    assert _package_imports("data", ("ood", "tasks", "train", "cli", "inference"),
                            "data/ reads sets and inputs; it knows nothing of OOD scoring or tasks") == []


def test_ood_never_imports_tasks():
    assert _package_imports("ood", ("tasks", "train", "cli", "inference"),
                            "ood/ holds the scores and reports that tasks bind") == []


def test_errors_imports_nothing_of_diffjax():
    _bottom_module_imports_nothing("diffjax.errors")


def test_the_checker_sees_violations():
    """The checks above are not vacuous: a planted upward / private / cyclic import is found."""
    src = ("from diffjax.diffusion.masked import _check_tokens\nimport flax.linen as nn\n"
           "from diffjax.train import trainer\nfrom diffjax.diffusion import uniform\n")
    tree = ast.parse(src)
    MODULES["diffjax.diffusion._planted"] = (PKG / "diffusion" / "_planted.py", tree)
    try:
        found = list(_imports("diffjax.diffusion._planted", tree))
        assert ("diffjax.diffusion.masked", "_check_tokens", 1) in found
        assert ("flax.linen", None, 2) in found
        assert ("diffjax.train.trainer", None, 3) in found
        assert ("diffjax.diffusion.uniform", None, 4) in found
        with pytest.raises(AssertionError):
            test_diffusion_imports_no_flax_and_nothing_else_of_diffjax()
        with pytest.raises(AssertionError):
            test_diffusion_imports_no_private_names_across_modules()
        with pytest.raises(AssertionError):
            test_no_upward_imports_between_layers()
    finally:
        del MODULES["diffjax.diffusion._planted"]
    planted = {"diffjax.tasks._planted": "import flax.linen as nn\nclass Net(nn.Module):\n    pass\n",
               "diffjax.data._planted": "from diffjax.ood import deploy\n",
               "diffjax.ood._planted": "from diffjax.tasks import base\n",
               "diffjax.errors": "from diffjax import runtime\n"}
    saved = MODULES.get("diffjax.errors")
    for check, (module, src) in zip((test_no_flax_module_under_tasks, test_data_imports_no_ood_tasks_train_or_cli,
                                     test_ood_never_imports_tasks, test_errors_imports_nothing_of_diffjax),
                                    planted.items()):
        MODULES[module] = (PKG / (module.split(".", 1)[1].replace(".", "/") + ".py"), ast.parse(src))
        try:
            with pytest.raises(AssertionError):
                check()
        finally:
            del MODULES[module]
            if module == "diffjax.errors":
                MODULES[module] = saved
    assert LEAVES  # the leaf packages are documented above


def _bottom_module_imports_nothing(module: str) -> None:
    def pred(m, target, name):
        if m == module and target.split(".")[0] == "diffjax":
            return f"{module} is the bottom layer"
        return None

    assert _violations(pred) == []


def test_runtime_context_imports_nothing_of_diffjax():
    """diffjax/runtime.py sits below tasks and train (both use it): it imports only JAX / numpy."""
    _bottom_module_imports_nothing("diffjax.runtime")
