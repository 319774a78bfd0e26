"""An ESN's records, its live run checked against them, and its measured speed.

- :func:`stage_records`: one record per stage (saver, each exit, the base's own output) with the
  stage's incremental GMACs, computed from cached features by the same stage code the live run uses
  (:meth:`tinysaver.esn.ExitSequence.progressive`); plus the plain saver and base records (their
  full costs) for the plain TinySaver comparison.
- :func:`live_vs_simulation`: the progressive ESN on images vs the chain simulation on the records,
  sample by sample (answering stage, prediction).
- :func:`measure_esn_speed`: base alone vs the live ESN, and the ideal speed-up from each stage's
  measured time weighted by the fraction of samples that reach it (the N-stage form of
  :mod:`tinysaver.models.speed`'s ``1 / (t_S/t_B + 1 − r)``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..analysis import ChainStage, answering_stage
from ..models.complexity import sync
from ..models.numerics import Numerics
from ..records import Record
from .network import Carry, ExitSequenceNetwork, exit_records_arrays
from .training import FeatureCache


def stage_names(esn: ExitSequenceNetwork, saver: str, base: str) -> List[str]:
    """Record names of an ESN's stages: the saver's own name, ``<base>:exit<n>``, ``<base>:output``."""
    return [saver] + [f"{base}:exit{n}" for n in range(1, len(esn.exits) + 1)] + [f"{base}:output"]


@torch.no_grad()
def stage_records(esn: ExitSequenceNetwork, cache: FeatureCache, names: Sequence[str], gmacs: Sequence[float],
                  batch_size: int = 1024, extra: Optional[Dict[str, np.ndarray]] = None) -> List[Record]:
    """One record per ESN stage from the features of a clean split (``cache`` with one view).

    Args:
        esn: The trained ESN.
        cache: Its frozen models' features on the split.
        names: Record name of each stage (:func:`stage_names`).
        gmacs: Incremental GMACs of each stage (:meth:`ExitSequenceNetwork.stage_gmacs`).
        batch_size: Rows per forward of the exit sequence.
        extra: Scalars/arrays stored in every record (e.g. the ESN's settings as a JSON string).
    """
    seq = esn.sequence.eval()
    exits: List[List[torch.Tensor]] = [[] for _ in esn.exits]
    for start in range(0, len(cache.label), batch_size):
        sl = slice(start, start + batch_size)
        outs = seq.progressive(cache.saver_logits[sl], cache.saver_feat[sl], [f[sl] for f in cache.exit_feats])
        for n, out in enumerate(outs):
            exits[n].append(out)
    logits = [cache.saver_logits] + [torch.cat(e) for e in exits] + [cache.base_logits]
    arrays = exit_records_arrays(logits, cache.label.numpy(), esn.confidence_fn)
    return [Record(name=name, gmacs=float(g), num_classes=esn.num_classes, extras=dict(extra or {}), **a)
            for name, g, a in zip(names, gmacs, arrays)]


def plain_records(cache: FeatureCache, saver: str, saver_gmacs: float, base: str, base_gmacs: float,
                  confidence: Any = "max_softmax") -> List[Record]:
    """The saver's and the base's own records (full costs) from the same features."""
    arrays = exit_records_arrays([cache.saver_logits, cache.base_logits], cache.label.numpy(), confidence)
    num_classes = int(cache.saver_logits.shape[1])
    return [Record(name=saver, gmacs=float(saver_gmacs), num_classes=num_classes, **arrays[0]),
            Record(name=base, gmacs=float(base_gmacs), num_classes=num_classes, **arrays[1])]


@dataclass
class LiveCheck:
    """The live ESN vs the simulation on its records, at one threshold vector."""

    thresholds: List[float]
    samples: int
    stage_mismatches: int
    prediction_mismatches: int
    live_acc: float
    simulated_acc: float
    live_answered: List[float]
    simulated_answered: List[float]

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = [t if math.isfinite(t) else "inf" for t in self.thresholds]
        return out


@torch.no_grad()
def live_vs_simulation(esn: ExitSequenceNetwork, images: torch.Tensor, records: Sequence[Record],
                       thresholds: Sequence[float], batch_size: int = 256,
                       numerics: Optional[Numerics] = None) -> LiveCheck:
    """Runs the progressive ESN on ``images`` (same order as the records) and compares, sample by
    sample, which stage answered and what it predicted with the chain simulation on the records."""
    numerics = numerics or Numerics()
    model = numerics.prepare_model(esn)
    model.thresholds = list(thresholds)
    stages, preds = [], []
    with numerics.context():
        for start in range(0, len(images), batch_size):
            out = model(numerics.prepare_inputs(images[start:start + batch_size]))
            stages.append(out.stage.cpu())
            preds.append(out.logits.argmax(1).cpu())
    live_stage = torch.cat(stages).numpy()
    live_pred = torch.cat(preds).numpy()
    chain = [ChainStage.from_record(r) for r in records]
    sim_stage = answering_stage(chain, np.asarray([thresholds], dtype=np.float64))[0].astype(np.int64)
    all_preds = np.stack([r.pred for r in records])
    sim_pred = all_preds[sim_stage, np.arange(len(sim_stage))]
    label = records[-1].label
    k = len(records)
    return LiveCheck(thresholds=[float(t) for t in thresholds], samples=len(label),
                     stage_mismatches=int((live_stage != sim_stage).sum()),
                     prediction_mismatches=int((live_pred != sim_pred).sum()),
                     live_acc=float((live_pred == label).mean()), simulated_acc=float((sim_pred == label).mean()),
                     live_answered=(np.bincount(live_stage, minlength=k) / len(label)).tolist(),
                     simulated_answered=(np.bincount(sim_stage, minlength=k) / len(label)).tolist())


@dataclass
class ESNSpeed:
    """Measured speed of the live ESN vs the base alone at one batch size (best of the repeats)."""

    batch_size: int
    device: str
    samples: int
    answered: List[float]
    stage_s: List[float]
    base_s: float
    esn_s: float
    speedup: float
    ideal_speedup: float
    fraction_of_ideal: float
    base_throughput: float
    esn_throughput: float

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def measure_esn_speed(esn: ExitSequenceNetwork, images: torch.Tensor, thresholds: Sequence[float], batch_size: int,
                      repeats: int = 3, numerics: Optional[Numerics] = None) -> ESNSpeed:
    """Times the base alone, the live ESN, and each ESN stage run on every sample (nothing exits),
    interleaved, best of ``repeats``. Ideal: ``t_base / Σ_k reach_k · t_k``, with ``reach_k`` the
    fraction of samples the live run sent to stage ``k`` and ``t_k`` that stage's time on all samples.
    """
    numerics = numerics or Numerics()
    device = numerics.device
    model = numerics.prepare_model(esn)
    batches = [numerics.prepare_inputs(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    answered = np.zeros(esn.num_stages)

    def run_esn() -> None:
        model.thresholds = list(thresholds)
        answered[:] = 0
        for x in batches:
            answered[:] += np.bincount(model(x).stage.cpu().numpy(), minlength=esn.num_stages)

    def run_base() -> None:
        for x in batches:
            model.base(x)

    def run_stages() -> List[float]:
        model.thresholds = [math.inf] * len(thresholds)
        per_stage = [0.0] * esn.num_stages
        for x in batches:
            carry = Carry()
            state: Any = x
            for k, stage in enumerate(model.stages(carry)):
                sync(device)
                start = time.perf_counter()
                stage.model(state)
                sync(device)
                per_stage[k] += time.perf_counter() - start
                state = carry.state
        return per_stage

    times: Dict[str, List[Any]] = {"base": [], "esn": [], "stages": []}
    with numerics.context():
        run_esn()  # warm-up
        run_base()
        for _ in range(repeats):
            for key, fn in (("base", run_base), ("esn", run_esn)):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[key].append(time.perf_counter() - start)
            times["stages"].append(run_stages())
    n = len(images)
    t_base, t_esn = min(times["base"]), min(times["esn"])
    t_stage = np.min(np.array(times["stages"]), axis=0)
    frac = answered / n
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(frac)[:-1]])  # fraction reaching each stage
    ideal = t_base / float((reach * t_stage).sum())
    return ESNSpeed(batch_size=batch_size, device=device, samples=n, answered=frac.tolist(),
                    stage_s=t_stage.tolist(), base_s=t_base, esn_s=t_esn, speedup=t_base / t_esn,
                    ideal_speedup=ideal, fraction_of_ideal=(t_base / t_esn) / ideal, base_throughput=n / t_base,
                    esn_throughput=n / t_esn)


__all__ = ["stage_names", "stage_records", "plain_records", "live_vs_simulation", "LiveCheck",
           "measure_esn_speed", "ESNSpeed"]
