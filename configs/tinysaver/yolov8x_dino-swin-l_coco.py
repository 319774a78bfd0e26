# YOLOv8x saver + DINO Swin-L (mmdet core, no source checkout needed) on COCO val2017.
#   python tools/test.py configs/tinysaver/yolov8x_dino-swin-l_coco.py none
_base_ = ['_base_/co-dino-swin-l_coco.py']

ckpt_dir = '{{$CKPT_DIR:checkpoints}}'

model = dict(stages=[
    dict(type='yolo', name='yolov8x', checkpoint=ckpt_dir + '/yolov8x.pt', imgsz=640, conf=0.001, iou=0.7, max_det=300),
    dict(type='mmdet', name='dino-swin-l', config='mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
         checkpoint=ckpt_dir + '/dino-5scale_swin-l_8xb2-12e_coco_20230228_072924-a654145f.pth'),
])

# DINO's own test pipeline: resize to (1333, 800); the original kept for the YOLO stage.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='KeepOriginalImage'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'ori_img')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
