"""The decoded-image cache behind ImageLoader: same arrays as decoding, copies out, stale files decoded anew."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pandemonium.tasks.image_cache import IMAGE_CACHE, DecodedImageCache, file_key
from pandemonium.tasks.loaders import ImageLoader


def _png(path, value):
    Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(path)


def test_loader_serves_equal_copies_and_sees_rewritten_files(tmp_path):
    _png(tmp_path / "a.png", 51)
    loader = ImageLoader()
    first = loader.load("a.png", tmp_path)
    assert file_key(tmp_path / "a.png", "image", None) is not None
    first[:] = 0.0  # an augmentation editing its array in place must not reach the next reader
    second = loader.load("a.png", tmp_path)
    assert np.array_equal(second, np.full((6, 5, 3), 0.2, np.float32))
    assert second.dtype == np.float32 and second.flags.writeable

    stat = os.stat(tmp_path / "a.png")
    _png(tmp_path / "a.png", 102)
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewrite, even within one tick
    assert np.array_equal(loader.load("a.png", tmp_path), np.full((6, 5, 3), 0.4, np.float32))
    # a forced grey mode is cached apart from the colour decoding of the same file
    assert ImageLoader(mode="L").load("a.png", tmp_path).shape == (6, 5, 1)


def test_cache_evicts_least_recently_used_within_its_budget():
    cache = DecodedImageCache(max_bytes=3 * 400)
    for name in "abc":
        cache.put(name, np.zeros(100, np.float32))  # 400 bytes each
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("d", np.zeros(100, np.float32))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert cache.nbytes == 1200 and len(cache) == 3
    cache.put("huge", np.zeros(1000, np.float32))  # larger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 3
    off = DecodedImageCache(max_bytes=0)
    off.put("a", np.zeros(1, np.float32))
    assert off.get("a") is None


def test_module_cache_is_the_loader_cache(tmp_path):
    _png(tmp_path / "b.png", 7)
    before = len(IMAGE_CACHE)
    ImageLoader().load("b.png", tmp_path)
    assert len(IMAGE_CACHE) == before + 1 or IMAGE_CACHE.max_bytes == 0
