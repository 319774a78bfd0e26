"""The Ray Serve application of a cascade: the HTTP ingress and one deployment per stage
(:func:`build_app`, importable as ``tinysaver.serve:build_app`` for Ray's config files).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from typing import Any, Mapping

from .. import __version__
from ..runtime.manifest import read_manifest
from .config import ServeConfig
from .ingress import ingress_deployment
from .stage import stage_deployment


def build_app(config: Mapping[str, Any]) -> Any:
    """The Ray Serve application of a cascade: an HTTP ingress and one deployment per stage.

    Args:
        config: See :mod:`tinysaver.serve` (``ServeConfig.from_dict``).

    Returns:
        A bound application for ``serve.run`` (also an application builder for
        ``serve run tinysaver.serve:build_app export_dir=...``).
    """
    cfg = config if isinstance(config, ServeConfig) else ServeConfig.from_dict(config)
    from ray import serve

    deployment = serve.deployment(stage_deployment())
    n = len(cfg.names)
    indices = [n - 1] if cfg.base_only else list(range(n))
    limits = {"max_request_bytes": cfg.max_request_bytes, "max_samples_per_request": cfg.max_samples_per_request,
              "max_request_pixels": cfg.max_request_pixels}
    thresholds = [*cfg.thresholds, math.inf]
    nxt = None
    for k in reversed(indices):
        opts = cfg.stages[k]
        init = dict(export_dir=cfg.export_dir, index=k, n_stages=n, options=asdict(opts), limits=limits,
                    retry_timeout_s=float(cfg.ingress.retry_timeout_s))
        user_config = {"threshold": thresholds[k] if not math.isinf(thresholds[k]) else "inf",
                       "max_batch_size": int(opts.max_batch_size), "batch_wait_timeout_s": float(opts.batch_wait_timeout_s),
                       "cross_request_batching": bool(opts.cross_request_batching)}
        dep = deployment.options(
            name=f"stage{k}_{cfg.names[k]}", num_replicas=int(opts.num_replicas),
            ray_actor_options=dict(opts.ray_actor_options), max_ongoing_requests=int(opts.max_ongoing_requests),
            max_queued_requests=int(opts.max_queued_requests), user_config=user_config,
            health_check_period_s=float(opts.health_check_period_s),
            graceful_shutdown_timeout_s=float(opts.graceful_shutdown_timeout_s), graceful_shutdown_wait_loop_s=0.5)
        # A code version that changes only with what the replicas are built from (the graph, the
        # constructor's arguments, this package): a redeploy that changes only user_config
        # (thresholds, batching) then reconfigures the running replicas instead of replacing them.
        # Ray Serve dropped the public `version` option and keeps this attribute for its own use
        # (a random one otherwise); tests/test_serve.py checks the replicas survive a redeploy.
        dep._version = _code_version(init, cfg.export_dir, cfg.names[k])
        nxt = dep.bind(**init, next_stage=nxt)
    ing = cfg.ingress
    init = dict(export_dir=cfg.export_dir, first_index=indices[0], options=asdict(ing), limits=limits)
    front = serve.deployment(ingress_deployment()).options(
        name="ingress", num_replicas=int(ing.num_replicas), ray_actor_options=dict(ing.ray_actor_options),
        max_ongoing_requests=int(ing.max_ongoing_requests), max_queued_requests=int(ing.max_queued_requests),
        health_check_period_s=float(ing.health_check_period_s),
        graceful_shutdown_timeout_s=float(ing.graceful_shutdown_timeout_s), graceful_shutdown_wait_loop_s=0.5)
    front._version = _code_version(init, cfg.export_dir, cfg.names[indices[0]])
    return front.bind(**init, first_stage=nxt)


def _code_version(init: Mapping[str, Any], export_dir: str, name: str) -> str:
    manifest = read_manifest(export_dir)
    sha = next(s["sha256"] for s in manifest["stages"] if s["name"] == name)
    text = json.dumps({"init": init, "sha256": sha, "tinysaver": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["build_app"]
