"""Image decoding and timm's eval preprocessing in PIL + numpy (no torch).

Images are encoded bytes (JPEG, PNG, anything PIL decodes), PIL images, or uint8 arrays
``[H, W]``/``[H, W, 3]`` (:func:`decode_image`). Each stage preprocesses the decoded image the way
timm's eval transform does (:func:`preprocess_image`): resize the shorter side to
``floor(size / crop_pct)`` with the config's interpolation (PIL), centre crop, scale to [0, 1],
normalise with mean/std. Supported ``crop_mode`` s: ``center`` and ``squash``; interpolations:
``nearest``, ``bilinear``, ``bicubic``, ``lanczos``, ``box``, ``hamming``.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Optional

import numpy as np

from ..errors import TinySaverError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
#: longest side / shortest side of an image ``preprocess_image`` takes: the resize scales the shorter
#: side to the model's size, so a 1 x 20,000 image of a hundred bytes would become 256 x 5,120,000
#: pixels (3.9 GB in RGB) before the crop; no photograph is that elongated
MAX_ASPECT_RATIO = 100


def decode_image(image: Any, what: str = "image", max_pixels: Optional[int] = None,
                 limit: str = "the pixel limit") -> Any:
    """A PIL image from encoded bytes, a PIL image, or a uint8 array ``[H, W]``/``[H, W, 3]``.

    Args:
        max_pixels: Encoded bytes whose header announces more pixels than this are refused before
            anything is decoded (a few kB of PNG can announce 100 million pixels).
        limit: How the error names ``max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))  # reads the header only
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise TinySaverError(f"{what}: {img.width}x{img.height} pixels would pass {limit}")
            img.load()
            return img
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, ImportError) as exc:
            # ImportError: once ultralytics is imported, PIL.Image.open is its patch, which answers an
            # unidentified image by importing pi_heif (not installed: ModuleNotFoundError)
            raise TinySaverError(f"{what}: cannot decode ({type(exc).__name__})") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise TinySaverError(f"{what}: expected uint8 [H, W] or [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image)
    raise TinySaverError(f"{what}: expected bytes, a PIL image or a uint8 array, got {type(image).__name__}")


def preprocess_image(image: Any, preprocess: Mapping[str, Any]) -> np.ndarray:
    """timm's eval transform in PIL + numpy: float32 ``[C, H, W]``.

    Resize (shorter side to ``floor(size / crop_pct)``; ``squash``: both sides), centre crop to the
    input size, ``/ 255``, ``(x - mean) / std``, all in float32: the operations torchvision applies,
    in its order, so the result equals ``eval_transform(model)(image)``.
    """
    from PIL import Image

    channels, height, width = (int(v) for v in preprocess["input_size"])
    interpolation = preprocess.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise TinySaverError(f"unsupported interpolation {interpolation!r} (supported: {', '.join(INTERPOLATIONS)})")
    resample = getattr(Image.Resampling, interpolation.upper())
    img = image.convert("L" if channels == 1 else "RGB")
    crop_pct = float(preprocess.get("crop_pct") or 0.875)
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    mode = preprocess.get("crop_mode") or "center"
    if mode == "squash":
        img = img.resize((scale[1], scale[0]), resample)
    elif mode == "center":
        if scale[0] != scale[1]:
            raise TinySaverError("crop_mode 'center' with a non-square input is not supported")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if long > MAX_ASPECT_RATIO * short:
            raise TinySaverError(f"image of {w}x{h} is more than {MAX_ASPECT_RATIO} times longer than wide: refused "
                                 f"(resizing its shorter side to {scale[0]} px would make it {scale[0] * long // short} "
                                 "px long)")
        new_short, new_long = scale[0], int(scale[0] * long / short)
        img = img.resize((new_short, new_long) if w <= h else (new_long, new_short), resample)
    else:
        raise TinySaverError(f"unsupported crop_mode {mode!r} (supported: center, squash)")
    img = center_crop(img, height, width)
    x = np.asarray(img, dtype=np.uint8)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    x = x.astype(np.float32) / np.float32(255)
    mean = np.asarray(preprocess["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess["std"], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def center_crop(img: Any, height: int, width: int) -> Any:
    w, h = img.size
    if width > w or height > h:
        raise TinySaverError(f"image of {w}x{h} is smaller than the {width}x{height} crop after resizing")
    # torchvision's rounding of the crop origin
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


__all__ = ["INTERPOLATIONS", "MAX_ASPECT_RATIO", "decode_image", "preprocess_image", "center_crop"]
