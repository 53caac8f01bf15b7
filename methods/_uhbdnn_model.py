"""The torch side of UH-BDNN (:mod:`hashbench.methods.uhbdnn`): the released preprocessing,
the network with its eigenvector initialisation, the cost J1 + … + J5, and the closed-form
update of the binary codes B.

Imported by the method only when it trains or encodes, so that describing it stays light.
Everything runs in float64, as the released MATLAB code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MATLAB_EPS = float(np.finfo(np.float64).eps)  # utils/rescale_0_1.m adds MATLAB's eps to the range


def unit_rescaling(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``utils/rescale_0_1.m``: (x − per-dimension minimum) / (the largest per-dimension range + eps)."""
    minimum = features.min(dim=0).values
    spread = float((features.max(dim=0).values - minimum).max()) + MATLAB_EPS
    return minimum, spread


def top_eigenvectors(data: np.ndarray, count: int) -> np.ndarray:
    """``initializeParameters.m``: the ``count`` leading eigenvectors of the uncentred second
    moment (1/m) Xᵀ X, as rows ``(count, d)``; each with its largest-magnitude entry positive
    (MATLAB's signs are whatever ``eig`` returns)."""
    data = np.asarray(data, dtype=np.float64)
    values, vectors = np.linalg.eigh(data.T @ data / len(data))
    order = np.argsort(values, kind="stable")[::-1][:count]
    rows = vectors[:, order].T
    signs = np.sign(rows[np.arange(count), np.abs(rows).argmax(axis=1)])
    signs[signs == 0] = 1
    return rows * signs[:, None]


class BinaryDeepNet(nn.Module):
    """D → sigmoid(h1) → sigmoid(h2) → identity(bits) = H; the decoder x̂ = W4 b + c4 reads B.

    ``codes`` (the current B, ±1, one row per training item) and ``steps_done`` (L-BFGS
    iterations so far) are buffers, so that checkpoints and the kept best state carry them.
    """

    def __init__(self, input_dim: int, hidden: tuple[int, int], bits: int, items: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(input_dim, hidden[0]), nn.Linear(hidden[0], hidden[1]), nn.Linear(hidden[1], bits)]
        )
        self.decoder = nn.Linear(bits, input_dim)
        self.register_buffer("codes", torch.zeros(items, bits, dtype=torch.float64))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self.double()

    def initialise(self, features: torch.Tensor, codes: torch.Tensor) -> None:
        """``learnDeepNN.m`` with ``pre_training``: each encoder layer's weights are the leading
        eigenvectors of its input's second moment (biases 0); W4 = eye(D, bits), c4 = 0; B
        the given (ITQ) codes."""
        with torch.no_grad():
            activations = features
            for index, layer in enumerate(self.layers):
                rows = top_eigenvectors(activations.cpu().numpy(), layer.out_features)
                layer.weight.copy_(torch.from_numpy(rows))
                layer.bias.zero_()
                activations = layer(activations)
                if index < 2:
                    activations = torch.sigmoid(activations)
            self.decoder.weight.copy_(torch.eye(self.decoder.out_features, self.decoder.in_features, dtype=torch.float64))
            self.decoder.bias.zero_()
            self.codes.copy_(codes)

    def hidden_codes(self, features: torch.Tensor) -> torch.Tensor:
        """H, the output of layer n − 1 (``feedForwardDeep.m``)."""
        activations = torch.sigmoid(self.layers[0](features))
        activations = torch.sigmoid(self.layers[1](activations))
        return self.layers[2](activations)

    def weights(self) -> list[torch.Tensor]:
        return [*(layer.weight for layer in self.layers), self.decoder.weight]


def uhbdnn_cost(
    model: BinaryDeepNet, features: torch.Tensor, codes: torch.Tensor, lambdas: tuple[float, float, float, float]
) -> dict[str, torch.Tensor]:
    """``deepNNCost.m``'s J1 + J2 + J3 + J4 + J5 over all m items (rows of ``features``).

    J1 = 1/(2m)‖X − W4 B − c4‖²; J2 = λ1/2 Σ‖W_l‖²; J3 = λ2/(2m)‖H − B‖²;
    J4 = λ3/2 ‖(1/m) H Hᵀ − I‖²; J5 = λ4/(2m)‖H 1‖² (columns as items, as released).
    """
    lambda1, lambda2, lambda3, lambda4 = lambdas
    items = features.shape[0]
    hidden = model.hidden_codes(features)
    reconstruction = ((features - model.decoder(codes)) ** 2).sum() / (2 * items)
    decay = lambda1 / 2 * sum((weight**2).sum() for weight in model.weights())
    binary = lambda2 / (2 * items) * ((hidden - codes) ** 2).sum()
    gram = hidden.T @ hidden / items
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    independence = lambda3 / 2 * ((gram - identity) ** 2).sum()
    balance = lambda4 / (2 * items) * (hidden.sum(dim=0) ** 2).sum()
    cost = reconstruction + decay + binary + independence + balance
    return {
        "loss": cost,
        "reconstruction": reconstruction,
        "weight_decay": decay,
        "binary": binary,
        "independence": independence,
        "balance": balance,
    }


def update_codes(
    residual: torch.Tensor, decoder_weight: torch.Tensor, hidden: torch.Tensor, nu: float, sweeps: int = 10
) -> torch.Tensor:
    """``learn_B.m``: B minimising ‖Y − B W4ᵀ‖² + ν‖H − B‖² over ±1 codes, bit by bit.

    ``residual`` Y = X − c4 (m, D); ``decoder_weight`` W4 (D, bits); ``hidden`` H (m, bits).
    Starting from B = 0, each of ``sweeps`` passes sets, for k = 1..bits in turn,
    B_k = sign(Q_k − Σ_{j≠k} B_j G_jk) with Q = ν H + Y W4 and G = W4ᵀ W4 (sign(0) = 0, as
    MATLAB's).
    """
    q = nu * hidden + residual @ decoder_weight
    gram = decoder_weight.T @ decoder_weight
    codes = torch.zeros_like(hidden)
    for _ in range(sweeps):
        for k in range(codes.shape[1]):
            others = codes @ gram[:, k] - codes[:, k] * gram[k, k]
            codes[:, k] = torch.sign(q[:, k] - others)
    return codes
