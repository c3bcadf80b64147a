"""A figure of the demo's plain-word samples: one row per demo run, one column per caption.

Each cell is one of the reranker's best samples for that caption (the PNGs the demo saved under
``images/plain_words``); ``--samples K`` puts K of them side by side per cell. Rows are labelled with
the run's label (e.g. its budget), columns with the caption.

    python experiments/plain_words_figure.py --run demo15:"15 min" --run demo60:"60 min" \
        --samples 2 --out docs/images/quality_by_budget.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PAD = 6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="DEMO_FOLDER[:label], one per row")
    p.add_argument("--samples", type=int, default=2, help="samples per caption and run (default 2)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = []
    for spec in args.run:
        folder, _, label = spec.partition(":")
        record = json.loads((Path(folder) / "showcase.json").read_text())
        if not record.get("plain_words"):
            raise SystemExit(f"{folder}/showcase.json has no plain-word samples (a demo from before they existed)")
        runs.append((Path(folder), label or Path(folder).name, record["plain_words"]))
    captions = [e["caption"] for e in runs[0][2]]
    cell = Image.open(runs[0][0] / runs[0][2][0]["images"][0]).size[0]
    font = ImageFont.load_default()
    label_w, head_h = 70, 30
    col_w = args.samples * cell + (args.samples - 1) * 2
    width = label_w + len(captions) * (col_w + PAD) + PAD
    height = head_h + len(runs) * (cell + PAD) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, caption in enumerate(captions):
        x = label_w + j * (col_w + PAD)
        words, line, lines = caption.split(), "", []
        for w in words:  # wrap the caption to the column
            if draw.textlength(f"{line} {w}".strip(), font=font) > col_w and line:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for k, text in enumerate(lines[:2]):
            draw.text((x, 2 + 12 * k), text, fill="black", font=font)
    for i, (folder, label, entries) in enumerate(runs):
        y = head_h + i * (cell + PAD)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        by_caption = {e["caption"]: e for e in entries}
        for j, caption in enumerate(captions):
            e = by_caption.get(caption)
            if e is None:
                continue
            for k, rel in enumerate(e["images"][: args.samples]):
                img = Image.open(folder / rel).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                canvas.paste(img, (label_w + j * (col_w + PAD) + k * (cell + 2), y))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out} ({width}x{height})")


if __name__ == "__main__":
    main()
