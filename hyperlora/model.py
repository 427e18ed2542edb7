"""``HyperLoRA``: a prompt encoder and a LoRA generator bound to a frozen student.

    hyper = HyperLoRA(student, tokenizer, HyperLoRAConfig(lora=LoRASpec(8, 16)))
    out = hyper(["Reverse the words."], input_ids, attention_mask)   # adapters injected
    hyper.save_pretrained("ckpt");  HyperLoRA.from_pretrained("ckpt", student)

Only ``hyper.hypernet`` (encoder + generator) trains and is saved; the student is
frozen and recorded by path and by its target registry (names and shapes), so a
checkpoint cannot be loaded onto a student it was not made for.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hyperlora.atomic import atomic_directory
from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import PromptEncoder, build_encoder, check_prompts
from hyperlora.generator import ShapeGroupedLoRAGenerator
from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch
from hyperlora.targets import Target, find_targets

__all__ = ["HyperLoRA", "Hypernetwork", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "hyperlora_config.json"
WEIGHTS_NAME = "hypernet.safetensors"
FORMAT_VERSION = 1
AGNOSTIC_PROMPT = "Do the task."


class Hypernetwork(nn.Module):
    """Encoder + generator: ``forward(prompts) -> {name: (A [B, D, R], B [B, R, O])}``.

    The one module that trains (and that DDP wraps). ``prompt_agnostic``: every row
    reads ``AGNOSTIC_PROMPT`` instead of its own prompt (the one-LoRA baseline); it
    lives here, not in ``HyperLoRA.adapters``, because the trainer calls this module
    directly.
    """

    def __init__(self, encoder: PromptEncoder, generator: ShapeGroupedLoRAGenerator,
                 prompt_agnostic: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.prompt_agnostic = prompt_agnostic

    def forward(self, prompts: list[str]) -> AdapterBatch:
        if self.prompt_agnostic:
            prompts = [AGNOSTIC_PROMPT] * len(prompts)
        return self.generator(self.encoder(prompts))


def registry(targets: list[Target]) -> list[dict[str, Any]]:
    """The saved description of a student's targets."""
    return [{"name": t.name, "d_in": t.d_in, "d_out": t.d_out, "layer": t.layer, "kind": t.kind} for t in targets]


