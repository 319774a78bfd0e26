# Table 3's first row: EfficientFormerV2-L saver, ConvNeXtV2-L base.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/efficientformerv2-l_convnextv2-l_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='efficientformerv2_l', weights=None),
    dict(model='convnextv2_large.fcmae_ft_in1k', name='convnextv2_large', weights=None),
])
