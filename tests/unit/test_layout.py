"""The layering rules of the code base, checked on the import graph (static, no imports executed).

- ``actors/`` never imports Ray or ``serve_app``;
- nothing under ``serve_app/jobs`` imports HTTP or Serve;
- ``serve_app/api`` depends on ``serve_app/jobs`` and ``actors/media`` (plus the typed config and
  the error taxonomy), never on the Ray side of the service;
- no import cycles between modules;
- no module is over about 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "serve_app")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any level (function-local imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _internal(name: str) -> str | None:
    """The project module an import name refers to (longest known prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


GRAPH = {m: {t for t in map(_internal, _imports(p)) if t and t != m} for m, p in MODULES.items()}
EXTERNAL = {m: _imports(p) for m, p in MODULES.items()}


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_actors_never_import_ray_or_serve_app():
    bad = {m: sorted(i for i in EXTERNAL[m] if i.split(".")[0] in ("ray", "serve_app"))
           for m in MODULES if _under(m, "actors")}
    assert not {m: v for m, v in bad.items() if v}


def test_jobs_import_no_http_and_no_serve():
    banned = ("fastapi", "starlette", "uvicorn", "httpx", "ray.serve", "serve_app.api")
    bad = {m: sorted(i for i in EXTERNAL[m] if any(i == b or i.startswith(b + ".") for b in banned))
           for m in MODULES if _under(m, "serve_app.jobs")}
    assert not {m: v for m, v in bad.items() if v}


def test_api_depends_on_jobs_and_media_only():
    allowed = ("serve_app.api", "serve_app.jobs", "serve_app.config", "actors.media", "actors.errors",
               "actors.limits")
    bad = {m: sorted(t for t in GRAPH[m] if not any(_under(t, a) for a in allowed))
           for m in MODULES if _under(m, "serve_app.api")}
    assert not {m: v for m, v in bad.items() if v}
    assert not any(i == "ray" or i.startswith("ray.") for m in MODULES if _under(m, "serve_app.api")
                   for i in EXTERNAL[m])


def test_no_import_cycles():
    # Package __init__ modules re-export their children; an edge to a child from its own package is
    # not a cycle of ideas, so only module -> module edges between non-parents are followed.
    def edges(m):
        return {t for t in GRAPH[m] if not _under(m, t)}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for t in edges(m):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_no_module_is_over_about_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 420}
    assert not long
