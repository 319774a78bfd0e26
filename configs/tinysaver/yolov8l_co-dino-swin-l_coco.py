# Paper Table 4: YOLOv8l saver (imgsz 640) + Co-DINO Swin-L base on COCO val2017.
#   PYTHONPATH=$MMDET_ROOT torchrun --nproc_per_node 8 tools/test.py configs/tinysaver/yolov8l_co-dino-swin-l_coco.py none --launcher pytorch
_base_ = ['_base_/co-dino-swin-l_coco.py']

ckpt_dir = '{{$CKPT_DIR:checkpoints}}'
model = dict(stages=[
    dict(type='yolo', name='yolov8l', checkpoint=ckpt_dir + '/yolov8l.pt', imgsz=640, conf=0.001, iou=0.7, max_det=300),
    {{_base_.co_dino_stage}},
])
