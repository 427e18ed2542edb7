"""inspect_adapters against a dense reference: SVD of the full ΔW, flattened cosine similarity."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from checkpoint_fixture import PROMPTS, build_checkpoint

from hyperlora import cli, plots
from hyperlora.analysis import ALL_LAYERS, InspectionReport, effective_rank
from hyperlora.inspection import delta_gram, inspect_adapters
from hyperlora.lora import delta_weight
from hyperlora.model import HyperLoRA

TOP_K = 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("inspect"), "gpt2")[1]  # Conv1D layout: the harder case


@pytest.fixture(scope="module")
def hyper(ckpt: Path) -> HyperLoRA:
    return HyperLoRA.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def report(hyper: HyperLoRA) -> InspectionReport:
    return inspect_adapters(hyper, PROMPTS, top_k=TOP_K)


@torch.no_grad()
def _dense(hyper: HyperLoRA) -> dict[str, torch.Tensor]:
    """``{name: ΔW [P, ...]}`` in the weight's own layout, formed in full (float64)."""
    adapters = hyper.adapters(PROMPTS)
    return {t.name: delta_weight(adapters[t.name][0].double(), adapters[t.name][1].double(), hyper.spec.scaling,
                                 conv1d=t.is_conv1d) for t in hyper.targets}


@torch.no_grad()
def test_numbers_match_a_direct_svd(hyper: HyperLoRA, report: InspectionReport) -> None:
    dense = _dense(hyper)
    adapters = hyper.adapters(PROMPTS)
    assert len(report.rows) == len(PROMPTS) * len(hyper.targets)
    for row in report.rows:
        p, t = PROMPTS.index(row["prompt"]), next(t for t in hyper.targets if t.name == row["name"])
        delta = dense[t.name][p]
        sigma = torch.linalg.svdvals(delta)  # min(D, O) values, all but R of them ≈ 0
        assert (row["d_in"], row["d_out"]) == (t.d_in, t.d_out)
        assert row["norm_a"] == pytest.approx(float(adapters[t.name][0][p].double().norm()), rel=1e-6)
        assert row["norm_b"] == pytest.approx(float(adapters[t.name][1][p].double().norm()), rel=1e-6)
        assert row["norm_delta"] == pytest.approx(float(delta.norm()), rel=1e-9)
        assert row["relative_delta"] == pytest.approx(float(delta.norm() / t.module.weight.double().norm()), rel=1e-9)
        assert row["singular_values"] == pytest.approx(sigma[:TOP_K].tolist(), rel=1e-9)
        assert row["effective_rank"] == pytest.approx(effective_rank(sigma[: hyper.spec.rank]), rel=1e-9)
        assert 1.0 <= row["effective_rank"] <= hyper.spec.rank


def test_similarity_matches_dense_flattened_cosine(hyper: HyperLoRA, report: InspectionReport) -> None:
    dense = _dense(hyper)
    layers = sorted({t.layer for t in hyper.targets})
    assert list(report.similarity) == [*layers, ALL_LAYERS]
    for layer in [*layers, ALL_LAYERS]:
        flat = torch.cat([dense[t.name].flatten(1) for t in hyper.targets if layer in (t.layer, ALL_LAYERS)], dim=1)
        unit = flat / flat.norm(dim=1, keepdim=True)
        expected = unit @ unit.T
        torch.testing.assert_close(torch.tensor(report.similarity[layer], dtype=torch.float64), expected,
                                   atol=1e-9, rtol=1e-9)


def test_delta_gram_equals_dense_inner_products() -> None:
    A, B = torch.randn(3, 20, 4, dtype=torch.float64), torch.randn(3, 4, 12, dtype=torch.float64)
    flat = delta_weight(A, B, 0.7).flatten(1)
    torch.testing.assert_close(delta_gram(A, B, 0.7), flat @ flat.T)


def test_json_csv_and_table(report: InspectionReport) -> None:
    data = json.loads(report.to_json())
    assert data["prompts"] == PROMPTS and len(data["rows"]) == len(report.rows)
    assert data["similarity"]["all"] == report.similarity[ALL_LAYERS]
    table = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(table) == len(report.rows)
    assert float(table[0]["sv1"]) == pytest.approx(report.rows[0]["singular_values"][0])
    text = report.table()
    assert all(repr(p) in text for p in PROMPTS) and "attn.c_attn" in text and "cosine similarity" in text


