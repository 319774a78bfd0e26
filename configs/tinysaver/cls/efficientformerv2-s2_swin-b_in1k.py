# The paper's Table 1, row 4: EfficientFormerV2-S2 saver, Swin-B base (ImageNet-22k pre-trained, 1k fine-tuned).
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/efficientformerv2-s2_swin-b_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='efficientformerv2_s2', weights=None),
    dict(model='swin_base_patch4_window7_224.ms_in22k_ft_in1k', name='swin_base_patch4_window7_224', weights=None),
])
