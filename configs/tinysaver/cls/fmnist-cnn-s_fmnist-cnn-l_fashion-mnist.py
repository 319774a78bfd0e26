# The Fashion-MNIST demo pair, on a CPU: fmnist_cnn_s saver + fmnist_cnn_l base (the committed demo
# pool, loaded by name), on the official test split.
#   python tools/test.py configs/tinysaver/cls/fmnist-cnn-s_fmnist-cnn-l_fashion-mnist.py none
#   ... --dump-records records   # both models on every image: records/fmnist_cnn_{s,l}_test.npz
_base_ = ['_base_/default_runtime.py', '_base_/fashion_mnist_test.py']

model = dict(
    type='TinySaverClassifier',
    stages=[dict(model='fmnist_cnn_s'), dict(model='fmnist_cnn_l')],
    confidence='max_softmax',
    thresholds=[0.9])
