"""Export + OnnxCascade: on the whole Fashion-MNIST test split (10,000 images) the ONNX cascade
routes every sample like the PyTorch Cascade and its logits agree to 1e-4 (2 stages and a 3-stage
chain); the single graph routes like the stage graphs; image preprocessing equals timm's eval
transform; the runtime never imports torch; bad inputs are one-line errors.

Routing equality needs the thresholds away from every sample's confidence by more than the two
runtimes' numerical difference (onnxruntime's float32 logits differ from torch's by ~1e-5, the
float64 confidences by ~3e-6): :func:`gap_threshold` puts each threshold in the widest gap of the
torch confidences near a target exit ratio, and each test asserts that margin against the measured
difference, so an equality that held by luck would fail.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinysaver import Cascade, TinySaverError
from tinysaver.confidence import build_confidence
from tinysaver.runtime.export import export_cascade
from tinysaver.runtime import OnnxCascade, preprocess_image

from .helpers import ROOT

BATCH = 1000
FMNIST_PREPROCESS = dict(input_size=[1, 28, 28], interpolation="bilinear", mean=[0.286], std=[0.353],
                         crop_pct=1.0, crop_mode="center")


def gap_threshold(conf: np.ndarray, exit_ratio: float, window: int = 200) -> tuple[float, float]:
    """A threshold letting about ``exit_ratio`` of ``conf`` exit, in the middle of the widest gap
    between neighbouring confidences among ``window`` samples around that quantile.

    Returns:
        ``(threshold, margin)``: margin = distance from the threshold to the nearest confidence.
    """
    s = np.sort(conf)
    at = int(round((1 - exit_ratio) * len(s)))
    lo, hi = max(at - window // 2, 0), min(at + window // 2, len(s) - 1)
    gaps = np.diff(s[lo:hi + 1])
    i = lo + int(np.argmax(gaps))
    t = (s[i] + s[i + 1]) / 2
    return float(t), float(np.abs(conf - t).min())


@pytest.fixture(scope="module")
def test_split():
    from tinysaver.plugins.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    return images, labels


@pytest.fixture(scope="module")
def inputs(test_split) -> np.ndarray:
    """The whole test split, preprocessed by the runtime's numpy/PIL path (checked equal to timm's
    transform in test_image_preprocessing_equals_timm_eval_transform)."""
    from PIL import Image

    images, _ = test_split
    return np.stack([preprocess_image(Image.fromarray(img, mode="L"), FMNIST_PREPROCESS) for img in images])


@pytest.fixture(scope="module")
def pool():
    from tinysaver.plugins.timm import create_classifier

    torch.set_grad_enabled(False)
    return {name: create_classifier(name) for name in ("fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_m", "fmnist_cnn_l")}


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + BATCH])).numpy() for i in range(0, len(x), BATCH)])


def _run_torch(cascade: Cascade, x: np.ndarray):
    outs = [cascade(torch.from_numpy(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
    return (np.concatenate([o.logits.numpy() for o in outs]), np.concatenate([o.stage.numpy() for o in outs]),
            np.concatenate([o.confidence.numpy() for o in outs]))


def _run_onnx(cascade: OnnxCascade, x: np.ndarray):
    outs = [cascade(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    return (np.concatenate([o.logits for o in outs]), np.concatenate([o.stage for o in outs]),
            np.concatenate([o.confidence for o in outs]))


def _chain_thresholds(pool, names, x, exit_ratios):
    """Thresholds for a chain from the torch confidences of the samples that reach each stage,
    and each one's margin."""
    conf_fn = build_confidence("max_softmax")
    open_rows = np.arange(len(x))
    thresholds, margins = [], []
    for name, ratio in zip(names[:-1], exit_ratios):
        conf = np.asarray(conf_fn(torch.from_numpy(_torch_logits(pool[name], x[open_rows]))), dtype=np.float64)
        t, margin = gap_threshold(conf, ratio)
        thresholds.append(t)
        margins.append(margin)
        open_rows = open_rows[conf < t]
    return thresholds, margins


