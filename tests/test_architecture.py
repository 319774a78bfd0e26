"""The dependency rule: the core (tinysaver/) names no plugin; plugins register into the core's
registries, found through the package's entry points.

The layout's rules (README, "Layout"): each package imports only the layers below it, no import
circle (imports inside functions count), the analysis and the core never import torch or
matplotlib, matplotlib only in report/, no module over the size limit, no private name crossing a
module boundary."""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _plugin_imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("tinysaver.plugins") or name == "plugins" or name.startswith("plugins."):
                yield node.lineno, name


def test_the_core_imports_no_plugin():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "tinysaver").rglob("*.py"))
                 for line, name in _plugin_imports(path)]
    assert offenders == []


def test_plugins_are_found_through_entry_points_and_fill_the_core_registries():
    from importlib import metadata

    from tinysaver.registry import CLASSIFIER_SOURCES, DATASETS, PLUGIN_GROUP, STAGES

    declared = {ep.name: ep.value for ep in metadata.entry_points(group=PLUGIN_GROUP)}
    assert declared["timm"] == "tinysaver.plugins.timm" and "stages" in declared
    assert "timm" in CLASSIFIER_SOURCES.names()
    assert {"fashion_mnist", "imagefolder"} <= set(DATASETS.names())
    assert {"yolo", "mmdet"} <= set(STAGES.names())


def test_a_third_party_plugin_registers_through_the_entry_point_group(monkeypatch, tmp_path):
    from importlib import metadata

    from tinysaver import registry

    module = tmp_path / "my_tinysaver_plugin.py"
    module.write_text("from tinysaver.registry import DATASETS\n"
                      "@DATASETS.register('my_data')\n"
                      "class MyData:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = metadata.entry_points

    def entry_points(group=None, **kw):
        found = list(real(group=group, **kw))
        if group == registry.PLUGIN_GROUP:
            found.append(metadata.EntryPoint("mine", "my_tinysaver_plugin", group))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    assert "my_data" in registry.DATASETS
    monkeypatch.delitem(registry.DATASETS._items, "my_data")
    monkeypatch.delitem(sys.modules, "my_tinysaver_plugin")


def test_a_third_party_package_adds_a_confidence_function_by_entry_point(monkeypatch, tmp_path, capsys):
    """A package really installed (pip, into this test's temp dir, no network) whose module, listed
    under the ``tinysaver.plugins`` entry-point group, registers a detection confidence: the
    confidence registry finds it by name, and so do the commands (``det-tradeoff --confidence``)."""
    import json
    import subprocess

    import numpy as np

    from tinysaver import registry
    from tinysaver.cli import main as cli
    from tinysaver.confidence import CONFIDENCES, build_confidence
    from tinysaver.detection import DetRecord, detection_confidence, save_det_record

    src = tmp_path / "src"
    src.mkdir()
    (src / "my_tinysaver_confidences.py").write_text(
        "import numpy as np\n"
        "from tinysaver.confidence import CONFIDENCES, MeanBoxScore\n"
        "@CONFIDENCES.register('median_box_score')\n"
        "class MedianBoxScore(MeanBoxScore):\n"
        "    reduce = staticmethod(np.median)\n")
    (src / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools']\nbuild-backend = 'setuptools.build_meta'\n"
        "[project]\nname = 'my-tinysaver-confidences'\nversion = '0.1'\n"
        "[project.entry-points.'tinysaver.plugins']\nmy_confidences = 'my_tinysaver_confidences'\n"
        "[tool.setuptools]\npy-modules = ['my_tinysaver_confidences']\n")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                           "--no-build-isolation", "--target", str(site), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (site / "my_tinysaver_confidences.py").is_file()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", False)  # plugins load again, the new package's among them
    name = "median_box_score"
    try:
        assert name not in CONFIDENCES._items  # not registered until a lookup loads the plugins
        fn = build_confidence(name, min_score=0.1)
        np.testing.assert_allclose(fn([np.array([0.9, 0.2, 0.05, 0.5]), np.array([])]), [0.5, 0.0])
        assert type(detection_confidence(name, 0.05)).__name__ == "MedianBoxScore"
        # the command line: det-tradeoff --confidence median_box_score
        gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                               "iscrowd": 0}],
              "categories": [{"id": 1, "name": "a"}]}
        (tmp_path / "ann.json").write_text(json.dumps(gt))
        for who, gflops in (("saver", 1.0), ("base", 3.0)):
            rec = DetRecord.from_lists(who, gflops, [1], [np.array([[10, 10, 50, 50]])], [np.array([0.9])],
                                       [np.array([0])], [1])
            save_det_record(tmp_path / f"{who}.npz", rec)
        argv = ["det-tradeoff", "--ann", str(tmp_path / "ann.json"), "--saver", str(tmp_path / "saver.npz"),
                "--base", str(tmp_path / "base.npz"), "--thresholds", "0", "1", "0.5"]
        assert cli([*argv, "--confidence", name]) == 0
        assert cli([*argv, "--confidence", "no_such_confidence"]) == 2
        err = capsys.readouterr().err
        assert "unknown confidence function 'no_such_confidence'" in err and name in err  # listed as known
    finally:
        CONFIDENCES._items.pop(name, None)
        sys.modules.pop("my_tinysaver_confidences", None)

