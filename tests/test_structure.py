"""Structure facts of the package, read from the source with `ast` and `importlib` (no module is imported): no import
cycle among refine's modules, no private name imported across files, no string-keyed settings reads, no file over
400 lines, function-level imports of the rebuilt wing each with a reason, and a README that stays a front door whose
commands name paths and modules that exist."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refine"
WING = ("refine/preflight/", "refine/driver/", "refine/worker/", "refine/settings.py", "refine/main.py",
        "refine/files.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """refine modules `path` imports anywhere in the file (module or function level), resolved like Python does:
    `from a.b import c` names the submodule a.b.c when there is one, else the module a.b."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle_among_refine_modules():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    assert graph["refine.main"], "the graph must see the entry point's imports"
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            assert cycle is None, " -> ".join(cycle)


def test_the_checks_before_ray_know_nothing_of_driver_or_worker_and_the_worker_nothing_of_the_driver():
    for name, path in MODULES.items():
        targets = imported_modules(path)
        if name.startswith("refine.preflight"):
            assert not {t for t in targets if t.startswith(("refine.driver", "refine.worker"))}, name
        if name.startswith("refine.worker"):
            assert not {t for t in targets if t.startswith(("refine.driver", "refine.preflight"))}, name


def test_no_private_name_is_imported_across_files():
    offenders = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("refine")):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_no_string_keyed_settings_reads_are_left():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in MODULES.values()
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bmeta(_info)?\[", line)]
    assert not hits, hits


def test_every_file_of_the_package_has_at_most_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".md")
            for n in [len(p.read_text().splitlines())] if n > 400}
    assert not long, long


def test_function_level_imports_of_the_rebuilt_wing_give_a_reason():
    missing = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        if not rel.startswith(WING):
            continue
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                first = node.lineno - 1  # walk up over the imports of the same group to its leading comment
                while first > 0 and (lines[first - 1].strip().startswith(("import ", "from "))
                                     or not lines[first - 1].strip()):
                    first -= 1
                group = lines[first:node.end_lineno]
                if not any("#" in line for line in group) and not lines[first - 1].strip().startswith("#"):
                    missing.append(f"{rel}:{node.lineno}")
    assert not missing, missing


def readme_blocks() -> list[tuple[bool, str]]:
    """(marked runnable on CPU, text) of every fenced code block of the README."""
    text = (ROOT / "README.md").read_text()
    return [(bool(mark), body) for mark, body in
            re.findall(r"(<!-- cpu-runnable -->\n)?```[a-z]*\n(.*?)```", text, flags=re.S)]


def test_the_readme_is_a_front_door_whose_commands_name_what_exists():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    for _, body in readme_blocks():
        for path in re.findall(r"(?<![\w/.-])((?:verl|scripts|refine|data|configs|docs)/[\w./-]+\.(?:sh|py|md|yaml|parquet))",
                               body):
            assert (ROOT / path).exists(), path
        for module in re.findall(r"python -m ([\w.]+)", body):
            assert importlib.util.find_spec(module) is not None, module
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text()):
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("block", [body for runnable, body in readme_blocks() if runnable])
def test_the_readme_commands_marked_cpu_runnable_run(block):
    for command in [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]:
        args = command.split()
        assert args[:2] == ["python", "-m"], command
        result = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip(), command


def test_the_family_table_is_the_only_place_that_names_a_model_family():
    """No model-type string and no `isinstance` against a model, config or cache class in refine/ outside
    refine/models/families.py (LaCT's own package aside): a family's facts live in its table entry."""
    from refine.models.families import supported_model_types

    types = set(supported_model_types())
    class_name = re.compile(r"(?<!Dict)(?<!List)(Config|ForCausalLM|Model|Cache)$")  # (not omegaconf's)
    offenders = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        if rel in ("refine/models/families.py",) or rel.startswith("refine/models/lact/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in types:
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = [n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])]
                offenders += [f"{rel}:{node.lineno} isinstance(..., {n})" for n in named if class_name.search(n)]
    assert not offenders, offenders
