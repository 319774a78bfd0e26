"""The dependency rule: the core (tinysaver/) names no plugin; plugins register into the core's
registries, found through the package's entry points."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

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


def test_unknown_names_list_what_is_known():
    from tinysaver.errors import TinySaverError
    from tinysaver.registry import STAGES

    with pytest.raises(TinySaverError, match="unknown stage type 'nope' \\(known: .*mmdet.*yolo"):
        STAGES.get("nope")
