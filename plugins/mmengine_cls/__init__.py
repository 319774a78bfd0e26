"""mmengine plugin: TinySaver classifier cascades evaluated by mmengine's Runner (``tools/test.py``),
the way detection cascades are.

Importing this package (a config's ``custom_imports=dict(imports=['tinysaver.plugins.mmengine_cls'])``)
registers, in mmengine's root registries (so any scope finds them, mmdet's included, and no
OpenMMLab codebase beyond mmengine is needed):

- ``TinySaverClassifier`` in ``MODELS`` (:mod:`.model`): any number of timm/torchvision stages on
  the core routing routine;
- ``ImageNetFolderDataset`` and ``FashionMNISTDataset`` in ``DATASETS``, ``LoadClassImage`` and
  ``PackClassInputs`` in ``TRANSFORMS`` (:mod:`.datasets`);
- ``TinySaverClsMetric`` in ``METRICS`` (:mod:`.metric`): top-1/top-5, share answered per stage,
  GMACs per image, classification records.

:mod:`.config` reads a cascade config for ``tools/test.py``/``tools/get_flops.py`` (classification
or detection, the task from the config).

One decode per image: the pipeline decodes each image once (a PIL image, as torchvision's loader
gives it); every stage applies its own eval transform (its data config) inside the model, to the
images that reach it only.

May import: the core, :mod:`tinysaver.models`, other plugins (datasets, imagenet), mmengine, torch.
"""
from .datasets import FashionMNISTDataset, ImageNetFolderDataset, LoadClassImage, PackClassInputs
from .metric import TinySaverClsMetric
from .model import ClassifierStage, TinySaverClassifier, cascade_gmacs, gmacs_report

__all__ = ["TinySaverClassifier", "ClassifierStage", "TinySaverClsMetric", "ImageNetFolderDataset",
           "FashionMNISTDataset", "LoadClassImage", "PackClassInputs", "cascade_gmacs", "gmacs_report"]
