"""BGAN's codes, through ``encode``, are sign(μ) of its encoder (not of a sampled latent).

After a short fit on digits, the test recomputes μ = tanh(Dense(backbone(x))) itself from the
trained encoder's layers, with the backbone's public evaluation preprocessing, in eval mode,
and compares the signs with what ``encode`` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hashbench import registry
from hashbench.codes import to_bits
from hashbench.data import DataSplit
from hashbench.method import RunContext
from hashbench.params import resolve_params
from hashbench.toolkit.backbones import preprocess_for


def test_encode_returns_the_sign_of_the_encoder_mean():
    arrays = registry.get_dataset("digits")().load(Path("."))
    train = DataSplit("train", np.arange(100), arrays)
    other = DataSplit("query", np.arange(100, 160), arrays)
    cls = registry.get_method("bgan")
    params = resolve_params(
        cls.Params, {"epochs": 1, "batch_size": 20, "k1": 3, "k2": 3, "eval_every": 0, "cpu_threads": 1}, owner="bgan"
    )
    bits = 12
    method = cls(bits, params, RunContext(seed=0, device="cpu"))
    method.fit(train, None)
    codes = to_bits(np.asarray(method.encode(other)), bits)

    encoder = method.model["encoder"]
    encoder.eval()
    prepare = preprocess_for("small", other.image_shape)
    with torch.no_grad():
        mean = torch.tanh(encoder.mean_head(encoder.backbone(prepare(other.images(), "cpu")).float()))
    expected = (mean >= 0).numpy()
    assert codes.shape == expected.shape == (60, bits)
    assert 0.05 < expected.mean() < 0.95  # codes that say something, not a constant
    assert np.array_equal(codes, expected)
    # Deterministic: encoding again gives the same codes (no sampled latent).
    assert np.array_equal(to_bits(np.asarray(method.encode(other)), bits), codes)
