"""PNG figures of an ``InspectionReport``: relative-size heatmap, spectra, prompt similarity.

matplotlib is imported when a figure is drawn (with the Agg backend: no display
needed), so ``hyperlora`` itself does not depend on it. Every figure has axis
labels, a title and a colour bar; every PNG is written to a temporary name in
its folder and renamed, so a reader never sees half an image. A folder holding
anything but these figures is written into only when asked (``force``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hyperlora.analysis import ALL_LAYERS, InspectionReport
from hyperlora.atomic import ordinary_file_mode

__all__ = ["plot_report", "check_plot_dir", "plot_relative_heatmap", "plot_spectra", "plot_similarity"]

FIGURES = ("relative_delta.png", "spectra.png", "similarity.png")

_LABEL_CHARS = 28
_RELATIVE = r"$\|\Delta W\|_F \,/\, \|W_0\|_F$"
_LINESTYLES = ["-", "--", ":", "-."]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Plots need matplotlib: pip install 'hyperlora[plot]'.") from None
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def _short(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, ordinary_file_mode())  # mkstemp makes it private (0600); a figure is an ordinary file
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(fig)
    return path


def _panels(plt: Any, count: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = min(count, 3)
    rows = -(-count // cols)
    # Constrained layout keeps the suptitle, panel titles and colour bar from overlapping.
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_relative_heatmap(report: InspectionReport, path: str | Path) -> Path:
    """Layer × module heatmap of ‖ΔW‖_F / ‖W0‖_F, one panel per prompt, one shared colour scale."""
    plt = _pyplot()
    layers = sorted({r["layer"] for r in report.rows})
    kinds = list(dict.fromkeys(r["kind"] for r in report.rows))
    values = [r["relative_delta"] for r in report.rows]
    vmin, vmax = min(values), max(values)
    fig, axes = _panels(plt, len(report.prompts), 1.0 + 0.7 * len(kinds), 2.2 + 0.35 * len(layers))
    image = None
    for ax, prompt in zip(axes, report.prompts):
        grid = [[float("nan")] * len(kinds) for _ in layers]
        for r in report.stats(prompt):
            grid[layers.index(r["layer"])][kinds.index(r["kind"])] = r["relative_delta"]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
        ax.set_title(f"prompt: {_short(prompt)}", fontsize=9)
    fig.suptitle(f"relative size of the adapter per layer and module: {_RELATIVE}")
    fig.colorbar(image, ax=axes, label=_RELATIVE)
    return _save(fig, Path(path))


def plot_spectra(report: InspectionReport, path: str | Path) -> Path:
    """Singular values of ΔW per target (one line each, coloured by layer), one panel per prompt."""
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    layers = [r["layer"] for r in report.rows]
    kinds = list(dict.fromkeys(r["kind"] for r in report.rows))
    cmap = plt.get_cmap("viridis")
    # Layers are integers: one colour band per layer, not a continuous scale.
    bounds = [layer - 0.5 for layer in range(min(layers), max(layers) + 2)]
    norm = BoundaryNorm(bounds, cmap.N)
    positive = all(v > 0 for spectrum in report.spectra for v in spectrum)
    fig, axes = _panels(plt, len(report.prompts), 4.5, 3.5)
    for ax, prompt in zip(axes, report.prompts):
        for row, spectrum in zip(report.rows, report.spectra):
            if row["prompt"] == prompt:
                style = _LINESTYLES[kinds.index(row["kind"]) % len(_LINESTYLES)]  # colour: layer; style: module
                ax.plot(range(1, len(spectrum) + 1), spectrum, marker="o", markersize=3, linewidth=1,
                        linestyle=style, color=cmap(norm(row["layer"])), alpha=0.8)
        if positive:
            ax.set_yscale("log")  # spectra span decades; a linear axis flattens the tail
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("singular value index")
        ax.set_ylabel(r"singular value $\sigma_i$ of $\Delta W$")
        ax.set_title(f"prompt: {_short(prompt)}", fontsize=9)
    if len(kinds) <= len(_LINESTYLES):
        handles = [Line2D([], [], color="grey", linestyle=_LINESTYLES[i]) for i in range(len(kinds))]
        axes[0].legend(handles, kinds, fontsize=7, title="module", title_fontsize=7)
    fig.suptitle(r"singular-value spectra of $\Delta W$ (one line per target)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="layer")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return _save(fig, Path(path))


def plot_similarity(report: InspectionReport, path: str | Path, layer: int | str = ALL_LAYERS) -> Path:
    """Prompt × prompt cosine similarity of ΔW (all layers together by default)."""
    plt = _pyplot()
    matrix = report.similarity[layer]
    labels = [_short(p) for p in report.prompts]
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), layout="constrained")
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    if len(labels) <= 12:  # beyond that the numbers overlap
        for i, line in enumerate(matrix):
            for j, value in enumerate(line):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(value) > 0.6 else "black")  # readable on dark cells
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("prompt")
    ax.set_ylabel("prompt")
    where = "all layers" if layer == ALL_LAYERS else f"layer {layer}"
    ax.set_title(f"cosine similarity of $\\Delta W$ between prompts ({where})")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    return _save(fig, Path(path))


def _ours(name: str) -> bool:
    """A figure of ours, or the temporary name ``_save`` writes it under."""
    return name in FIGURES or any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in FIGURES)


def check_plot_dir(out_dir: str | Path, force: bool = False) -> None:
    """``out_dir`` may receive the figures: absent, empty, holding only figures of ours, or ``force``.

    Raises:
        FileExistsError: ``out_dir`` is a file, or (without ``force``) a folder holding other files.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--plot {out} is a file; choose a folder for the figures.")
    others = sorted(p.name for p in out.iterdir() if not _ours(p.name)) if out.is_dir() else []
    if others and not force:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise FileExistsError(f"--plot {out} holds files hyperlora did not write ({shown}); choose an empty or "
                              "new folder, or pass --force to write the figures beside them.")


def plot_report(report: InspectionReport, out_dir: str | Path, force: bool = False) -> list[Path]:
    """Write ``relative_delta.png``, ``spectra.png`` and (two prompts or more) ``similarity.png``.

    ``out_dir`` holding other files is refused unless ``force``; they are never touched.
    """
    out = Path(out_dir)
    check_plot_dir(out, force)
    written = [plot_relative_heatmap(report, out / "relative_delta.png"), plot_spectra(report, out / "spectra.png")]
    if len(report.prompts) > 1:
        written.append(plot_similarity(report, out / "similarity.png"))
    return written
