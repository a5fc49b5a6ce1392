"""Model file hashes: correct, computed once per (path, size, mtime), persisted, with progress."""

import hashlib
import os

from raiiaf_nodes.hashing import FileHashCache


def test_hash_is_sha256_and_progress_reaches_the_size(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(os.urandom(20 << 20))  # larger than one read chunk
    seen = []
    value = FileHashCache().sha256(model, lambda done, total: seen.append((done, total)))
    assert value == hashlib.sha256(model.read_bytes()).hexdigest()
    assert len(seen) >= 3 and seen[-1] == (20 << 20, 20 << 20)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_unchanged_file_is_not_read_again(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"a" * 1000)
    cache = FileHashCache()
    first = cache.sha256(model)
    stat = os.stat(model)
    # Same size and mtime: the cache must answer without reading (the new content proves it did not).
    model.write_bytes(b"b" * 1000)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls = []
    assert cache.sha256(model, lambda d, t: calls.append(d)) == first and calls == []
    # A new mtime means a new file version: hashed again.
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.sha256(model) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_cache_file_survives_a_restart_and_follows_symlinks(tmp_path):
    model = tmp_path / "real.bin"
    model.write_bytes(b"weights")
    link = tmp_path / "link.bin"
    link.symlink_to(model)
    cache_file = tmp_path / "user" / "raiiaf" / "model_sha256.json"
    value = FileHashCache(cache_file).sha256(link)
    assert cache_file.is_file()
    stat = os.stat(model)
    model.write_bytes(b"WEIGHTS")  # same size; restore mtime so only the persisted entry can answer
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert FileHashCache(cache_file).sha256(model) == value


def test_damaged_cache_file_only_costs_rehashing(tmp_path):
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    assert FileHashCache(cache_file).sha256(model) == hashlib.sha256(b"x").hexdigest()
