# The small CPU cascade (offline tests and demo): YOLOv8n saver (trained at 192, run at 160: a third of
# the base's GFLOPs) + half-width RetinaNet base, both
# trained by tools/train_fashion_det.py on the Fashion-MNIST detection canvases.
#   python tools/test.py configs/tinysaver/yolov8n_retinanet-r18-tiny_fashion-det.py none
_base_ = ['../fashion_det/retinanet_r18-tiny_fashion-det.py']  # dataset, runtime
custom_imports = dict(imports=['tinysaver.plugins.mmdet'], allow_failed_imports=False)

data_root = '{{$FASHION_DET_ROOT:data/fashion_det}}/'
weights = '{{$TINYSAVER_DET_WEIGHTS:{{ fileDirname }}/../../weights/det}}'
# Stages as variables, so a config built on this one can reuse them ({{_base_.retinanet_stage}}).
# `model`/`num_classes`: the architecture --random-init builds untrained (YOLOv8n with 10 classes).
yolo_stage = dict(type='yolo', name='yolov8n', checkpoint=weights + '/yolov8n_fashion-det.pt', imgsz=160,
                  conf=0.001, iou=0.7, max_det=100, model='yolov8n.yaml', num_classes=10)
retinanet_stage = dict(type='mmdet', name='retinanet_r18-tiny',
                       config='{{ fileDirname }}/../fashion_det/retinanet_r18-tiny_fashion-det.py',
                       checkpoint=weights + '/retinanet_r18-tiny_fashion-det.pth')
model = dict(
    _delete_=True,
    type='TinySaverDetector',
    stages=[yolo_stage, retinanet_stage],
    confidence=dict(type='mean_box_score', min_score=0.05),
    thresholds=[0.5])

# The base's own test pipeline plus the decoded original, kept for the YOLO stage (decoded once).
img_scale = (192, 192)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='KeepOriginalImage'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'ori_img')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader

test_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox'),
    dict(type='TinySaverCascadeMetric', ann_file=data_root + 'annotations/instances_val.json'),
]
val_evaluator = test_evaluator
