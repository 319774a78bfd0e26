# The paper's Table 1, row 5: MobileNetV3-L 1.0 saver, EfficientNet-B2 base.
# The paper's cost for EfficientNet-B2 (0.66 GFLOPs) is its cost at 224 px (0.66 GMACs counted here);
# timm's data config for efficientnet_b2 is 256 px (0.86 GMACs): drop data_config to run it there.
# Weights are the user's (timm checkpoints of these models):
#   IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/mobilenetv3-l_efficientnet-b2_in1k.py none \
#       --cfg-options model.stages.0.weights=SAVER.pth model.stages.1.weights=BASE.pth
_base_ = ['_base_/in1k_pair.py']

model = dict(stages=[
    dict(model='mobilenetv3_large_100', weights=None),
    dict(model='efficientnet_b2', weights=None, data_config=dict(input_size=(3, 224, 224))),
])
