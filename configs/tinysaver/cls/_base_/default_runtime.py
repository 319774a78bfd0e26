# mmengine runtime for evaluating classifier cascades with tools/test.py. Only mmengine is needed:
# the model, datasets, transforms and metric live in mmengine's root registries
# (tinysaver.plugins.mmengine_cls), so no default_scope.
custom_imports = dict(imports=['tinysaver.plugins.mmengine_cls'], allow_failed_imports=False)
task = 'classification'

test_cfg = dict(type='TestLoop')
default_hooks = dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=50))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
