"""The import graph holds its shape: no cycles, imports that only point down (app, worker → stillhouse → distill), a
core (``distill``) that imports nothing of the serving stack, and an API that starts without torch.

The graph is read with ``ast`` from the source (nothing is imported), so a test here cannot pass by accident of
import order. Two checks run real interpreters: the API app is built without torch being loaded, and the core runs
a small distillation with FastAPI, Celery, SQLAlchemy and the service's packages made unimportable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "stillhouse", "distill", "client")
# which package may import which (a package may always import itself)
ALLOWED = {
    "app": {"stillhouse", "distill"},
    "worker": {"stillhouse", "distill"},
    "stillhouse": {"distill"},
    "distill": set(),
    "client": {"distill"},
}
SERVING_STACK = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "uvicorn")
# function-level imports of the project's own modules are allowed here only: the API loads the torch side of the
# core on first use so that it starts (and answers polls) without torch
LAZY_CORE_GATEWAY = "app.model_checks"


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            mods[name] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported dotted name, line, inside a function)`` for every import statement of ``mod``."""
    tree = ast.parse(path.read_text())
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in in_function) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            out.append((src, node.lineno, id(node) in in_function))
            out += [(f"{src}.{a.name}", node.lineno, id(node) in in_function) for a in node.names]
    return out


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        for name, _, _ in _imports(mod, path):
            target = _resolve(name)
            if target and target != mod:
                edges.setdefault(mod, set()).add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_edges()) == []


def test_cycle_detection_sees_a_cycle():
    """The walker itself: a two-module loop is reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_packages_import_only_downwards():
    upward = []
    for mod, targets in _edges().items():
        top = mod.split(".")[0]
        upward += [f"{mod} -> {t}" for t in targets if t.split(".")[0] != top and t.split(".")[0] not in ALLOWED[top]]
    assert upward == []


def test_core_imports_nothing_of_the_serving_stack():
    bad = []
    for mod, path in MODULES.items():
        if mod.split(".")[0] != "distill":
            continue
        for name, line, _ in _imports(mod, path):
            if name.split(".")[0] in SERVING_STACK + ("app", "worker", "stillhouse", "client"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_no_project_imports_hidden_in_functions():
    hidden = []
    for mod, path in MODULES.items():
        for name, line, inside in _imports(mod, path):
            if inside and name.split(".")[0] in PACKAGES and mod != LAZY_CORE_GATEWAY:
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert hidden == []


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_api_starts_without_torch(tmp_path):
    """Building the app and answering a job-status poll loads neither torch nor the core's model code, nor matplotlib
    (only the HTML pages plot: 0.56 s and about 30 MiB of the API's start-up when it was imported at start)."""
    code = f"""
import os, sys
os.environ['STILLHOUSE_DATA_DIR'] = {str(tmp_path)!r}
import asyncio, httpx
from app.main import create_app
app = create_app()
async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=('127.0.0.1', 50000))
        async with httpx.AsyncClient(transport=transport, base_url='http://127.0.0.1') as c:
            codes = [(await c.get(u)).status_code for u in ('/v1/jobs/job_nope', '/v1/jobs', '/openapi.json')]
    assert codes == [404, 200, 200], codes
asyncio.run(main())
heavy = sorted(m for m in sys.modules if m in ('torch', 'matplotlib') or m.startswith(('torch.', 'matplotlib.', 'distill.models', 'distill.training')))
print('HEAVY', heavy)
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "HEAVY []" in res.stdout, res.stdout


@pytest.mark.slow
def test_core_runs_with_the_serving_stack_unimportable(tmp_path):
    """With FastAPI, Celery, SQLAlchemy and the service's own packages made unimportable, every core module imports
    and a one-epoch distillation runs to its report."""
    code = f"""
import importlib, pkgutil, sys
BLOCKED = {SERVING_STACK + ('app', 'worker', 'stillhouse', 'client')!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
import distill
for m in pkgutil.walk_packages(distill.__path__, 'distill.'):
    importlib.import_module(m.name)
from pathlib import Path
from distill.formats import FileInput
from distill.job import run_job
from distill.reporter import RecordingReporter
from distill.results import JobInputs
from distill.spec import JobSpec
from distill.teacher_training import save_model, train_classifier
from distill.data import load_builtin
x, y, _ = load_builtin('digits')
arch = {{'name': 'mlp', 'kwargs': {{'hidden_sizes': [32]}}}}
teacher = train_classifier(arch, x, y, epochs=1, seed=0)
path = Path({str(tmp_path)!r}) / 't.safetensors'
size = save_model(teacher, teacher.stillhouse_architecture, path)
spec = JobSpec.model_validate({{'teacher': {{'file_id': 'file_t'}}, 'student': {{'architecture': {{'name': 'mlp', 'kwargs': {{'hidden_sizes': [8]}}}}}},
                               'data': {{'train': {{'builtin': 'digits'}}}}, 'training': {{'epochs': 1}},
                               'evaluation': {{'latency_iterations': 5}}, 'export': {{'formats': ['safetensors']}}}})
fi = FileInput(path, 'safetensors', size)
res = run_job(spec, JobInputs(teacher=fi, files={{'file_t': fi}}), Path({str(tmp_path)!r}) / 'w', RecordingReporter())
assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]
print('TOP1', res.report['student']['val_top1'])
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TOP1 0." in res.stdout


@pytest.mark.parametrize("module", ["distill.spec", "distill.errors", "distill.report", "distill.report_builders"])
def test_spec_errors_and_report_load_without_torch(module):
    res = _run(f"import sys, {module}; print('torch' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
