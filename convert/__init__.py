"""Official checkpoints -> vtx params (`python -m convert`, `python -m convert.verify`).

torch is imported only inside the functions that read PyTorch files, so `import convert` is cheap.
"""


def import_pretrained(path: str, model_config, abstract_params, log=print):
    """Params for the model `model_config` initialised from an image-pretrained file, as the
    official fine-tuning code does it: an ImageNet ViT `.npz` for the ViT families (video-ViT /
    TokShift, XViT), a 2D ImageNet Swin `.pth` inflated for the Swin families.

    `abstract_params` is the unboxed shape tree of the model's params; the result fills every leaf
    (parameters the image model lacks get the official initial value, e.g. a zero head).
    """
    name = dict(model_config)['name']
    if path.endswith('.npz'):
        if name == 'vit':
            from convert import tokshift
            return tokshift.import_npz(path, model_config, abstract_params, log=log)
        if name == 'xvit':
            from convert import xvit
            return xvit.import_npz(path, model_config, abstract_params, log=log)
        raise ValueError(f'{path}: an ImageNet ViT .npz initialises only model.name vit or '
                         f'xvit, not {name!r}')
    if path.endswith(('.pth', '.pt', '.pyth')):
        # 2D ImageNet Swin inflated into the 3D Swin families (convert/inflate.py).
        if name in ('video_swin', 'tps', 'stts_video_swin'):
            from convert import inflate
            return inflate.inflate_2d_swin(path, model_config, abstract_params, log=log)
        if name == 'xvit':
            from convert import xvit
            return xvit.import_timm_vit(path, model_config, abstract_params, log=log)
        raise ValueError(f'{path}: no image-pretrained .pth import for model.name {name!r}')
    raise ValueError(f'{path}: pretrained weights must be a .npz (ViT) or .pth (2D Swin / timm '
                     'ViT); a vtx params checkpoint is a folder')
