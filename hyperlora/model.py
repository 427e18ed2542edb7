"""``HyperLoRA``: a prompt encoder and a LoRA generator bound to a frozen student.

    hyper = HyperLoRA(student, tokenizer, HyperLoRAConfig(lora=LoRASpec(8, 16)))
    out = hyper(["Reverse the words."], input_ids, attention_mask)   # adapters injected
    hyper.save_pretrained("ckpt");  HyperLoRA.from_pretrained("ckpt", student)

Only ``hyper.hypernet`` (encoder + generator) trains and is saved; the student is
frozen and recorded by its absolute path (or ``toy:`` name), its target registry (names
and shapes) and its fingerprint (``hyperlora.fingerprint``), so a checkpoint cannot be
loaded onto a student it was not made for: another architecture is refused by the
registry, another model of the same shape by the fingerprint. ``from_pretrained(...,
allow_other_base_model=True)`` (``--allow-other-base-model``) loads it anyway.

The checkpoint format (``hyperlora_config.json``, format 2)::

    format_version   2
    config           HyperLoRAConfig.to_dict(), base_model absolute
    registry         [{name, d_in, d_out, layer, kind}] of the student's targets
    base_model       {dtype: the student's weight dtype at save,
                      fingerprints: {dtype: fingerprint of the student's weights cast to dtype}}
    weights_sha256   SHA-256 of hypernet.safetensors (written first; this file last)

Format 1 checkpoints (no ``base_model``, no ``weights_sha256``) still load, with a one-line
warning that they cannot be verified.
"""

from __future__ import annotations

import json
import sys
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
from hyperlora.fingerprint import file_sha256, model_fingerprint
from hyperlora.generator import ShapeGroupedLoRAGenerator
from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch
from hyperlora.ownership import is_checkpoint
from hyperlora.targets import Target, find_targets

