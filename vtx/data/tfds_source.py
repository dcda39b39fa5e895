"""A prepared TFDS dataset with a video feature as a pipeline source (`data.tfds_name`).

The video feature is read undecoded (TFDS stores one PNG or JPEG per frame), so only the sampled
frames are decoded, as for DMVR shards. Each process reads an even slice of the split in a fixed
order; the train stream's per-epoch shuffling is the pipeline's stateless block shuffle.
Fields: `data.tfds_data_dir`, `data.tfds_train_split` / `data.tfds_eval_split`, and optionally
`data.tfds_video_key` / `data.tfds_label_key` (default: the dataset's only video feature and
its only ClassLabel).
"""
from typing import List, Optional, Tuple

from vtx.data.tf_on_host import tf
import tensorflow_datasets as tfds

from vtx.errors import VtxError


def _only(features: dict, kind, what: str, name: str) -> str:
    keys = [k for k, f in features.items() if isinstance(f, kind)]
    if len(keys) != 1:
        raise VtxError(f'TFDS dataset {name!r} has {len(keys)} {what} features {keys} (features: '
                       f'{list(features)}); set config.data.tfds_{what}_key')
    return keys[0]


class TfdsSource:
    any_image_format = True

    def __init__(self, data_config, split: str, process_index: int, process_count: int):
        name = data_config.tfds_name
        data_dir = data_config.tfds_data_dir or None
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # TFDS raises several types for unknown or missing datasets
            raise VtxError(f'config.data.tfds_name={name!r} (data_dir {data_dir}): {e}') from None
        features = self.builder.info.features
        self.video_key = data_config.tfds_video_key or _only(
            features, tfds.features.Video, 'video', name)
        self.label_key = data_config.tfds_label_key or _only(
            features, tfds.features.ClassLabel, 'label', name)
        full_split = data_config[f'tfds_{split}_split']
        if full_split not in self.builder.info.splits:
            raise VtxError(f'config.data.tfds_{split}_split={full_split!r}: {name!r} has splits '
                           f'{list(self.builder.info.splits)}')
        self.split = tfds.even_splits(full_split, n=process_count)[process_index]
        self.field = f'config.data.tfds_{split}_split'
        self.patterns = f'{name}/{self.split}'
        self.shards = [f'tfds:{name}/{self.split}']
        # Built here, eagerly: the train stream re-reads it inside a traced function every epoch.
        self.dataset = self.builder.as_dataset(
            split=self.split, shuffle_files=False,
            decoders={self.video_key: tfds.decode.SkipDecoding()})

    def num_records(self) -> int:
        num = self.builder.info.splits[self.split].num_examples
        if num == 0:
            raise VtxError(f'{self.shards[0]} gives this process no examples')
        return num

    def record_ids(self) -> List[Tuple[int, int]]:
        return [(0, j) for j in range(self.num_records())]

    def read(self, shard_order, cycle_length: int, skip_bad: bool):
        del shard_order, cycle_length  # one fixed-order stream
        ds = self.dataset
        if skip_bad:
            ds = ds.ignore_errors()
        # The payload stays a pair of scalars so that the block shuffle can batch it.
        return ds.enumerate().map(lambda j, e: (
            tf.constant(0, tf.int64), j,
            (tf.io.serialize_tensor(e[self.video_key]), tf.cast(e[self.label_key], tf.int64))))

    @staticmethod
    def parse(payload):
        frames, label = payload
        return {'frames': tf.io.parse_tensor(frames, tf.string), 'label_indices': label[None]}

    def describe(self, shard: int, record: int) -> str:
        return f'the video feature {self.video_key!r} has no frames'

    def find_unreadable(self) -> Optional[str]:
        return None  # TFDS reports its own read errors
