"""A small Vision Transformer (ViT) of our own, for maps and lens images ``(B, C, H, W)``.

Architecture (Dosovitskiy et al. 2021, ICLR, "An image is worth 16x16 words: transformers for
image recognition at scale", arXiv:2010.11929, sec. 3.1, eqs. 1-4):

1. patch embedding: the image is cut into non-overlapping ``P × P`` patches, each flattened and
   projected linearly to ``D`` dimensions (a ``P × P`` convolution of stride ``P``, which is
   the same linear map), giving ``(H/P)·(W/P)`` tokens; a learned class token is prepended;
2. position embedding: fixed 2-D sine-cosine embeddings of the patch row and column
   (the variant of Beyer, Zhai & Kolesnikov 2022, arXiv:2205.01580, and of the MAE, He et al.
   2022, arXiv:2111.06377), added to the patch tokens; the class token gets none. Unlike
   learned embeddings they exist for any grid, so the network takes maps of any size that is a
   multiple of ``P`` (Dosovitskiy et al., appendix D.4, find 1-D, 2-D and learned position
   embeddings about equally good);
3. ``depth`` pre-norm transformer blocks: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``, MLP
   ``Linear(D, r·D) → GELU → Linear(r·D, D)`` (eqs. 2-3), multi-head self-attention with
   ``heads`` heads (:func:`torch.nn.functional.scaled_dot_product_attention`);
4. a final LayerNorm of the class token (eq. 4) → head: the class token's ``D`` features
   (plus, by default, the ``2C`` amplitude features of the input,
   :func:`engine.nn.heads.amplitude_features`) → :class:`~engine.nn.heads.GaussianHead`
   (``(B, 2 * n_params)`` means and log-stds, regression) or :class:`~engine.nn.heads.LogitsHead`
   (``(B, n_params)`` class logits, ``head="logits"``).

The embedding dimension is ``D = 4 · width`` (``width`` is the common size knob of the model
registry: 16 gives D = 64, 48 gives ViT-Tiny's D = 192). Weights start as in the reference
implementation: truncated normal (std 0.02) for linear layers and the class token, zero biases,
unit LayerNorms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.nn.blocks import check_model_args
from engine.nn.heads import amplitude_features, head_outputs, make_head

__all__ = ["PatchEmbedding", "TransformerBlock", "ViT", "sincos_position_embedding", "vit_small"]


def sincos_position_embedding(
    rows: int, cols: int, dim: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings of a ``rows × cols`` grid of patches.

    The first ``dim/2`` features encode the row, the last ``dim/2`` the column, each as
    ``[sin(p ω_k), cos(p ω_k)]`` with ``ω_k = 10000^(−k/(dim/4))``, ``k = 0 … dim/4 − 1`` (the
    1-D transformer embedding of Vaswani et al. 2017 per axis; Beyer et al. 2022; MAE).

    Parameters
    ----------
    rows, cols : int
        Grid of patches (≥ 1).
    dim : int
        Embedding dimension, a multiple of 4.
    device, dtype
        Of the result.

    Returns
    -------
    torch.Tensor (rows·cols, dim)
        Row-major over the grid (the order of ``x.flatten(2)`` of a ``(B, D, rows, cols)``
        tensor), values in [−1, 1].

    Raises
    ------
    ValueError
        ``dim`` not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the embedding dimension {dim} must be a multiple of 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(
        torch.arange(rows, device=device, dtype=torch.float64),
        torch.arange(cols, device=device, dtype=torch.float64),
        indexing="ij",
    )
    ay = y.reshape(-1, 1) * omega
    ax = x.reshape(-1, 1) * omega
    emb = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return emb.to(dtype)


class PatchEmbedding(nn.Module):
    """Patches → tokens with the class token first: ``(B, C, H, W) → (B, 1 + N, D)``,
    ``N = (H/P)·(W/P)`` (Dosovitskiy et al. 2021, eq. 1, with fixed 2-D sine-cosine position
    embeddings, :func:`sincos_position_embedding`).

    Parameters
    ----------
    in_channels : int
        Channels C of the input.
    dim : int
        Token dimension D (a multiple of 4).
    patch_size : int
        Side P of the square patches, pixels.

    Raises
    ------
    ValueError
        In :meth:`forward`, an input whose height or width is not a multiple of P.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(in_channels, dim, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, 1 + (H/P)(W/P), D)`` tokens, the class token first."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"maps of {h}x{w} pixels do not split into {p}x{p} patches: the ViT needs a "
                f"side that is a multiple of patch_size={p}"
            )
        tokens = self.proj(x)  # (B, D, H/P, W/P)
        b, d, rows, cols = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D)
        pos = sincos_position_embedding(rows, cols, d, tokens.device, tokens.dtype)
        cls = self.cls_token.to(tokens.dtype).expand(b, -1, -1)
        return torch.cat([cls, tokens + pos], dim=1)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block (Dosovitskiy et al. 2021, eqs. 2-3):
    ``x ← x + MSA(LN(x))``, ``x ← x + MLP(LN(x))``; ``(B, T, D) → (B, T, D)``, same dtype.

    Parameters
    ----------
    dim : int
        Token dimension D.
    heads : int
        Attention heads (D must be a multiple of it).
    mlp_ratio : float
        Hidden width of the MLP over D.
    dropout : float
        Dropout of the attention weights and after each residual branch (0: none).

    Raises
    ------
    ValueError
        ``dim`` not a multiple of ``heads``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must divide the embedding dimension {dim}")
        self.heads = heads
        self.dropout = float(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(mlp_ratio * dim)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(self.dropout)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention ``(B, T, D) → (B, T, D)`` (scaled dot product)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, T, D/heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` tokens → ``(B, T, D)``."""
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Small Vision Transformer (module docstring): ``(B, C, H, W) float32`` →
    ``(B, 2 * n_params)`` means and log-stds, or ``(B, n_params)`` logits (``head="logits"``).

    Parameters
    ----------
    in_channels : int
        Channels C of the input maps.
    n_params : int
        Inferred parameters (gaussian head) or classes (logits head).
    width : int
        Size knob of the model registry: token dimension D = 4·width.
    circular_padding : bool
        Accepted for the registry's common interface; the ViT has no padding (its patches do
        not overlap), so it changes nothing.
    patch_size : int
        Side P of the patches, pixels; H and W must be multiples of it.
    depth : int
        Transformer blocks.
    heads : int
        Attention heads per block (must divide D).
    mlp_ratio : float
        MLP hidden width over D.
    dropout : float
        Dropout in the blocks (0: none).
    hidden : int
        Hidden width of the output head.
    amplitude_features : bool
        Also feed per-channel mean and log-std of the input to the head.
    head : {"gaussian", "logits"}
        Output head (:func:`engine.nn.heads.make_head`).

    Raises
    ------
    ValueError
        Non-positive ``in_channels``/``n_params``/``width``, ``patch_size`` or ``depth`` < 1,
        ``heads`` not dividing D, unknown ``head``; in forward, maps whose side is not a multiple
        of ``patch_size``.

    Notes
    -----
    About 0.31 M parameters at width 16 with the defaults (depth 6, D = 64), 2.7 M at width 48
    (D = 192, ViT-Tiny's width; depth 6, half of ViT-Tiny's 12 blocks). Attention costs
    O(T²) in the number of tokens T = 1 + HW/P².
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_params: int = 2,
        width: int = 16,
        circular_padding: bool = True,
        patch_size: int = 8,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        hidden: int = 128,
        amplitude_features: bool = True,
        head: str = "gaussian",
    ):
        super().__init__()
        check_model_args(in_channels, n_params, width)
        head_outputs(head, n_params)
        if int(patch_size) < 1 or int(depth) < 1:
            raise ValueError(f"patch_size={patch_size} and depth={depth} must be >= 1")
        dim = 4 * int(width)
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must divide the token dimension 4*width={dim}")
        self.n_params = n_params
        self.amplitude_features = amplitude_features
        #: Pixels per token along each axis (the network's "stride").
        self.total_stride = int(patch_size)
        #: Smallest map side (pixels) the model accepts (and sides must be multiples of it).
        self.min_size = int(patch_size)
        self.embed = PatchEmbedding(in_channels, dim, int(patch_size))
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(int(depth))]
        )
        self.norm = nn.LayerNorm(dim)
        n_features = dim + (2 * in_channels if amplitude_features else 0)
        self.head = make_head(head, n_features, n_params, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds
        (``head="logits"``: ``(B, n_params)`` logits)."""
        tokens = self.blocks(self.embed(x))
        h = self.norm(tokens[:, 0])
        if self.amplitude_features:
            h = torch.cat([h, amplitude_features(x).to(h.dtype)], dim=1)
        return self.head(h)


def vit_small(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    patch_size: int = 8,
    depth: int = 6,
    heads: int = 4,
    dropout: float = 0.0,
    hidden: int = 128,
    amplitude_features: bool = True,
    head: str = "gaussian",
) -> ViT:
    """The registry's ``vit_small``: a small :class:`ViT` (D = 4·width, ``depth`` blocks, MLP ratio 4).

    Parameters
    ----------
    in_channels, n_params, width, circular_padding, patch_size, depth, heads, dropout, hidden,
    amplitude_features, head
        As for :class:`ViT`.

    Returns
    -------
    ViT

    Raises
    ------
    ValueError
        As :class:`ViT`.
    """
    return ViT(
        in_channels=in_channels,
        n_params=n_params,
        width=width,
        circular_padding=circular_padding,
        patch_size=patch_size,
        depth=depth,
        heads=heads,
        dropout=dropout,
        hidden=hidden,
        amplitude_features=amplitude_features,
        head=head,
    )