__all__ = ["HyperLoRA", "Hypernetwork", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "hyperlora_config.json"
WEIGHTS_NAME = "hypernet.safetensors"
FORMAT_VERSION = 2  # 2: base model fingerprints and the weights' SHA-256 (1 still loads, unverified)
TOY_PREFIX = "toy:"  # hyperlora.base_models.TOY_PREFIX (not imported: base_models loads lazily)
# A student trained in float32 may be loaded in a coarser dtype (--dtype): its fingerprint is
# recorded for those too, computed on the weights cast as loading in that dtype casts them.
COARSER_DTYPES = {"float32": ("bfloat16", "float16")}
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
    def generate(self, prompts: list[str], inputs: list[str] | dict[str, Tensor] | Tensor, chat_template: bool = True,
                 **generation_kwargs: Any) -> Tensor:
        """``student.generate`` with row i adapted to ``prompts[i]``.

        ``inputs``: strings (tokenised here, left-padded), a tokenizer's output,
        or ``input_ids [B, T]``. Strings are formatted as in training, in the chat template
        where the tokenizer has one (``hyperlora.data.format.prefix_ids``; ``chat_template=False``:
        as they are). Generation stops at the end of the assistant's turn
        (``hyperlora.data.format.end_of_turn_ids``) unless ``eos_token_id`` is given. Beams and
        ``num_return_sequences`` expand rows; the adapters follow. Returns the generated ids ``[B·k, T + new]``.
        """
        batch = self._encode_inputs(inputs, chat_template)
        if len(prompts) != batch["input_ids"].shape[0]:
            raise ValueError(f"Got {len(prompts)} prompts for {batch['input_ids'].shape[0]} inputs: give one prompt per row.")
        if self.tokenizer is not None and "pad_token_id" not in generation_kwargs:
            generation_kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        if self.tokenizer is not None and "eos_token_id" not in generation_kwargs:
            from hyperlora.data.format import end_of_turn_ids

            generation_kwargs["eos_token_id"] = end_of_turn_ids(self.tokenizer) or None
        with self.inject(self.adapters(prompts)):
            return self.student.generate(**batch, **generation_kwargs)

    def _encode_inputs(self, inputs: list[str] | dict[str, Tensor] | Tensor, chat_template: bool = True
                       ) -> dict[str, Tensor]:
        device = next(self.student.parameters()).device
        if isinstance(inputs, Tensor):
            return {"input_ids": inputs.to(device)}
        if isinstance(inputs, (list, tuple)):
            if self.tokenizer is None:
                raise ValueError("Text inputs need a tokenizer: pass tokenizer= to HyperLoRA, or token ids.")
            from hyperlora.decoding import left_padded

            tok = self.tokenizer
            # Left padding: generation continues from each row's last real token. Padded here, not by the
            # tokenizer: some have no pad token (SmolLM2's GGUF one), and padded positions are masked anyway.
            pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            if chat_template and getattr(tok, "chat_template", None):
                # As the student read its inputs in training; an instruct model answers nothing to bare text.
                from hyperlora.data.format import prefix_ids

                return left_padded([prefix_ids(tok, None, text) for text in inputs], pad, device)
            return left_padded(tok(list(inputs))["input_ids"], pad, device)
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
        """Write ``hypernet.safetensors``, then ``hyperlora_config.json`` (with the weights' SHA-256), atomically.

        Raises:
            ValueError: a hypernetwork weight is NaN or infinite (nothing is written).
            FileExistsError: ``directory`` is a non-empty folder that is not a HyperLoRA checkpoint.
        """
        state = {k: v.detach().contiguous().cpu() for k, v in self.hypernet.state_dict().items()}
        bad = non_finite(state)
        if bad:
            raise ValueError(f"Refusing to save to {directory}: hypernetwork weight {bad[0]} is NaN or infinite"
                             f"{_more(bad)}; the model has diverged (lower the learning rate, or keep an earlier checkpoint).")
        config = self.config.to_dict()
        config["base_model"] = absolute_base_model(self.config.base_model)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "config": config,
            "registry": registry(self.targets),
            "base_model": base_model_record(self.student),
        }
        with atomic_directory(directory, overwrite=True, replaceable=is_checkpoint, what="HyperLoRA checkpoint") as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            meta["weights_sha256"] = file_sha256(tmp / WEIGHTS_NAME)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, student: nn.Module | None = None, tokenizer: Any = None, *,
                        allow_other_base_model: bool = False, **student_kwargs: Any) -> HyperLoRA:
        """Rebuild a saved HyperLoRA; ``student`` defaults to loading the recorded base model.

        Args:
            student: the base model to bind (default: the one the checkpoint records, loaded
                with ``student_kwargs`` such as ``dtype``).
            allow_other_base_model: load even when ``student``'s fingerprint is not the one the
                checkpoint was trained on (a fine-tuned or re-quantised variant, on purpose).

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            ValueError: the checkpoint is corrupt, damaged, inconsistent or holds non-finite
                weights; or it was made for another student.
        """
        path = Path(directory)
        meta = read_checkpoint_config(path)
        config = HyperLoRAConfig.from_dict(meta["config"])
        verify_weights_file(path, meta)  # before loading a student: a damaged checkpoint fails fast
        if meta["format_version"] < 2:
            _warn(f"checkpoint {path} is in format {meta['format_version']} and cannot be verified: it records no "
                  "fingerprint of its base model nor checksum of its weights; re-save it to record them.")
        if student is None:
            student, tokenizer = _load_student(config.base_model, tokenizer, **student_kwargs)
            loaded_from = str(config.base_model)
        else:
            loaded_from = getattr(getattr(student, "config", None), "_name_or_path", None) or "the student passed in"
        current = registry(find_targets(student, config.targets))
        diffs = registry_differences(meta["registry"], current)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise ValueError(
                f"The checkpoint at {path} was made for another student (base model {config.base_model!r}): {shown}. "
                "Load it with the student it was trained on."
            )
        if "base_model" in meta:
            check_base_model(path, meta["base_model"], config.base_model, student, loaded_from, allow_other_base_model)
        hyper = cls(student, tokenizer, config)
        weights = path / WEIGHTS_NAME
        try:
            state = load_file(str(weights), device=str(next(student.parameters()).device))
        except FileNotFoundError:
            raise FileNotFoundError(f"{weights} is missing: the checkpoint is incomplete; re-save it.") from None
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights} is corrupt ({err}); re-save the checkpoint.") from None
        bad = non_finite(state)
        if bad:
            raise ValueError(f"{weights} holds NaN or infinite values in {bad[0]}{_more(bad)}: the checkpoint is "
                             "unusable; load an earlier checkpoint or re-train.")
        _check_fits(path, state, hyper.hypernet.state_dict())
        hyper.hypernet.load_state_dict(state)
        return hyper.eval()