def _assert_parity(pool, names, exit_ratios, x, tmp_path):
    thresholds, margins = _chain_thresholds(pool, names, x, exit_ratios)
    cascade = Cascade(*[pool[n] for n in names], thresholds=thresholds)
    export_cascade(cascade, tmp_path, names=names, data_configs=[FMNIST_PREPROCESS] * len(names))
    onnx = OnnxCascade(tmp_path)
    t_logits, t_stage, t_conf = _run_torch(cascade, x)
    o_logits, o_stage, o_conf = _run_onnx(onnx, x)
    conf_diff = float(np.abs(o_conf - t_conf).max())
    print(f"{' -> '.join(names)}: thresholds {thresholds}, margins {margins}, |conf diff| {conf_diff:.3g}, "
          f"|logit diff| {np.abs(o_logits - t_logits).max():.3g}, answered per stage {np.bincount(o_stage).tolist()}")
    # Why equality is expected and not luck: every threshold is farther from every confidence
    # than the two runtimes' confidences differ.
    assert min(margins) > 3 * conf_diff, (margins, conf_diff)
    assert len(x) == 10_000
    np.testing.assert_array_equal(o_stage, t_stage)  # every sample answered by the same stage
    assert np.abs(o_logits - t_logits).max() <= 1e-4
    assert conf_diff <= 1e-5
    # every stage answered some samples: the test exercises each gather and merge
    assert set(np.unique(o_stage).tolist()) == set(range(len(names)))
    return onnx, (o_logits, o_stage, o_conf), thresholds


def test_onnx_cascade_routes_like_torch_on_the_whole_test_split(pool, inputs, tmp_path):
    _assert_parity(pool, ["fmnist_cnn_s", "fmnist_cnn_l"], [0.63], inputs, tmp_path)


def test_three_stage_chain_routes_like_torch(pool, inputs, tmp_path):
    _assert_parity(pool, ["fmnist_cnn_xs", "fmnist_cnn_m", "fmnist_cnn_l"], [0.55, 0.6], inputs, tmp_path)


def test_single_graph_routes_like_the_stage_graphs(pool, inputs, tmp_path):
    names = ["fmnist_cnn_xs", "fmnist_cnn_m", "fmnist_cnn_l"]
    x = inputs[:3000]
    thresholds, margins = _chain_thresholds(pool, names, x, [0.55, 0.6])
    cascade = Cascade(*[pool[n] for n in names], thresholds=thresholds)
    export_cascade(cascade, tmp_path, names=names, data_configs=[FMNIST_PREPROCESS] * 3, single_graph=True)
    stages, single = OnnxCascade(tmp_path), OnnxCascade(tmp_path, single_graph=True)
    a, b = _run_onnx(stages, x), _run_onnx(single, x)
    assert min(margins) > 3 * float(np.abs(a[2] - b[2]).max())
    np.testing.assert_array_equal(b[1], a[1])
    assert np.abs(b[0] - a[0]).max() <= 1e-4
    assert set(np.unique(b[1]).tolist()) == {0, 1, 2}
    # thresholds are a graph input: changed at run time without a new export
    single.thresholds = ["inf", "inf"]
    assert (single(x[:50]).stage == 2).all()
    single.thresholds = [0.0, 0.0]
    assert (single(x[:50]).stage == 0).all()


def test_image_preprocessing_equals_timm_eval_transform(test_split):
    from PIL import Image
    from timm.data import create_transform

    images, _ = test_split
    fmnist = create_transform(**FMNIST_PREPROCESS)
    for img in images[:100]:
        pil = Image.fromarray(img, mode="L")
        np.testing.assert_array_equal(preprocess_image(pil, FMNIST_PREPROCESS), fmnist(pil).numpy())
    from tinysaver.plugins.datasets import shipped_photos
    from tinysaver.plugins.timm import create_classifier, data_config

    photos = shipped_photos()[:6]
    assert len(photos) >= 3
    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"):  # bicubic, crop 0.875 / 0.89
        cfg = data_config(create_classifier(name, random_init=True))
        transform = create_transform(**cfg)
        for _, rgb in photos:
            pil = Image.fromarray(rgb)
            ours, theirs = preprocess_image(pil, cfg), transform(pil).numpy()
            assert ours.shape == theirs.shape == tuple(cfg["input_size"])
            np.testing.assert_array_equal(ours, theirs)


def test_images_in_equal_arrays_in(pool, test_split, inputs, tmp_path):
    from PIL import Image

    cascade = Cascade(pool["fmnist_cnn_s"], pool["fmnist_cnn_l"], threshold=0.9)
    export_cascade(cascade, tmp_path, names=["s", "l"], data_configs=[FMNIST_PREPROCESS] * 2)
    onnx = OnnxCascade(tmp_path)
    images, _ = test_split
    encoded = []
    for img in images[:20]:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        encoded.append(buf.getvalue())
    from_bytes = onnx.predict_images(encoded)
    from_arrays = onnx(inputs[:20])
    np.testing.assert_array_equal(from_bytes.stage, from_arrays.stage)
    np.testing.assert_array_equal(from_bytes.logits, from_arrays.logits)


