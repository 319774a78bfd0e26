# ImageNet-style folders DATA_ROOT/<split>/<class folder>/<image>, labelled with the model's class
# index of each folder: synset ids (n01440764) -> ImageNet-1k index, numeric folders (ImageNet-V2's
# "22") -> that number, else folder order when there are exactly num_classes folders, or a
# class_map file (folder -> index). mask_to_folders=True restricts the logits to the classes
# present (ImageNet-R/-A). The root: IMAGENET_ROOT=/data/imagenet, or --cfg-options
# test_dataloader.dataset.data_root=/data/imagenet (test_dataloader.dataset.indices=1000: the first 1000).
data_root = '{{$IMAGENET_ROOT:data/imagenet}}'

test_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageNetFolderDataset', data_root=data_root, split='val', num_classes=1000,
                 class_map=None, mask_to_folders=False))
test_evaluator = dict(type='TinySaverClsMetric', topk=5)
