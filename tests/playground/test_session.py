"""The playground's work without the page: answers streamed side by side (each against an independent
decode), figures, exports, and bad input refused in one line."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from bpe_fixture import bpe_model, bpe_tokenizer
from hyperlora import HyperLoRA, HyperLoRAConfig
from hyperlora.data.format import prefix_ids
from hyperlora.decoding import greedy_decode
from hyperlora.encoder import EncoderConfig
from hyperlora.export import peft_state_dict
from hyperlora.playground import PlaygroundError, PlaygroundSession, parse_instructions
from hyperlora.playground.session import MAX_INSTRUCTIONS

INSTRUCTIONS = ["Answer in capital letters.", "End with the phrase 'Goodbye.'"]
MESSAGE = "Suggest a name for a cat."
GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tok = bpe_tokenizer()
    student = bpe_model(tok, init=0.5)  # sharp distributions: the three models answer differently
    torch.manual_seed(0)
    hyper = HyperLoRA(student, tok, HyperLoRAConfig(encoder=EncoderConfig(d_ctx=32, d_model=32, max_length=24)))
    with torch.no_grad():
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a non-zero adapter per instruction
    return PlaygroundSession(hyper, "in memory", tmp_path_factory.mktemp("play"))


def test_the_streamed_answers_are_the_three_models_answers(session):
    updates = list(session.stream(INSTRUCTIONS, MESSAGE, GREEDY))
    assert len(updates) > 1  # streamed: more than the final state
    final = updates[-1]
    hyper, tok = session.hyper, session.hyper.tokenizer
    bare = prefix_ids(tok, None, MESSAGE)
    with torch.no_grad():
        for i, instruction in enumerate(INSTRUCTIONS):  # each row decoded on its own, its adapter alone
            alone = greedy_decode(hyper.student, tok, [bare], 8, hyper.inject(hyper.adapters([instruction])))[0]
            assert final.student[i] == alone
            assert final.teacher[i] == greedy_decode(hyper.student, tok, [prefix_ids(tok, instruction, MESSAGE)], 8)[0]
        assert final.base == greedy_decode(hyper.student, tok, [bare], 8)[0]
    assert final.student[0] != final.base  # the adapter changed the answer
    for earlier, later in zip(updates, updates[1:]):  # every answer only grows
        assert later.base.startswith(earlier.base)


def test_sampling_settings_reach_generate_and_bad_ones_are_refused(session):
    sampled = [list(session.stream(INSTRUCTIONS[:1], MESSAGE, {"max_new_tokens": 6, "do_sample": True,
                                                                "temperature": 1.5, "top_k": 0, "top_p": 0.9}))[-1]
               for _ in range(2)]
    assert all(len(s.student) == 1 and len(s.teacher) == 1 for s in sampled)
    with pytest.raises(PlaygroundError, match="max_new_tokens"):
        list(session.stream(INSTRUCTIONS, MESSAGE, {"max_new_tokens": 0}))
    with pytest.raises(PlaygroundError, match="temperature"):
        list(session.stream(INSTRUCTIONS, MESSAGE, {"max_new_tokens": 4, "do_sample": True, "temperature": -1.0}))


@pytest.mark.parametrize("text, match", [("", "Type an instruction"), ("  \n\n ", "Type an instruction"),
                                         ("\n".join(f"rule {i}" for i in range(MAX_INSTRUCTIONS + 1)), "at most")])
def test_bad_instructions_are_refused_in_one_line(text, match):
    with pytest.raises(PlaygroundError, match=match) as info:
        parse_instructions(text)
    assert "\n" not in str(info.value)


def test_a_long_instruction_and_an_empty_message_are_refused_before_any_work(session):
    with pytest.raises(PlaygroundError, match="tokens; the hypernetwork reads at most 24"):
        list(session.stream(["word " * 200], MESSAGE, GREEDY))
    with pytest.raises(PlaygroundError, match="Type a message"):
        list(session.stream(INSTRUCTIONS, "   ", GREEDY))
    assert parse_instructions(" a \n\n b ") == ["a", "b"]
    for job in (session.figures, lambda x: session.export_peft(x[0]), lambda x: session.export_safetensors(x[0])):
        with pytest.raises(PlaygroundError, match="the hypernetwork reads at most 24"):
            job(["word " * 200])


def test_figures_are_the_inspect_plots(session):
    one = session.figures(INSTRUCTIONS[:1])
    assert set(one) == {"heatmap", "spectra"}
    two = session.figures(INSTRUCTIONS)
    assert set(two) == {"heatmap", "spectra", "similarity"}
    for path in two.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exports_hold_the_instructions_adapter(session):
    expected = peft_state_dict(session.hyper, INSTRUCTIONS[0])
    tensors = load_file(str(session.export_safetensors(INSTRUCTIONS[0])))
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    archive = session.export_peft(INSTRUCTIONS[0])
    with zipfile.ZipFile(archive) as zipped:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipped.namelist())
        config = json.loads(zipped.read("adapter_config.json"))
    assert config["r"] == session.hyper.spec.rank


def test_a_checkpoint_for_another_base_model_is_a_message(tmp_path):
    from hyperlora.playground.app import _load
    from hyperlora.toy.models import tiny_model
    from hyperlora.toy.tokenizer import char_tokenizer

    hyper = HyperLoRA(tiny_model("llama"), char_tokenizer(), HyperLoRAConfig(
        base_model="toy:llama", encoder=EncoderConfig(d_ctx=16, d_model=16)))
    hyper.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(PlaygroundError, match="toy:qwen2|another|fingerprint|architecture") as info:
        _load(str(tmp_path / "ckpt"), "toy:qwen2", "cpu", None)
    assert "\n" not in str(info.value)
    with pytest.raises(PlaygroundError, match="does not exist|No HyperLoRA checkpoint"):
        _load(str(tmp_path / "missing"), None, "cpu", None)


@pytest.mark.parametrize("args, match", [(["--port", "0"], "is not a port"),
                                         (["--checkpoint", "/nonexistent/ckpt", "--device", "cpu"], "ckpt")])
def test_the_command_refuses_bad_options_in_one_line_before_serving(args, match, capsys):
    from hyperlora.playground.app import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperlora playground: ") and match in err and "\n" not in err


def test_the_server_listens_on_this_machine_only_by_default():
    from hyperlora.playground.app import _parser

    args = _parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


def test_a_stream_left_early_releases_the_model_for_the_next(session):
    stream = session.stream(INSTRUCTIONS, MESSAGE, {"max_new_tokens": 8})
    next(stream)
    stream.close()  # the page stopped listening after the first tokens
    hooks = sum(len(m._forward_hooks) for m in session.hyper.student.modules())
    assert hooks == 0  # generation finished and every adapter hook is gone
    assert list(session.stream(INSTRUCTIONS[:1], MESSAGE, GREEDY))[-1].student[0]
