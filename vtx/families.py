"""The model families vtx implements, each registered once.

A `Family` names everything the rest of vtx needs to know about one `config.model.name`: the Flax
module that builds it, the converter of its official checkpoints and the official family tags it
answers to, how fine-tuning imports pretrained files, how its paper counts GFLOPs, what its
`__call__` takes, and its zoo (one `ZooEntry` per file in `configs/`, with the official model the
config reproduces). Modules and functions are named as 'module:attribute' strings and imported
only when asked for, so importing this file loads neither JAX nor torch nor TensorFlow.

Adding a family: see "Adding a model family" in README.md.
"""
import dataclasses
import importlib
from typing import Callable, Dict, Optional, Tuple

from vtx.errors import VtxError


class UnknownModelError(VtxError):
    pass


class NotInZooError(VtxError):
    pass


def _attribute(reference: str):
    module, name = reference.split(':')
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One zoo config (`configs/<config>.py`, `--config <config>`, `vtx.load('<config>')`) and the
    official model it reproduces.

    `official_model`: the name the official release gives it, which is also the stem of its
    `parity/full/*.json`; None where the official code configures the model but released no
    checkpoint. `url`: where the official README publishes the checkpoint (None: not published);
    `needs_browser`: the host is a Google Drive page a script cannot download from, so the file
    is fetched by hand and given once (`vtx.load(name, checkpoint=PATH)`). `sha256`: the
    published checksum (none of the official READMEs publishes one, so the cache records the
    digest at first download and checks it ever after). `labels`: the dataset whose class names
    (`vtx/labels/<labels>.txt`) the classifier predicts, in index order."""
    config: str
    official_model: Optional[str]
    labels: Optional[str] = 'kinetics400'
    url: Optional[str] = None
    needs_browser: bool = False
    sha256: Optional[str] = None

    @property
    def file_name(self) -> str:
        """What the checkpoint is called in the download cache: the official file name, or for a
        Drive page (whose URL names no file), the config's."""
        if self.url is None or self.needs_browser:
            return self.config + '.pth'
        return self.url.rstrip('/').rsplit('/', 1)[-1]


@dataclasses.dataclass(frozen=True)
class PretrainedImport:
    """One kind of pretrained file fine-tuning may start from (`config.init_from=FILE`), as the
    official fine-tuning code loads it."""
    source: str                      # what the file is, for the error that lists the accepted ones
    suffixes: Tuple[str, ...]
    function: str                    # 'module:function'(path, model_config, abstract_params, log)
    only_if: Optional[str] = None    # 'module:predicate'(path); where one suffix means two sources

    def accepts(self, path: str) -> bool:
        return path.endswith(self.suffixes) and (self.only_if is None or
                                                 _attribute(self.only_if)(path))

    def __call__(self, path: str, model_config, abstract_params, log=print):
        return _attribute(self.function)(path, model_config, abstract_params, log=log)


@dataclasses.dataclass(frozen=True)
class GflopsConvention:
    """How a paper counts the "GFLOPs" it publishes per view, and so which `vtx.report` count
    ('macs' or 'macs_excluding_attention') the published number is to be compared with."""
    description: str
    counted: str


@dataclasses.dataclass(frozen=True)
class Family:
    name: str                              # config.model.name
    model: str                             # 'module:Class' of the Flax module
    converter: str                         # the vtx.convert module of its official checkpoints
    official_tags: Tuple[str, ...]         # parity manifests' `family`, `vtx-convert --family`
    pretrained: Tuple[PretrainedImport, ...]
    gflops_convention: GflopsConvention
    takes_train_progress: bool             # __call__(..., train_progress=step / total_steps)
    returns_features: bool                 # __call__(..., return_features=True) -> (logits, head input)
    # The classifier: (regex over parameter paths, how the official fine-tuning code starts it),
    # re-initialised with the model's own initialisers (which are the official ones) when
    # `init_from` was trained on another number of classes (vtx.finetune).
    classifier: Tuple[str, str]
    zoo: Tuple[ZooEntry, ...]
    # Where a tag is shared, the families answering it are asked in registration order whether a
    # manifest records their official config; None claims every manifest the earlier ones did not.
    records_official_config: Optional[Callable[[dict], bool]] = None
    # STTS: the zoo config of the same backbone without token selection, the baseline of the
    # paper's speed-ups.
    unpruned_backbone: Optional[str] = None

    def model_class(self):
        return _attribute(self.model)

    def converter_module(self):
        return importlib.import_module(self.converter)


