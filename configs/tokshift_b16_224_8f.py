"""TokShift Base-16 224 & 8 (TokShift-Transformer zoo, Kinetics-400).

Official config `k400_tokshift_div4_8x32_base_224.yml`: ViT-B/16 on 8 frames x 224^2,
ImageNet-21k init (`--config.init_from=ViT-B_16_Img21.npz`), SGD with gradient accumulation
over 10 batches.
The other TokShift-Transformer zoo configs (and the ViT baseline) build on this one and set only
what their official configs change.
"""
from vtx import config


def get_config():
    c = config.defaults()
    c.model = config.model_defaults('vit')
    c.model.temporal = 'token_shift'
    c.model.shift_div = 4
    c.model.num_classes = 400
    c.model.num_frames = 8
    c.model.image_size = 224
    c.model.patch_size = 16
    c.model.hidden_size = 768
    c.model.mlp_dim = 3072
    c.model.num_heads = 12
    c.model.num_layers = 12

    c.data.num_classes = 400
    c.data.num_train_examples = 240436  # Kinetics-400 train clips; set to your copy's count
    c.data.num_frames = 8
    c.data.stride = 32  # dense sampling, T_STEP 32 (wrapping for short videos)
    c.data.sampling = 'dense'
    c.data.min_resize = 224  # test: short side 224, then 3 crops of 224
    c.data.crop_size = 224
    c.data.train_scale_range = (224, 330)  # random short side, then a random 224 crop
    c.data.random_flip = True
    c.data.zero_centering = True  # (x / 255 - 0.5) / 0.5
    c.data.eval_num_clips = 10
    c.data.eval_num_crops = 3
    c.data.eval_aggregation = 'logits'
    c.data.test_protocol = 'tokshift'  # 1-based JPEG folders, dense clips, PIL bicubic, 3 crops

    # 21 clips x 2 GPUs per iteration, an optimizer step every 10 iterations.
    c.train.batch_size = 420
    c.train.grad_accum_steps = 10
    c.train.num_epochs = 18
    c.train.label_smoothing = 0.1  # the class default the official loss uses (yml 0.01 unused)
    c.optimizer.name = 'sgd'
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.schedule = 'step'
    c.optimizer.step_epochs = (10, 15, 18)  # MultiStepLR milestones
    c.optimizer.step_factor = 0.1
    return c
