"""Request bodies: the size-limited read, and JSON / ``.npy`` / image bodies parsed into float32
arrays or decoded uint8 images, every problem a one-line :class:`~tinysaver.errors.TinySaverError`.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..runtime.preprocess import decode_image

#: what a sample sent between stages looks like
ARRAYS, IMAGES = "arrays", "images"


def take(kind: str, data: Any, rows: np.ndarray) -> Any:
    """Rows of a request's data: an array's rows or a list's images."""
    return data[rows] if kind == ARRAYS else [data[i] for i in rows]


async def read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TinySaverError(f"payload of {declared} bytes exceeds max_request_bytes ({limit})")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise TinySaverError(f"payload exceeds max_request_bytes ({limit})")
    return bytes(body)


def parse_payload(content_type: str, body: bytes, max_samples: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> tuple:
    """``(kind, data)`` of a request body: float32 arrays or decoded uint8 images (one-line errors).

    Args:
        max_samples: Most samples (array rows or images) in one body; checked before any image is
            decoded.
        max_pixels: Most decoded pixels of the body's images in all, checked on each image's header
            before it is decoded.
    """
    kind, data = _parse_payload(content_type, body, max_samples, max_pixels)
    if max_samples is not None and len(data) > max_samples:
        raise TinySaverError(f"{len(data)} samples in one request (max_samples_per_request is {max_samples})")
    return kind, data


def _parse_payload(content_type: str, body: bytes, max_samples: Optional[int], max_pixels: Optional[int]) -> tuple:
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise TinySaverError("empty request body")
    if ctype == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TinySaverError(f"malformed JSON ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or len({"inputs", "images"} & set(payload)) != 1:
            raise TinySaverError('JSON body must be {"inputs": [...]} or {"images": ["<base64>", ...]}')
        if "inputs" in payload:
            return ARRAYS, _as_batch(_json_array(payload["inputs"]))
        images = payload["images"]
        if not isinstance(images, list) or not images:
            raise TinySaverError('"images" must be a non-empty list of base64 strings')
        if max_samples is not None and len(images) > max_samples:
            raise TinySaverError(f"{len(images)} samples in one request (max_samples_per_request is {max_samples})")
        return IMAGES, _decode_all([_b64(img, i) for i, img in enumerate(images)], max_pixels)
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise TinySaverError(f"body is not a .npy array ({type(exc).__name__})") from None
        return ARRAYS, _as_batch(array)
    if ctype.startswith("image/"):
        return IMAGES, [decode_to_array(body, "image", max_pixels)]
    raise TinySaverError(f"unsupported content type {ctype or 'none'!r} (use application/json, "
                         f"application/x-npy or image/*)")


def _json_array(value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise TinySaverError('"inputs" must be a rectangular nested list of numbers') from None
    return array


def _as_batch(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise TinySaverError(f"inputs: dtype {array.dtype} (expected float32)")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or len(array) == 0:
        raise TinySaverError(f"inputs: shape {list(array.shape)} (expected [batch, C, H, W] or [C, H, W])")
    return np.asarray(array, dtype=np.float32)


def _b64(value: Any, i: int) -> bytes:
    if not isinstance(value, str):
        raise TinySaverError(f"image {i}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TinySaverError(f"image {i}: not valid base64") from None


def _decode_all(encoded: Sequence[bytes], max_pixels: Optional[int]) -> List[np.ndarray]:
    """Decodes a request's images; each is refused from its header when the request's pixels would
    pass ``max_pixels`` with it."""
    out: List[np.ndarray] = []
    used = 0
    for i, data in enumerate(encoded):
        left = None if max_pixels is None else max_pixels - used
        out.append(decode_to_array(data, f"image {i}", left, max_pixels))
        used += out[-1].shape[0] * out[-1].shape[1]
    return out


def decode_to_array(data: bytes, what: str, max_pixels: Optional[int] = None,
                    request_pixels: Optional[int] = None) -> np.ndarray:
    """An encoded image as uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]``: what travels between stages.

    Args:
        max_pixels: Refused from its header beyond that many pixels (what the request has left).
        request_pixels: The request's limit, for the message.
    """
    limit = f"max_request_pixels ({request_pixels or max_pixels} decoded pixels per request)"
    img = decode_image(data, what, max_pixels=max_pixels, limit=limit)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


__all__ = ["ARRAYS", "IMAGES", "take", "read_body", "parse_payload", "decode_to_array"]
