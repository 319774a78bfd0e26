"""Datasets that install offline, plus ImageNet's folder layout.

- Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files). Splits: ``train``
  (first 50,000 official training images: what the demo pool is trained on), ``holdout`` (last
  10,000 official training images, never trained on: a calibration split), ``test`` (official 10k).
- ImageNet (or any) ``ImageFolder`` layout: ``DIR/<class>/<image>``, labelled with the model's
  class index of each folder (:mod:`tinysaver.plugins.imagenet`).
- 20 labelled ImageNet validation images shipped by the PyPI package ``foolbox`` (MIT), laid out as
  synset (ImageNet) or numeric (ImageNet-V2) folders.
- Real photos shipped by installed packages (scikit-image, opencv-doc, ultralytics).

Items are PIL images so that each model applies its own timm eval transform to one decode.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from tinysaver.errors import DataNotFoundError, TinySaverError
from tinysaver.registry import DATASETS

if TYPE_CHECKING:
    from tinysaver.plugins.imagenet import ClassMap

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_SPLITS = {"train": ("train", slice(0, 50_000)), "holdout": ("train", slice(50_000, 60_000)),
                        "test": ("t10k", slice(0, 10_000))}


def _read_idx(path: Path) -> np.ndarray:
    if not path.exists():
        raise TinySaverError(f"{path}: not found; install the Debian package dataset-fashion-mnist "
                             f"(tools/setup.sh does) or set FASHION_MNIST_DIR")
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(images uint8 [N, 28, 28], labels int64 [N])`` of ``train``/``holdout``/``test``."""
    if split not in FASHION_MNIST_SPLITS:
        raise TinySaverError(f"unknown Fashion-MNIST split {split!r} (known: {', '.join(FASHION_MNIST_SPLITS)})")
    prefix, rows = FASHION_MNIST_SPLITS[split]
    images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")[rows]
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")[rows].astype(np.int64)
    return images, labels


class ArrayImageDataset:
    """Grayscale uint8 images in memory served as PIL images (``mode 'L'``) with their labels.

    Args:
        images: ``[N, H, W]`` uint8.
        labels: ``[N]`` int.
        transform: Applied to each PIL image (e.g. a :class:`~tinysaver.plugins.timm.MultiTransform`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i], mode="L")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def image_folder(root: str, transform: Optional[Callable] = None, class_map: Optional["ClassMap"] = None):
    """ImageNet layout ``root/<class>/<image>`` (RGB PIL images).

    Args:
        root: The split folder.
        transform: Applied to each PIL image.
        class_map: Folder → model class index (:func:`tinysaver.plugins.imagenet.folder_class_map`);
            without one, torchvision's numbering by sorted folder name (right only when the folders
            are exactly the model's classes in its order).
    """
    from torchvision.datasets import ImageFolder

    from tinysaver.plugins.imagenet import ImageNetFolder

    if not Path(root).is_dir():
        raise DataNotFoundError(f"{root}: no such dataset folder (expected ROOT/<class>/<image>)")
    if class_map is not None:
        return ImageNetFolder(root, class_map, transform)
    return ImageFolder(root, transform=transform)


def foolbox_imagenet_images() -> List[Tuple[Path, int]]:
    """The 20 labelled ImageNet validation JPEGs shipped by the PyPI package ``foolbox`` (MIT), as
    ``(path, ImageNet-1k class index)`` sorted by path. The package is located, not imported (it is
    installed ``--no-deps``); its files are ``foolbox/data/imagenet_NN_<class index>.jpg``."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise TinySaverError("foolbox is not installed: pip install --no-deps foolbox==3.3.4 "
                             "(it ships 20 labelled ImageNet validation images)")
    folders = [Path(loc) / "data" for loc in spec.submodule_search_locations]
    found = sorted(p for folder in folders for p in folder.glob("imagenet_*_*.jpg"))
    images = [(p, int(p.stem.rsplit("_", 1)[1])) for p in found]
    if not images:
        raise TinySaverError(f"{folders[0]}: no imagenet_NN_<label>.jpg files in the foolbox package")
    return images


def write_imagenet_layout(images: Sequence[Tuple[Path, int]], root: os.PathLike | str, layout: str) -> Path:
    """Copies labelled images into an ImageNet-style split folder and returns it.

    Args:
        images: ``(path, ImageNet-1k class index)`` pairs, e.g. :func:`foolbox_imagenet_images`.
        root: The split folder to create (``.../val``).
        layout: ``synset`` (``root/n01614925/…``, ImageNet) or ``numeric`` (``root/22/…``,
            ImageNet-V2).

    Examples:
        >>> write_imagenet_layout(foolbox_imagenet_images(), "data/val", "synset")  # doctest: +SKIP
    """
    import shutil

    from timm.data import ImageNetInfo

    if layout not in ("synset", "numeric"):
        raise TinySaverError(f"unknown layout {layout!r} (known: synset, numeric)")
    info = ImageNetInfo("imagenet-1k")
    root = Path(root)
    for path, index in images:
        folder = root / (info.index_to_label_name(index) if layout == "synset" else str(index))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
    return root


