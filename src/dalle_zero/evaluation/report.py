"""Building blocks of the HTML evaluation report: figure tables, image grids, training curves.

The report is one ``report.html`` that opens from disk without a server: images are PNG files under
the report's folder referenced by relative paths (or embedded as data URIs with ``embed=True``).
:class:`HtmlReport` collects sections in order; :func:`save_image_grid` writes a tensor of images as
one PNG; :func:`plot_curves` plots columns of ``metrics.jsonl`` files (the shared training loop's
log) with matplotlib's Agg canvas (no pyplot, no display needed). The demo composes the actual
report from these.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dalle_zero.io import atomic_write_text
from dalle_zero.metrics_file import read_metrics

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table.figures { border-collapse: collapse; margin: 1em 0; }
table.figures td, table.figures th { border: 1px solid #ddd; padding: .35em .7em; vertical-align: top; }
table.figures th { background: #f5f5f5; text-align: left; }
td.value { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.how { color: #555; font-size: .92em; }
.grid { display: flex; flex-wrap: wrap; gap: .6em; margin: 1em 0; }
.cell { width: var(--w); font-size: .78em; text-align: center; }
.cell img { width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0c000; padding: .5em 1em; }
"""


@dataclass(frozen=True)
class FigureRow:
    """One line of a figure table: what was measured, its value, and one sentence on how."""

    name: str
    value: float | int | str | None
    how: str
    unit: str = ""


@dataclass(frozen=True)
class GridItem:
    """One image of a grid: a PNG path, a caption and optionally a score shown under it."""

    image: str | Path
    caption: str = ""
    score: float | None = None


