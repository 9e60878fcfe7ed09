"""The package's structure: no import circle anywhere in kcnn/ (imports inside functions count too), and
workflows that take no decision by an architecture's name (what they need to know of a model is declared
beside its builder: kcnn.registry.TrainingHooks, CheckpointLayout, the weights it registers)."""

import ast
import os
import shutil

import pytest

import kcnn

PACKAGE = os.path.dirname(os.path.abspath(kcnn.__file__))


def _modules():
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path, modules):
    """The kcnn modules `path` imports, at the top or inside a function, or names in a string (importlib's
    `import_module("kcnn.x")`, a table of module names): an import made at run time is an import too."""
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("kcnn.") \
                and not any(c.isspace() for c in node.value) \
                and node.value.split(":")[0] in modules:
            names = [node.value.split(":")[0]]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from kcnn.data import sources` imports the module kcnn.data.sources; `from kcnn.data import load`
            # takes a name from kcnn.data itself
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("kcnn"):
                targets.add(name)
    return targets


def test_no_import_circle_in_the_package():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    circles, state = [], {}

    def visit(name, trail):  # depth-first search; a grey node met again closes a circle
        state[name] = "grey"
        for target in sorted(graph[name]):
            if state.get(target) == "grey":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "black"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_the_checker_sees_a_circle():
    """The check above can fail: two modules of a fake package that import each other are found."""
    modules = {"kcnn.a": None, "kcnn.b": None, "kcnn.c": None}
    source = {"kcnn.a": "def f():\n    from kcnn.b import g\n", "kcnn.b": "import kcnn.a\n",
              "kcnn.c": "import importlib\nKINDS = {'a': ('kcnn.a', 'A')}\nimportlib.import_module('kcnn.b')\n"}
    graph = {}
    for name, text in source.items():
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kcnn_structure_{name}.py")
        with open(path, "w") as f:
            f.write(text)
        graph[name] = _imports(path, modules)
        os.remove(path)
    assert graph == {"kcnn.a": {"kcnn.b"}, "kcnn.b": {"kcnn.a"}, "kcnn.c": {"kcnn.a", "kcnn.b"}}


@pytest.mark.parametrize("module", ["training/train.py", "training/finetune.py", "training/job.py",
                                    "training/callbacks.py", "training/evaluate.py", "runs/rundir.py", "config.py"])
def test_workflows_take_no_decision_by_architecture_name(module):
    names = {info.name for info in kcnn.list_models()}
    tree = ast.parse(open(os.path.join(PACKAGE, module)).read())
    decisions = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("startswith", "endswith"):
            operands = node.args
        else:
            continue
        for operand in operands:
            for constant in ast.walk(operand):
                if isinstance(constant, ast.Constant) and isinstance(constant.value, str) and \
                        any(constant.value == name or (len(constant.value) > 2 and name.startswith(constant.value))
                            for name in names):
                    decisions.append(f"line {node.lineno}: {constant.value!r}")
    assert not decisions, f"kcnn/{module} decides by architecture name: {decisions}"


def test_every_mutant_of_tests_mutants_still_applies(tmp_path):
    """tests/mutants.py's deliberate bugs (run by hand: `python tests/mutants.py`) still fit today's code:
    each one's text is in its file exactly once and the mutated file compiles."""
    import mutants  # tests/mutants.py (tests/ is on sys.path)

    assert len(mutants.MUTANTS) >= 20 and len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS)
    for mutant in mutants.MUTANTS:
        target = tmp_path / mutant.name / mutant.path
        target.parent.mkdir(parents=True)
        shutil.copy(os.path.join(mutants.ROOT, mutant.path), target)
        mutants.apply(mutant, str(tmp_path / mutant.name))
        assert target.read_text() != open(os.path.join(mutants.ROOT, mutant.path)).read()


@pytest.mark.parametrize("module", ["config.py", "recipes.py", "cli/arguments.py", "data/pipeline.py", "errors.py"])
def test_configs_and_the_flag_generator_import_no_keras_or_backend_at_the_top(module):
    """`kcnn --help` builds its flags from these files: their top-level imports name no Keras, TensorFlow, PyTorch
    or JAX (a function may import one when it runs)."""
    heavy = ("keras", "tensorflow", "torch", "jax")
    tree = ast.parse(open(os.path.join(PACKAGE, module)).read())
    found = []
    for node in tree.body:  # the module's own statements: what importing it runs
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [name for name in names if name.split(".")[0] in heavy]
    assert not found, f"kcnn/{module} imports {found} at the top"


# Public functions allowed without full type hints, each named with the reason (none today).
UNANNOTATED = set()


def test_every_public_function_has_type_hints():
    """Every public function and method (name without a leading `_`, at the top of a module or in a class whose
    name has none) has type hints on every parameter and its return value (py.typed promises them)."""
    missing = []
    for folder, _, names in os.walk(PACKAGE):
        for file_name in sorted(names):
            if not file_name.endswith(".py"):
                continue
            path = os.path.join(folder, file_name)
            module = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
            for node in ast.parse(open(path).read()).body:
                items = [node]
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    items = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                for function in items:
                    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                            or function.name.startswith("_"):
                        continue
                    signature = function.args
                    arguments = [a for a in [*signature.posonlyargs, *signature.args, *signature.kwonlyargs,
                                             signature.vararg, signature.kwarg]
                                 if a is not None and a.arg not in ("self", "cls")]
                    # __init__ aside, the return too: `-> None` says "returns nothing" to a reader and a checker
                    if (function.returns is None or not all(a.annotation for a in arguments)) \
                            and (module, function.name) not in UNANNOTATED:
                        missing.append(f"kcnn/{module}:{function.lineno} {function.name}")
    assert not missing, f"public functions without type hints: {', '.join(sorted(missing))}"
