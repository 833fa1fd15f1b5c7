"""bench's layout: one subpackage per study over a shared part; shared code imports no study, a study
imports no other study, and no bench module imports itself back through others."""
import ast
import pathlib

import bench

ROOT = pathlib.Path(bench.__file__).parent
SHARED = {"shared", "stats"}
STUDIES = {"efficiency", "paired", "throughput", "load"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imported(name: str) -> set[str]:
    """The bench modules `name` imports anywhere in its source (lazy imports and type-only ones too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {target for target in found if target in MODULES and target != name}


def part(name: str) -> str:
    """The subpackage a module belongs to ("" for the modules of `python -m bench` at the top)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else ""


def test_every_subpackage_is_shared_or_a_study():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages == SHARED | STUDIES


def test_shared_code_imports_no_study_and_nothing_above_it():
    wrong = {name: sorted(target for target in imported(name) if part(target) not in SHARED)
             for name in MODULES if part(name) in SHARED}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_a_study_imports_only_itself_and_the_shared_part():
    wrong = {name: sorted(target for target in imported(name) if part(target) not in SHARED | {part(name)})
             for name in MODULES if part(name) in STUDIES}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_no_import_cycles():
    graph = {name: imported(name) for name in MODULES}
    done, on_path, cycles = set(), [], []

    def visit(name):
        if name in on_path:
            cycles.append(on_path[on_path.index(name):] + [name])
            return
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert cycles == []


def test_the_checks_see_the_imports():
    assert "bench.shared.records" in imported("bench.efficiency.experiment")
    assert "bench.shared.plain_vllm" in imported("bench.throughput.scoring_throughput")
    assert "bench.paired.report" in imported("bench.report")
