"""The house rules as contracts over the import graph (read from the source with `ast`, nothing imported):
scripts are leaves, the package's layers only import downwards, and no module cycle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}
# Layers, lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = [
    ["density.runtime"],
    ["density.audio"],
    [
        "density.config",
        "density.models",
        "density.losses",
        "density.augment",
        "density.metrics",
        "density.dataset",
        "density.data",
    ],
    ["density.features", "density.vocoders"],
    ["density.inference"],
    ["density.evaluation"],
    ["density.gan"],
    ["density.demo", "density.studio"],
    ["density.commands", "density.digits", "density.report", "density.vocoder_eval"],  # entry points and aliases
]
GAN_TRAINING = ("density.gan", "density.losses", "density.augment")
MODEL_CODE = (
    "density.models",
    "density.vocoders",
    "density.features",
    "density.inference",
    "density.gan",
    "density.evaluation",
    "density.audio",
)


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every module a file imports (top level or inside functions), absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from density.x import module`
    return found


def package_graph():
    modules = {module_name(p): p for p in (ROOT / "density").rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules and m not in (name, "density")}
        for name, path in modules.items()
    }


def layer(module):
    for k, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return k
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it where it belongs")


def under(module, prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_module_imports_a_script():
    users = ["bench", "density"]
    offenders = [
        (str(p.relative_to(ROOT)), m)
        for folder in users
        for p in (ROOT / folder).rglob("*.py")
        for m in imports(p)
        if m.split(".")[0] in SCRIPTS
    ]
    offenders += [(p.name, m) for p in ROOT.glob("*.py") for m in imports(p) if m.split(".")[0] in SCRIPTS]
    assert not offenders, f"imports of top-level scripts (move the code into density/): {offenders}"
    importlib_users = [
        str(p.relative_to(ROOT))
        for folder in users
        for p in (ROOT / folder).rglob("*.py")
        if any(f'"{s}"' in p.read_text() or f"'{s}'" in p.read_text() for s in SCRIPTS if "importlib" in p.read_text())
    ]
    assert not importlib_users, f"modules that may load a script through importlib: {importlib_users}"


def test_layers_only_import_downwards():
    upward = [(a, b) for a, deps in package_graph().items() for b in deps if layer(b) > layer(a)]
    assert not upward, f"upward imports (lower layer -> higher layer): {sorted(upward)}"


def test_vocoder_and_evaluation_code_do_not_import_gan_training():
    bad = [
        (a, b)
        for a, deps in package_graph().items()
        if under(a, ("density.vocoders", "density.evaluation"))
        for b in deps
        if under(b, GAN_TRAINING)
    ]
    assert not bad, bad


def test_run_infrastructure_imports_no_model_code():
    bad = [
        (a, b)
        for a, deps in package_graph().items()
        if under(a, ("density.runtime",))
        for b in deps
        if under(b, MODEL_CODE) or not under(b, ("density.runtime",))
    ]
    assert not bad, bad


def test_no_import_cycles():
    graph = package_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_scripts_are_thin():
    """A top-level script parses nothing itself: it imports a command's main from the package and runs it."""
    for path in ROOT.glob("*.py"):
        tree = ast.parse(path.read_text())
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name} defines {defs}: library code belongs in density/"
        assert len(path.read_text().splitlines()) <= 20, f"{path.name} is not a thin script"


def test_functions_fit_on_a_screen():
    """No function of the package or the scripts is longer than 60 lines (tests and bench/ excepted)."""
    files = [*ROOT.glob("*.py"), *(ROOT / "density").rglob("*.py")]
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long
