# The paper's Table 1, row 2: EfficientFormerV2-L saver, MaxViT-L base.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/efficientformerv2-l_maxvit-l_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='efficientformerv2_l', weights=None),
    dict(model='maxvit_large_tf_224', weights=None),
])
