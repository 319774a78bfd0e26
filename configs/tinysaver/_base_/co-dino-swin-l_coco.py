# Shared part of the paper's Table 4 cascades: Co-DINO Swin-L (Objects365 -> COCO) as the base, COCO
# val2017, Co-DINO's own test pipeline (resize to (2048, 1280)), COCO box AP + cascade metric.
# Needs an mmdetection source checkout (the pip package has no projects/): set MMDET_ROOT to it and
# put it on PYTHONPATH so Co-DINO's custom_imports ('projects.CO-DETR.codetr') import. Checkpoints
# in CKPT_DIR: yolov8{n,s,m,l,x}.pt (ultralytics) and co_dino_5scale_swin_large_16e_o365tococo-614254c9.pth
# (mmdetection's CO-DETR README).
custom_imports = dict(imports=['tinysaver.plugins.mmdet'], allow_failed_imports=False)
default_scope = 'mmdet'

ckpt_dir = '{{$CKPT_DIR:checkpoints}}'
mmdet_root = '{{$MMDET_ROOT:../mmdetection}}'
data_root = '{{$COCO_ROOT:data/coco}}/'

# Saver settings: ultralytics' *val* settings (conf 0.001, NMS IoU 0.7, max_det 300), the ones YOLO's
# published COCO AP is measured with. They do not reproduce `yolo val` exactly: ultralytics' val
# letterboxes rectangular batches and runs multi-label NMS, while this stage runs ultralytics'
# predict path (one label per box; each image letterboxed on its own to the smallest stride-multiple
# rectangle, whatever else is in its batch: tinysaver.plugins.ultralytics.model) on the original image. Predict-style
# settings (conf 0.25) keep far fewer boxes: higher precision, lower AP (recall at low scores is
# lost) and a different image confidence. Choose per config.
# Children replace `stages` whole (mmengine replaces lists): they take this base stage as
# {{_base_.co_dino_stage}} and put their own saver in front of it.
# flops_mode='predict': Co-DETR's `_forward` is empty, so its cost is traced through `predict`.
co_dino_stage = dict(
    type='mmdet', name='co-dino-swin-l', flops_mode='predict',
    config=mmdet_root + '/projects/CO-DETR/configs/codino/co_dino_5scale_swin_l_16xb1_16e_o365tococo.py',
    checkpoint=ckpt_dir + '/co_dino_5scale_swin_large_16e_o365tococo-614254c9.pth')
model = dict(
    type='TinySaverDetector',
    stages=[
        dict(type='yolo', name='yolov8x', checkpoint=ckpt_dir + '/yolov8x.pt', imgsz=640, conf=0.001, iou=0.7,
             max_det=300),
        co_dino_stage,
    ],
    confidence=dict(type='mean_box_score', min_score=0.05),
    thresholds=[0.25])

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='KeepOriginalImage'),  # the YOLO stage runs on the decoded original
    dict(type='Resize', scale=(2048, 1280), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'ori_img')),
]
test_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), test_mode=True, pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox'),
    dict(type='TinySaverCascadeMetric', ann_file=data_root + 'annotations/instances_val2017.json'),
]
val_evaluator = test_evaluator
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
default_hooks = dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=50))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
