"""The teacher that really uses its prompt: a small Llama trained from scratch on the built-in suite.

Context distillation needs a teacher whose behaviour depends on the instruction in
its context; a random or generic model would give the hypernetwork nothing to
learn. ``pretrain_teacher`` trains one on ``build_split("train")`` in exactly the
format the distillation batches use (``prefix_ids(prompt, input) ⊕ response_ids``,
loss on the response only), then saves it as an ordinary Hugging Face folder with
a ``teacher_report.json`` of greedy exact-match accuracy on every split, and on
``train_unseen_inputs`` without the prompt (what the prompt is worth).

Axis letters: B batch (rows), T tokens, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hyperlora.schedule import warmup_cosine
from hyperlora.atomic import atomic_directory, check_replaceable
from hyperlora.data.format import prefix_ids, prefix_text
from hyperlora.toy.tasks import MAX_OUTPUT_CHARS, SPLITS, Example, build_split
from hyperlora.decoding import greedy_decode
from hyperlora.ownership import TEACHER_MARK, is_teacher_folder
from hyperlora.toy.tokenizer import char_tokenizer

__all__ = [
    "TeacherPreset",
    "PRESETS",
    "REPORT_NAME",
    "get_preset",
    "build_teacher",
    "encode_examples",
    "make_batch",
    "evaluate_teacher",
    "pretrain_teacher",
]

REPORT_NAME = TEACHER_MARK  # teacher_report.json: also what marks a folder as a teacher written here
_WHAT = "teacher folder"  # how a refusal names what it expected
IGNORE_INDEX = -100  # the label Hugging Face's causal-LM loss skips


@dataclass(frozen=True, kw_only=True)
class TeacherPreset:
    """Model size and training recipe of a from-scratch teacher; validated on construction."""

    # model
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tie_embeddings: bool = False  # share the input embedding with the output head (slowed learning here)
    init_std: float = 0.02  # std of the normal init of every linear and embedding weight
    # training
    steps: int
    batch_size: int
    lr: float
    warmup: int
    n_train: int
    seed: int = 0
    max_length: int = 320  # longest suite sequence is ~245 tokens; RoPE needs no more
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio, not to 0
    grad_clip: float = 1.0
    # evaluation
    eval_examples: int = 200  # per split
    eval_batch_size: int = 200

    def __post_init__(self) -> None:
        positive = ("hidden", "layers", "heads", "kv_heads", "intermediate", "steps", "batch_size", "n_train",
                    "max_length", "eval_examples", "eval_batch_size")
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) <= 0]
        if bad:
            raise ValueError(f"TeacherPreset fields must be positive: {', '.join(bad)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not divisible by kv_heads={self.kv_heads}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup={self.warmup} must lie in [0, steps={self.steps}]")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, "
                             f"min_lr_ratio={self.min_lr_ratio}")

    def replace(self, **changes: Any) -> TeacherPreset:
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TeacherPreset] = {
    # ~3.5-4 minutes on 2 CPU cores, evaluation included (~31% exact match on train_unseen_inputs).
    # The loss sits on a plateau until the model learns to copy from its input (~step 350 here),
    # so at a fixed CPU budget more steps of a narrower model win: width 96 beat 128 at equal time
    # (~17% vs ~8% after 750 vs 500 steps). init_std 0.05 (about 1/sqrt(hidden)) shortens the
    # plateau; 0.02 roughly halved accuracy.
    "cpu": TeacherPreset(hidden=96, layers=4, heads=4, kv_heads=2, intermediate=256, init_std=0.05,
                         steps=900, batch_size=64, lr=3e-3, warmup=100, n_train=28_000, eval_examples=200),
    # ~5.5 minutes on one H100 (bf16 autocast, ~50 ms a step), evaluation included. 4000 steps on
    # 250k examples gave 94.6-95.2% exact match on train_unseen_inputs (two seeds); more distinct
    # examples (~8 passes) narrow the gap between train and unseen-input accuracy, so 5000 on 320k.
    "gpu": TeacherPreset(hidden=384, layers=6, heads=6, kv_heads=2, intermediate=1024, init_std=0.03,
                         steps=5000, batch_size=512, lr=2e-3, warmup=250, n_train=320_000,
                         eval_examples=500, eval_batch_size=500),
}


def get_preset(name: str) -> TeacherPreset:
    """``PRESETS[name]``, with an error that lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown teacher preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def build_teacher(preset: TeacherPreset, tokenizer: Any = None) -> LlamaForCausalLM:
    """A freshly initialised (seeded) Llama sized by ``preset`` for the char tokenizer.

    Query heads share key/value heads (GQA) when ``kv_heads < heads``, as in real
    checkpoints, so the student built on this teacher has k/v projections narrower
    than q/o.
    """
    tok = tokenizer if tokenizer is not None else char_tokenizer()
    config = LlamaConfig(
        vocab_size=-(-len(tok) // 8) * 8,  # a multiple of 8 keeps the output matmul aligned
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        max_position_embeddings=preset.max_length,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=preset.tie_embeddings,
        initializer_range=preset.init_std,
    )
    torch.manual_seed(preset.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


# --- data ---------------------------------------------------------------------------------


def encode_examples(tokenizer: Any, examples: Sequence[Example],
                    with_prompt: bool = True) -> list[tuple[list[int], int]]:
    """``(ids, prefix length)`` per example: ``prefix_ids(prompt, input) ⊕ response_ids(output)``.

    Exactly the teacher's format of ``hyperlora.data.format``, tokenised in one batched
    call (several times faster than one ``prefix_ids`` call per example on 10^5 examples).
    ``with_prompt=False`` leaves the instruction out (the student's format), for the no-prompt baseline.
    """
    prefixes = [prefix_text(tokenizer, e.prompt if with_prompt else None, e.input) for e in examples]
    prefix_rows = tokenizer(prefixes, add_special_tokens=False)["input_ids"] if examples else []
    response_rows = tokenizer([e.output for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []  # as response_ids does
    return [(list(p) + list(r) + eos, len(p)) for p, r in zip(prefix_rows, response_rows)]


def make_batch(rows: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]``.

    ``labels`` equal ``input_ids`` on response tokens and ``IGNORE_INDEX`` elsewhere
    (prompt, input, template, padding); the model shifts them itself, so position t
    is trained to predict the response token at t+1.
    """
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, n_prefix) in enumerate(rows):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = row
        attention_mask[i, : len(ids)] = 1
        labels[i, n_prefix : len(ids)] = row[n_prefix:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _batch_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices: each epoch shuffled, rows of similar length batched together.

    Sorting within pools of 50 batches cuts padding to a few percent while the
    pools themselves stay random, so batches still mix tasks.
    """
    pool = batch_size * 50
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _optimizer(model: torch.nn.Module, preset: TeacherPreset, device: torch.device) -> torch.optim.Optimizer:
    # Norm gains stay undecayed: pulling them to 0 only fights the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": preset.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=preset.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# --- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def _accuracy(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], batch_size: int,
              with_prompt: bool = True) -> tuple[float, dict[str, float]]:
    """Greedy exact match over ``examples``, overall and by family (compositions pooled)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prefixes = [prefix_ids(tokenizer, e.prompt if with_prompt else None, e.input) for e in chunk]
        # +1 for EOS: the longest output is MAX_OUTPUT_CHARS characters, one token each.
        texts = greedy_decode(model, tokenizer, prefixes, max_new_tokens=MAX_OUTPUT_CHARS + 1)
        for text, e in zip(texts, chunk):
            hits["composition" if "+" in e.family else e.family].append(text == e.output.strip())
    total = [h for family in hits.values() for h in family]
    by_family = {name: round(sum(h) / len(h), 4) for name, h in sorted(hits.items())}
    return sum(total) / max(1, len(total)), by_family


@torch.no_grad()
def _response_loss(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], batch_size: int,
                   with_prompt: bool = True) -> float:
    """Mean cross-entropy per response token under teacher forcing (nats)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        rows = encode_examples(tokenizer, chunk, with_prompt)
        batch = make_batch(rows, tokenizer.pad_token_id)
        n = sum(len(ids) - n_prefix for ids, n_prefix in rows)
        loss = model(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device), use_cache=False).loss
        total += loss.float().item() * n
        tokens += n
    return total / max(1, tokens)


def evaluate_teacher(model: torch.nn.Module, tokenizer: Any, n: int, seed: int = 0, batch_size: int = 200,
                     device: torch.device | None = None) -> dict[str, Any]:
    """Greedy exact match on ``n`` examples of every split, and on ``train_unseen_inputs`` without the prompt.

    ``seed`` should be the training seed: ``train_unseen_inputs`` then repeats the
    training instructions one for one, on inputs training never saw.
    """
    device = device if device is not None else next(model.parameters()).device
    model.eval()
    accuracy, by_family = {}, {}
    with _autocast(device):
        for split in SPLITS:
            acc, by_family[split] = _accuracy(model, tokenizer, build_split(split, n, seed), batch_size)
            accuracy[split] = round(acc, 4)
        # Same model, same inputs, no instruction: a teacher that reads its prompt falls far here.
        unseen = build_split("train_unseen_inputs", n, seed)  # rebuilding is cheap and deterministic
        no_prompt, _ = _accuracy(model, tokenizer, unseen, batch_size, with_prompt=False)
        # Teacher-forced loss separates the two even where exact match is still near 0.
        loss = {"with_prompt": round(_response_loss(model, tokenizer, unseen, batch_size), 4),
                "no_prompt": round(_response_loss(model, tokenizer, unseen, batch_size, with_prompt=False), 4)}
    return {
        "exact_match": accuracy,
        "exact_match_no_prompt": {"train_unseen_inputs": round(no_prompt, 4)},
        "response_loss": {"train_unseen_inputs": loss},
        "train_unseen_inputs_by_family": by_family["train_unseen_inputs"],
        "eval_examples": n,
    }


# --- training -----------------------------------------------------------------------------


def _train(model: torch.nn.Module, rows: list[tuple[list[int], int]], preset: TeacherPreset, device: torch.device,
           pad_id: int, log: Callable[[str], None]) -> list[dict[str, float]]:
    """Run ``preset.steps`` AdamW steps; returns the logged ``{"step", "loss", "lr"}`` entries."""
    optimizer = _optimizer(model, preset, device)
    factor = warmup_cosine(preset.warmup, preset.steps, preset.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    lengths = [len(ids) for ids, _ in rows]
    batches = _batch_order(lengths, preset.batch_size, random.Random(preset.seed))
    # Pad every row once and keep the table on the device: a step is then two gathers, not
    # hundreds of small host tensors (building batches on the host bottlenecked the GPU run).
    table = make_batch(rows, pad_id)
    all_ids, all_labels = table["input_ids"].to(device), table["labels"].to(device)
    every = max(1, preset.steps // 10)
    running, count, history, start = torch.zeros((), device=device), 0, [], time.perf_counter()
    model.train()
    for step in range(1, preset.steps + 1):
        index = next(batches)
        width = max(lengths[i] for i in index)  # from host-side lengths: no device sync
        rows_at = torch.tensor(index, device=device)
        # Right padding under a causal mask: real tokens never attend to the pads after
        # them, so the mask can be dropped and SDPA takes its faster is_causal path.
        input_ids, labels = all_ids[rows_at, :width], all_labels[rows_at, :width]
        with _autocast(device):
            loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()  # no .item() per step: it would sync the GPU every step
        count += 1
        if step % every == 0 or step == preset.steps:
            entry = {"step": step, "loss": round(running.item() / count, 4), "lr": float(f"{lr:.4g}")}
            history.append(entry)
            log(f"step {step}/{preset.steps}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
                f"{time.perf_counter() - start:.0f}s")
            running.zero_()
            count = 0
    return history


def pretrain_teacher(preset: TeacherPreset, out_dir: str | Path, device: str | torch.device | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a teacher from scratch, evaluate it, and save model + tokenizer + report to ``out_dir`` atomically.

    ``out_dir`` is replaced only once everything is written; on any failure it is
    left as it was. Returns the report also written to ``out_dir/teacher_report.json``.
    Only a missing or empty folder, or a teacher written here before (it has that report),
    is replaced: anything else is refused before training starts.
    """
    check_replaceable(out_dir, True, is_teacher_folder, _WHAT)  # fail in a second, not after the training
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    tokenizer = char_tokenizer()
    model = build_teacher(preset, tokenizer).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"teacher: {n_params / 1e6:.2f}M parameters on {device}; {preset.steps} steps x {preset.batch_size} rows")

    # Tokenise once up front; the loop then only pads.
    rows = encode_examples(tokenizer, build_split("train", preset.n_train, preset.seed))
    too_long = max(len(ids) for ids, _ in rows)
    if too_long > preset.max_length:
        raise ValueError(f"a training sequence is {too_long} tokens, over max_length={preset.max_length}")
    log(f"data: {len(rows)} examples tokenised in {time.perf_counter() - started:.1f}s")

    train_start = time.perf_counter()
    history = _train(model, rows, preset, device, tokenizer.pad_token_id, log)
    train_seconds = time.perf_counter() - train_start

    eval_start = time.perf_counter()
    report = evaluate_teacher(model, tokenizer, preset.eval_examples, preset.seed, preset.eval_batch_size, device)
    report.update({
        "preset": dataclasses.asdict(preset),
        "parameters": n_params,
        "device": str(device),
        "loss_log": history,
        "seconds": {"train": round(train_seconds, 1), "eval": round(time.perf_counter() - eval_start, 1),
                    "total": round(time.perf_counter() - started, 1)},
    })
    with atomic_directory(out_dir, overwrite=True, replaceable=is_teacher_folder, what=_WHAT) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved to {out_dir}")
    return report