def shipped_photos() -> List[Tuple[str, np.ndarray]]:
    """Real photos that ship with installed packages, as ``(name, RGB uint8 HWC)``.

    Sources: scikit-image's bundled images (colour ones), the ``opencv-doc`` Debian package's
    examples/data photos, and ultralytics' ``assets/`` (bus.jpg, zidane.jpg).
    """
    from PIL import Image

    photos: List[Tuple[str, np.ndarray]] = []
    try:
        import skimage.data as skd

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                     "retina", "colorwheel", "logo"):
            try:
                img = np.asarray(getattr(skd, name)())
            except Exception:  # an image that would need a download: skip it
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                photos.append((f"skimage/{name}", np.ascontiguousarray(img[..., :3])))
    except ImportError:
        pass
    folders: Sequence[Path] = [Path("/usr/share/doc/opencv-doc/examples/data")]
    spec = importlib.util.find_spec("ultralytics")  # located, not imported (its import is slow)
    if spec is not None and spec.origin:
        folders = [*folders, Path(spec.origin).parent / "assets"]
    for folder in folders:
        for path in sorted(folder.glob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp") or path.stat().st_size < 20_000:
                continue
            with Image.open(path) as im:
                if im.mode not in ("RGB", "RGBA", "P") or min(im.size) < 128:
                    continue  # grayscale test patterns and icons are not photos
                photos.append((f"{folder.name}/{path.name}", np.asarray(im.convert("RGB"))))
    return photos


class PhotoViews:
    """``views`` randomly augmented views of each photo (item ``i`` is photo ``i // views``), for
    real images without labels. Wrap in :class:`tinysaver.models.recording.SeededItems` so view ``i`` is
    the same crop for every model and run. Labels are placeholders (-1): use a model's top-1 as the
    reference.

    Args:
        photos: ``(name, RGB uint8 HWC)`` pairs, e.g. from :func:`shipped_photos`.
        views: Views per photo.
        transform: A random (training) transform, PIL in.
    """

    def __init__(self, photos: Sequence[Tuple[str, np.ndarray]], views: int, transform: Optional[Callable] = None) -> None:
        from PIL import Image

        self.names = [name for name, _ in photos]
        self.images = [Image.fromarray(img) for _, img in photos]
        self.views, self.transform = views, transform

    def __len__(self) -> int:
        return len(self.images) * self.views

    def __getitem__(self, i: int):
        img = self.images[i // self.views]
        return (self.transform(img) if self.transform else img), -1


# --- the core's dataset sources (tinysaver.registry.DATASETS) ----------------------------------------

class FashionMNISTSource:
    """``--data fashion_mnist``: splits train / holdout / test; labels are the model's classes already."""

    def class_map(self, data: str, split: str, num_classes: int, class_map_file: Optional[str] = None,
                  mask_to_folders: bool = False) -> None:
        if class_map_file or mask_to_folders:
            raise TinySaverError("--class-map and --mask-to-folders apply to folder datasets, not fashion_mnist")
        if split not in FASHION_MNIST_SPLITS:  # refused here, before any split is recorded
            raise TinySaverError(f"unknown Fashion-MNIST split {split!r} (known: {', '.join(FASHION_MNIST_SPLITS)})")
        return None

    def split(self, data: str, split: str, transform: Optional[Callable] = None, class_map: Any = None) -> ArrayImageDataset:
        return ArrayImageDataset(*load_fashion_mnist(split), transform)


class ImageFolderSource:
    """``--data ROOT``: ImageNet-style folders ``ROOT/<split>/<class>/<image>``, each image labelled
    with its folder's model class index (:func:`tinysaver.plugins.imagenet.folder_class_map`)."""

    def class_map(self, data: str, split: str, num_classes: int, class_map_file: Optional[str] = None,
                  mask_to_folders: bool = False) -> "ClassMap":
        from .imagenet import folder_class_map

        return folder_class_map(Path(data) / split, num_classes, class_map_file, mask_to_folders)

    def split(self, data: str, split: str, transform: Optional[Callable] = None, class_map: Any = None):
        return image_folder(str(Path(data) / split), transform, class_map=class_map)


DATASETS.register("fashion_mnist")(FashionMNISTSource())
DATASETS.register("imagefolder")(ImageFolderSource())
