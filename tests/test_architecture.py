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
