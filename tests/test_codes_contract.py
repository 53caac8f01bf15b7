"""The code formats methods may return: each means the same bits, packed big-endian; a zero
from sign() is refused, by the harness's conversion and by the runner, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashbench.codes import pack, unpack
from hashbench.errors import UserError
from hashbench.method import HashingMethod
from hashbench.registry import register_method
from hashbench.run.runner import GridSpec, run_grid


@register_method
class SignWithAZero(HashingMethod):
    """Returns sign(x − 0.5) of its features, where one entry is exactly zero."""

    name = "codes-contract-sign"
    description = "sign() codes holding one exact zero"

    def fit(self, train, val=None):
        pass

    def encode(self, split):
        codes = np.sign(split.features[:, : self.bits] - 0.5)
        codes[0, 0] = 0.0
        return codes


def test_every_accepted_format_packs_to_the_same_bits():
    bits = np.random.default_rng(0).random((6, 11)) > 0.5
    forms = {
        "bool": bits,
        "{0,1} uint8": bits.astype(np.uint8),
        "{-1,+1} int": np.where(bits, 1, -1),
        "{-1,+1} float": np.where(bits, 1.0, -1.0),
        "{-1,+1} torch": torch.from_numpy(np.where(bits, 1.0, -1.0)),
    }
    for form, codes in forms.items():
        packed = pack(codes, 11)
        assert packed.dtype == np.uint8 and packed.shape == (6, 2), form
        assert np.array_equal(unpack(packed, 11), bits), form
    # Big-endian inside each byte, zero padding (the documented layout of codes.npz).
    assert pack(np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1]]), 9).tolist() == [[0b10000001, 0b10000000]]


def test_a_zero_from_sign_is_refused_with_the_reason(results):
    with pytest.raises(UserError, match=r"a zero from sign\(\) is not a bit"):
        pack(np.array([[1.0, 0.0, -1.0, 1.0]]), 4)
    (outcome,) = run_grid(GridSpec(methods=[SignWithAZero.name], bits=[8], results=results, device="cpu"))
    assert outcome.status == "failed"
    (path,) = results.glob("runs/*/run.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed"
    assert "a zero from sign() is not a bit" in record["error"], record["error"]
    assert not list(results.glob("runs/*/codes.npz"))