def non_finite(state: dict[str, Tensor]) -> list[str]:
    """The names of the floating tensors in ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _warn(message: str) -> None:
    # One line on stderr: a command's stderr carries one line per problem (warnings.warn would add a source line).
    print(f"hyperlora: warning: {message}", file=sys.stderr)


def _check_fits(path: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Refuse weights whose names or shapes are not what the checkpoint's config builds."""
    problems = [f"{k}: missing from {WEIGHTS_NAME}" for k in expected if k not in state]
    problems += [f"{k}: in {WEIGHTS_NAME} but not built by the config" for k in state if k not in expected]
    problems += [f"{k}: {tuple(v.shape)} in {WEIGHTS_NAME}, {tuple(expected[k].shape)} from the config"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ValueError(f"The checkpoint at {path} is inconsistent: its {CONFIG_NAME} does not fit its weights "
                         f"({shown}). Was the config edited after saving? Restore it or re-save the checkpoint.")


def absolute_base_model(name: str | None) -> str | None:
    """``name`` as a checkpoint records it: a local folder or ``.gguf`` file absolute (loading from elsewhere finds
    it), a ``toy:`` or packaged name (``smollm2-135m-instruct``) and anything else as is."""
    from hyperlora.base_models import PACKAGED_MODELS

    if name is None or str(name).startswith(TOY_PREFIX) or str(name) in PACKAGED_MODELS:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() or (path.suffix == ".gguf" and path.is_file()) else name


def _dtype_name(model: nn.Module) -> str | None:
    """The dtype of ``model``'s floating weights, as ``DTYPES`` names it (``float32``)."""
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


class _CastView:
    """``model``'s config and floating weights cast to ``dtype``: what ``model_fingerprint`` reads of a model."""

    def __init__(self, model: nn.Module, dtype: str) -> None:
        self.config = getattr(model, "config", None)
        self._model, self._dtype = model, getattr(torch, dtype)

    def _cast(self, items: Any) -> Any:
        return ((n, t.to(self._dtype) if t.is_floating_point() else t) for n, t in items)

    def named_parameters(self) -> Any:
        return self._cast(self._model.named_parameters())

    def named_buffers(self) -> Any:
        return self._cast(self._model.named_buffers())


def _fingerprint_as(model: nn.Module, dtype: str) -> str:
    return model_fingerprint(_CastView(model, dtype))  # type: ignore[arg-type]  # reads only what the view has


def base_model_record(student: nn.Module) -> dict[str, Any]:
    """``{dtype, fingerprints: {dtype: fingerprint}}`` of ``student``, for its own dtype and the coarser ones."""
    dtype = _dtype_name(student)
    if dtype is None:
        return {"dtype": None, "fingerprints": {}}
    try:
        return {"dtype": dtype, "fingerprints": {d: _fingerprint_as(student, d)
                                                 for d in (dtype, *COARSER_DTYPES.get(dtype, ()))}}
    except ValueError:  # weights offloaded to the meta device: nothing to fingerprint
        return {"dtype": dtype, "fingerprints": {}}


def check_base_model(path: Path, record: dict[str, Any], recorded: str | None, student: nn.Module, loaded_from: str,
                     allow_other: bool) -> None:
    """Refuse ``student`` unless its fingerprint is the recorded one (``allow_other``: warn instead).

    A student loaded in a dtype other than the trained one is compared in the coarser of the
    two: float32 weights cast to bfloat16 are exactly what a bfloat16 load of them holds.
    """
    saved, fingerprints = record["dtype"], record["fingerprints"]
    loaded = _dtype_name(student)
    if loaded in fingerprints:  # the dtype it was trained in, or a coarser one recorded for it
        compare_in = loaded
    elif saved in fingerprints and saved in COARSER_DTYPES.get(loaded or "", ()):  # finer now: cast it down
        compare_in = saved
    else:
        compare_in = None
    try:
        actual = _fingerprint_as(student, compare_in) if compare_in is not None else None
    except ValueError:  # offloaded to the meta device: no values to compare
        actual = None
    if actual is None:
        why = (f"trained in {saved}, loaded in {loaded}" if fingerprints and compare_in is None
               else "no fingerprint recorded" if not fingerprints else "its weights are offloaded")
        _warn(f"checkpoint {path} was trained on base model {recorded}; the model loaded from {loaded_from} cannot be "
              f"verified to be the same model ({why}).")
        return
    expected = fingerprints[compare_in]
    if actual == expected:
        return
    message = (f"checkpoint {path} was trained on base model {recorded} (fingerprint {expected}); the model loaded "
               f"from {loaded_from} has fingerprint {actual}")
    if allow_other:
        _warn(f"{message}; loading it anyway (allow_other_base_model).")
        return
    raise ValueError(f"{message[0].upper()}{message[1:]}. Pass the right --base-model, or --allow-other-base-model "
                     "(allow_other_base_model=True) if you mean it.")


def verify_weights_file(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a missing ``hypernet.safetensors``, or one whose SHA-256 is not the recorded one."""
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the checkpoint is incomplete; re-save it.")
    expected = meta.get("weights_sha256")
    if expected is None:  # format 1
        return
    actual = file_sha256(weights)
    if actual != expected:
        raise ValueError(f"{weights} is damaged (corrupt): its SHA-256 is {actual[:16]}..., the checkpoint recorded "
                         f"{expected[:16]}...; restore it from a copy or re-save the checkpoint.")


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """The parsed and checked ``hyperlora_config.json`` of a checkpoint folder, or a one-line error.

    Every field is type-checked here (the config itself by ``HyperLoRAConfig.from_dict``), so an
    edited file fails with a ``ValueError`` naming the key, before any model is loaded.
    """
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
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(f"{config_file} has format version {version}; upgrade hyperlora to read it.")
    try:
        _check_meta(meta)
        HyperLoRAConfig.from_dict(meta["config"])
    except ValueError as err:
        raise ValueError(f"{config_file} is inconsistent: {err} Restore the file or re-save the checkpoint.") from None
    return meta


def _check_meta(meta: dict[str, Any]) -> None:
    """Types of everything in a checkpoint config but ``config`` (``HyperLoRAConfig.from_dict`` checks that)."""
    meta.setdefault("format_version", 1)
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"format_version must be a positive integer, got {version!r}.")
    allowed = {"format_version", "config", "registry"} | ({"base_model", "weights_sha256"} if version >= 2 else set())
    unknown = sorted(set(meta) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for format {version}; allowed: {sorted(allowed)}.")
    entries = meta["registry"]
    fields = {"name": str, "d_in": int, "d_out": int}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(k), t) and not isinstance(e.get(k), bool) for k, t in fields.items())
        for e in entries
    ):
        raise ValueError("registry must be a list of {name: string, d_in: integer, d_out: integer, ...}.")
    if version < 2:
        return
    missing = sorted({"base_model", "weights_sha256"} - set(meta))
    if missing:
        raise ValueError(f"format {version} needs {missing}, which are missing.")
    sha = meta["weights_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"weights_sha256 must be 64 hex digits, got {sha!r}.")
    record = meta["base_model"]
    if not (isinstance(record, dict) and set(record) == {"dtype", "fingerprints"}
            and (record["dtype"] is None or isinstance(record["dtype"], str))
            and isinstance(record["fingerprints"], dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in record["fingerprints"].items())):
        raise ValueError("base_model must be {dtype: string, fingerprints: {dtype: string}}.")


def _load_student(base_model: str | None, tokenizer: Any, **kwargs: Any) -> tuple[nn.Module, Any]:
    from hyperlora.base_models import is_base_model_name, load_base_model

    if not is_base_model_name(base_model):
        raise ValueError(
            f"The checkpoint's base model {base_model!r} is not a local directory or .gguf file here: pass student= "
            "(and tokenizer=) to from_pretrained."
        )
    student, loaded = load_base_model(base_model, tokenizer=tokenizer is None, **kwargs)
    return student, tokenizer if tokenizer is not None else loaded
