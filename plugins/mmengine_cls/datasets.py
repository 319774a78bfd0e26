"""Classification datasets and pipeline transforms for mmengine's Runner.

Each item is decoded once and stays a PIL image (``LoadClassImage``: torchvision's loader for files,
as ``ImageFolder`` and ``tinysaver record`` use it; ``Image.fromarray`` for in-memory arrays, as
:class:`~tinysaver.plugins.datasets.ArrayImageDataset`); ``PackClassInputs`` hands it to the model
with a data sample holding ``gt_label`` (the model's class index) and the metainfo the model needs
(the label space size, and the kept classes under ``mask_to_folders``). The stages of
:class:`~.model.TinySaverClassifier` each apply their own eval transform to it. The samples are in
the order ``tinysaver record`` reads them, so the records ``tools/test.py --dump-records`` writes
pair with records made by ``tinysaver record``.

- ``ImageNetFolderDataset``: ``DATA_ROOT/<split>/<class folder>/<image>``, labels by the folder →
  class mapping of :mod:`tinysaver.plugins.imagenet` (synset ids, numeric folders, folder order when
  the counts match, or a ``class_map`` file; ``mask_to_folders`` for ImageNet-R/-A).
- ``FashionMNISTDataset``: splits ``train``/``holdout``/``test`` of the Debian package
  (:func:`tinysaver.plugins.datasets.load_fashion_mnist`).

``indices=N`` (mmengine's ``BaseDataset``) keeps the first N samples, as ``tinysaver record --limit N``.

Examples:
    >>> test_dataloader = dict(batch_size=64, num_workers=4, sampler=dict(type='DefaultSampler', shuffle=False),
    ...     dataset=dict(type='ImageNetFolderDataset', data_root='/data/imagenet', split='val', num_classes=1000))
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmengine.registry import DATASETS, TRANSFORMS
from mmengine.structures import BaseDataElement

from tinysaver.errors import TinySaverError

from .model import MASK_KEY, NUM_CLASSES_KEY

DEFAULT_PIPELINE = (dict(type="LoadClassImage"), dict(type="PackClassInputs"))


@TRANSFORMS.register_module()
class LoadClassImage:
    """Decodes the image once: ``img_path`` with torchvision's ``default_loader`` (PIL, RGB), or an
    in-memory uint8 array ``img`` (``H×W`` → mode ``L``, ``H×W×3`` → ``RGB``). Sets ``ori_shape``."""

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        from PIL import Image, UnidentifiedImageError

        if results.get("img") is None:
            from torchvision.datasets.folder import default_loader

            path = results["img_path"]
            try:
                img = default_loader(path)
            except (OSError, UnidentifiedImageError) as exc:
                raise TinySaverError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None
        else:
            img = Image.fromarray(np.asarray(results["img"]))
        results["img"] = img
        results["ori_shape"] = (img.height, img.width)
        return results

    def __repr__(self) -> str:
        return "LoadClassImage()"


@TRANSFORMS.register_module()
class PackClassInputs:
    """``{'inputs': decoded image, 'data_samples': BaseDataElement(gt_label=..., metainfo)}``.

    Args:
        meta_keys: Keys of the pipeline results kept as the sample's metainfo.
    """

    def __init__(self, meta_keys: Sequence[str] = ("sample_idx", "img_path", "ori_shape", NUM_CLASSES_KEY,
                                                   MASK_KEY)) -> None:
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        sample.gt_label = int(results["gt_label"])
        return {"inputs": results["img"], "data_samples": sample}

    def __repr__(self) -> str:
        return f"PackClassInputs(meta_keys={self.meta_keys})"


class _ClassificationDataset(BaseDataset):
    """Adds the label-space size and the kept classes to every item (the model checks and masks)."""

    num_classes: int = 0
    _mask_classes: Optional[tuple] = None

    def prepare_data(self, idx: int) -> Any:
        info = self.get_data_info(idx)
        info[NUM_CLASSES_KEY] = self.num_classes
        if self._mask_classes is not None:
            info[MASK_KEY] = self._mask_classes
        return self.pipeline(info)


@DATASETS.register_module()
class ImageNetFolderDataset(_ClassificationDataset):
    """ImageNet-style folders ``DATA_ROOT/<split>/<class>/<image>``, each image labelled with its
    folder's class index in the model's outputs (the mapping is logged and in ``metainfo``).

    Args:
        data_root: The dataset root.
        split: The split folder under it (``val``).
        num_classes: The models' number of outputs (1000 for ImageNet-1k): decides the synset
            lookup and whether folder order may be used.
        class_map: A ``folder → index`` file (JSON object or lines ``folder index``) that decides.
        mask_to_folders: Restrict the logits to the classes that have a folder (ImageNet-R/-A).
        pipeline: Default: ``LoadClassImage``, ``PackClassInputs``.
        indices: Keep only these samples (an int N: the first N).
        **kwargs: Passed to :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self, data_root: str = "", split: str = "val", num_classes: int = 1000,
                 class_map: Optional[str] = None, mask_to_folders: bool = False,
                 pipeline: Sequence[dict] = DEFAULT_PIPELINE, test_mode: bool = True, **kwargs: Any) -> None:
        self.split, self.num_classes = split, int(num_classes)
        self.class_map_file, self.mask_to_folders = class_map, bool(mask_to_folders)
        self.class_map = None
        super().__init__(data_root=data_root, data_prefix=dict(img_path=split), pipeline=list(pipeline),
                         test_mode=test_mode, **kwargs)

    def load_data_list(self) -> List[dict]:
        from tinysaver.plugins.imagenet import ImageNetFolder, folder_class_map

        root = self.data_prefix["img_path"]
        cmap = folder_class_map(root, self.num_classes, self.class_map_file, self.mask_to_folders)
        folder = ImageNetFolder(root, cmap)  # torchvision's listing: the order tinysaver record reads
        self.class_map = cmap
        self._mask_classes = tuple(cmap.indices) if cmap.mask_to_folders else None
        self._metainfo.update(classes=list(cmap.folders), split=self.split, data=str(self.data_root or root),
                              class_map=dict(folders=list(cmap.folders), indices=list(cmap.indices), kind=cmap.kind,
                                             num_classes=cmap.num_classes, mask_to_folders=cmap.mask_to_folders,
                                             source=cmap.source, description=cmap.describe()))
        print_log(f"{root}: classes: {cmap.describe()}", logger="current")
        return [dict(img_path=path, gt_label=int(target)) for path, target in folder.samples]


