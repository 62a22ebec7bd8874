"""Image grids with captions (the thinking text of each sample), as uint8 arrays or PNG files."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: np.ndarray, captions: list[str] | None = None, *, columns: int = 4,
               scale: int = 4, caption_chars: int = 28, caption_lines: int = 6) -> np.ndarray:
    """Tiles ``images [N, H, W, 3]`` uint8 (upscaled ``scale`` x, nearest) with a caption under
    each; returns ``[rows * (H*scale + text), columns * W*scale, 3]`` uint8."""
    images = np.asarray(images)
    n, h, w, _ = images.shape
    captions = captions or [''] * n
    font = ImageFont.load_default()
    line_h = 11
    text_h = line_h * caption_lines if any(captions) else 0
    cell_w = max(w * scale, caption_chars * 6)
    rows = -(-n // columns)
    canvas = Image.new('RGB', (columns * cell_w, rows * (h * scale + text_h)), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, (im, cap) in enumerate(zip(images, captions)):
        r, c = divmod(i, columns)
        x, y = c * cell_w, r * (h * scale + text_h)
        canvas.paste(Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        lines = textwrap.wrap(cap, caption_chars)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + h * scale + j * line_h), line, fill='black', font=font)
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to ``window - 1`` values before it (a trailing
    average, as long as ``values``)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(path: str, curves: dict[str, tuple[list, list]], *, title: str = '',
                xlabel: str = 'RL step', ylabel: str = 'reward') -> None:
    """A line plot PNG of ``{label: (steps, values)}`` (e.g. training and eval reward)."""
    import matplotlib  # slow import, only where a plot is drawn
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker='o' if len(steps) < 30 else None, markersize=3,
                label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