NPZ = ('.npz',)
TORCH_FILES = ('.pth', '.pt', '.pyth')
IMAGENET_VIT_NPZ = 'an ImageNet-21k ViT (google-research .npz)'
INFLATE_2D_SWIN = PretrainedImport('a 2D ImageNet Swin (.pth), inflated', TORCH_FILES,
                                   'vtx.convert.inflate:inflate_2d_swin')
# The Video Swin and MViT papers count every matmul and conv, attention included.
ALL_MATMULS = GflopsConvention('MACs of all matmuls and convs (incl. attention)', 'macs')
NONE_PUBLISHED = GflopsConvention('none published', 'macs')


def _records_slowfast_mvit(manifest: dict) -> bool:
    """STTS-MViT is SlowFast code: its config has an MVIT section (`config.resolved_MVIT` in a
    parity case, `official_config.merged_cfg.MVIT` in a parity/full entry); STTS-Video Swin's is an
    mmaction model dict."""
    if 'official_config' in manifest:
        return 'MVIT' in manifest['official_config'].get('merged_cfg', {})
    return 'resolved_MVIT' in manifest['config']


SWIN_RELEASE = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.4/'
XVIT_RELEASE = 'https://www.adrianbulat.com/downloads/NeurIPS2021/models/'
# mmaction's I3DHead, the classifier of Video Swin, TPS and STTS-Video Swin.
I3D_HEAD = (r'head/(kernel|bias)', 'normal(0, 0.01) weight and zero bias, as I3DHead.init_weights')


def _swin(name: str, labels: str = 'kinetics400') -> ZooEntry:
    """A Video Swin zoo entry: named as the official model, a direct download."""
    return ZooEntry(name, name, labels, url=SWIN_RELEASE + name + '.pth')


def _drive(config: str, official_model: str, url: str) -> ZooEntry:
    """A Kinetics-400 entry whose official checkpoint is a Google Drive page."""
    return ZooEntry(config, official_model, url=url, needs_browser=True)


def _tokshift(name: str, drive_folder: str) -> ZooEntry:
    return _drive(name, name, 'https://drive.google.com/drive/folders/' + drive_folder)


def _stts(config: str, official_model: str, drive_file: str) -> ZooEntry:
    return _drive(config, official_model, f'https://drive.google.com/file/d/{drive_file}/view')


