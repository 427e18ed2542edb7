"""The shape-grouped generator: context ``c [B, d_ctx]`` -> an (A, B) pair per target.

Every target gets an embedding from its layer index and its module kind. A shared
trunk mixes the context with each target embedding into ``h [B, N, H]``; one head
per shape group ``(D, O)`` then emits A and B for all of that group's targets in
one batched matmul. Heads are the only part that grows with the student's width,
so a ``head_rank`` factorises each head's weight ``[H, D·R]`` into
``[H, k] @ [k, D·R]`` when ``R·(D + O)`` is large.

Initialisation: the B side of every head starts at exactly zero, so ΔW = 0 for
every prompt and the untrained student is the base model; the A side starts at
a PEFT-like random scale, so as soon as B moves, x·A carries signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Target, group_by_shape

__all__ = ["GeneratorConfig", "ShapeGroupedLoRAGenerator"]


@dataclass
class GeneratorConfig:
    d_emb: int = 64  # layer and module-kind embedding width
    d_hidden: int = 256  # trunk width H
    head_rank: int | None = None  # None: full heads; k: [H, k] @ [k, D·R] factorised heads

    def __post_init__(self) -> None:
        for name in ("d_emb", "d_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"generator.{name} must be positive, got {getattr(self, name)!r}.")
        if self.head_rank is not None and self.head_rank < 1:
            raise ValueError(f"generator.head_rank must be positive or null, got {self.head_rank!r}.")


class _Head(nn.Module):
    """``h [B, N, H]`` -> ``[B, N, width]``, optionally through a rank-k bottleneck."""

    def __init__(self, d_hidden: int, width: int, rank: int | None) -> None:
        super().__init__()
        self.down = nn.Linear(d_hidden, rank, bias=False) if rank else None
        self.up = nn.Linear(rank or d_hidden, width)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(self.down(h) if self.down is not None else h)


class _GroupHead(nn.Module):
    """Emits A ``[B, n, D, R]`` and B ``[B, n, R, O]`` for the n targets of one shape."""

    def __init__(self, d_in: int, d_out: int, spec: LoRASpec, config: GeneratorConfig) -> None:
        super().__init__()
        self.d_in, self.d_out, self.rank = d_in, d_out, spec.rank
        self.a = _Head(config.d_hidden, d_in * spec.rank, config.head_rank)
        self.b = _Head(config.d_hidden, spec.rank * d_out, config.head_rank)
        bound = 1.0 / math.sqrt(d_in)
        with torch.no_grad():
            # The bias gives every target a full-rank A from step 0 (PEFT draws A
            # uniformly at this scale); the weight adds prompt- and target-dependent
            # variation of the same order.
            nn.init.uniform_(self.a.up.bias, -bound, bound)
            nn.init.normal_(self.a.up.weight, std=bound / math.sqrt(self.a.up.in_features))
            nn.init.zeros_(self.b.up.weight)
            nn.init.zeros_(self.b.up.bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h [B, n, H]`` -> A ``[B, n, D, R]``, B ``[B, n, R, O]``."""
        # The heads' flat outputs are row-major (D, R) and (R, O) blocks: views, no copy.
        A = rearrange(self.a(h), "b n (d r) -> b n d r", d=self.d_in, r=self.rank)
        B = rearrange(self.b(h), "b n (r o) -> b n r o", r=self.rank, o=self.d_out)
        return A, B


class ShapeGroupedLoRAGenerator(nn.Module):
    """``forward(c [B, d_ctx]) -> {target name: (A [B, D, R], B [B, R, O])}``."""

    def __init__(self, targets: list[Target], spec: LoRASpec, d_ctx: int, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        config = config or GeneratorConfig()
        if not targets:
            raise ValueError("The generator needs at least one target.")
        self.spec, self.config = spec, config
        self.names = [t.name for t in targets]
        groups = group_by_shape(targets)
        self.group_keys = list(groups)
        kinds = list(dict.fromkeys(t.kind for t in targets))
        n_layers = max(t.layer for t in targets) + 2  # +1 for index -1 (a target outside any layer)

        # Which targets each group holds, as rows of the trunk output (fixed buffers).
        position = {t.name: i for i, t in enumerate(targets)}
        self.group_names = [[t.name for t in members] for members in groups.values()]
        for g, members in enumerate(groups.values()):
            self.register_buffer(f"_rows_{g}", torch.tensor([position[t.name] for t in members]), persistent=False)
        self.register_buffer("_layer_ids", torch.tensor([t.layer + 1 for t in targets]), persistent=False)
        self.register_buffer("_kind_ids", torch.tensor([kinds.index(t.kind) for t in targets]), persistent=False)

        self.layer_emb = nn.Embedding(n_layers, config.d_emb)
        self.kind_emb = nn.Embedding(len(kinds), config.d_emb)
        # Concatenating [c, e_layer, e_kind] into one Linear equals summing three
        # Linears; the context part is computed once per prompt, not once per target.
        self.from_ctx = nn.Linear(d_ctx, config.d_hidden)
        self.from_target = nn.Linear(2 * config.d_emb, config.d_hidden, bias=False)
        self.trunk = nn.Sequential(
            nn.SiLU(), nn.Linear(config.d_hidden, config.d_hidden), nn.SiLU(), nn.LayerNorm(config.d_hidden)
        )
        self.heads = nn.ModuleList(_GroupHead(d_in, d_out, spec, config) for d_in, d_out in self.group_keys)

    def forward(self, c: Tensor) -> AdapterBatch:
        """``c [B, d_ctx]`` -> ``{name: (A [B, D, R], B [B, R, O])}`` (views into group tensors)."""
        targets = torch.cat([self.layer_emb(self._layer_ids), self.kind_emb(self._kind_ids)], dim=-1)  # [N, 2E]
        h = self.from_ctx(c).unsqueeze(1) + self.from_target(targets).unsqueeze(0)  # [B, N, H]
        h = self.trunk(h)
        by_name: AdapterBatch = {}
        for g, head in enumerate(self.heads):
            A, B = head(h.index_select(1, getattr(self, f"_rows_{g}")))  # [B, n, D, R], [B, n, R, O]
            for j, name in enumerate(self.group_names[g]):
                by_name[name] = (A[:, j], B[:, j])
        return {name: by_name[name] for name in self.names}  # the student's module order

    def parameter_report(self) -> dict[str, int]:
        """Trainable parameters of the trunk and of each group's head, keyed ``"D x O (n targets)"``."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        report = {"trunk": count(self) - sum(count(h) for h in self.heads)}
        for (d_in, d_out), names, head in zip(self.group_keys, self.group_names, self.heads):
            report[f"head {d_in}x{d_out} ({len(names)} targets)"] = count(head)
        return report