@DATASETS.register_module()
class FashionMNISTDataset(_ClassificationDataset):
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Args:
        split: ``train`` (first 50k official training images), ``holdout`` (last 10k) or ``test``.
        pipeline: Default: ``LoadClassImage``, ``PackClassInputs``.
        indices: Keep only these samples (an int N: the first N).
        **kwargs: Passed to :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self, split: str = "test", pipeline: Sequence[dict] = DEFAULT_PIPELINE, test_mode: bool = True,
                 **kwargs: Any) -> None:
        from tinysaver.plugins.datasets import FASHION_MNIST_CLASSES

        self.split, self.num_classes = split, len(FASHION_MNIST_CLASSES)
        kwargs.setdefault("metainfo", dict(classes=list(FASHION_MNIST_CLASSES)))
        super().__init__(pipeline=list(pipeline), test_mode=test_mode, **kwargs)

    def load_data_list(self) -> List[dict]:
        from tinysaver.plugins.datasets import load_fashion_mnist

        images, labels = load_fashion_mnist(self.split)
        self._metainfo.update(split=self.split, data="fashion_mnist")
        return [dict(img=images[i], gt_label=int(labels[i])) for i in range(len(labels))]


__all__ = ["ImageNetFolderDataset", "FashionMNISTDataset", "LoadClassImage", "PackClassInputs", "DEFAULT_PIPELINE"]
