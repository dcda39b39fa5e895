"""Downloads into the cache (vtx.hub) against a local server: resume, checksums, mirror, errors."""
import os

import pytest

from vtx import hub
from zoo_server import ZooServer

OFFICIAL = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.4/model.pth'


@pytest.fixture
def served(tmp_path, monkeypatch):
    folder = tmp_path / 'served'
    folder.mkdir()
    (folder / 'model.pth').write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / 'cache'))
    with ZooServer(str(folder)) as server:
        monkeypatch.setenv(hub.MIRROR_ENV, server.url + '/')
        yield server, folder / 'model.pth'


def test_first_download_is_cached_and_its_checksum_recorded(served):
    server, original = served
    path = hub.download(OFFICIAL, quiet=True)
    assert open(path, 'rb').read() == original.read_bytes()
    assert server.requests == [('/model.pth', None)]  # the file name of the official URL
    assert hub.Checksums(os.path.dirname(path)).get('model.pth') == hub.sha256(str(original))
    assert hub.download(OFFICIAL, quiet=True) == path
    assert len(server.requests) == 1  # the second call reads the cache


def test_an_interrupted_download_resumes_where_it_stopped(served):
    server, original = served
    server.break_after = 1024 * 1024
    with pytest.raises(hub.DownloadError, match='broke off after 1048576 of .* run again to resume'):
        hub.download(OFFICIAL, quiet=True)
    assert not os.path.exists(os.path.join(hub.cache_dir(), 'downloads', 'model.pth'))
    path = hub.download(OFFICIAL, quiet=True)
    assert server.requests[-1] == ('/model.pth', 'bytes=1048576-')
    assert open(path, 'rb').read() == original.read_bytes()


def test_a_checksum_mismatch_is_kept_aside_and_nothing_is_cached(served):
    with pytest.raises(hub.ChecksumError, match='expected 0{64}.*kept aside as .*model.pth.rejected'):
        hub.download(OFFICIAL, expected_sha256='0' * 64, quiet=True)
    downloads = os.path.join(hub.cache_dir(), 'downloads')
    assert sorted(os.listdir(downloads)) == ['model.pth.rejected']


def test_a_cached_file_changed_by_hand_is_fetched_again(served):
    server, original = served
    path = hub.download(OFFICIAL, quiet=True)
    with open(path, 'r+b') as f:
        f.write(b'garbage')
    assert hub.cached_file('model.pth') is None
    assert hub.download(OFFICIAL, quiet=True) == path
    assert open(path, 'rb').read() == original.read_bytes() and len(server.requests) == 2


def test_http_errors_name_the_url(served):
    server, _ = served
    with pytest.raises(hub.DownloadError, match=r'/missing.pth: HTTP 404 Not Found'):
        hub.download('https://example.org/x/missing.pth', quiet=True)


def test_a_file_fetched_by_hand_is_cached_under_its_name(served, tmp_path):
    _, original = served
    cached = hub.add_local_file(str(original), 'stts_model.pth')
    assert hub.cached_file('stts_model.pth') == cached
    other = tmp_path / 'other.pth'
    other.write_bytes(b'something else')
    with pytest.raises(hub.ChecksumError, match='other.pth: SHA-256 .* recorded as'):
        hub.add_local_file(str(other), 'stts_model.pth')
