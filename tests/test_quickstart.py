"""The main job (``hyperlora quickstart``) end to end on a tiny Llama with a BPE tokenizer and a chat template
(the real one runs on SmolLM2: ``make demo``), and its two tables."""

from __future__ import annotations

import json
import re

import pytest

from bpe_fixture import save_bpe_model
from hyperlora.analysis import AdapterStats
from hyperlora.quickstart import before_after_table, layer_table
from hyperlora.quickstart import main as quickstart

SPLITS = ["train_unseen_questions", "heldout_phrasing"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_bpe_model(tmp_path_factory.mktemp("bpe_llama"))


def test_the_main_job_labels_trains_evaluates_and_prints_its_tables(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = quickstart([f"model.path={model_dir}", f"trainer.out_dir={out}", "data.n_train=8", "data.n_eval=2",
                       "trainer.eval_examples=2", "trainer.max_steps=2", "trainer.batch_size=4",
                       "data.label_max_new_tokens=6", "trainer.max_new_tokens=6", "data.label_progress=false",
                       "trainer.progress=false", "trainer.lr=1e-2"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "final_metrics.json").read_text())
    before = result["before"]
    for split in SPLITS:
        # Untrained, the hypernetwork's adapters are exactly zero: the student is the base, answer for answer.
        assert before[f"{split}/if_student"] == before[f"{split}/if_base"]
        assert before[f"{split}/rouge_student"] == pytest.approx(before[f"{split}/rouge_base"])
        assert before[f"{split}/gap_closed"] == pytest.approx(0.0, abs=1e-6)
        assert result[f"{split}/gap_closed"] != pytest.approx(0.0, abs=1e-6)  # two steps moved the student
    # The side-by-side answers, each with the verdict of the instruction's verifiers.
    assert len(re.findall(r"^  (base|teacher|student) \(.*\) \[(follows|does not follow)\]:$", printed, re.M)) == 3
    # One line per layer of the tiny model in the adapter's table.
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    table = printed.split("layer by layer\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [int(line.split()[0]) for line in table[1:]] == list(range(layers))
    assert f"{before['heldout_phrasing/gap_closed']:6.1%}".strip() in printed
    assert (out / "hyperlora" / "hypernet.safetensors").is_file()


def _stats(layer: int, kind: str, relative: float, rank: float) -> AdapterStats:
    return AdapterStats(name=f"model.layers.{layer}.self_attn.{kind}", layer=layer, kind=f"self_attn.{kind}",
                        d_in=4, d_out=4, norm_a=1.0, norm_b=1.0, norm_delta=1.0, relative_delta=relative,
                        singular_values=(1.0,), effective_rank=rank)


def test_the_layer_table_has_a_row_per_layer_and_a_column_per_module():
    stats = [_stats(layer, kind, 0.01 * (layer + 1), rank) for layer in (0, 1)
             for kind, rank in (("q_proj", 1.0), ("v_proj", 3.0))]
    lines = layer_table(stats).splitlines()
    assert "q_proj |dW|/|W|" in lines[0] and "v_proj |dW|/|W|" in lines[0]
    assert lines[1].split() == ["0", "1.00e-02", "1.00e-02", "2.00"]  # the mean effective rank of the layer
    assert lines[2].split() == ["1", "2.00e-02", "2.00e-02", "2.00"]


def test_the_before_after_table_shows_each_figure_of_each_split():
    before = {"a/if_student": 0.1, "a/gap_closed": 0.0, "a/rouge_student": 0.25}
    after = {"a/if_student": 0.4, "a/gap_closed": 0.5, "a/rouge_student": 0.5, "a/if_teacher": 0.6, "a/if_base": 0.1}
    text = before_after_table(before, after, ["a"])
    assert re.search(r"follows \(student\)\s+10\.0%\s+40\.0%", text)
    assert re.search(r"KL gap closed\s+0\.0%\s+50\.0%", text)
    assert re.search(r"ROUGE-L to teacher\s+0\.250\s+0\.500", text)
    assert "60.0%" in text and "base 10.0%" in text
