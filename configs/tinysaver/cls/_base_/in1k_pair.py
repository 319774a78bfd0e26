# A saver/base pair of the paper's Table 1 on ImageNet-1k val. The stages are timm names (a pretrained
# tag picks the data config the weights were evaluated with); the weights are the user's files:
#   IMAGENET_ROOT=/data/imagenet python tools/test.py CONFIG none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
# Each stage preprocesses the one decoded image with its own data config (input size, crop, mean/std).
# The threshold is a placeholder: choose it on records (tools/test.py ... --dump-records DIR, then
# tinysaver tradeoff / plan) and pass --threshold T.
_base_ = ['default_runtime.py', 'imagenet_val.py']

model = dict(type='TinySaverClassifier', confidence='max_softmax', thresholds=[0.5])
