# The paper's Table 1, row 3: EfficientFormerV2-S2 saver, DaViT-B base.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/efficientformerv2-s2_davit-b_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='efficientformerv2_s2', weights=None),
    dict(model='davit_base', weights=None),
])
