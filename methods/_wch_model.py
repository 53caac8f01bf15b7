"""The torch side of WCH (:mod:`hashbench.methods.wch`): patch tokens from a backbone, the
mutual attention between two views, the patch-level pair weights, the hash head and the
weighted contrastive loss.

Imported by the method only when it trains or encodes, so that describing it stays light.
The released pieces (github.com/RosieYuu/WCH) are named where they are transcribed:
``TransformerModel/modeling.py`` (``VisionTransformer.cross_attention``, ``weighted``,
``hash_head``, ``train_forward``, ``forward``) and ``train.py`` (``CL``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.toolkit.layers import straight_through_sign
from hashbench.toolkit.training import autocast

HEAD_HIDDEN = 1024  # modeling.py: self.fc = nn.Linear(hidden_size, 1024)
LAYER_NORM_EPS = 1e-6  # modeling.py: fc_norm = LayerNorm(hidden_size, eps=1e-6)


# --------------------------------------------------------------------------------------------
# patch tokens


class ViTPatchTokens(nn.Module):
    """All patch tokens of the shared ViT-B/16 trunk's torchvision network, fine-tuned.

    The shared trunk returns the class token only and is frozen; WCH (as released) trains every
    layer of the transformer and reads the 196 patch tokens after the encoder's final layer norm
    (``x[:, 1:, :]`` in ``train_forward``). This runs the network's own pieces (patch
    projection, class token, encoder with position embeddings and final norm) and drops the
    class token. ``dropout``: the released ViT-B_16 config's ``dropout_rate`` (0.1), after the
    position embeddings and inside every MLP block; its attention dropout and the dropout after
    each attention output are 0 (``attention_dropout_rate``), as torchvision's are.
    """

    trainable = True

    def __init__(self, trunk: nn.Module, dropout: float) -> None:
        super().__init__()
        network = trunk.network
        network.requires_grad_(True)
        network.encoder.dropout.p = dropout
        for block in network.encoder.layers:
            block.dropout.p = 0.0
            for layer in block.mlp:
                if isinstance(layer, nn.Dropout):
                    layer.p = dropout
        self.network = network
        self.feature_dim = int(network.hidden_dim)
        self.weights_source = trunk.weights_source
        self.weights_id = trunk.weights_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        network = self.network
        patches = network._process_input(images)  # (n, 196, 768)
        cls = network.class_token.expand(patches.shape[0], -1, -1)
        return network.encoder(torch.cat([cls, patches], dim=1))[:, 1:]


class SmallPatchTokens(nn.Module):
    """The tiny profile's stand-in for ViT patches: one token per position of the small CPU
    backbone's last feature map (4×4 positions of 32 channels on 8×8 digits), each projected to
    ``width`` (256) dimensions and layer-normalised, as a ViT's patch tokens are embedded wide and
    leave the encoder through a layer norm: ``(n, h·w, width)``.

    Why the projection and the norm: the released head adds standard-normal biases to
    Kaiming-initialised layers, so on 32 raw post-ReLU channels the biases swamp the input
    and most bits start (and stay) constant; the post-ReLU tokens also all have cosines near 1,
    which makes every pair weight near 1. On digits at 16 bits (40 epochs, mAP@100, seed 0) the
    raw map positions reached 0.35 and the projected, normalised ones 0.45 with the released crop
    scale (0.2–1), and 0.69 with the tiny profile's (0.5–1).
    """

    trainable = True

    def __init__(self, small: nn.Module, width: int = 256) -> None:
        super().__init__()
        self.features = small.features
        convolutions = [layer for layer in self.features if isinstance(layer, nn.Conv2d)]
        self.project = nn.Linear(int(convolutions[-1].out_channels), width)
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.feature_dim = width
        self.weights_source = small.weights_source
        self.weights_id = small.weights_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(self.features(images).flatten(2).transpose(1, 2)))


# --------------------------------------------------------------------------------------------
# the released pieces


def mutual_attention(x1: torch.Tensor, x2: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cross_attention``: each view's tokens rebuilt from the other view's positions.

    With S[n, i, j] the cosine of view 1's token i and view 2's token j of image n: view 1's
    new token j is Σ_i softmax_i(S[n, :, j] / T) · x1[n, i]; view 2's new token i is
    Σ_j softmax_j(S[n, i, :] / T) · x2[n, j]. Shapes stay ``(n, P, D)``.
    """
    similarity = F.normalize(x1, dim=-1) @ F.normalize(x2, dim=-1).transpose(1, 2)
    new_1 = torch.softmax(similarity / temperature, dim=1).transpose(1, 2) @ x1
    new_2 = torch.softmax(similarity / temperature, dim=2) @ x2
    return new_1, new_2