def test_runtime_never_imports_torch(pool, inputs, tmp_path):
    cascade = Cascade(pool["fmnist_cnn_s"], pool["fmnist_cnn_l"], threshold=0.9)
    export_cascade(cascade, tmp_path / "exp", names=["s", "l"], data_configs=[FMNIST_PREPROCESS] * 2)
    np.save(tmp_path / "x.npy", inputs[:64])
    code = ("import sys, numpy as np\n"
            "from tinysaver.runtime import OnnxCascade\n"
            f"out = OnnxCascade({str(tmp_path / 'exp')!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
            "print(int(len(out.stage)), 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["64", "False"]


@pytest.fixture(scope="module")
def small_export(pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_export")
    export_cascade(Cascade(pool["fmnist_cnn_xs"], pool["fmnist_cnn_s"], threshold=0.9), out, names=["xs", "s"],
                   data_configs=[FMNIST_PREPROCESS] * 2)
    return out


@pytest.mark.parametrize("batch, problem", [
    (np.zeros((2, 1, 28, 27), np.float32), "shape [2, 1, 28, 27]"),
    (np.zeros((2, 1, 28, 28), np.int64), "dtype int64"),
    (np.full((2, 1, 28, 28), np.nan, np.float32), "NaN"),
    (np.full((2, 1, 28, 28), 1e300, np.float64), "NaN or infinity"),  # finite in float64, inf in float32
    (np.zeros((0, 1, 28, 28), np.float32), "empty batch"),
    ([[0.0]], "expected a numpy array"),
])
def test_bad_inputs_are_one_line_errors(small_export, batch, problem):
    with pytest.raises(TinySaverError, match=problem.replace("[", r"\[").replace("]", r"\]")) as info:
        OnnxCascade(small_export)(batch)
    assert "\n" not in str(info.value)


def test_an_absurdly_elongated_image_is_refused_before_its_resize():
    """timm's resize scales the shorter side: 1 x 20,000 pixels would become 28 x 560,000 here, and
    256 x 5,120,000 (3.9 GB) at ImageNet settings, from a PNG of a hundred bytes."""
    from PIL import Image

    from tinysaver.runtime import MAX_ASPECT_RATIO

    with pytest.raises(TinySaverError, match="1x20000 is more than 100 times longer than wide"):
        preprocess_image(Image.new("L", (1, 20_000)), FMNIST_PREPROCESS)
    wide = preprocess_image(Image.new("L", (MAX_ASPECT_RATIO * 3, 3), 255), FMNIST_PREPROCESS)  # at the limit
    assert wide.shape == (1, 28, 28)


def test_undecodable_image_and_changed_graph_are_refused(small_export, tmp_path):
    cascade = OnnxCascade(small_export)
    with pytest.raises(TinySaverError, match="image 1: cannot decode"):
        cascade.predict_images([np.zeros((28, 28), np.uint8), b"not an image"])
    # the same once ultralytics is imported (it patches PIL.Image.open to import pi_heif on an
    # unidentified image): in one process after the detection tests, as `make test` runs them
    code = ("import ultralytics, numpy as np\n"
            "from tinysaver.runtime import OnnxCascade\n"
            "from tinysaver.errors import TinySaverError\n"
            f"cascade = OnnxCascade({str(small_export)!r})\n"
            "try:\n    cascade.predict_images([b'not an image'])\n"
            "except TinySaverError as exc:\n    print(exc)\n")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    # (ultralytics logs its attempt to install pi-heif first; the error is the last line)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1].startswith("image 0: cannot decode"), \
        result.stdout[-2000:] + result.stderr[-2000:]
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in small_export.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    graph = next(copy.glob("stage1_*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(TinySaverError, match="sha256 differs"):
        OnnxCascade(copy)


def test_export_refuses_what_the_runtime_cannot_rebuild(pool, tmp_path):
    custom = Cascade(pool["fmnist_cnn_xs"], pool["fmnist_cnn_s"], threshold=0.9, confidence=lambda z: z.max(1).values)
    with pytest.raises(TinySaverError, match="not a registered confidence .*: margin, max_softmax, neg_entropy$"):
        export_cascade(custom, tmp_path / "a", data_configs=[FMNIST_PREPROCESS] * 2)
    boxes = Cascade(pool["fmnist_cnn_xs"], pool["fmnist_cnn_s"], threshold=0.9, confidence=build_confidence("mean_box_score"))
    with pytest.raises(TinySaverError, match="reads detection outputs; an exported classifier cascade needs one that "
                                             "reads logits: margin, max_softmax, neg_entropy"):
        export_cascade(boxes, tmp_path / "a", data_configs=[FMNIST_PREPROCESS] * 2)
    with_preprocess = Cascade(pool["fmnist_cnn_xs"], pool["fmnist_cnn_s"], threshold=0.9, base_preprocess=lambda x: x)
    with pytest.raises(TinySaverError, match="preprocess callables"):
        export_cascade(with_preprocess, tmp_path / "b", data_configs=[FMNIST_PREPROCESS] * 2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written


def test_cli_export_writes_a_runnable_directory(tmp_path, capsys):
    from tinysaver.cli import main

    out = tmp_path / "exported"
    assert main(["export", "--stages", "fmnist_cnn_xs", "fmnist_cnn_s", "--thresholds", "inf", "--out", str(out)]) == 0
    manifest = json.loads((out / "cascade.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["fmnist_cnn_xs", "fmnist_cnn_s"]
    assert manifest["thresholds"] == ["inf"] and manifest["opset"] == 17
    assert manifest["stages"][1]["preprocess"] == FMNIST_PREPROCESS
    assert manifest["stages"][0]["gmacs"] < manifest["stages"][1]["gmacs"]
    out_arrays = OnnxCascade(out)(np.zeros((3, 1, 28, 28), np.float32))
    assert (out_arrays.stage == 1).all()  # threshold inf: nothing exits at the saver
    assert main(["export", "--stages", "fmnist_cnn_xs", "fmnist_cnn_s", "--thresholds", "0.9", "0.8",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "2 stages need 1 thresholds" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_help_example_runs(tmp_path, monkeypatch):
    import shlex

    import tinysaver.commands.export as command
    from tinysaver.cli import main

    # the first one-line example (the docstring ends with the multi-line retune example)
    example = next(line.strip() for line in command.__doc__.splitlines()
                   if line.strip().startswith("tinysaver export --stages") and not line.rstrip().endswith("\\"))
    argv = shlex.split(example)
    assert argv[:2] == ["tinysaver", "export"]
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    out = OnnxCascade(tmp_path / argv[argv.index("--out") + 1])
    assert out.names == ["fmnist_cnn_s", "fmnist_cnn_l"] and out.thresholds == [0.9]


def test_a_stage_model_can_run_a_batch_in_slices(small_export, inputs):
    from tinysaver.runtime import StageModel, make_session, read_manifest, stage_specs

    spec = stage_specs(read_manifest(small_export))[1]
    session = make_session(small_export / spec.file, threads=1)
    whole, sliced = StageModel(session, spec), StageModel(session, spec, max_batch=3)
    x = inputs[:10]
    assert sliced(x).shape == whole(x).shape == (10, 10)
    assert np.abs(sliced(x) - whole(x)).max() <= 1e-5


def test_a_registered_backend_builds_every_session(small_export, inputs):
    """The runtime seam: a backend registered by name (here one that wraps onnxruntime and counts)
    builds every session OnnxCascade runs; nothing else changes."""
    from tinysaver.runtime.backends import BACKENDS, OnnxRuntimeBackend

    built = []

    class Counting(OnnxRuntimeBackend):
        name = "counting_test_backend"

        def session(self, graph, **options):
            built.append(str(graph))
            return super().session(graph, **options)

    BACKENDS.register(Counting.name)(Counting)
    try:
        out = OnnxCascade(small_export, backend=Counting.name)(inputs[:8])
        want = OnnxCascade(small_export)(inputs[:8])
    finally:
        del BACKENDS._items[Counting.name]
    assert [p.rsplit("/", 1)[-1] for p in built] == [s.file for s in out_specs(small_export)]
    np.testing.assert_array_equal(out.logits, want.logits)
    with pytest.raises(TinySaverError, match="unknown runtime backend 'nope'"):
        OnnxCascade(small_export, backend="nope")


def out_specs(directory):
    from tinysaver.runtime import read_manifest, stage_specs

    return stage_specs(read_manifest(directory))
