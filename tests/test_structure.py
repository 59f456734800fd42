"""The shape the code promises (README's layout): entry points as short phases naming no mitigation."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train.py", "evaluate.py", "preprocess.py")


def functions(path: Path):
    tree = ast.parse(path.read_text())
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]


def test_train_names_no_mitigation():
    from mitigations import MITIGATIONS
    code = (ROOT / "train.py").read_text()
    for name in [*MITIGATIONS, "moe", "GroupDRO", "FairMeta"]:
        assert not re.search(rf"\b{name}\b", code, flags=re.IGNORECASE), f"train.py names {name}"


def test_no_entry_point_is_imported_as_a_library():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py")]:
        if path.parent.name == "tests" or path.name in ENTRY_POINTS:   # bench scripts run them as commands
            continue
        imported = {node.names[0].name if isinstance(node, ast.Import) else node.module
                    for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))}
        assert not imported & {"train", "evaluate", "preprocess"}, f"{path.relative_to(ROOT)} imports an entry point"
    evaluate = ast.parse((ROOT / "evaluate.py").read_text())
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) and "train" in
                   ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module]) for n in ast.walk(evaluate))


def test_entry_point_functions_fit_on_a_screen():
    for name in ("train.py", "evaluate.py"):
        longest = max(functions(ROOT / name), key=lambda f: f[1])
        assert longest[1] <= 80, f"{name}: {longest[0]} is {longest[1]} lines"


def load_fairness_matrix(monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(str(ROOT / "bench"))     # as `python bench/X.py` has it: bench/_common
    spec = importlib.util.spec_from_file_location("fairness_matrix", ROOT / "bench" / "fairness_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    return matrix


def test_fairness_matrix_trains_every_shipped_method_config(monkeypatch):
    """bench/fairness_matrix.py's default methods cover every shipped training config of an
    attribute, and each lays its own model name / sampler / fairness section over the recipe."""
    matrix = load_fairness_matrix(monkeypatch)
    used = {matrix.METHODS[m].replace("ATTR", "sex").split()[0] for m in matrix.DEFAULT_METHODS}
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")
               if not p.stem.endswith("_age") and p.stem not in ("demo", "matrix", "preprocess_study")}
    assert used == shipped
    sets = dict(s.split("=", 1) for s in matrix.method_overrides(matrix.METHODS["vnet"], "sex"))
    assert sets["model.name"] == '"vnet"' and sets["fairness.method"] == '"none"'
    sets = dict(s.split("=", 1) for s in matrix.method_overrides(matrix.METHODS["dro_only"], "age"))
    assert sets["fairness.attribute"] == '"age"' and sets["fairness.dro.warmup"] == "0.5"
    assert sets["model.name"] == '"nnunet"'


def test_fairness_matrix_names_a_run_stopped_before_its_first_checkpoint(monkeypatch, tmp_path):
    """A run killed before its first last.pt leaves a folder train.py will neither start in nor
    resume; the bench says so in one line instead of "failed, see the log"."""
    import argparse
    matrix = load_fairness_matrix(monkeypatch)
    run = tmp_path / "runs" / "baseline" / "seed1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit, match=r"seed1 exists without last.pt .*remove it"):
        matrix.train_run("baseline", 1, argparse.Namespace(out=tmp_path, epochs=80))
    assert (run / "config.yaml").is_file()      # nothing removed on the user's behalf


LIBRARY = ("config", "audit", "data", "engine", "fairness", "mitigations", "models")


def import_graph() -> dict:
    """{module: modules of the library it imports anywhere in its file, lazily too}."""
    modules = {}
    for path in [ROOT / "config.py", *[p for pkg in LIBRARY[1:] for p in sorted((ROOT / pkg).rglob("*.py"))]]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {t for t in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if t in modules}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}
    return graph


def test_the_library_has_no_import_circles():
    graph = import_graph()
    assert "data.preprocess_settings" in graph["data.cache"] and "config" not in graph["mitigations.samplers"]
    state, circles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


def test_the_audit_package_is_the_top_of_the_library():
    """audit/ orchestrates evaluate.py's modes; no other library module reaches up into it."""
    graph = import_graph()
    upward = {m: sorted(t for t in targets if t.startswith("audit")) for m, targets in graph.items()
              if not m.startswith("audit")}
    assert not any(upward.values()), {m: t for m, t in upward.items() if t}
    assert len((ROOT / "evaluate.py").read_text().splitlines()) <= 300
