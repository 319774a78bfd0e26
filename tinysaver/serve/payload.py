"""Request bodies: the size-limited read, and JSON / ``.npy`` / image bodies parsed into float32
arrays or decoded uint8 images, every problem a one-line :class:`~tinysaver.errors.TinySaverError`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..runtime.preprocess import decode_image

#: what a sample sent between stages looks like
ARRAYS, IMAGES = "arrays", "images"


def take(kind: str, data: Any, rows: np.ndarray) -> Any:
    """Rows of a request's data: an array's rows or a list's images."""
    return data[rows] if kind == ARRAYS else [data[i] for i in rows]


class RequestError(TinySaverError):
    """A request the server refuses, with its HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: deepest JSON nesting a body may have (``{"inputs": [B][C][H][W]}`` is 5 deep)
MAX_JSON_DEPTH = 32
#: an over-long body is still read (and dropped) up to this many bytes before the 413 is sent, so
#: a client that sends its whole body before reading the answer (urllib) reads the 413 instead of
#: a connection reset; a longer one is answered at once and its connection closed
DRAIN_BYTES = 64 * 1024 * 1024


async def read_body(request: Any, limit: int, timeout_s: Optional[float] = None,
                    drain_bytes: int = DRAIN_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes, received within ``timeout_s`` seconds.

    Raises:
        RequestError: 413 for a body over ``limit`` (declared or counted; the rest of the body is
            read and dropped first, up to ``drain_bytes``), 408 for a body not received in time.
    """
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    over = declared is not None and declared > limit
    body = bytearray()
    received = 0

    async def receive() -> None:
        nonlocal received
        async for part in request.stream():
            received += len(part)
            if over or received > limit:
                if received > drain_bytes:
                    return
                continue  # dropped: read only so that the client gets to read the answer
            body.extend(part)

    if over and declared > drain_bytes:
        raise RequestError(f"payload of {declared} bytes exceeds max_request_bytes ({limit})", 413)
    try:
        await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f"request body not received within {timeout_s:g} s (body_timeout_s)", 408) from None
    if over:
        raise RequestError(f"payload of {declared} bytes exceeds max_request_bytes ({limit})", 413)
    if received > limit:
        raise RequestError(f"payload exceeds max_request_bytes ({limit})", 413)
    return bytes(body)


async def discard_body(request: Any, max_bytes: int, timeout_s: float) -> None:
    """Reads and drops a request's body (at most ``max_bytes``, for at most ``timeout_s`` seconds)
    before the request is refused: closing a connection with unread data resets it, and clients
    that send the whole body before reading (urllib) then see a reset instead of the answer."""
    async def drain() -> None:
        received = 0
        async for part in request.stream():
            received += len(part)
            if received > max_bytes:
                return

    try:
        await asyncio.wait_for(drain(), timeout_s)
    except Exception:  # too slow, or gone: refused anyway, and the answer is sent with connection: close
        pass


class UploadSlots:
    """Bodies being received at once (``active``), bounded apart from inference: beyond
    ``max_concurrent`` a request is refused 503 at once (its body read and dropped for at most
    ``refused_body_s``, so that clients that send the whole body first read the answer)."""

    def __init__(self, refused_body_s: float = 1.0) -> None:
        self.active = 0
        self.refused_body_s = refused_body_s

    async def read(self, request: Any, max_concurrent: int, limit: int, timeout_s: Optional[float]) -> bytes:
        """The body under a slot (:func:`read_body`'s limits and errors).

        Raises:
            RequestError: 503 when every slot is taken, and :func:`read_body`'s 413 and 408.
        """
        if self.active >= max_concurrent:
            await discard_body(request, limit, self.refused_body_s)
            raise RequestError(f"too many uploads in progress (max_concurrent_uploads is {max_concurrent})", 503)
        self.active += 1
        try:
            return await read_body(request, limit, timeout_s)
        finally:
            self.active -= 1


def parse_payload(content_type: str, body: bytes, max_samples: Optional[int] = None,
                  max_pixels: Optional[int] = None, pil: bool = False) -> tuple:
    """``(kind, data)`` of a request body: float32 arrays or decoded uint8 images (one-line errors).

    Args:
        pil: Images as PIL images (``L`` or ``RGB``) instead of uint8 arrays (spares two copies of
            a large image when it is preprocessed right away).
        max_samples: Most samples (array rows or images) in one body; checked before any image is
            decoded.
        max_pixels: Most decoded pixels of the body's images in all, checked on each image's header
            before it is decoded.
    """
    kind, data = _parse_payload(content_type, body, max_samples, max_pixels, pil)
    if max_samples is not None and len(data) > max_samples:
        raise TinySaverError(f"{len(data)} samples in one request (max_samples_per_request is {max_samples})")
    return kind, data


