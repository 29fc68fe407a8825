"""The engine's public interface: a short list of names, light to import, and the boundary
between the engine (torch + numpy only) and the faces (widget, notebook API, command line)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import napari_itaclip.engine as engine

PACKAGE = Path(engine.__file__).parent.parent
ENGINE = PACKAGE / "engine"
FORBIDDEN_IN_ENGINE = {"napari", "qtpy", "magicgui", "dask"}


def imported_modules(path: Path, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every import in a file of `package`, relative ones
    resolved (`from ..x import y` in napari_itaclip.engine is napari_itaclip.x)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def package_of(path: Path) -> str:
    """Dotted package of a module file (for __init__.py, the package itself)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1])


def test_importing_the_engine_imports_no_heavy_dependency():
    script = (
        "import json, sys\n"
        "import napari_itaclip.engine as engine\n"
        "from napari_itaclip.engine.triton_guard import TritonGuard\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'cv2', 'napari') if m in sys.modules)\n"
        "guard = any(isinstance(f, TritonGuard) for f in sys.meta_path)\n"
        "print(json.dumps({'heavy': heavy, 'guard': guard}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["guard"] == sys.platform.startswith("linux")


def test_every_public_name_resolves():
    assert len(engine.__all__) == len(set(engine.__all__))
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
        assert name in dir(engine)
    assert engine.ITACLIP.__module__ == "napari_itaclip.engine.segmenter"
    with pytest.raises(AttributeError, match="no attribute 'load_clip'"):
        engine.load_clip  # noqa: B018 - internal names stay in their modules


def test_api_docs_list_exactly_the_public_names():
    page = (PACKAGE.parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    section = page.split("## The engine's public interface")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    listed = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[2])]
    assert sorted(listed) == sorted(engine.__all__)


def test_engine_imports_nothing_from_napari_or_the_package_above():
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        for line, module, _ in imported_modules(path, package_of(path)):
            root = module.split(".")[0]
            outside = root == "napari_itaclip" and not (
                module == "napari_itaclip.engine" or module.startswith("napari_itaclip.engine.")
            )
            if root in FORBIDDEN_IN_ENGINE or outside:
                problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert problems == []


def test_the_boundary_check_sees_relative_parent_imports(tmp_path):
    module = tmp_path / "segmenter.py"
    module.write_text("from .. import __version__\nfrom ..layers import x\nimport dask.array\n")
    found = imported_modules(module, "napari_itaclip.engine")
    assert [m for _, m, _ in found] == ["napari_itaclip", "napari_itaclip.layers", "dask.array"]


def test_faces_use_only_the_public_interface():
    public = set(engine.__all__)
    submodule = re.compile(r"napari_itaclip\.engine\.\w+")
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ENGINE in path.parents:
            continue
        where = path.relative_to(PACKAGE)
        for line, module, names in imported_modules(path, package_of(path)):
            if submodule.match(module):
                problems.append(f"{where}:{line} imports {module}")
            elif module == "napari_itaclip.engine" and not public.issuperset(names):
                problems.append(f"{where}:{line} imports {sorted(set(names) - public)}")
        # lazy maps name modules as strings (importlib.import_module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and submodule.fullmatch(str(node.value)):
                problems.append(f"{where}:{node.lineno} names {node.value}")
    assert problems == []
