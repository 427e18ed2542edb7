"""Benchmark the per-row injector against the base model, PEFT and a merged model.

All in one process on one random Llama-shaped model, each figure a ratio to the
base forward (or base forward+backward) timed here:

    python scripts/bench_injector.py                 # GPU: full size, bf16
    python scripts/bench_injector.py --size small    # CPU-sized check

Full size: width 2048, 16 layers, GQA 16/8 heads, MLP 8192, batch 8 x 512,
rank 16 on q,k,v,o, a different adapter for every row.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hyperlora.benchmarking import device_name, peak_memory_mib, report, reset_peak_memory, time_ms
from hyperlora.injector import inject
from hyperlora.lora import LoRASpec, delta_weight
from hyperlora.targets import Target, find_targets

SIZES: dict[str, dict[str, int]] = {
    "full": dict(hidden=2048, layers=16, heads=16, kv_heads=8, mlp=8192, vocab=32000, batch=8, tokens=512),
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, mlp=1024, vocab=4000, batch=4, tokens=128),
}


def build_model(size: dict[str, int], dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    config = LlamaConfig(
        hidden_size=size["hidden"], num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"], intermediate_size=size["mlp"], vocab_size=size["vocab"],
        max_position_embeddings=max(2048, size["tokens"]),
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def random_adapters(targets: list[Target], rows: int, rank: int, dtype: torch.dtype, device: torch.device,
                    requires_grad: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator(device=device).manual_seed(0)
    adapters = {}
    for t in targets:
        A = (torch.randn(rows, t.d_in, rank, generator=gen, device=device) / t.d_in**0.5).to(dtype)
        B = (torch.randn(rows, rank, t.d_out, generator=gen, device=device) * 0.01).to(dtype)
        adapters[t.name] = (A.requires_grad_(requires_grad), B.requires_grad_(requires_grad))
    return adapters


def peft_model(model: torch.nn.Module, targets: list[Target], adapters: dict, spec: LoRASpec) -> torch.nn.Module:
    """PEFT's LoRA with one shared adapter (row 0's), as PEFT serves a batch."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=[t.name for t in targets], lora_dropout=0.0)
    wrapped = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for t in targets:
            layer = wrapped.base_model.model.get_submodule(t.name)
            A, B = adapters[t.name]
            layer.lora_A["default"].weight.copy_(A[0].T)
            layer.lora_B["default"].weight.copy_(B[0].T)
    return wrapped.eval()


def merged_model(model: torch.nn.Module, targets: list[Target], adapters: dict, spec: LoRASpec) -> torch.nn.Module:
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for t in targets:
            A, B = adapters[t.name]
            merged.get_submodule(t.name).weight += delta_weight(A[0], B[0], spec.scaling, t.is_conv1d)
    return merged


def run(size_name: str, rank: int, iters: int) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SIZES[size_name]
    spec = LoRASpec(rank=rank, alpha=2.0 * rank)
    model = build_model(size, dtype, device)
    targets = find_targets(model)
    ids = torch.randint(0, size["vocab"], (size["batch"], size["tokens"]), device=device)
    adapters = random_adapters(targets, size["batch"], rank, dtype, device)
    timed = dict(device=device, iters=iters)

    def forward(m: torch.nn.Module) -> None:
        with torch.no_grad():
            m(ids, use_cache=False)

    def injected_forward(share_shrink: bool = False) -> None:
        with torch.no_grad(), inject(model, adapters, spec, share_shrink=share_shrink):
            model(ids, use_cache=False)

    times: dict[str, float] = {}
    times["base_forward"] = time_ms(lambda: forward(model), **timed)
    times["injected_forward"] = time_ms(injected_forward, **timed)
    # q, k and v share one x·[A_q|A_k|A_v] (x read once, not three times): what it saves.
    times["injected_forward_shared_shrink"] = time_ms(lambda: injected_forward(True), **timed)
    merged = merged_model(model, targets, adapters, spec)
    times["merged_forward"] = time_ms(lambda: forward(merged), **timed)
    peft = peft_model(model, targets, adapters, spec)
    times["peft_single_adapter_forward"] = time_ms(lambda: forward(peft), **timed)

    # Forward+backward. The base baseline back-propagates to the input embeddings
    # (every layer's activation gradients, no weight gradients); the injected run
    # does the same plus the gradients of every A and B.
    embeds = model.get_input_embeddings()(ids).detach()
    trainable = random_adapters(targets, size["batch"], rank, dtype, device, requires_grad=True)

    def base_backward() -> None:
        x = embeds.clone().requires_grad_(True)
        model(inputs_embeds=x, use_cache=False).logits.float().mean().backward()

    def injected_backward() -> None:
        x = embeds.clone().requires_grad_(True)
        with inject(model, trainable, spec):
            loss = model(inputs_embeds=x, use_cache=False).logits.float().mean()
        loss.backward()

    reset_peak_memory(device)
    times["base_forward_backward"] = time_ms(base_backward, **timed)
    memory = {"base_forward_backward_peak_mib": peak_memory_mib(device)}
    reset_peak_memory(device)
    times["injected_forward_backward"] = time_ms(injected_backward, **timed)
    memory["injected_forward_backward_peak_mib"] = peak_memory_mib(device)

    ratios = {
        "injected_forward": times["injected_forward"] / times["base_forward"],
        "injected_forward_shared_shrink": times["injected_forward_shared_shrink"] / times["base_forward"],
        "merged_forward": times["merged_forward"] / times["base_forward"],
        "peft_single_adapter_forward": times["peft_single_adapter_forward"] / times["base_forward"],
        "injected_forward_backward": times["injected_forward_backward"] / times["base_forward_backward"],
    }
    return {
        "benchmark": "injector",
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "shape": {**size, "rank": rank, "targets": len(targets), "adapter_per_row": True},
        "times_ms": {k: round(v, 3) for k, v in times.items()},
        "ratio_to_base": {k: round(v, 3) for k, v in ratios.items()},
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on GPU, small on CPU")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    size = args.size or ("full" if torch.cuda.is_available() else "small")
    report(run(size, args.rank, args.iters), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
