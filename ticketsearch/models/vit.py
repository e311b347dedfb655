"""``vit_mnist``: a small vision transformer whose every weight matrix is a masked Linear.

Why a transformer of our own rather than ``nn.MultiheadAttention`` or timm: pruning methods act on masked
Linear/Conv2d layers, and ``nn.MultiheadAttention`` keeps its query/key/value weights in one raw
``in_proj_weight`` Parameter that no method would see. Here the query/key/value projection (``qkv``), the
attention's output projection (``proj``), both MLP layers, the patch embedding and the head are each a
:class:`~ticketsearch.sparse.MaskedLinear`, so SNIP, GraSP, SynFlow, IMP, GMP, RigL and the supermasks prune
attention and MLP alike, under the same selection rule as every other model.

What is prunable (``prunable_parameters``): the weights of ``patch_embed``, ``blocks.<i>.attn.qkv``,
``blocks.<i>.attn.proj``, ``blocks.<i>.mlp.fc1``, ``blocks.<i>.mlp.fc2`` and the head ``fc`` (the output
layer, which keeps its own rate where a method has one). Not prunable, as with BatchNorm in the conv nets:
biases, LayerNorm weights, the class token and the learned position embeddings (a handful of vectors whose
removal would not make the network sparser, only broken).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..sparse.layers import MaskedLinear
from .registry import check_input_shape, register_model, shape_error

__all__ = ["ViT", "Attention", "Block", "vit_mnist", "GRID"]

GRID = 4  # by default an image is cut into a GRID × GRID grid of patches (16 tokens + the class token)


class Attention(nn.Module):
    """Multi-head self-attention with a masked ``qkv`` (dim → 3·dim) and output ``proj`` (dim → dim).

    Written out (``softmax(q kᵀ / √d) v``) rather than ``F.scaled_dot_product_attention``: GraSP takes a
    Hessian-gradient product (a second derivative through attention) and SynFlow scores in float64, which
    the plain ops support on every device; at 17 tokens the fused kernel would not be faster anyway.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = MaskedLinear(dim, 3 * dim)
        self.proj = MaskedLinear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class MLPBlock(nn.Module):
    """``fc1`` (dim → hidden) → GELU → ``fc2`` (hidden → dim), both masked."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = MaskedLinear(dim, hidden)
        self.fc2 = MaskedLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer (Dosovitskiy et al. 2021) small enough to train on two CPU cores.

    The (C, H, W) image is cut into non-overlapping ``ph × pw`` patches (default: a 4×4 grid, so a 28×28
    MNIST digit gives 16 patches of 7×7 pixels); each patch, flattened channel-major (C, ph, pw) as a
    Conv2d of stride ``patch`` would see it, goes through the masked Linear ``patch_embed``; a learned class
    token is prepended and learned position embeddings added; then ``depth`` pre-norm blocks
    (:class:`Block`), a final LayerNorm ``norm`` and the head ``fc`` on the class token.

    Module names: ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.<i>.{norm1, attn.qkv, attn.proj,
    norm2, mlp.fc1, mlp.fc2}``, ``norm``, output ``fc``. Initialised as common ViT code does: every Linear
    weight normal with std 0.02 truncated at ±2 std, biases zero, LayerNorm weight 1 and bias 0, class token
    and position embeddings likewise truncated normal. ``create_model`` then applies its ``init`` to the Linear
    layers as for every model (default ``kaiming_normal``); ``init="default"`` keeps the ViT init.
    """

    output_layer = "fc"
    default_dataset = "mnist"
    input_shapes = f"(C, H, W) with H, W multiples of {GRID} (a {GRID}x{GRID} grid of patches) or of patch"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: int = 2,
        patch: int = 0,
        name: str = "vit",
    ) -> None:
        super().__init__()
        shape = check_input_shape(name, input_shape)
        for key, value in (("dim", dim), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model '{name}': {key} must be a positive int, got {value!r}")
        if dim % heads:
            raise ConfigError(f"model '{name}': dim {dim} is not divisible by heads {heads}")
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 0:
            raise ConfigError(f"model '{name}': patch must be a whole number (0: a {GRID}x{GRID} grid)")
        if len(shape) != 3:
            raise shape_error(name, shape, self.input_shapes)
        c, h, w = shape
        if patch:
            if h % patch or w % patch:
                raise shape_error(name, shape, f"(C, H, W) with H, W multiples of patch {patch}")
            ph = pw = patch
        else:
            if h % GRID or w % GRID:
                raise shape_error(name, shape, self.input_shapes)
            ph, pw = h // GRID, w // GRID
        self.input_shape = shape
        self.num_classes = num_classes
        self.patch = (ph, pw)
        self.grid = (h // ph, w // pw)
        tokens = self.grid[0] * self.grid[1]
        self.patch_embed = MaskedLinear(c * ph * pw, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.fc = MaskedLinear(dim, num_classes)  # registered last: the output layer is the last Linear
        self._vit_init()

    @torch.no_grad()
    def _vit_init(self) -> None:
        """ViT init, in module order (deterministic under ``torch.manual_seed``): normal(0, 0.02) truncated at
        two standard deviations, as JAX's ``truncated_normal`` (timm's call passes absolute bounds ±2, which
        for std 0.02 truncates nothing)."""
        for t in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, tokens, C·ph·pw), row-major over the grid, each patch flattened (C, ph, pw)."""
        b, c = x.shape[:2]
        (gh, gw), (ph, pw) = self.grid, self.patch
        x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, gh * gw, c * ph * pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patchify(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.fc(self.norm(x)[:, 0])


@register_model(
    "vit_mnist",
    description="small ViT: 4x4 grid of patches, dim 64, 3 pre-norm blocks, 4 heads; 105k params on MNIST",
    input_shapes=ViT.input_shapes,
    example_input_shape=(1, 28, 28),
    default_dataset="mnist",
    paper="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (arXiv:2010.11929)",
    # its own init (truncated-normal Linears, zero biases, unit LayerNorms) trained better than the
    # project's Kaiming normal at the same recipe (hand-run, seed 0; no committed record yet)
    default_init="default",
)
def vit_mnist(
    input_shape: tuple[int, ...],
    num_classes: int,
    dim: int = 64,
    depth: int = 3,
    heads: int = 4,
    mlp_ratio: int = 2,
    patch: int = 0,
) -> ViT:
    """A small vision transformer: patch embedding, class token, 3 pre-norm blocks (4 heads, MLP ×2), head.

    On (1, 28, 28) with 10 classes: 16 patches of 7×7 pixels, 105,546 parameters, 102,080 of them
    prunable (counted by hand in tests/test_vit.py).
    Works on any (C, H, W) with H and W multiples of 4 (digits 8×8: 2×2 patches; CIFAR 32×32: 8×8), or of
    ``patch`` when given.
    """
    return ViT(
        input_shape,
        num_classes,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        patch=patch,
        name="vit_mnist",
    )