def _parse_payload(content_type: str, body: bytes, max_samples: Optional[int], max_pixels: Optional[int],
                   pil: bool) -> tuple:
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise TinySaverError("empty request body")
    if ctype == "application/json":
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            raise TinySaverError(f"JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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
        return IMAGES, _decode_all([_b64(img, i) for i, img in enumerate(images)], max_pixels, pil)
    if ctype in ("application/x-npy", "application/octet-stream"):
        return ARRAYS, _as_batch(parse_npy(body, max_samples))
    if ctype.startswith("image/"):
        return IMAGES, [(decode_pil if pil else decode_to_array)(body, "image", max_pixels)]
    raise TinySaverError(f"unsupported content type {ctype or 'none'!r} (use application/json, "
                         f"application/x-npy or image/*)")


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counted on its bytes before it is parsed (brackets
    inside strings count too: exact for this API, whose strings are base64)."""
    b = np.frombuffer(body, dtype=np.uint8)
    opens = (b == ord("[")) | (b == ord("{"))
    brackets = opens | (b == ord("]")) | (b == ord("}"))
    steps = np.where(opens[brackets], 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def parse_npy(body: bytes, max_samples: Optional[int] = None) -> np.ndarray:
    """A ``.npy`` body as an array viewing ``body``, its header checked against the body's length,
    ``max_samples`` and the dtype policy before anything is allocated (a header can claim 10^12
    samples in 100 bytes)."""
    stream = io.BytesIO(body)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        shape, fortran, dtype = readers[version](stream)
    except KeyError:
        raise TinySaverError(f"body is a .npy of version {version[0]}.{version[1]} (1.0 and 2.0 are read)") from None
    except Exception as exc:  # whatever the header parser raises on a malformed header (ValueError, TokenError, ...)
        raise TinySaverError(f"body is not a .npy array ({type(exc).__name__})") from None
    check_dtype(dtype)
    if any(type(d) is not int or d < 0 for d in shape):  # the header parser lets -2 and True through
        raise TinySaverError(f".npy header: shape {list(shape)} (dimensions must be integers >= 0)")
    if len(shape) not in (3, 4):
        raise TinySaverError(f"inputs: shape {list(shape)} (expected [batch, C, H, W] or [C, H, W])")
    if max_samples is not None and len(shape) == 4 and shape[0] > max_samples:
        raise TinySaverError(f"{shape[0]} samples in one request (max_samples_per_request is {max_samples})")
    count = math.prod(shape)
    data = len(body) - stream.tell()
    if count * dtype.itemsize != data:
        raise TinySaverError(f".npy header says {list(shape)} {dtype} ({count * dtype.itemsize} bytes), the body "
                             f"holds {data} bytes of data")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def check_dtype(dtype: np.dtype) -> None:
    """The dtype policy: float32, or float64 (narrowed to float32, as every model sees it); any
    other dtype (float16, integers, strings, objects) is refused."""
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise TinySaverError(f"inputs: dtype {dtype} (expected float32; float64 is narrowed to float32)")


def _json_array(value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise TinySaverError('"inputs" must be a rectangular nested list of numbers') from None
    if array.dtype.kind not in "fiu":  # numbers only: strings, booleans, null, ragged lists are refused
        raise TinySaverError('"inputs" must be a rectangular nested list of numbers'
                             f"{' (got strings)' if array.dtype.kind in 'US' else ''}")
    return array.astype(np.float32)


def _as_batch(array: np.ndarray) -> np.ndarray:
    check_dtype(array.dtype)
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


def _decode_all(encoded: Sequence[bytes], max_pixels: Optional[int], pil: bool = False) -> List[Any]:
    """Decodes a request's images; each is refused from its header when the request's pixels would
    pass ``max_pixels`` with it."""
    out: List[Any] = []
    used = 0
    for i, data in enumerate(encoded):
        left = None if max_pixels is None else max_pixels - used
        img = decode_pil(data, f"image {i}", left, max_pixels)
        used += img.width * img.height
        out.append(img if pil else np.asarray(img, dtype=np.uint8))
    return out


def decode_pil(data: bytes, what: str, max_pixels: Optional[int] = None,
               request_pixels: Optional[int] = None) -> Any:
    """An encoded image as a PIL image of mode ``L`` or ``RGB``.

    Args:
        max_pixels: Refused from its header beyond that many pixels (what the request has left).
        request_pixels: The request's limit, for the message.
    """
    limit = f"max_request_pixels ({request_pixels or max_pixels} decoded pixels per request)"
    img = decode_image(data, what, max_pixels=max_pixels, limit=limit)
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def decode_to_array(data: bytes, what: str, max_pixels: Optional[int] = None,
                    request_pixels: Optional[int] = None) -> np.ndarray:
    """An encoded image as uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]``: what travels between stages
    (arguments as :func:`decode_pil`)."""
    return np.asarray(decode_pil(data, what, max_pixels, request_pixels), dtype=np.uint8)


__all__ = ["ARRAYS", "IMAGES", "MAX_JSON_DEPTH", "DRAIN_BYTES", "RequestError", "UploadSlots", "take", "read_body", "discard_body",
           "parse_payload",
           "parse_npy", "check_dtype", "json_depth", "decode_pil", "decode_to_array"]
