# The Fashion-MNIST demo pair, on a CPU: fmnist_cnn_s saver + fmnist_cnn_l base (the committed demo
# pool, loaded by name), on the official test split.
#   python tools/test.py configs/tinysaver/cls/fmnist-cnn-s_fmnist-cnn-l_fashion-mnist.py none
#   ... --dump-records records   # both models on every image: records/fmnist_cnn_{s,l}_test.npz
_base_ = ['_base_/default_runtime.py', '_base_/fashion_mnist_test.py']

model = dict(
    type='TinySaverClassifier',
    stages=[dict(model='fmnist_cnn_s'), dict(model='fmnist_cnn_l')],
    confidence='max_softmax',
    # Chosen on the holdout split (never trained on): the cheapest threshold within 0.5 pt of the
    # base's accuracy there, by `tinysaver tradeoff` on the records this config dumps with
    # --cfg-options test_dataloader.dataset.split=holdout --dump-records DIR.
    thresholds=[0.6993300914764404])
default_hooks = dict(logger=dict(interval=10))  # 40 batches of 256 in a 10k split
