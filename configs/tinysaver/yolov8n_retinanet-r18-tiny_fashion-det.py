# The small CPU cascade (offline tests and demo): YOLOv8n saver (trained at 192, run at 160: a third of
# the base's GFLOPs) + half-width RetinaNet base, both
# trained by tools/train_fashion_det.py on the Fashion-MNIST detection canvases.
#   python tools/test.py configs/tinysaver/yolov8n_retinanet-r18-tiny_fashion-det.py none
_base_ = ['../fashion_det/retinanet_r18-tiny_fashion-det.py']  # dataset, test pipeline, runtime
custom_imports = dict(imports=['tinysaver.plugins.mmdet'], allow_failed_imports=False)

data_root = '{{$FASHION_DET_ROOT:data/fashion_det}}/'
weights = '{{$TINYSAVER_DET_WEIGHTS:{{ fileDirname }}/../../weights/det}}'
model = dict(
    _delete_=True,
    type='TinySaverDetector',
    saver=dict(checkpoint=weights + '/yolov8n_fashion-det.pt', imgsz=160, conf=0.001, iou=0.7, max_det=100),
    base=dict(config='{{ fileDirname }}/../fashion_det/retinanet_r18-tiny_fashion-det.py',
              checkpoint=weights + '/retinanet_r18-tiny_fashion-det.pth'),
    confidence=dict(type='mean_box_score', min_score=0.05),
    threshold=0.5)

test_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox'),
    dict(type='TinySaverCascadeMetric', ann_file=data_root + 'annotations/instances_val.json',
         saver_name='yolov8n', base_name='retinanet_r18-tiny'),
]
val_evaluator = test_evaluator
