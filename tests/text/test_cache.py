import logging
import os
import threading

import torch

from dataseg.text import TEXT_ENCODER_REGISTRY, EncoderInfo, TextEmbeddingProvider, TextEncoder
from dataseg.text.cache import EmbeddingCache, default_cache_dir, resolve_cache_dir


class CountingTestEncoder(TextEncoder):
    """Cacheable toy encoder that counts how often it is constructed (= model loads)."""

    builds = 0

    def __init__(self, dim=8):
        type(self).builds += 1
        self.dim = dim

    @classmethod
    def describe(cls, dim=8):
        return EncoderInfo(identity=f"CountingTest/{dim}", dim=dim)

    def encode(self, texts):
        return torch.stack(
            [
                torch.tensor(
                    [float(len(t)), float(sum(map(ord, t)) % 97), 1.0] + [0.5] * (self.dim - 3)
                )
                for t in texts
            ]
        )


if "CountingTestEncoder" not in TEXT_ENCODER_REGISTRY:
    TEXT_ENCODER_REGISTRY.register(CountingTestEncoder)


def _provider(tmp_path, templates="single"):
    return TextEmbeddingProvider(
        encoder_name="CountingTestEncoder", templates=templates, cache_dir=str(tmp_path)
    )


def test_second_provider_hits_cache_without_building_encoder(tmp_path):
    CountingTestEncoder.builds = 0
    names = ["cat", "dog, puppy"]
    first = _provider(tmp_path).embed(names)
    assert CountingTestEncoder.builds == 1
    second_provider = _provider(tmp_path)
    second = second_provider.embed(names)
    assert CountingTestEncoder.builds == 1 and not second_provider.encoder_loaded
    assert torch.equal(first.embeddings, second.embeddings)
    assert torch.equal(first.class_index, second.class_index)


def test_changed_class_or_template_invalidates(tmp_path):
    CountingTestEncoder.builds = 0
    _provider(tmp_path).embed(["cat", "dog"])
    _provider(tmp_path).embed(["cat", "dogs"])  # class name changed
    assert CountingTestEncoder.builds == 2
    _provider(tmp_path, templates="none").embed(["cat", "dog"])  # templates changed
    assert CountingTestEncoder.builds == 3
    _provider(tmp_path).embed(["dog", "cat"])  # order matters: ids are positions
    assert CountingTestEncoder.builds == 4
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".pt")]) == 4
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_corrupt_file_warns_and_recomputes(tmp_path, caplog):
    CountingTestEncoder.builds = 0
    provider = _provider(tmp_path)
    good = provider.embed(["cat"]).embeddings
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        again = _provider(tmp_path).embed(["cat"]).embeddings
    assert "unreadable" in caplog.text
    assert CountingTestEncoder.builds == 2 and torch.allclose(good, again)
    assert _provider(tmp_path).embed(["cat"]) is not None and CountingTestEncoder.builds == 2


def test_key_mismatch_in_file_is_a_miss(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    key = cache.make_key("enc", ["{}"], ["a"])
    other = cache.make_key("enc", ["{}"], ["b"])
    cache.save(key, torch.ones(1, 3), torch.zeros(1, dtype=torch.long))
    os.replace(cache.path_for(key), cache.path_for(other))
    assert cache.load(other) is None


def test_concurrent_writers_never_expose_partial_files(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    key = cache.make_key("enc", ["{}"], ["a", "b"])
    emb, idx = torch.randn(2, 64), torch.arange(2)
    errors = []

    def write():
        for _ in range(15):
            cache.save(key, emb, idx)

    def read():
        for _ in range(30):
            hit = cache.load(key)
            if hit is not None and not torch.equal(hit[0], emb):
                errors.append("mismatch")

    threads = [threading.Thread(target=f) for f in (write, write, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and torch.equal(cache.load(key)[0], emb)
    assert os.listdir(tmp_path) == [os.path.basename(cache.path_for(key))]


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("DATASEG_CACHE", str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), "text_embeddings")
    assert resolve_cache_dir("/some/where") == "/some/where"
    monkeypatch.delenv("DATASEG_CACHE")
    assert default_cache_dir().endswith(os.path.join(".cache", "dataseg", "text_embeddings"))


def test_flipped_bit_in_the_tensor_payload_warns_and_recomputes(tmp_path, caplog):
    CountingTestEncoder.builds = 0
    names = ["cat", "dog, puppy"]
    good = _provider(tmp_path).embed(names)
    (path,) = [str(tmp_path / f) for f in os.listdir(tmp_path)]
    saved = torch.load(path, weights_only=True)
    cache, key, stored = EmbeddingCache(str(tmp_path)), saved["key"], saved["embeddings"]
    assert cache.path_for(key) == path and torch.equal(cache.load(key)[0], stored)
    # torch.save stores tensors uncompressed: flip one bit inside the embedding bytes.
    raw = bytearray(open(path, "rb").read())
    start = bytes(raw).find(stored.numpy().tobytes())
    assert start > 0
    raw[start + 5] ^= 0x10
    open(path, "wb").write(bytes(raw))
    damaged = torch.load(path, weights_only=True)["embeddings"]  # still loads...
    assert (damaged != stored).sum() == 1  # ...with one wrong value

    with caplog.at_level(logging.WARNING, logger="dataseg.text.cache"):
        assert cache.load(key) is None
    assert path in caplog.text and "sha256" in caplog.text and "damaged" in caplog.text
    again = _provider(tmp_path).embed(names)  # recomputed and rewritten
    assert CountingTestEncoder.builds == 2
    assert torch.equal(again.embeddings, good.embeddings)
    assert torch.equal(cache.load(key)[0], stored)


def test_cache_file_without_checksum_is_stale(tmp_path, caplog):
    cache = EmbeddingCache(str(tmp_path))
    key = cache.make_key("enc", ["{}"], ["a", "b"])
    emb, idx = torch.randn(2, 4), torch.arange(2)
    # The layout of files written before checksums existed.
    os.makedirs(tmp_path, exist_ok=True)
    torch.save({"key": key, "embeddings": emb, "class_index": idx}, cache.path_for(key))
    with caplog.at_level(logging.WARNING, logger="dataseg.text.cache"):
        assert cache.load(key) is None
    assert "no checksum" in caplog.text and cache.path_for(key) in caplog.text
    cache.save(key, emb, idx)
    hit = cache.load(key)
    assert torch.equal(hit[0], emb) and torch.equal(hit[1], idx)
