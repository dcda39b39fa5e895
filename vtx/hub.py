"""Downloads into the local cache: resumable, verified, moved into place atomically.

The cache (`$VTX_CACHE_DIR`, default `~/.cache/vtx`) holds
  - `downloads/<file>`: official checkpoints as published (a partial download is `<file>.part`,
    and the next attempt resumes it with an HTTP Range request);
  - `downloads/checksums.json`: the SHA-256 of every file, as published or, where none is
    published, as recorded at its first download; a file that no longer matches it is
    fetched again;
  - `converted/<name>/`: vtx params checkpoints converted from those files.
`$VTX_ZOO_MIRROR` replaces every official host: a file is fetched from
`$VTX_ZOO_MIRROR/<file name of the official URL>` (for mirrors behind a firewall, and for tests).
"""
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from vtx.errors import VtxError

CACHE_ENV = 'VTX_CACHE_DIR'
MIRROR_ENV = 'VTX_ZOO_MIRROR'
_CHUNK = 1 << 20


class DownloadError(VtxError):
    pass


class ChecksumError(DownloadError):
    pass


def cache_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or '~/.cache/vtx'))


def downloads_dir() -> str:
    return os.path.join(cache_dir(), 'downloads')


def file_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path)


def source_url(url: str) -> str:
    """`url`, or its file on `$VTX_ZOO_MIRROR` when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    return f'{mirror.rstrip("/")}/{file_name(url)}' if mirror else url


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomically(path: str, value) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
    with os.fdopen(fd, 'w') as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Checksums:
    """The SHA-256 of each downloaded file, kept in `downloads/checksums.json`."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, 'checksums.json')

    def _read(self) -> dict:
        if not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise DownloadError(f'{self.path} is unreadable ({e}); delete it to record the '
                                'checksums afresh') from None

    def get(self, name: str) -> Optional[str]:
        return self._read().get(name)

    def record(self, name: str, digest: str) -> None:
        _write_json_atomically(self.path, {**self._read(), name: digest})


def _progress(total: Optional[int], initial: int, name: str, quiet: bool):
    import tqdm
    return tqdm.tqdm(total=total, initial=initial, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=name, disable=quiet, file=sys.stderr)


def _fetch(url: str, part: str, quiet: bool) -> None:
    """Appends the rest of `url` to `part`, resuming after the bytes it already holds."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is already whole, or the file changed: start over
            os.remove(part)
            return _fetch(url, part, quiet)
        raise DownloadError(f'{url}: HTTP {e.code} {e.reason}') from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f'{url}: {getattr(e, "reason", e)}') from None
    with response:
        if have and response.status != 206:  # the server ignored the range: take it whole
            have = 0
        length = response.headers.get('Content-Length')
        total = have + int(length) if length is not None else None
        with open(part, 'ab' if have else 'wb') as f, \
                _progress(total, have, file_name(url), quiet) as bar:
            try:
                for block in iter(lambda: response.read(_CHUNK), b''):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(f'{url}: the download broke off after {f.tell()} bytes '
                                    f'({e}); run again to resume it') from None
            if total is not None and f.tell() != total:
                raise DownloadError(f'{url}: the download broke off after {f.tell()} of {total} '
                                    'bytes; run again to resume it')


def download(url: str, expected_sha256: Optional[str] = None, quiet: bool = False) -> str:
    """The cached copy of `url` (from `$VTX_ZOO_MIRROR` when set), fetched if missing or if it no
    longer matches its checksum. A file that fails the published or recorded checksum is moved
    aside to `<file>.rejected` and nothing is cached. Returns the file's path."""
    folder = downloads_dir()
    os.makedirs(folder, exist_ok=True)
    name = file_name(url)
    path = os.path.join(folder, name)
    checksums = Checksums(folder)
    expected = expected_sha256 or checksums.get(name)
    if os.path.exists(path):
        if expected is None or sha256(path) == expected:
            return path
        print(f'vtx: {path} does not match its checksum; fetching it again', file=sys.stderr)
        os.remove(path)
    part = path + '.part'
    _fetch(source_url(url), part, quiet)
    digest = sha256(part)
    if expected is not None and digest != expected:
        rejected = path + '.rejected'
        os.replace(part, rejected)
        raise ChecksumError(f'{source_url(url)}: SHA-256 {digest}, expected {expected}; the file '
                            f'is kept aside as {rejected} and nothing was cached')
    os.replace(part, path)
    if expected is None:
        checksums.record(name, digest)
    return path


def cached_file(name: str) -> Optional[str]:
    """The cached download called `name`, if there is one that matches its recorded checksum."""
    folder = downloads_dir()
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    expected = Checksums(folder).get(name)
    return path if expected is None or sha256(path) == expected else None


def add_local_file(path: str, name: str) -> str:
    """Caches a file the user fetched by hand (hosts that need a browser) as `name`, checked
    against the checksum recorded for that name if there is one. Returns the cached path."""
    if not os.path.isfile(path):
        raise DownloadError(f'{path}: no such file')
    folder = downloads_dir()
    os.makedirs(folder, exist_ok=True)
    cached = os.path.join(folder, name)
    digest = sha256(path)
    checksums = Checksums(folder)
    expected = checksums.get(name)
    if expected is not None and digest != expected:
        raise ChecksumError(f'{path}: SHA-256 {digest}, but {name} was recorded as {expected}')
    if os.path.abspath(path) != cached:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-')
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
    if expected is None:
        checksums.record(name, digest)
    return cached
