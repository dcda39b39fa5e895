"""Official checkpoints -> vtx params (`python -m convert`, `python -m convert.verify`).

torch is imported only inside the functions that read PyTorch files, so `import convert` is cheap.
"""


def import_pretrained(path: str, model_config, abstract_params, log=print):
    """Params for the model `model_config` initialised from a pretrained file, as the official
    fine-tuning code does it: an ImageNet ViT `.npz` (or timm `.pth` for XViT) for the ViT families,
    a 2D ImageNet Swin `.pth` inflated for the Swin families, and a video backbone without STTS
    scorers (MViT-B `.pyth`, Kinetics Video Swin `.pth`) for STTS.

    `abstract_params` is the unboxed shape tree of the model's params; the result fills every leaf
    (parameters the pretrained model lacks get the official initial value, e.g. a zero head).
    """
    from vtx.errors import VtxError
    name = dict(model_config)['name']
    if path.endswith('.npz'):
        if name == 'vit':
            from vtx.convert import tokshift
            return tokshift.import_npz(path, model_config, abstract_params, log=log)
        if name == 'xvit':
            from vtx.convert import xvit
            return xvit.import_npz(path, model_config, abstract_params, log=log)
        raise VtxError(f'{path}: an ImageNet ViT .npz initialises only model.name vit or '
                         f'xvit, not {name!r}')
    if path.endswith(('.pth', '.pt', '.pyth')):
        if name == 'mvit' or (name == 'stts_video_swin' and _is_3d_swin(path)):
            # A video backbone (MViT-B .pyth, Kinetics Video Swin) without STTS scorers.
            from vtx.convert import stts
            return stts.import_backbone(path, model_config, abstract_params, log=log)
        # 2D ImageNet Swin inflated into the 3D Swin families (convert/inflate.py).
        if name in ('video_swin', 'tps', 'stts_video_swin'):
            from vtx.convert import inflate
            return inflate.inflate_2d_swin(path, model_config, abstract_params, log=log)
        if name == 'xvit':
            from vtx.convert import xvit
            return xvit.import_timm_vit(path, model_config, abstract_params, log=log)
        raise VtxError(f'{path}: no pretrained .pth import for model.name {name!r}')
    raise VtxError(f'{path}: pretrained weights must be a .npz (ViT) or .pth (2D Swin / timm '
                     'ViT); a vtx params checkpoint is a folder')


def _is_3d_swin(path: str) -> bool:
    from vtx.convert import engine
    kernel = next((v for k, v in engine.load_checkpoint(path).items()
                   if k.endswith('patch_embed.proj.weight')), None)
    return kernel is not None and kernel.ndim == 5
