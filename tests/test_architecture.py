"""Architecture rules: the folders are the architecture, and imports run one way.

The import graph counts every ``import`` statement in a module, including the ones inside
functions (which hide a cycle from Python but not from a reader): library code never imports
command-line code, inference (midi, audio, models, sampling, pipeline, server, the metrics) never
imports training or the command line, and no two modules need each other. Modules stay under
``MAX_MODULE_LINES`` unless ``LARGE_MODULES`` states why not (docs/DESIGN.md has the map).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "specdiff"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and len(node.test.comparators) == 1
        and isinstance(node.test.comparators[0], ast.Constant)
        and node.test.comparators[0].value == "__main__"
    )


def _nodes_outside_main_guard(tree: ast.Module):
    """Every node of ``tree`` except those under ``if __name__ == "__main__":``.

    That block runs only when the file is executed as a script (``python -m specdiff.some.module``), as the
    module ``__main__``, a copy apart from the importable module: what it imports is the script's
    entry into the command line, not a dependency of the module.
    """
    todo = [node for node in tree.body if not _is_main_guard(node)]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_main_guard(child))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (``specdiff.x`` names)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _nodes_outside_main_guard(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # ``from specdiff import mel`` imports the submodule specdiff.audio.mel
                candidates = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                # the longest package module the name refers to
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and candidate != "specdiff":
                    targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # load_inverter is imported inside a function of pipeline.outputs: the graph must still see it
    assert "specdiff.audio.inverters" in graph["specdiff.pipeline.outputs"]
    # ``from specdiff.audio import vocoder`` inside a function imports the submodule
    assert "specdiff.audio.vocoder" in graph["specdiff.audio.inverters"]


def test_find_cycles_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import cycles in specdiff: {cycles}"


def is_command_module(name: str) -> bool:
    return name == "specdiff.commands" or name.startswith("specdiff.commands.") or name in COMMAND_MODULES


def test_library_never_imports_commands():
    graph = import_graph()
    commands = {m for m in graph if is_command_module(m)}
    library = set(graph) - commands - ENTRY_POINTS
    offenders = {m: sorted(graph[m] & commands) for m in library if graph[m] & commands}
    assert offenders == {}, f"library modules importing command-line code: {offenders}"


# The module whose job is the command line besides specdiff.commands: the entry point.
COMMAND_MODULES = {"specdiff.cli"}
# Entry points that only hand over to the command line.
ENTRY_POINTS = {"specdiff.__main__"}


def test_no_tracked_file_points_outside_the_repository():
    """The repository describes the original system itself (docs/ORIGINAL.md)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needles = ("../" + "shared", "shared/" + "spec.md")
    offenders = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if any(needle in text for needle in needles):
            offenders.append(name)
    assert offenders == []


def test_no_test_module_imports_another():
    """Shared test helpers live in tests/conftest.py, not in a test module that others import."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == []


def test_every_citation_of_the_original_resolves():
    """Comments cite docs/ORIGINAL.md as "ORIGINAL.md §N.M" (or "spec §N.M" in a few modules, and a
    bare "§N.M"): each cited section must exist there (§9.N: the N-th pitfall)."""
    original = (ROOT / "docs" / "ORIGINAL.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} §([0-9.]+) ", original, flags=re.M))
    pitfall_text = original.split("## §9 ", 1)[1].split("\n## ", 1)[0]
    sections |= {f"9.{n}" for n in re.findall(r"^(\d+)\. ", pitfall_text, flags=re.M)}
    files = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    cited: dict[str, set[str]] = {}
    for name in files.stdout.split():
        if name == "docs/ORIGINAL.md" or not (ROOT / name).is_file():
            continue
        text = (ROOT / name).read_text(encoding="utf-8")
        for first, last in re.findall(r"(?:ORIGINAL\.md|spec) §(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", text):
            for number in filter(None, (first, last)):
                cited.setdefault(number, set()).add(name)
    assert cited, "no citations found: the pattern is wrong"
    missing = {number: sorted(names) for number, names in cited.items() if number not in sections}
    assert missing == {}


# ---------------------------------------------------------------------------------------------
# Folders: inference never depends on training or the command line
# ---------------------------------------------------------------------------------------------

#: What synthesis needs at run time (and the metrics, which the server and evaluate share).
INFERENCE = (
    "specdiff.midi",
    "specdiff.audio",
    "specdiff.models",
    "specdiff.sampling",
    "specdiff.pipeline",
    "specdiff.server",
    "specdiff.evaluation.metrics",
)
#: What inference must never import, directly or through a function-level import.
NOT_FOR_INFERENCE = ("specdiff.training", "specdiff.commands", "specdiff.cli")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_inference_never_imports_training_or_commands():
    graph = import_graph()
    inference = [m for m in graph if _within(m, INFERENCE)]
    assert "specdiff.pipeline.pipeline" in inference and "specdiff.server.synth" in inference
    offenders = {m: sorted(t for t in graph[m] if _within(t, NOT_FOR_INFERENCE)) for m in inference}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_inference_reaches_no_training_module_indirectly():
    """Also through other modules: what a synthesis run can import stays out of training."""
    graph = import_graph()
    seen: set[str] = set()
    todo = [m for m in graph if _within(m, INFERENCE)]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    assert sorted(m for m in seen if _within(m, NOT_FOR_INFERENCE)) == []


# ---------------------------------------------------------------------------------------------
# Module size: one job per module
# ---------------------------------------------------------------------------------------------

MAX_MODULE_LINES = 600
#: Modules allowed past the limit, each with the reason it stays whole.
LARGE_MODULES = {
    "specdiff/midi/reader.py": "one job: the SMF parser and pretty_midi's note rules, which read the same events",
    "specdiff/sampling/sampler.py": "one job: the samplers (DDPM, DDIM, diffusers adapter) behind one step interface",
    "specdiff/commands/synth.py": "one command: the synth options, their checks and the run",
    "specdiff/models/decoder.py": "one network: the FiLM decoder and its layers (diffusers' T5FilmDecoder layout)",
}


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    too_large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES and name not in LARGE_MODULES}
    assert too_large == {}, f"modules over {MAX_MODULE_LINES} lines (split them, or add a reason): {too_large}"
    stale = sorted(name for name in LARGE_MODULES if sizes.get(name, 0) <= MAX_MODULE_LINES)
    assert stale == [], f"no longer over the limit (drop from LARGE_MODULES): {stale}"


#: Longest function (decorators and docstring included) anywhere in the package.
MAX_FUNCTION_LINES = 80


def long_functions(folder: Path) -> dict[str, int]:
    """``path:line name`` (path from ``folder``) -> length of every function under ``folder`` longer
    than the limit."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                found[f"{path.relative_to(folder)}:{node.lineno} {node.name}"] = node.end_lineno - start + 1
    return found


def test_long_functions_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n\ndef g():\n    pass\n", encoding="utf-8")
    assert long_functions(tmp_path) == {"m.py:2 f": MAX_FUNCTION_LINES + 2}


def test_functions_stay_short():
    """A function does one job: a route is a short function of a request and the shared state, a
    command hands its steps to helpers, a generator's draws are split among named parts."""
    found = long_functions(PACKAGE)
    assert found == {}, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_package_root_holds_only_shared_leaves():
    """Everything else lives in the folder of its subsystem."""
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "atomic.py", "cli.py", "constants.py", "errors.py", "hardware.py"]