_REGISTERED = (
    Family(
        name='vit',  # the video-ViT baseline and TokShift (`temporal`)
        model='vtx.models.vit:VideoViT',
        converter='vtx.convert.tokshift',
        official_tags=('tokshift', 'vit'),
        pretrained=(PretrainedImport(IMAGENET_VIT_NPZ, NPZ, 'vtx.convert.tokshift:import_npz'),),
        gflops_convention=GflopsConvention('MACs of Linear + Conv, attention matmuls excluded',
                                           'macs_excluding_attention'),
        takes_train_progress=False,
        returns_features=True,
        classifier=(r'head/(kernel|bias)', 'zeros, as VisionTransformer(zero_head=True)'),
        zoo=(_tokshift('vit_b16_224_8f', '1Bj5tc9dQmmJbhouytPOIYJlvK6O2yFyE'),
             _tokshift('tokshift_b16_224_8f', '1ty6OqhZpUxSzokXmP1IUFpze5A0Gihuu'),
             _tokshift('tokshift_mr_b16_256_8f', '1xmW8VjYDdw996j17mHZhhjBnA2dJRj7a'),
             _tokshift('tokshift_hr_b16_384_8f', '1QNZWV9VUJuZdUzoU4NUtSZxFgLF3MONm'),
             _tokshift('tokshift_b16_224_16f', '1w2XrDRLNJdDG1e6OczsxKEr6-LuwhVgv'),
             _tokshift('tokshift_large_hr_l16_384_8f', '1tTXo5NzV4d9FTmnh40sUTXPoyUxWkq-I'),
             _tokshift('tokshift_large_hr_l16_384_12f', '1vuDcSZLgzsicJr9d1yKSm5089fiN6PX7'))),
    Family(
        name='xvit',
        model='vtx.models.xvit:XViT',
        converter='vtx.convert.xvit',
        official_tags=('xvit',),
        # The official training loads the timm .pth port; the original .npz holds the same weights.
        pretrained=(PretrainedImport(IMAGENET_VIT_NPZ, NPZ, 'vtx.convert.xvit:import_npz'),
                    PretrainedImport('an ImageNet-21k ViT in timm layout (.pth)', TORCH_FILES,
                                     'vtx.convert.xvit:import_timm_vit')),
        gflops_convention=NONE_PUBLISHED,
        takes_train_progress=False,
        returns_features=True,
        classifier=(r'temporal_head/mlp_head_fc2/(kernel|bias)',
                    "the temporal head's output layer as at the start of training"),
        zoo=(ZooEntry('xvit_k400', None),  # configured officially, never released
             ZooEntry('xvit_k600', 'xvit_b16_16_k600', 'kinetics600',
                      url=XVIT_RELEASE + 'xvit_b16_16_k600.pth'),
             ZooEntry('xvit_ssv2', 'xvit_b16_16_ss2', 'something_something_v2',
                      url=XVIT_RELEASE + 'xvit_b16_16_ss2.pth'))),
    Family(
        name='video_swin',
        model='vtx.models.video_swin:VideoSwin',
        converter='vtx.convert.video_swin',
        official_tags=('video_swin',),
        pretrained=(INFLATE_2D_SWIN,),
        gflops_convention=ALL_MATMULS,
        # Every Swin backbone's __call__ takes the progress; only STTS's selection uses it.
        takes_train_progress=True,
        returns_features=True,
        classifier=I3D_HEAD,
        zoo=(_swin('swin_tiny_patch244_window877_kinetics400_1k'),
             _swin('swin_small_patch244_window877_kinetics400_1k'),
             _swin('swin_base_patch244_window877_kinetics400_1k'),
             _swin('swin_base_patch244_window877_kinetics400_22k'),
             _swin('swin_base_patch244_window877_kinetics600_22k', 'kinetics600'),
             _swin('swin_base_patch244_window1677_sthv2', 'something_something_v2'))),
    Family(
        name='tps',
        model='vtx.models.tps:TPS',
        converter='vtx.convert.tps',
        official_tags=('tps',),
        pretrained=(INFLATE_2D_SWIN,),
        gflops_convention=NONE_PUBLISHED,
        takes_train_progress=True,
        returns_features=True,
        classifier=I3D_HEAD,
        # The TPS README releases no checkpoints: these configs train from 2D ImageNet Swin.
        zoo=(ZooEntry('tps_swin_tiny_2D_patch244_k400', 'tps_swin_tiny_2D_patch244_k400'),
             ZooEntry('tps_swin_tiny_2D_patch244_sthv1', 'tps_swin_tiny_2D_patch244_sthv1',
                      'something_something_v1'),
             ZooEntry('tps_swin_tiny_2D_patch244_sthv2', 'tps_swin_tiny_2D_patch244_sthv2',
                      'something_something_v2'),
             ZooEntry('tps_swin_tiny_2D_patch244_diving48', 'tps_swin_tiny_2D_patch244_diving48',
                      'diving48'),
             ZooEntry('tps_swin_base_2D_patch244', 'tps_swin_base_2D_patch244'),
             ZooEntry('tps_swin_large_2D_patch244', 'tps_swin_large_2D_patch244'))),
    Family(
        name='mvit',  # plain MViT-B and STTS-MViT (selection set by its fields)
        model='vtx.models.mvit:MViT',
        converter='vtx.convert.mvit',
        official_tags=('stts', 'mvit'),
        pretrained=(PretrainedImport('an MViT-B video checkpoint (.pyth), STTS scorers initialised',
                                     TORCH_FILES, 'vtx.convert.stts:import_backbone'),),
        gflops_convention=GflopsConvention('MACs of all matmuls and convs (fvcore)', 'macs'),
        takes_train_progress=True,
        returns_features=True,
        classifier=(r'head/(kernel|bias)', 'normal(0, 0.01) weight and zero bias, as at the '
                    'start of training'),
        # SlowFast's MODEL_ZOO.md publishes MViT-B 16x4 on Google Drive too.
        zoo=(_stts('mvit_b_16x4_k400', 'MViT-B_16x4_plain_no_selection',
                   '194gJinVejq6A1FmySNKQ8vAN5-FOY-QL'),
             _stts('stts_mvit_t0_0p9_s4_0p9', 'MViT-T0_0.9-S4_0.9', '1IP_phCBQRTsUb5RQmPeRusjdlM2J10Xb'),
             _stts('stts_mvit_t0_0p8_s4_0p9', 'MViT-T0_0.8-S4_0.9', '1Fd0q3e9VDfokfuljt0hF7FXfRxh3QO61'),
             _stts('stts_mvit_t0_0p6_s4_0p9', 'MViT-T0_0.6-S4_0.9', '1Zkn-AY6Pb2wMuzQrUFXQYGJLugVG9BQF'),
             _stts('stts_mvit_t0_0p5_s4_0p7', 'MViT-T0_0.5-S4_0.7', '1JSESMIOi1A-9QaQflcoxCPS7RYxa03pH'),
             _stts('stts_mvit_t0_0p4_s4_0p6', 'MViT-T0_0.4-S4_0.6', '1A5qA1d6lIpskV8cQVjDFuwD128SI4OfJ')),
        records_official_config=_records_slowfast_mvit,
        unpruned_backbone='mvit_b_16x4_k400'),
    Family(
        name='stts_video_swin',
        model='vtx.models.video_swin:VideoSwin',
        converter='vtx.convert.stts_video_swin',
        official_tags=('stts',),
        # A .pth is either the Kinetics Video Swin the official STTS fine-tuning starts from, or a
        # 2D ImageNet Swin to inflate: the patch embedding's kernel rank tells them apart.
        pretrained=(PretrainedImport('a Kinetics Video Swin (.pth), STTS scorers initialised',
                                     TORCH_FILES, 'vtx.convert.stts:import_backbone',
                                     only_if='vtx.convert.stts:is_video_swin_checkpoint'),
                    INFLATE_2D_SWIN),
        gflops_convention=ALL_MATMULS,
        takes_train_progress=True,
        returns_features=True,
        classifier=I3D_HEAD,
        zoo=(_stts('stts_videoswin_t0_0p9', 'VideoSwin-T0_0.9', '1GhIUgFBLTBQqZZ0puEtTSJPB_4ca77oy'),
             _stts('stts_videoswin_t0_0p8', 'VideoSwin-T0_0.8', '1gqLCuDUeSYjx2XKqPPaZDDWD9WDWnJjb'),
             _stts('stts_videoswin_t0_0p6', 'VideoSwin-T0_0.6', '1bGIULKgISA5EGanO1Es6_tvqvQsoAnrb'),
             _stts('stts_videoswin_t0_0p5', 'VideoSwin-T0_0.5', '1xokwKomvCkGfyATaY_2yzjQr9OcBi995'),
             _stts('stts_videoswin_t0_0p4', 'VideoSwin-T0_0.4', '1W6sQp7bjKDWleARivkuoMmZOWzi5YKsl')),
        unpruned_backbone='swin_base_patch244_window877_kinetics400_1k'),
)

