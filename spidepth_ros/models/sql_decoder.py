"""Self Query Layer depth head (SQLdepth ``Depth_Decoder_QueryTr``), as used by SPIdepth.

Input: a ``[B, E, h, w]`` feature map (h = H/2, w = W/2). Output: **depth** (not disparity) in
``(min_depth, max_depth)``, shape ``[B, 1, h, w]``: a per-pixel softmax over D adaptive bins whose
widths come from a small MLP over query summaries. Parameter names match the official ``depth.pth``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..presets import MAX_PATCHES


class SelfQueryLayerError(ValueError):
    """The input size gives a patch count the Self Query Layer cannot take."""


def full_query_layer(pixels: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-cost volume and query summaries.

    Args:
        pixels: ``[B, E, h, w]`` per-pixel embeddings.
        queries: ``[B, Q, E]`` query embeddings.

    Returns:
        energy: ``[B, Q, hw]`` raw dot products (the self-cost volume, pixels flattened row-major).
        summary: ``[B, Q, E]`` softmax(over pixels)-weighted mean of the pixel embeddings per query.
    """
    flat = pixels.flatten(2)                                    # [B, E, hw]
    energy = torch.matmul(queries, flat)                        # [B, Q, hw]
    # Softmax over the last axis: ONNX Runtime and TensorRT run a non-last-axis softmax as transpose +
    # softmax + transpose, which cost a quarter of the whole network on the CPU.
    weights = torch.softmax(energy, dim=-1)                     # over the hw pixels
    summary = torch.matmul(weights, flat.transpose(1, 2))       # [B, Q, E]
    return energy, summary


class SelfQueryDepthHead(nn.Module):
    """SQLdepth decoder. ``transformer_ff`` 1024 is the full head, 512 the official "Lite" head."""

    def __init__(self, embedding_dim: int = 32, patch_size: int = 32, num_heads: int = 4, query_nums: int = 64,
                 dim_out: int = 64, transformer_ff: int = 1024, min_depth: float = 0.001,
                 max_depth: float = 80.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.query_nums = query_nums
        self.dim_out = dim_out
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        e = embedding_dim
        self.embedding_convPxP = nn.Conv2d(e, e, kernel_size=patch_size, stride=patch_size, padding=0)
        self.positional_encodings = nn.Parameter(torch.rand(MAX_PATCHES, e))
        layer = nn.TransformerEncoderLayer(d_model=e, nhead=num_heads, dim_feedforward=transformer_ff)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
        self.conv3x3 = nn.Conv2d(e, e, kernel_size=3, stride=1, padding=1)
        self.bins_regressor = nn.Sequential(
            nn.Linear(e * query_nums, 16 * query_nums), nn.LeakyReLU(),
            nn.Linear(16 * query_nums, 16 * 16), nn.LeakyReLU(),
            nn.Linear(16 * 16, dim_out))
        self.convert_to_prob = nn.Sequential(nn.Conv2d(query_nums, dim_out, kernel_size=1), nn.Softmax(dim=1))

    def check_feature_size(self, h: int, w: int) -> None:
        """Raise :class:`SelfQueryLayerError` if an ``h x w`` feature map gives an unusable patch count."""
        patches = (h // self.patch_size) * (w // self.patch_size)
        if patches < self.query_nums or patches > MAX_PATCHES:
            raise SelfQueryLayerError(
                f"a {h}x{w} feature map (input {2 * h}x{2 * w}) gives {patches} patches of "
                f"{self.patch_size}x{self.patch_size}, but the Self Query Layer needs between {self.query_nums} "
                f"(query count) and {MAX_PATCHES} (positional encodings); choose an input size whose "
                f"(H/2/{self.patch_size})*(W/2/{self.patch_size}) lies in that range")

    def bin_centers(self, bin_widths_normed: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` normalised widths -> ``[B, D]`` bin centres in depth units."""
        widths = (self.max_depth - self.min_depth) * bin_widths_normed
        widths = nn.functional.pad(widths, (1, 0), mode="constant", value=self.min_depth)
        edges = torch.cumsum(widths, dim=1)
        return 0.5 * (edges[:, :-1] + edges[:, 1:])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, E, h, w]`` features -> ``[B, 1, h, w]`` depth."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_feature_size(features.shape[-2], features.shape[-1])
        tokens = self.embedding_convPxP(features).flatten(2)    # [B, E, S]
        tokens = tokens + self.positional_encodings[:tokens.shape[2], :].T.unsqueeze(0)
        tokens = self.transformer_encoder(tokens.permute(2, 0, 1))  # [S, B, E]
        queries = tokens[:self.query_nums].permute(1, 0, 2)      # first Q tokens, [B, Q, E]
        pixels = self.conv3x3(features)
        energy, summary = full_query_layer(pixels, queries)
        y = self.bins_regressor(summary.flatten(1))
        y = torch.relu(y) + 0.1
        y = y / y.sum(dim=1, keepdim=True)
        centers = self.bin_centers(y)                             # [B, D]
        # convert_to_prob (1x1 conv over the Q energies, softmax over the D bins) evaluated pixel-major, so
        # that the softmax runs over the last axis; the parameters keep the official names.
        to_bins = self.convert_to_prob[0]
        logits = torch.matmul(energy.transpose(1, 2), to_bins.weight.flatten(1).T) + to_bins.bias  # [B, hw, D]
        prob = torch.softmax(logits, dim=-1)
        depth = torch.matmul(prob, centers.unsqueeze(-1))         # [B, hw, 1], expected depth over the bins
        return depth.transpose(1, 2).reshape(features.shape[0], 1, features.shape[2], features.shape[3])