def pair_weights(x1: torch.Tensor, x2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """``weighted``: the soft targets of every (view-1 image n, view-2 image m) pair.

    s[n, m] = mean over n's tokens i of the best cosine with any token j of m; p = softmax of
    s / T over m (each row); weight[n, m] = p[n, m] / p[m, m]. The released ``sim / scale``
    divides the (n, m) matrix by the length-n diagonal, which broadcasts over the last axis:
    each column by its own diagonal entry, not each row. The positive pairs weigh 1. Not
    detached, as released: the loss's gradient also reaches the tokens through the weights.
    """
    count, tokens, dim = x1.shape
    a = F.normalize(x1, dim=-1).reshape(count * tokens, dim)
    b = F.normalize(x2, dim=-1).reshape(x2.shape[0] * x2.shape[1], dim)
    cosines = (a @ b.T).view(count, tokens, x2.shape[0], x2.shape[1])
    scores = cosines.amax(dim=3).mean(dim=1)  # (n, m)
    probabilities = torch.softmax(scores / temperature, dim=1)
    return probabilities / probabilities.diagonal().unsqueeze(0)


class WCHHead(nn.Module):
    """``fc_norm`` + ``hash_head``: LayerNorm(F) → Linear(F → 1024) → ReLU → Linear(1024 →
    bits) → tanh → sign with a straight-through gradient. Initialised as released: Kaiming
    uniform weights (fan-out), standard normal biases."""

    def __init__(self, feature_dim: int, bits: int) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(feature_dim, eps=LAYER_NORM_EPS)
        self.fc = nn.Linear(feature_dim, HEAD_HIDDEN)
        self.b = nn.Linear(HEAD_HIDDEN, bits)
        for layer in (self.fc, self.b):
            nn.init.kaiming_uniform_(layer.weight, mode="fan_out")
            nn.init.normal_(layer.bias)

    def continuous(self, pooled: torch.Tensor) -> torch.Tensor:
        """tanh outputs in (−1, 1) of mean-pooled tokens."""
        return torch.tanh(self.b(F.relu(self.fc(self.fc_norm(pooled)))))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return straight_through_sign(self.continuous(pooled))


def wch_loss(h1: torch.Tensor, h2: torch.Tensor, weights: torch.Tensor, bits: int, tau: float) -> dict[str, torch.Tensor]:
    """``CL``: cross-entropy of the code logits h1·h2ᵀ / bits / τ against the soft targets
    ``weights`` (summed over each row, averaged over the batch), plus the bit balance of view 1
    (mean over bits of its squared batch mean) minus the mean square of its codes."""
    logits = h1 @ h2.T / bits / tau
    contrastive = -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    balance = h1.mean(dim=0).pow(2).mean()
    quantisation = h1.pow(2).mean()
    return {"loss": contrastive + balance - quantisation, "contrastive": contrastive, "balance": balance, "quantisation": quantisation}


# --------------------------------------------------------------------------------------------
# forward passes


def backbone_tokens(backbone: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Patch tokens of a normalised batch (bf16 autocast on CUDA), returned in float32."""
    with autocast(device):
        tokens = backbone(images)
    return tokens.float()


def train_forward(model: nn.ModuleDict, view_1: torch.Tensor, view_2: torch.Tensor, device: torch.device,
                  attention_tau: float, weight_tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``train_forward``: both views' tokens (one backbone pass), mutual attention, pair
    weights, and the codes of the mean-pooled attended tokens."""
    tokens = backbone_tokens(model["backbone"], torch.cat([view_1, view_2]), device)
    x1, x2 = mutual_attention(*tokens.chunk(2), temperature=attention_tau)
    weights = pair_weights(x1, x2, temperature=weight_tau)
    head = model["head"]
    return head(x1.mean(dim=1)), head(x2.mean(dim=1)), weights


def code_forward(model: nn.ModuleDict, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``forward`` at test time: the head's tanh outputs for the mean of the plain patch tokens
    (no mutual attention); the codes are their signs."""
    return model["head"].continuous(backbone_tokens(model["backbone"], images, device).mean(dim=1))
