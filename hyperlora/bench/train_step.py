"""One hyperlora distillation step against one PEFT LoRA fine-tuning step of the same student.

Both on the shared student, same batch of synthetic records (char tokenizer,
every row exactly ``train_tokens`` long for the student, ``train_prompt`` longer
for the teacher, so no padding), same rank and targets (q, k, v, o), AdamW, grad
clipping at 1.0, bf16 autocast on CUDA as the trainer does. Each step collates
its batch from records (tokenising), as the trainer does.

* ``peft_lora_step`` (baseline): PEFT LoRA on the student, forward on
  ``[train_batch, train_tokens]``, cross-entropy on the response tokens, backward
  into A and B, AdamW.
* ``hyperlora_step``: ``hyperlora.trainer.Trainer.train_step`` as is (so its
  speedups show here): the teacher (the student with the prompt in context)
  forward without grad, the hypernetwork turns the prompts into adapters, the
  student forward/backward with them injected, KL at the response tokens,
  backward through the generator and encoder, AdamW.

Peak memory of each (CUDA only; ``None`` on CPU) includes the one resident copy
of the student: PEFT wraps it in place and is unloaded afterwards.
"""

from __future__ import annotations

import random
import string
import tempfile
from contextlib import nullcontext
from typing import Any

import torch

from hyperlora.batches import BatchStream
from hyperlora.bench.common import BenchContext, BenchSize
from hyperlora.bench.timing import figures, free_cached_memory, peak_memory_mib, reset_peak_memory, sync, time_ms
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.collate import DistillCollator
from hyperlora.data.records import Record
from hyperlora.distill import cross_entropy_loss
from hyperlora.generator import GeneratorConfig
from hyperlora.model import HyperLoRA
from hyperlora.targets import find_targets
from hyperlora.toy.reference import wrap_lora
from hyperlora.toy.tokenizer import char_tokenizer
from hyperlora.trainer import Trainer, TrainerConfig

__all__ = ["run", "synthetic_records"]

# A batch is drawn from this many batches' worth of records (steps see different rows).
BATCHES = 4
GRAD_CLIP = 1.0
LR = 1e-4


def _text(rng: random.Random, length: int) -> str:
    """Lower-case words and spaces, exactly ``length`` characters (= tokens of the char tokenizer)."""
    chars = [rng.choice(string.ascii_lowercase) if i % 6 else " " for i in range(1, length + 1)]
    return "".join(chars)


def synthetic_records(n: int, size: BenchSize, seed: int = 0) -> list[Record]:
    """``n`` records whose student sequence is ``size.train_tokens`` char-tokenizer tokens.

    With the chat template the student reads ``<|user|> input \\n <|assistant|> output </s>``
    (input + output + 4 tokens); the teacher also reads ``prompt \\n\\n``.
    """
    if size.train_tokens < 8 or size.train_prompt < 8:
        raise ValueError(f"train_tokens {size.train_tokens} / train_prompt {size.train_prompt} are too short.")
    rng = random.Random(seed)
    input_len = size.train_tokens // 2 - 2
    output_len = size.train_tokens - 4 - input_len
    return [Record("Do " + _text(rng, size.train_prompt - 6) + ".", _text(rng, input_len), _text(rng, output_len))
            for _ in range(n)]


def run(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    tokenizer = char_tokenizer(model_max_length=size.train_tokens + size.train_prompt + 16)
    records = synthetic_records(BATCHES * size.train_batch, size)
    first = DistillCollator(tokenizer, tokenizer.model_max_length)(records[: size.train_batch])
    results = {"peft_lora_step": _peft_step(ctx, tokenizer, records),
               "hyperlora_step": _hyperlora_step(ctx, tokenizer, records)}
    return {
        "shape": {"batch": size.train_batch, "student_tokens": first["student_input_ids"].shape[1],
                  "teacher_tokens": first["teacher_input_ids"].shape[1], "rank": ctx.rank,
                  "targets": len(find_targets(ctx.model()))},
        **figures({k: ms for k, (ms, _, _) in results.items()}, {"hyperlora_step": "peft_lora_step"}),
        "peak_memory_mib": {k: peak for k, (_, peak, _) in results.items()},
        "trainable_parameters": {k: n for k, (_, _, n) in results.items()},
    }


def _timing(ctx: BenchContext) -> dict[str, Any]:
    return {"device": ctx.device, "warmup": min(3, ctx.iters), "iters": ctx.iters, "repeats": 3}


def _peft_step(ctx: BenchContext, tokenizer: Any, records: list[Record]) -> tuple[float, float | None, int]:
    """(ms per step, peak MiB or None, trainable parameters) of PEFT LoRA fine-tuning."""
    student, device = ctx.model(), ctx.device
    collator = DistillCollator(tokenizer, tokenizer.model_max_length)
    stream = BatchStream(records, ctx.size.train_batch, seed=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    peft = wrap_lora(student, find_targets(student), ctx.spec)  # in place: one copy of the student in memory
    try:
        peft.train()
        params = [p for p in peft.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)

        def step() -> None:
            batch = collator(stream.next())
            ids, attention = batch["student_input_ids"].to(device), batch["student_attention_mask"].to(device)
            with autocast:
                logits = peft(input_ids=ids, attention_mask=attention, use_cache=False).logits
                loss = cross_entropy_loss(logits[batch["student_loss_mask"].to(device)], batch["labels"].to(device))
            loss.backward()
            loss.item()  # the trainer reads its loss every step too
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        sync(device)
        reset_peak_memory(device)
        ms = time_ms(step, **_timing(ctx))
        return ms, peak_memory_mib(device), sum(p.numel() for p in params)
    finally:
        peft.unload()  # the student's own modules back in place: later sections see it untouched
        student.eval()
        if any("lora" in name for name, _ in student.named_modules()):
            raise RuntimeError("PEFT left LoRA modules in the shared student.")
        free_cached_memory(device)


def _hyperlora_step(ctx: BenchContext, tokenizer: Any, records: list[Record]) -> tuple[float, float | None, int]:
    """(ms per step, peak MiB or None, trainable parameters) of ``Trainer.train_step``."""
    student, device, size = ctx.model(), ctx.device, ctx.size
    config = HyperLoRAConfig(lora=ctx.spec, generator=GeneratorConfig(head_rank=ctx.head_rank))
    hyper = HyperLoRA(student, tokenizer, config)
    try:
        with tempfile.TemporaryDirectory(prefix="hyperlora-bench-") as out_dir:  # the trainer writes nothing here
            trainer_config = TrainerConfig(out_dir=out_dir, max_steps=10**9, batch_size=size.train_batch, lr=LR,
                                           warmup_steps=0, grad_clip=GRAD_CLIP, eval_every=0, save_every=0,
                                           progress=False)
            trainer = Trainer(hyper, records, trainer_config, max_length=tokenizer.model_max_length)
            sync(device)
            reset_peak_memory(device)
            ms = time_ms(trainer.train_step, **_timing(ctx))
            return ms, peak_memory_mib(device), hyper.parameter_counts()["trainable"]
    finally:
        student.eval()
        free_cached_memory(device)