def format_value(value: float | int | str | None, unit: str = "") -> str:
    """Numbers to 4 significant digits (integers as they are); None / NaN as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, str):
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif math.isinf(value):
        text = "∞" if value > 0 else "−∞"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}".strip()


class HtmlReport:
    """An HTML page built section by section, written to ``out_dir/name`` by :meth:`save`.

    Image paths given to the methods must lie under ``out_dir`` (they are linked relatively) unless
    ``embed`` is true, in which case they are inlined as base64 PNGs.
    """

    def __init__(self, title: str, out_dir: str | Path, *, embed: bool = False) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.embed = embed
        self._parts: list[str] = []
        self._images: list[Path] = []

    # ---- content
    def section(self, heading: str, text: str | None = None) -> HtmlReport:
        self._parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self.paragraph(text)
        return self

    def paragraph(self, text: str, *, note: bool = False) -> HtmlReport:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def figure_table(
        self,
        rows: Sequence[FigureRow],
        *,
        headers: tuple[str, str, str] = ("figure", "value", "how obtained"),
    ) -> HtmlReport:
        body = "".join(
            f"<tr><td>{html.escape(r.name)}</td>"
            f'<td class="value">{html.escape(format_value(r.value, r.unit))}</td>'
            f'<td class="how">{html.escape(r.how)}</td></tr>'
            for r in rows
        )
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        self._parts.append(f'<table class="figures"><tr>{head}</tr>{body}</table>')
        return self

    def image(self, path: str | Path, caption: str = "", *, css_class: str = "plot") -> HtmlReport:
        src = self._src(path)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img class="{css_class}" src="{src}" alt="{html.escape(caption)}">{cap}</figure>'
        )
        return self

    def grid(self, items: Sequence[GridItem], *, cell_px: int = 96, score_name: str = "score") -> HtmlReport:
        """Images side by side, each with its caption and score (if any) underneath."""
        cells = []
        for it in items:
            score = (
                "" if it.score is None else f"<br><b>{html.escape(score_name)} {format_value(it.score)}</b>"
            )
            cells.append(
                f'<div class="cell"><img src="{self._src(it.image)}" alt="{html.escape(it.caption)}">'
                f"<br>{html.escape(it.caption)}{score}</div>"
            )
        self._parts.append(f'<div class="grid" style="--w: {int(cell_px)}px">{"".join(cells)}</div>')
        return self

    def raw_html(self, fragment: str) -> HtmlReport:
        """Append trusted HTML as it is (the caller escapes any user text in it)."""
        self._parts.append(fragment)
        return self

    # ---- output
    @property
    def images(self) -> list[Path]:
        """Every image file the report refers to (absolute paths)."""
        return list(self._images)

    def render(self) -> str:
        body = "\n".join(self._parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def save(self, name: str = "report.html") -> Path:
        missing = [p for p in self._images if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"the report refers to images that do not exist: {[str(p) for p in missing[:5]]}"
            )
        path = self.out_dir / name
        atomic_write_text(path, self.render())
        return path

    def _src(self, path: str | Path) -> str:
        p = Path(path)
        if not p.is_absolute():
            p = self.out_dir / p
        p = p.resolve()
        self._images.append(p)
        if self.embed:
            if not p.is_file():
                raise FileNotFoundError(f"image not found: {p}")
            return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
        try:
            rel = p.relative_to(self.out_dir.resolve())
        except ValueError:
            raise ValueError(
                f"{p} is not under the report folder {self.out_dir}; copy it there or use embed=True"
            ) from None
        return html.escape(Path(os.path.normpath(rel)).as_posix(), quote=True)


# ---------------------------------------------------------------------------------------------
# PNG writers


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    nrow: int = 8,
    scale: int = 1,
    pad: int = 2,
    pad_value: float = 1.0,
) -> Path:
    """Write ``float[N, 3, H, W]`` in [0, 1] (or uint8) as one PNG grid of ``nrow`` columns.

    ``scale`` enlarges each pixel to ``scale`` × ``scale`` (nearest), which keeps 32 px images crisp.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W] with N >= 1, got {shape}")
    if nrow < 1 or scale < 1 or pad < 0:
        raise ValueError(f"nrow and scale must be >= 1 and pad >= 0, got {nrow}, {scale}, {pad}")
    x = images.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    n, _, h, w = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    canvas = torch.full((3, rows * (h + pad) + pad, cols * (w + pad) + pad), float(pad_value))
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i]
    arr = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', 3)
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plot_curves(
    runs: dict[str, str | Path],
    keys: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    logy: bool = False,
    smooth: int = 1,
) -> Path:
    """Plot ``keys`` against ``step`` from each run's ``metrics.jsonl`` into one PNG.

    ``runs`` maps a legend label to a ``metrics.jsonl`` file or a run folder holding one. One subplot
    per key; rows without the key (or with null) are skipped; ``smooth`` > 1 applies a trailing moving
    average of that many points. A key found in no run is an error (it is most likely misspelt).
    """
    # matplotlib takes a noticeable time to import: only the reports that plot pay it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not keys:
        raise ValueError("plot_curves needs at least one key")
    data = {}
    for label, p in runs.items():
        p = Path(p)
        data[label] = read_metrics(p / "metrics.jsonl" if p.is_dir() else p)
    found = {k for rows in data.values() for r in rows for k, v in r.items() if v is not None}
    absent = [k for k in keys if k not in found]
    if absent:
        raise ValueError(f"no run logs {absent}; logged keys: {sorted(found - {'step', 'time'})}")
    fig = Figure(figsize=(4.2 * len(keys), 3.2))  # no pyplot: no global figure state, no GUI backend
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, rows in data.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
            if not pts:
                continue
            steps, values = zip(*pts)
            values = _moving_average(list(values), smooth)
            ax.plot(
                steps,
                values,
                label=label,
                linewidth=1.3,
                marker="o" if len(steps) < 30 else None,
                markersize=3,
            )
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _moving_average(values: list[float], n: int) -> list[float]:
    if n <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= n:
            acc -= values[i - n]
        out.append(acc / min(i + 1, n))
    return out
