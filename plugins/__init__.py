"""Ecosystem adapters (installed as ``tinysaver.plugins``): timm/torchvision classifiers, datasets,
ImageNet folders, Ultralytics, MMDetection and mmengine. They register into the core's registries
through the ``tinysaver.plugins`` entry-point group; the core never imports them.

May import: the core, :mod:`tinysaver.analysis`, :mod:`tinysaver.detection`, :mod:`tinysaver.models`,
other plugins, and their ecosystem's packages.
"""
