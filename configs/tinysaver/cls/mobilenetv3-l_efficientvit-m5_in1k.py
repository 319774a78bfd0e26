# The paper's Table 1, row 6: MobileNetV3-L 1.0 saver, EfficientViT-M5 base.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/mobilenetv3-l_efficientvit-m5_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='mobilenetv3_large_100', weights=None),
    dict(model='efficientvit_m5', weights=None),
])