FAMILIES: Dict[str, Family] = {f.name: f for f in _REGISTERED}


def family(name: str) -> Family:
    """The family `config.model.name` names."""
    if name not in FAMILIES:
        raise UnknownModelError(f'config.model.name={name!r} is not a vtx model; choose one of '
                                f'{sorted(FAMILIES)}')
    return FAMILIES[name]


def official_tags() -> Tuple[str, ...]:
    """Every official family tag a registered family answers to, sorted."""
    return tuple(sorted({tag for f in _REGISTERED for tag in f.official_tags}))


def zoo_entries(*names: str) -> Tuple[ZooEntry, ...]:
    """The zoo entries of the named families (of every family when none is named), in
    registration order."""
    return tuple(entry for f in (map(family, names) if names else _REGISTERED) for entry in f.zoo)


def find_in_zoo(config: Optional[str] = None, *,
                official_model: Optional[str] = None) -> Tuple[Family, ZooEntry]:
    """(family, entry) of the zoo config `config`, or of the one reproducing `official_model`."""
    if (config is None) == (official_model is None):
        raise TypeError('find_in_zoo: give either a config or an official_model')
    field, wanted = ('config', config) if config is not None else ('official_model', official_model)
    for f in _REGISTERED:
        for entry in f.zoo:
            if getattr(entry, field) == wanted:
                return f, entry
    asked = f'config {config!r}' if config is not None else f'official model {official_model!r}'
    raise NotInZooError(f'{asked} is not in the zoo (vtx/families.py); the zoo configs are '
                        f'{", ".join(e.config for e in zoo_entries())}')
