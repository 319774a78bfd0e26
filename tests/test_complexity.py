"""GMACs reproduce the paper's Table 5 column (CNNs at 224x224, one multiply-add = one MAC)."""
from __future__ import annotations

import json

import pytest
import timm

from tinysaver.cli import main
from tinysaver.models.complexity import count_gmacs
from tinysaver.plugins.timm import create_classifier


# (model, GMACs in the paper's Tables 1/5); ResNets are torchvision's there, the rest timm's.
TABLE5 = [("tv:resnet18", 1.81), ("tv:resnet34", 3.66), ("resnet50", 4.09), ("tv:resnet101", 7.80),
          ("tv:resnet152", 11.51), ("mobilenetv3_large_100", 0.22), ("mobilenetv3_small_100", 0.06),
          ("convnextv2_atto", 0.55), ("convnextv2_nano", 2.45), ("convnextv2_tiny", 4.46),
          ("convnextv2_base", 15.35), ("efficientnet_b2", 0.66)]


@pytest.mark.parametrize("name, paper", TABLE5)
def test_table5_gmacs(name, paper):
    model = create_classifier(name, random_init=True)  # cost does not depend on the weights
    assert round(count_gmacs(model, (3, 224, 224)), 2) == paper


def test_complexity_cli(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["complexity", "fmnist_cnn_s", "--measure", "--batch-sizes", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["input_size"] == [1, 28, 28] and report["gflops"] == pytest.approx(2 * report["gmacs"])
    assert report["speed"][0]["throughput"] > 0
    assert main(["complexity", "resnet18", "--input-size", "112", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["gmacs"] == pytest.approx(count_gmacs(timm.create_model("resnet18"), (3, 112, 112)))
