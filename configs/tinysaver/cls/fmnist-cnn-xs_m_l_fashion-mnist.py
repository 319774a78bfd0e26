# A 3-stage chain of the Fashion-MNIST demo pool, on a CPU: fmnist_cnn_xs -> fmnist_cnn_m -> fmnist_cnn_l.
# A sample leaves at the first stage whose confidence reaches its threshold; the last answers the rest.
# The thresholds are an example: choose them with `tinysaver plan` on records dumped with --dump-records.
#   python tools/test.py configs/tinysaver/cls/fmnist-cnn-xs_m_l_fashion-mnist.py none --thresholds 0.95 0.9
_base_ = ['_base_/default_runtime.py', '_base_/fashion_mnist_test.py']

model = dict(
    type='TinySaverClassifier',
    stages=[dict(model='fmnist_cnn_xs'), dict(model='fmnist_cnn_m'), dict(model='fmnist_cnn_l')],
    confidence='max_softmax',
    thresholds=[0.95, 0.9])
default_hooks = dict(logger=dict(interval=10))  # 40 batches of 256 in a 10k split