def test_every_figure_has_labels_title_and_colour_bar(report: InspectionReport, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    real_save = plots._save

    def keep(fig, path):  # noqa: ANN001, ANN202 - look at the figure before it is closed
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        figures.append((path.name, panels, bars, fig.get_suptitle()))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    written = plots.plot_report(report, tmp_path / "figs")
    assert [p.name for p in written] == ["relative_delta.png", "spectra.png", "similarity.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert [name for name, *_ in figures] == [p.name for p in written]
    for name, panels, bars, suptitle in figures:
        assert len(bars) == 1 and bars[0].get_ylabel(), name
        for ax in panels:
            assert ax.get_xlabel() and ax.get_ylabel() and (ax.get_title() or suptitle), name
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left behind


def test_cli_json_csv_and_plot(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = [a for p in PROMPTS[:2] for a in ("--prompt", p)]
    base = ["inspect", "--checkpoint", str(ckpt), *prompts, "--device", "cpu", "--top-k", "2"]
    assert cli.main([*base, "--json", "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert len(json.loads(out)["rows"][0]["singular_values"]) == 2  # stdout holds the JSON alone
    assert (tmp_path / "r.csv").read_text().startswith("prompt,name,layer")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["relative_delta.png", "similarity.png",
                                                                    "spectra.png"]
    assert cli.main(base) == 0
    assert "top singular values" in capsys.readouterr().out
    assert cli.main([*base, "--prompt", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty" in err and "Traceback" not in err


# -- issue 14: outputs are never overwritten unasked, refusals are one line before loading ---------------------


def _refused(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> None:
    out, err = capsys.readouterr()
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("hyperlora inspect: error:") and "Traceback" not in err, err
    assert all(w in err for w in words), err


def test_cli_refuses_taken_outputs_before_loading(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import hyperlora.loading

    monkeypatch.setattr(hyperlora.loading, "load_from_args", lambda *_: pytest.fail("loaded before refusing"))
    base = ["inspect", "--checkpoint", str(ckpt), "--prompt", PROMPTS[0], "--device", "cpu"]
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    user_dir = tmp_path / "figs"
    user_dir.mkdir()
    (user_dir / "holiday.jpg").write_text("mine")
    cases = [
        (["--json", str(taken)], [str(taken), "already exists", "--force"]),
        (["--csv", str(taken)], [str(taken), "already exists", "--force"]),
        (["--json", str(tmp_path / "a"), "--csv", str(tmp_path / "a")], ["both name"]),
        (["--json", str(tmp_path)], ["is a folder"]),
        (["--plot", str(user_dir)], ["holiday.jpg", "--force"]),
        (["--plot", str(taken)], ["is a file"]),
        (["--plot", str(taken), "--force"], ["is a file"]),
        (["--top-k", "0"], ["--top-k", "positive integer"]),
    ]
    for extra, words in cases:
        _refused(capsys, cli.main([*base, *extra]), *words)
    assert taken.read_text() == "mine" and [p.name for p in user_dir.iterdir()] == ["holiday.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "taken.json"]


def test_cli_force_overwrites_and_plots_beside_other_files(ckpt: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import os

    base = ["inspect", "--checkpoint", str(ckpt), "--prompt", PROMPTS[0], "--device", "cpu"]
    taken, figs = tmp_path / "r.json", tmp_path / "figs"
    taken.write_text("old")
    figs.mkdir()
    (figs / "notes.txt").write_text("mine")
    old = os.umask(0o022)
    try:
        assert cli.main([*base, "--json", str(taken), "--plot", str(figs), "--force"]) == 0
        assert json.loads(taken.read_text())["prompts"] == [PROMPTS[0]]
        assert (figs / "notes.txt").read_text() == "mine"  # written beside, never removed
        ours = tmp_path / "ours"
        assert cli.main([*base, "--plot", str(ours)]) == 0
        assert cli.main([*base, "--plot", str(ours)]) == 0  # a folder of our own figures: rewritten unasked
    finally:
        os.umask(old)
    capsys.readouterr()
    pngs = sorted(ours.iterdir()) + sorted(figs.glob("*.png"))
    assert [p.name for p in pngs] == ["relative_delta.png", "spectra.png"] * 2
    assert {oct(p.stat().st_mode & 0o777) for p in [*pngs, taken]} == {"0o644"}  # mkstemp alone gives 0600
