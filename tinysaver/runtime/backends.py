"""Runtimes that run an exported stage graph, keyed by name: the one place sessions are built.

:class:`tinysaver.runtime.OnnxCascade`, the exporter's check and the Ray Serve deployments get
every session through :func:`make_session` (or :func:`get_backend`), so a new runtime (TensorRT,
OpenVINO, ...) is one class registered here (or by a plugin module of the ``tinysaver.plugins``
entry-point group) and chosen by name: ``OnnxCascade(DIR, backend="tensorrt")``, or
``backend: tensorrt`` in a serve config's stage options. Nothing else changes.

A backend is a class with a ``name`` and ``session(graph, *, providers, threads, spinning)``
returning a *session*: an object with onnxruntime's ``InferenceSession`` surface that the runtime
uses, ``get_inputs()``/``get_outputs()`` (objects with a ``.name``) and
``run(output_names, {input_name: array}) -> [arrays]``. ``graph`` is the path of an ONNX file (or
its bytes).

Examples:
    >>> from tinysaver.runtime.backends import BACKENDS, Backend
    >>> @BACKENDS.register("my_runtime")
    ... class MyRuntime(Backend):
    ...     name = "my_runtime"
    ...     def session(self, graph, *, providers=None, threads=None, spinning=True):
    ...         raise NotImplementedError
    >>> "my_runtime" in BACKENDS.names()                                         # doctest: +SKIP
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

from ..errors import TinySaverError
from ..registry import Registry

#: runtime backends by name (plugins may add theirs)
BACKENDS: Registry = Registry("runtime backend", plugins=True)
#: the backend used unless one is named
DEFAULT_BACKEND = "onnxruntime"


class Backend:
    """Base class of a runtime backend (see the module docstring for the session it returns)."""

    name: str = ""

    def session(self, graph: Union[str, Path, bytes], *, providers: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, spinning: bool = True) -> Any:
        """A session running ``graph``.

        Args:
            graph: Path of the ONNX graph, or its serialised bytes.
            providers: Devices, in the backend's own names (onnxruntime: execution providers).
            threads: Intra-op threads (None: the backend's default).
            spinning: False lets idle threads sleep instead of busy-waiting (processes sharing
                their cores, e.g. several server replicas on one machine).
        """
        raise NotImplementedError


@BACKENDS.register(DEFAULT_BACKEND)
class OnnxRuntimeBackend(Backend):
    """onnxruntime (CPU by default; ``providers=["CUDAExecutionProvider"]`` with onnxruntime-gpu)."""

    name = DEFAULT_BACKEND

    def session(self, graph: Union[str, Path, bytes], *, providers: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, spinning: bool = True) -> Any:
        import onnxruntime as ort

        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise TinySaverError(f"onnxruntime has no {', '.join(missing)} here (available: "
                                 f"{', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options, providers=providers)


def get_backend(name: Optional[str] = None) -> Backend:
    """The registered backend ``name`` (default :data:`DEFAULT_BACKEND`), instantiated."""
    return BACKENDS.get(name or DEFAULT_BACKEND)()


def backend_names() -> List[str]:
    return BACKENDS.names()


def make_session(path: Union[str, Path, bytes], providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, spinning: bool = True, backend: Optional[str] = None) -> Any:
    """A session of ``backend`` (default onnxruntime) for a stage graph; ``threads`` caps its
    intra-op threads (None: the backend's default); ``spinning=False`` lets idle intra-op threads
    sleep instead of busy-waiting (for processes that share their cores, e.g. several server
    replicas on one machine)."""
    return get_backend(backend).session(path, providers=providers, threads=threads, spinning=spinning)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "OnnxRuntimeBackend", "get_backend", "backend_names",
           "make_session"]