def test_unknown_names_list_what_is_known():
    from tinysaver.errors import TinySaverError
    from tinysaver.registry import STAGES

    with pytest.raises(TinySaverError, match="unknown stage type 'nope' \\(known: .*mmdet.*yolo"):
        STAGES.get("nope")


# --- the layout ------------------------------------------------------------------------------

#: the repository folders and the package names they install as
SOURCES = {"tinysaver": ROOT / "tinysaver", "tinysaver.plugins": ROOT / "plugins"}
MAX_LINES = 450

#: layer of each top-level part of tinysaver/ -> the parts it may import (besides itself)
CORE = {"errors", "io", "registry", "thresholds", "confidence", "records", "routing"}
MAY_IMPORT: Dict[str, Set[str]] = {
    "core": set(),
    "analysis": {"core"},
    "detection": {"core", "analysis"},
    "report": {"core", "analysis", "detection"},
    "models": {"core"},
    "esn": {"core", "analysis", "models"},
    "runtime": {"core", "models"},
    "serve": {"core", "runtime", "package"},  # the package: its __version__
    "pipeline": {"core", "analysis", "detection", "report", "models"},
    "commands": {"package", "core", "analysis", "detection", "report", "models", "esn", "runtime", "serve", "pipeline"},
    "cli": {"core", "commands", "package"},
    "package": {"core", "analysis"},  # tinysaver/__init__.py (the torch layer only lazily)
    "plugins": {"core", "analysis", "detection", "models", "plugins"},
}
NUMPY_ONLY = ("core", "analysis", "detection")


def modules() -> Iterator[Tuple[str, Path]]:
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def layer(module: str) -> str:
    if module.startswith("tinysaver.plugins"):
        return "plugins"
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return "core" if parts[1] in CORE else parts[1]


def import_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from (relative ones resolved)."""
    base = node.module or ""
    if not node.level:
        return base
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([base] if base else []))


def imports(module: str, path: Path) -> Iterator[Tuple[int, str]]:
    """Every module ``module`` imports, at any depth of the file (functions included)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = import_base(module, path, node)
            names = [f"{base}.{alias.name}" for alias in node.names]
            # `from . import plots` imports the submodule (its package is imported anyway, as the
            # parent of every module in it); `from .x import name` imports module x.
            if not all(name in KNOWN for name in names):
                yield node.lineno, base
            for name in names:
                yield node.lineno, name


KNOWN = dict(modules())


def resolve(name: str) -> str | None:
    """The project module ``name`` refers to (a name imported from a module is that module)."""
    while name and name not in KNOWN:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = defaultdict(set)
    for module, path in KNOWN.items():
        for _, name in imports(module, path):
            target = resolve(name)
            if target and target != module:
                edges[module].add(target)
    return edges


def test_each_layer_imports_only_the_layers_below_it():
    offenders = []
    for module, path in KNOWN.items():
        mine = layer(module)
        for line, name in imports(module, path):
            target = resolve(name)
            if target is None:
                continue
            theirs = layer(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    assert sorted(set(offenders)) == []


def test_no_import_circle_counting_imports_inside_functions():
    edges = graph()
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(KNOWN):
        if v not in index:
            visit(v)
    assert circles == []


def top_level_imports(module: str, path: Path) -> Iterator[Tuple[int, str]]:
    """The imports a module runs when it is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    lines |= {n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              and any(n in ast.walk(stmt) for stmt in tree.body if isinstance(stmt, (ast.If, ast.Try)))}
    return ((line, name) for line, name in imports(module, path) if line in lines)


@pytest.mark.parametrize("forbidden", ["torch", "matplotlib", "onnxruntime", "ray"])
def test_the_core_the_analysis_and_detection_never_import_a_heavy_framework(forbidden):
    # Routing and confidences accept torch tensors, importing torch only when handed one; the
    # analysis never touches it, not even inside a function.
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for module, path in KNOWN.items() if layer(module) in NUMPY_ONLY
                 for line, name in (imports(module, path) if layer(module) == "analysis"
                                    else top_level_imports(module, path))
                 if name.split(".")[0] == forbidden]
    assert offenders == []


def test_matplotlib_is_imported_only_in_report():
    offenders = [f"{path.relative_to(ROOT)}:{line}" for module, path in KNOWN.items()
                 if not module.startswith("tinysaver.plugins") and layer(module) != "report"
                 for line, name in imports(module, path) if name.split(".")[0] == "matplotlib"]
    assert offenders == []


def test_importing_the_analysis_api_loads_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys, tinysaver, tinysaver.analysis, tinysaver.detection, tinysaver.records; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_is_over_the_size_limit():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in KNOWN.values()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def _bound_modules(module: str, path: Path, tree: ast.AST) -> Dict[str, str]:
    """Local names bound to project modules (``import tinysaver.x as y``, ``from . import x``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in KNOWN:
                    out[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = import_base(module, path, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in KNOWN:
                    out[alias.asname or alias.name] = f"{base}.{alias.name}"
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_a_module_boundary():
    offenders = []
    for module, path in KNOWN.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or resolve(node.module or "")):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}"
                              for a in node.names if _is_private(a.name)]
        bound = _bound_modules(module, path, tree)
        offenders += [f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}"
                      for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and _is_private(node.attr)
                      and isinstance(node.value, ast.Name) and node.value.id in bound]
    assert offenders == []
