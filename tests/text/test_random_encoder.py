import logging

import torch

from dataseg.text import Random


def test_random_is_deterministic_per_text_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        enc = Random(dim=16)
    assert "NO meaning" in caplog.text
    a = enc.encode(["cat", "dog", "cat"])
    assert a.shape == (3, 16)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert torch.equal(Random(dim=16).encode(["cat"])[0], a[0])
    assert Random.describe(dim=16).dim == 16
