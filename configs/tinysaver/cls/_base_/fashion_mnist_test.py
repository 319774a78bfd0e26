# Fashion-MNIST from the Debian package dataset-fashion-mnist: split test (official 10k), holdout
# (last 10k training images, never trained on) or train (first 50k, what the demo pool learnt).
# --cfg-options test_dataloader.dataset.indices=300 keeps the first 300 images.
test_dataloader = dict(
    batch_size=256, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='FashionMNISTDataset', split='test'))
test_evaluator = dict(type='TinySaverClsMetric', topk=5)
