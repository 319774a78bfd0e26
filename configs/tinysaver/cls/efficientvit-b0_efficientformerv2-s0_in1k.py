# The paper's Table 1, row 7: EfficientViT-B0 saver, EfficientFormerV2-S0 base.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/efficientvit-b0_efficientformerv2-s0_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='efficientvit_b0', weights=None),
    dict(model='efficientformerv2_s0', weights=None),
])
