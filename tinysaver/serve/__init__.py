"""Serve an exported cascade (:mod:`tinysaver.runtime.export`) on Ray Serve, one deployment per stage.

An HTTP ingress deployment reads each request (its own upload slots and body deadline), parses and
decodes it in a thread pool and calls the first stage, which answers the samples it is sure about
and sends the others to the next stage's deployment; a call whose replica died is sent again
(inference is idempotent). Every stage runs its model through
``@serve.batch``, so the samples that reach it from *different* requests (and from every replica
of the stage before) form one batch: the escalated 30 % of 32 single-sample requests is one batch
of ~10 at the base, not ten batches of one, and it leaves the front stage in one call. Each stage has its own replicas, resources
(``ray_actor_options``: saver on CPU replicas, base on GPU replicas), batch size and wait, so each
scales on its own across a Ray cluster. The routing decision of a batch is
:func:`tinysaver.routing.route` with the next deployment as its second stage.

HTTP API (``route_prefix`` + ...):

- ``POST /predict`` with one of
    * ``application/json`` ``{"inputs": [[[[...]]]]}``: preprocessed float32 ``[B, C, H, W]`` (or one
      sample ``[C, H, W]``), when every stage takes the same input;
    * ``application/json`` ``{"images": ["<base64 JPEG/PNG>", ...]}``: each stage preprocesses the
      decoded image as its data config says (:func:`tinysaver.runtime.preprocess.preprocess_image`);
    * ``application/x-npy``: a ``.npy`` float32 array, as ``inputs``;
    * ``image/*``: one encoded image.

  Answer: ``{"class": [...], "stage": [...], "stage_name": [...], "confidence": [...],
  "logits": [[...]]}``, one entry per sample in request order.
- ``GET /health``: every stage's name, threshold, batching, and for the replica that answered: its
  id, how many model runs (``batches``) over how many ``samples`` it made, and its
  ``calls_to_next`` (calls carrying escalated samples to the next stage), ``retries`` and
  ``status`` (``up``; a stage that does not answer is ``down``, the whole ``status`` then
  ``degraded`` instead of ``ok``), and the ingress replica's id, uploads in progress and retries.

A bad request (wrong shape or dtype, undecodable image, more than ``max_samples_per_request``
samples, images of more than ``max_request_pixels`` pixels in all, an image more than 100 times
longer than wide, malformed JSON or JSON nested over 32 deep, a ``.npy`` header that does not
match its body) is answered 400 ``{"error": "<one line>"}``, a body over ``max_request_bytes`` 413
(after the rest of it is read, so every client reads the answer), a body not received within
``body_timeout_s`` 408; the replica keeps serving. Dtypes: float32, float64 (narrowed to
float32); nothing else is converted. The pixel limit is read from each image's header before it
is decoded: a compressed image is small on the wire and large in memory (100 kB of PNG can hold
10,000 x 10,000 pixels). Overload is Ray Serve's back-pressure: a request beyond a
deployment's ``max_ongoing_requests`` waits in its queue, beyond ``max_queued_requests`` it gets
503; more than ``ingress.max_concurrent_uploads`` bodies being received at once also get 503.

The thresholds are each stage's ``user_config``: redeploying with new thresholds (``serve.run(build_app(config))``
again, ``tinysaver serve`` noticing its config file changed) calls ``reconfigure`` on the running
replicas, which keep their models and their queues. With Ray's own config files (``serve deploy``)
put the new values in the file's ``deployments: [{name: stage0_..., user_config: ...}]``: a change
of the application ``args`` gives the application a new code version and new replicas.

Config (the ``args`` of a Ray Serve application, see ``configs/serve/fmnist_cascade.yaml``)::

    export_dir: outputs/exported/fmnist_s_l     # `tinysaver export` output; every node must see it
    thresholds: [0.9]                   # optional, overrides cascade.json
    max_request_bytes: 4194304
    max_samples_per_request: 256
    max_request_pixels: 67108864          # decoded pixels of a request's images, in all
    base_only: false                    # serve the last stage alone (the reference of a benchmark)
    ingress: {max_concurrent_uploads: 512, body_timeout_s: 10, retry_timeout_s: 30, decode_threads: null}
    stage_defaults: {max_batch_size: 32, batch_wait_timeout_s: 0.005, threads: 1}
    stages:                             # optional, one entry per stage, over stage_defaults
      - {num_replicas: 2, ray_actor_options: {num_cpus: 1}}
      - {num_replicas: 1, ray_actor_options: {num_gpus: 1}, providers: [CUDAExecutionProvider]}

Who answers HTTP: ``tinysaver serve`` runs its own front in its process (:mod:`~tinysaver.serve.front`):
it reads each body under the ingress's upload limits and sends it to the ingress deployment
through a handle, again when the ingress replica holding it dies, so no replica's death loses a
request. ``serve run`` (and ``tinysaver serve --proxy ray``) use Ray Serve's proxy, which sends
requests to the ingress's ``__call__`` and answers 500 for those a dying ingress replica held.

Modules: :mod:`~tinysaver.serve.config` (the config, each stage's and the ingress's options),
:mod:`~tinysaver.serve.payload` (request bodies), :mod:`~tinysaver.serve.ingress` (HTTP),
:mod:`~tinysaver.serve.front` (``tinysaver serve``'s HTTP front),
:mod:`~tinysaver.serve.stage` (a stage as a deployment), :mod:`~tinysaver.serve.retry` (calls that
survive a replica's death), :mod:`~tinysaver.serve.app` (:func:`build_app`).

May import: the core (errors, routing, thresholds) and :mod:`tinysaver.runtime` (sessions only
through :mod:`tinysaver.runtime.backends`); Ray and starlette inside functions only, so importing
this package does not import Ray.

Examples:
    >>> from ray import serve
    >>> serve.run(build_app({"export_dir": "outputs/exported/fmnist_s_l"}), route_prefix="/")  # doctest: +SKIP
    $ serve run tinysaver.serve:build_app export_dir=outputs/exported/fmnist_s_l thresholds=0.9
"""
from __future__ import annotations

from .app import build_app
from .config import ServeConfig, StageOptions, load_config
from .payload import decode_to_array, parse_payload

__all__ = ["StageOptions", "ServeConfig", "build_app", "load_config", "parse_payload", "decode_to_array"]
