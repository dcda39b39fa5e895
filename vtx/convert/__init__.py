"""Official checkpoints -> vtx params (`python -m convert`, `python -m convert.verify`).

torch is imported only inside the functions that read PyTorch files, so `import convert` is cheap.
"""


def import_pretrained(path: str, model_config, abstract_params, log=print):
    """Params for the model `model_config` initialised from a pretrained file, as the official
    fine-tuning code does it: an ImageNet ViT `.npz` (or timm `.pth` for XViT) for the ViT families,
    a 2D ImageNet Swin `.pth` inflated for the Swin families, and a video backbone without STTS
    scorers (MViT-B `.pyth`, Kinetics Video Swin `.pth`) for STTS; each family's `pretrained` in
    `vtx.families` says which.

    `abstract_params` is the unboxed shape tree of the model's params; the result fills every leaf
    (parameters the pretrained model lacks get the official initial value, e.g. a zero head).
    """
    from vtx import families
    from vtx.errors import VtxError
    family = families.family(dict(model_config)['name'])
    for pretrained in family.pretrained:
        if pretrained.accepts(path):
            return pretrained(path, model_config, abstract_params, log=log)
    accepted = '; '.join(p.source for p in family.pretrained)
    raise VtxError(f'{path}: model.name {family.name!r} starts from {accepted} (a vtx params '
                   'checkpoint is a folder)')