def registry_differences(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    """Human-readable differences between two registries (empty when they agree)."""
    old = {r["name"]: (r["d_in"], r["d_out"]) for r in saved}
    new = {r["name"]: (r["d_in"], r["d_out"]) for r in current}
    diffs = [f"{n}: missing from this student" for n in old if n not in new]
    diffs += [f"{n}: not in the checkpoint" for n in new if n not in old]
    diffs += [f"{n}: shape {old[n]} in the checkpoint, {new[n]} here" for n in old if n in new and old[n] != new[n]]
    return diffs


class HyperLoRA(nn.Module):
    """The model users hold: prompts in, per-row adapters applied to the frozen student."""

    def __init__(self, student: nn.Module, tokenizer: Any = None, config: HyperLoRAConfig | None = None,
                 cache_size: int = 1024) -> None:
        super().__init__()
        config = config or HyperLoRAConfig()
        if config.base_model is None:
            config.base_model = getattr(student.config, "_name_or_path", None) or None
        self.config = config
        self.student = student.requires_grad_(False)
        self.tokenizer = tokenizer
        self.targets = find_targets(student, config.targets)
        self.spec = config.lora
        encoder = build_encoder(config.encoder, student, tokenizer)
        generator = ShapeGroupedLoRAGenerator(self.targets, self.spec, encoder.d_ctx, config.generator)
        device = next(student.parameters()).device
        self.hypernet = Hypernetwork(encoder, generator, config.prompt_agnostic).to(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, AdapterBatch] = OrderedDict()

    # -- adapters ------------------------------------------------------------
    def adapters(self, prompts: list[str]) -> AdapterBatch:
        """``{target name: (A [B, D, R], B [B, R, O])}``, one row per prompt.

        In inference (eval mode, no grad) each prompt's adapter is computed once
        and cached by its text; training always recomputes.
        """
        prompts = check_prompts(prompts)
        if self.config.prompt_agnostic:  # the hypernetwork ignores prompts then: one cache entry serves all
            prompts = [AGNOSTIC_PROMPT] * len(prompts)
        if self.training or torch.is_grad_enabled():
            return self.hypernet(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            fresh = self.hypernet(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = {n: (A[i : i + 1].clone(), B[i : i + 1].clone()) for n, (A, B) in fresh.items()}
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        rows = [self._cache[p] for p in prompts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return {n: (torch.cat([r[n][0] for r in rows]), torch.cat([r[n][1] for r in rows])) for n in rows[0]}

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> HyperLoRA:
        # Weights change in training; cached adapters would go stale.
        self.clear_cache()
        super().train(mode)
        # The frozen student never uses its own dropout. But transformers only
        # checkpoints a layer in training mode, so the checkpointed layers alone
        # (not their dropout or attention children) follow ``mode``.
        self.student.eval()
        for module in self.student.modules():
            if getattr(module, "gradient_checkpointing", False) is True:
                module.training = mode
        return self

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.clear_cache()
        return super().load_state_dict(*args, **kwargs)

    def inject(self, adapters: AdapterBatch) -> inject:
        """``with hyper.inject(adapters): hyper.student(...)``."""
        return inject(self.student, adapters, self.spec, training=self.training)

    # -- running the student -------------------------------------------------
    def forward(self, prompts: list[str], input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, **kwargs: Any) -> Any:
        """The student's output on ``input_ids [B, T]`` with row i adapted to ``prompts[i]``."""
        if len(prompts) != input_ids.shape[0]:
            raise ValueError(f"Got {len(prompts)} prompts for {input_ids.shape[0]} input rows: give one prompt per row.")
        with self.inject(self.adapters(prompts)):
            return self.student(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, prompts: list[str], inputs: list[str] | dict[str, Tensor] | Tensor, **generation_kwargs: Any) -> Tensor:
        """``student.generate`` with row i adapted to ``prompts[i]``.

        ``inputs``: strings (tokenised here, left-padded), a tokenizer's output,
        or ``input_ids [B, T]``. Beams and ``num_return_sequences`` expand rows;
        the adapters follow. Returns the generated ids ``[B·k, T + new]``.
        """
        batch = self._encode_inputs(inputs)
        if len(prompts) != batch["input_ids"].shape[0]:
            raise ValueError(f"Got {len(prompts)} prompts for {batch['input_ids'].shape[0]} inputs: give one prompt per row.")
        if self.tokenizer is not None and "pad_token_id" not in generation_kwargs:
            generation_kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        with self.inject(self.adapters(prompts)):
            return self.student.generate(**batch, **generation_kwargs)

    def _encode_inputs(self, inputs: list[str] | dict[str, Tensor] | Tensor) -> dict[str, Tensor]:
        device = next(self.student.parameters()).device
        if isinstance(inputs, Tensor):
            return {"input_ids": inputs.to(device)}
        if isinstance(inputs, (list, tuple)):
            if self.tokenizer is None:
                raise ValueError("Text inputs need a tokenizer: pass tokenizer= to HyperLoRA, or token ids.")
            # Left padding: generation continues from each row's last real token.
            inputs = self.tokenizer(list(inputs), return_tensors="pt", padding=True, padding_side="left")
        return {k: v.to(device) for k, v in dict(inputs).items() if k in ("input_ids", "attention_mask")}

    # -- bookkeeping ---------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.hypernet.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """Exact counts: trainable encoder / generator, frozen student, totals."""
        trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        counts = {
            "encoder": trainable(self.hypernet.encoder),
            "generator": trainable(self.hypernet.generator),
            "student_frozen": sum(p.numel() for p in self.student.parameters()),
            "student_trainable": trainable(self.student),
        }
        counts["trainable"] = counts["encoder"] + counts["generator"] + counts["student_trainable"]
        counts["all"] = counts["trainable"] + counts["student_frozen"] - counts["student_trainable"]
        return counts

    def print_trainable_parameters(self) -> dict[str, int]:
        counts = self.parameter_counts()
        print(
            f"trainable params: {counts['trainable']:,} (encoder {counts['encoder']:,} + generator "
            f"{counts['generator']:,}) || frozen student: {counts['student_frozen']:,} || "
            f"trainable%: {100.0 * counts['trainable'] / counts['all']:.4f}"
        )
        for part, n in self.hypernet.generator.parameter_report().items():
            print(f"  generator {part}: {n:,}")
        return counts

    # -- save / load ---------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``hyperlora_config.json`` and ``hypernet.safetensors`` atomically."""
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "registry": registry(self.targets),
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.hypernet.state_dict().items()}
        with atomic_directory(directory, overwrite=True) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, student: nn.Module | None = None, tokenizer: Any = None,
                        **student_kwargs: Any) -> HyperLoRA:
        """Rebuild a saved HyperLoRA; ``student`` defaults to loading the recorded base model."""
        path = Path(directory)
        meta = read_checkpoint_config(path)
        config = HyperLoRAConfig.from_dict(meta["config"])
        if student is None:
            student, tokenizer = _load_student(config.base_model, tokenizer, **student_kwargs)
        current = registry(find_targets(student, config.targets))
        diffs = registry_differences(meta["registry"], current)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise ValueError(
                f"The checkpoint at {path} was made for another student (base model {config.base_model!r}): {shown}. "
                "Load it with the student it was trained on."
            )
        hyper = cls(student, tokenizer, config)
        try:
            state = load_file(str(path / WEIGHTS_NAME), device=str(next(student.parameters()).device))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} is missing: the checkpoint is incomplete; re-save it.") from None
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path / WEIGHTS_NAME} is corrupt ({err}); re-save the checkpoint.") from None
        missing, unexpected = hyper.hypernet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path / WEIGHTS_NAME} does not fit this configuration: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}. Was the config edited after saving?"
            )
        return hyper.eval()


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """The parsed ``hyperlora_config.json`` of a checkpoint folder, or a clear error."""
    if not path.is_dir():
        raise FileNotFoundError(f"No HyperLoRA checkpoint at {path}: the folder does not exist.")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: is it a folder written by HyperLoRA.save_pretrained?")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is corrupt (not valid JSON: {err}); re-save the checkpoint.") from None
    if not isinstance(meta, dict) or not {"config", "registry"} <= set(meta):
        raise ValueError(f"{config_file} lacks 'config' or 'registry': not a HyperLoRA checkpoint config.")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{config_file} has format version {meta['format_version']}; upgrade hyperlora to read it.")
    return meta


def _load_student(base_model: str | None, tokenizer: Any, **kwargs: Any) -> tuple[nn.Module, Any]:
    from hyperlora.base_models import is_base_model_name, load_base_model

    if not is_base_model_name(base_model):
        raise ValueError(
            f"The checkpoint's base model {base_model!r} is not a local directory here: pass student= (and tokenizer=) "
            "to from_pretrained."
        )
    student, loaded = load_base_model(base_model, tokenizer=tokenizer is None, **kwargs)
    return student, tokenizer if tokenizer is not None else loaded
