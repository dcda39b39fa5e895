"""Shard builders: DMVR CSV, frame folders + TSN lists, SlowFast lists (PyAV decode/encode)."""
import fractions
import json
import os

import av
import numpy as np
import pytest
import tensorflow as tf

from vtx.data import build_from_csv, build_from_frames, build_from_list, shards
from vtx.data import dmvr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, os.environ.get('VTX_DMVR_FIXTURES', '../shared/dmvr'))


def _records(paths):
    out = []
    for path in paths:
        for serialized in tf.data.TFRecordDataset(path):
            parsed = dmvr.parse(serialized)
            out.append({'frames': dmvr.decode_frames(parsed['frames']).numpy(),
                        'jpegs': parsed['frames'].numpy().tolist(),
                        'label': int(parsed['label_indices'][0]),
                        'text': parsed['label_text'][0].numpy().decode(),
                        'filename': parsed['filename'][0].numpy().decode()})
    return out


def _write_mp4(path, num_frames, fps, width=48, height=32):
    """A tiny H.264 video whose frame t has brightness 10 * t."""
    with av.open(path, 'w') as container:
        stream = container.add_stream('mpeg4', rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for t in range(num_frames):
            image = np.full((height, width, 3), 10 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_dmvr_csv_matches_dmvr_generator(tmp_path):
    """Same frame count, size and (within JPEG noise) content as DMVR's own shards, except the
    duplicated first frames DMVR writes for a clip that starts after 0 s."""
    out = str(tmp_path)
    paths = build_from_csv.main(['--csv', os.path.join(FIXTURES, 'dmvr_synth_test.csv'),
                                 '--video_root', FIXTURES, '--output_dir', out, '--fps', '10',
                                 '--workers', '1', '--verify'])
    with open(os.path.join(FIXTURES, 'labels.json')) as f:
        examples = json.load(f)['examples']
    ours = {os.path.basename(r['filename']): r for r in _records(paths)}
    with open(os.path.join(out, 'dmvr_synth_test_label_map.json')) as f:
        assert json.load(f) == {'down': 0, 'left': 1, 'right': 2, 'up': 3}  # sorted names
    for example in examples:
        mine = ours[os.path.basename(example['video_filename'])]
        assert mine['text'] == example['label_name']
        theirs = _records([os.path.join(FIXTURES, example['shard'])])[example['record_in_shard']]
        duplicates = int(round(10 * 0.5)) if 'trim' in example['video_filename'] else 0
        assert len(mine['frames']) == example['num_frames_in_record'] - duplicates
        assert list(mine['frames'].shape[1:3]) == example['jpeg_hw']
        diff = np.abs(mine['frames'].astype(float) - theirs['frames'][duplicates:]).mean()
        assert diff < 2.5, (example['video_filename'], diff)


def test_video_list_native_fps_resampling_and_bad_videos(tmp_path, capsys):
    for name, frames, fps in (('a.mp4', 12, 24), ('b.mp4', 9, 6)):
        _write_mp4(str(tmp_path / name), frames, fps)
    (tmp_path / 'broken.mp4').write_bytes(b'\x00not a video' * 50)
    (tmp_path / 'list.csv').write_text('a.mp4 2\nbroken.mp4 0\nb.mp4 1\n')
    (tmp_path / 'classes.txt').write_text('zero\none\ntwo\n')
    common = ['--list', str(tmp_path / 'list.csv'), '--video_root', str(tmp_path),
              '--class_names', str(tmp_path / 'classes.txt'), '--num_shards', '2',
              '--short_side', '16', '--workers', '1']
    paths = build_from_list.main(common + ['--output_dir', str(tmp_path / 'native')])
    assert [os.path.basename(p) for p in paths] == ['list-00000-of-00002', 'list-00001-of-00002']
    assert 'skipped 1 unreadable videos' in capsys.readouterr().out
    records = {r['filename']: r for r in _records(paths)}
    assert set(records) == {'a.mp4', 'b.mp4'}
    a, b = records['a.mp4'], records['b.mp4']
    assert (a['label'], a['text'], b['label'], b['text']) == (2, 'two', 1, 'one')
    assert a['frames'].shape == (12, 16, 24, 3) and len(b['frames']) == 9  # native rates kept
    brightness = a['frames'].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(brightness, 10 * np.arange(12), atol=4)
    paths = build_from_list.main(common + ['--output_dir', str(tmp_path / 'fps'), '--fps', '12'])
    records = {r['filename']: r for r in _records(paths)}
    # 0.5 s at 24 -> 12 fps keeps every other frame; 1.5 s at 6 -> 12 fps repeats each frame.
    np.testing.assert_allclose(records['a.mp4']['frames'].mean(axis=(1, 2, 3)),
                               20 * np.arange(6), atol=4)
    b12 = records['b.mp4']['frames'].mean(axis=(1, 2, 3))
    assert len(b12) == 18
    np.testing.assert_allclose(b12, 10 * np.repeat(np.arange(9), 2), atol=4)


def test_frame_folders_with_tsn_list(tmp_path):
    root = tmp_path / 'frames'
    jpegs = {}
    for cls, video, count, size in (('walk', 'v1', 5, (32, 40)), ('run', 'v2', 3, (64, 48))):
        folder = root / cls / video
        folder.mkdir(parents=True)
        for t in range(count):
            image = np.full(size + (3,), 30 * t, np.uint8)
            data = tf.io.encode_jpeg(image).numpy()
            (folder / f'img_{t + 1:05d}.jpg').write_bytes(data)
            jpegs.setdefault(video, []).append(data)
    (tmp_path / 'train.txt').write_text('walk/v1 4 0\nrun/v2 1\n')
    paths = build_from_frames.main(['--list', str(tmp_path / 'train.txt'), '--frames_root',
                                    str(root), '--output_dir', str(tmp_path / 'out'),
                                    '--short_side', '32', '--workers', '1', '--verify'])
    records = {r['filename']: r for r in _records(paths)}
    v1, v2 = records['walk/v1'], records['run/v2']
    assert (v1['label'], v1['text'], v2['label'], v2['text']) == (0, 'walk', 1, 'run')
    assert v1['jpegs'] == jpegs['v1'][:4]  # already 32 on the short side: stored as they are
    assert v2['frames'].shape == (3, 43, 32, 3)  # (h, w) 64x48 -> 42.7 rounds to 43 x 32
    np.testing.assert_allclose(v2['frames'].mean(axis=(1, 2, 3)), [0, 30, 60], atol=3)


def test_verify_reports_bad_records(tmp_path, capsys):
    path = str(tmp_path / 'x-00000-of-00001')
    with tf.io.TFRecordWriter(path) as w:
        w.write(dmvr.make_sequence_example([b'\xff\xd8junk'], 0, 'a', 'v', 0, 1)
                .SerializeToString())
    assert shards.verify_shards([path]) == 1
    assert f'bad record {path}:0' in capsys.readouterr().err


def test_csv_without_header_is_refused(tmp_path):
    (tmp_path / 'x.csv').write_text('a.mp4,0,1,walk\n')
    with pytest.raises(SystemExit, match='video_path'):
        build_from_csv.read_rows(str(tmp_path / 'x.csv'), '')


@pytest.mark.parametrize('builder, files, flags, expected', [
    (build_from_list, {}, ['--list', 'missing.txt'], '--list missing.txt: No such file'),
    (build_from_list, {'l.txt': 'a.mp4 0\nb.mp4 5\n', 'names.txt': 'x\ny\n'},
     ['--list', 'l.txt', '--class_names', 'names.txt'],
     'l.txt:2: label 5, but --class_names lists 2 classes (0 to 1)'),
    (build_from_frames, {'l.txt': 'f1 10 0\nf2 ten 1\n'}, ['--list', 'l.txt'],
     'l.txt:2: expected "folder [num_frames] label" with integer num_frames and label'),
    (build_from_csv, {'c.csv': 'video_path,label,start\na.mp4,x,soon\n'}, ['--csv', 'c.csv'],
     "c.csv:2: start and end are seconds, got 'soon' and None"),
    (build_from_csv, {'c.csv': 'video_path,label\na.mp4,x\n', 'map.json': '["x"]'},
     ['--csv', 'c.csv', '--label_map', 'map.json'],
     '--label_map map.json: expected a JSON object {name: integer index}'),
])
def test_bad_lists_and_files_are_one_error_line_naming_them(builder, files, flags, expected,
                                                            tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as stop:
        builder.main([*flags, '--output_dir', 'shards'])
    assert str(stop.value.code).startswith(expected)
    assert not (tmp_path / 'shards').exists()
