"""Pictures of a model at an evaluation (docs/PICTURES.md): small PNGs drawn with matplotlib from numpy arrays.

Images are (H, W, 3) arrays, uint8 or float in [0, 1]. Pictures are drawn after every evaluation, so they are
cheap: a grid of images is one mosaic composed in numpy (thumbnails, their frames, the gaps), the PNG's pixels one
for one, with only its labels drawn by matplotlib (no Axes); plots use one Axes, or a stack, in a fixed layout (an
Axes costs ~15 ms, a constrained layout more). Each function writes one PNG (atomically) and returns its path;
none needs torch.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from hlrp_lab.lib.util import atomic_write

DPI = 100  # a mosaic pixel is a PNG pixel
SMALL, LARGE = 40, 96  # thumbnails: images under SMALL or over LARGE pixels high are scaled by a whole factor
BORDER, GAP = 3, 5  # pixels: the frame around a thumbnail, the space between neighbouring frames
EDGE, HIGHLIGHT = "#333333", "#d62728"  # a thumbnail's thin frame; the thick frame of the pair's own code
CELL_FONT, TITLE_FONT = 7, 9  # points
CONFUSION_CODES = 32  # a confusion matrix shows at most this many codes (the most frequent true codes)


def save(figure: Figure, path: Path) -> Path:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
    return path


def save_page(figure: Figure, page: np.ndarray, path: Path) -> Path:
    """``page`` (H, W, 3) in [0, 1] under ``figure``'s black texts (a white figure of H x W pixels): the texts
    drawn by Agg multiply the page, pixel for pixel."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.round(page * np.asarray(canvas.buffer_rgba())[..., :3]).astype(np.uint8)
    atomic_write(path, lambda f: imsave(f, pixels, format="png"))
    return path


def as_float(image: np.ndarray) -> np.ndarray:
    """An image as float in [0, 1]."""
    return image / 255.0 if image.dtype == np.uint8 else np.clip(image, 0.0, 1.0)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` as float in [0, 1], enlarged (pixels repeated) when under SMALL pixels high and shrunk (blocks
    averaged) when over LARGE."""
    image = as_float(image)
    height, width = image.shape[:2]
    if height < SMALL:
        factor = -(-SMALL // height)
        return image.repeat(factor, 0).repeat(factor, 1)
    factor = -(-height // LARGE)
    height, width = height // factor, width // factor
    blocks = image[: height * factor, : width * factor].reshape(height, factor, width, factor, -1)
    return blocks.mean((1, 3))


def heat(values: np.ndarray, top: float) -> np.ndarray:
    """(H, W) values in [0, ``top``] coloured by the inferno colour map, as an (H, W, 3) image."""
    return colormaps["inferno"](np.clip(values / top, 0.0, 1.0))[..., :3]


def text_width(text: str, points: float) -> float:
    """Roughly how many pixels wide ``text`` is in a ``points`` font (its longest line)."""
    return max(len(line) for line in text.split("\n")) * points * DPI / 72 * 0.55


@dataclass(frozen=True)
class Cell:
    """A thumbnail of a mosaic (see ``thumbnail``), the small title above it, framed in red or not."""

    image: np.ndarray
    title: str = ""
    framed: bool = False


@dataclass(frozen=True)
class Row:
    """A row of a mosaic: the label left of its thumbnails, and the heading above the label that starts a group."""

    label: str
    cells: list[Cell]
    heading: str = ""

    def has_band(self) -> bool:
        """Whether the row has text above it (which takes a band of the page)."""
        return bool(self.heading) or any(cell.title for cell in self.cells)


def paste(page: np.ndarray, cell: Cell, y: int, x: int) -> None:
    """``cell`` into ``page`` with the top left corner of its frame at pixel (``y``, ``x``)."""
    height, width = cell.image.shape[:2]
    edge = 0 if cell.framed else BORDER - 1
    colour = to_rgb(HIGHLIGHT if cell.framed else EDGE)
    page[y + edge : y + height + 2 * BORDER - edge, x + edge : x + width + 2 * BORDER - edge] = colour
    page[y + BORDER : y + BORDER + height, x + BORDER : x + BORDER + width] = cell.image


def mosaic(path: Path, rows: list[Row], title: str) -> Path:
    """Rows of thumbnails of one size (a row may have fewer) under ``title``, as one image: a white page, each
    thumbnail in a thin dark frame (a thick red one when ``framed``), the rows' labels at their left, a band of
    text above the rows with titles or a heading. The page is the figure, pixel for pixel: no Axes, no
    resampling, few texts (a matplotlib text costs ~1 ms)."""
    height, width = rows[0].cells[0].image.shape[:2]
    slot_h, slot_w = height + 2 * BORDER, width + 2 * BORDER
    band = round(CELL_FONT * DPI / 72 * 1.6)
    titles = [round(text_width(cell.title, CELL_FONT)) for row in rows for cell in row.cells]
    pitch = GAP + max(slot_w, *titles)
    labels = 2 * GAP + round(
        max(text_width(text, CELL_FONT) for row in rows for text in (row.label, row.heading))
    )
    grid = labels + max(len(row.cells) for row in rows) * pitch
    head = 2 * GAP + round((title.count("\n") + 1) * TITLE_FONT * DPI / 72 * 1.4)
    tops = head + np.cumsum([0] + [band * row.has_band() + slot_h + GAP for row in rows])
    page = np.ones((tops[-1], max(grid, 2 * GAP + round(text_width(title, TITLE_FONT))), 3))
    left = (page.shape[1] - grid) // 2  # the grid centred under the title
    figure = Figure(figsize=(page.shape[1] / DPI, page.shape[0] / DPI), dpi=DPI)

    def text(x: float, y: float, words: str, **options: str | int) -> None:  # at pixel (x, y) of the page
        figure.text(x / page.shape[1], 1 - y / page.shape[0], words, **{"fontsize": CELL_FONT, **options})

    text(page.shape[1] / 2, GAP, title, ha="center", va="top", fontsize=TITLE_FONT)
    for row, top in zip(rows, tops[:-1], strict=True):
        y = top + band * row.has_band()
        if row.heading:
            text(left + GAP, y - 2, row.heading, ha="left", va="bottom", fontweight="bold")
        text(left + labels - GAP, y + slot_h / 2, row.label, ha="right", va="center")
        for c, cell in enumerate(row.cells):
            x = left + labels + c * pitch + (pitch - slot_w) // 2
            paste(page, cell, y, x)
            if cell.title:
                text(x + slot_w / 2, y - 2, cell.title, ha="center", va="bottom")
    return save_page(figure, page, path)


def image_psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of one image in [0, 1]."""
    return float(10 * np.log10(1 / max(np.mean((prediction - target) ** 2), 1e-10)))


def reconstruction(
    path: Path, frame_t: np.ndarray, frame_tk: np.ndarray, predicted: np.ndarray, later: str
) -> Path:
    """Per pair (N, H, W, 3): frame t, frame ``later`` (e.g. "t+1"), the reconstruction, its |error| and the
    |error| of copying frame t (one colour scale for both), with the PSNR of each."""
    frame_t, frame_tk, predicted = as_float(frame_t), as_float(frame_tk), as_float(predicted)
    errors = np.abs(predicted - frame_tk).mean(-1), np.abs(frame_t - frame_tk).mean(-1)
    top = max(float(errors[0].max()), float(errors[1].max()), 1e-3)
    psnrs = [
        (image_psnr(p, tk), image_psnr(t, tk)) for t, tk, p in zip(frame_t, frame_tk, predicted, strict=True)
    ]
    rows = [
        Row(
            f"pair {i}",
            [
                Cell(thumbnail(frame_t[i]), "frame t" if i == 0 else ""),
                Cell(thumbnail(frame_tk[i]), f"frame {later}" if i == 0 else ""),
                Cell(thumbnail(predicted[i]), "reconstruction" if i == 0 else ""),
                Cell(thumbnail(heat(errors[0][i], top)), f"model {model:.1f} dB"),
                Cell(thumbnail(heat(errors[1][i], top)), f"copy t {copy:.1f} dB"),
            ],
        )
        for i, (model, copy) in enumerate(psnrs)
    ]
    title = (
        f"Held-out pairs (t, {later}) and their reconstruction\n"
        f"|error| (one scale, black 0 to yellow {top:.2f}) and PSNR of the model and of copying frame t"
    )
    return mosaic(path, rows, title)


def atlas(
    path: Path, frames: np.ndarray, changes: np.ndarray, codes: np.ndarray, own: np.ndarray, title: str
) -> Path:
    """The latent action atlas: a group of rows per token j, a row per frame f: frame f, then what decoding it
    with each code ``codes[j, c]`` of token j changes (``changes`` (F, J, C, H, W, 3), decoded - frame t),
    amplified on grey; the pair's own code ``own[f, j]`` is framed in red. The codes are named above a group
    when they differ from the group's above."""
    scale = max(float(np.abs(changes).max()), 1e-6)
    shown = np.clip(0.5 + 0.5 * changes / scale, 0, 1)
    rows = []
    for j, token_codes in enumerate(codes):
        named = j == 0 or not np.array_equal(token_codes, codes[j - 1])
        for f, frame in enumerate(frames):
            changed = [
                Cell(
                    thumbnail(shown[f, j, c]),
                    f"code {code}" if named and f == 0 else "",
                    bool(code == own[f, j]),
                )
                for c, code in enumerate(token_codes)
            ]
            first = Cell(thumbnail(frame), "frame t" if j == f == 0 else "")
            rows.append(Row(f"frame {f}", [first, *changed], f"token {j}" if f == 0 else ""))
    note = f"decoded - frame t on grey (x{0.5 / scale:.3g}), the pair's own code framed in red"
    return mosaic(path, rows, f"{title}\n{note}")


def side_by_side(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two images of one size next to each other, a white column between them."""
    gap = np.ones((first.shape[0], max(1, first.shape[1] // 16), 3))
    return np.concatenate([as_float(first), gap, as_float(second)], axis=1)


@dataclass(frozen=True)
class CodeExamples:
    """Held-out transitions (frame t, frame t+k) assigned to ``code`` of ``token``, the ``share`` of all."""

    token: int
    code: int
    share: float
    pairs: list[tuple[np.ndarray, np.ndarray]]


def code_examples(path: Path, examples: list[CodeExamples], title: str) -> Path:
    """One row per code, grouped by token: its share of the held-out pairs, then transitions assigned to it as
    (frame t | frame t+k)."""
    rows = [
        Row(
            f"code {each.code}: {each.share:.0%}",
            [Cell(side_by_side(thumbnail(t), thumbnail(tk))) for t, tk in each.pairs],
            f"token {each.token}" if i == 0 or examples[i - 1].token != each.token else "",
        )
        for i, each in enumerate(examples)
    ]
    return mosaic(path, rows, title)


def plot_figure(
    title: str, size: tuple[float, float], margins: tuple[float, float, float, float], rows: int = 1
) -> tuple[Figure, list[Axes]]:
    """A figure of ``size`` inches: ``title`` on top, ``rows`` plot Axes stacked (sharing x) inside ``margins``
    (inches left, below, right, above them). A fixed layout: a constrained one measures every text, and costs
    more than the plot."""
    (width, height), (left, below, right, above) = size, margins
    figure = Figure(figsize=size, dpi=DPI)
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=below / height, top=1 - above / height, hspace=0.15
    )
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    figure.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return figure, list(axes)


def code_usage(path: Path, counts: np.ndarray) -> Path:
    """The share of held-out pairs assigned to each code (``counts`` (K, C)): bars grouped by code, one colour per
    token (a step line per token over 64 codes), each token's perplexity in the legend."""
    num_tokens, size = counts.shape
    title = f"Code usage on {int(counts[0].sum())} held-out pairs"
    figure, (ax,) = plot_figure(title, (min(5 + size / 8, 10), 3), (0.7, 0.55, 2, 0.4))
    width = 0.8 / num_tokens
    for j, row in enumerate(counts):
        share = row / max(row.sum(), 1)
        used = share[share > 0]
        label = f"token {j}: perplexity {float(np.exp(-(used * np.log(used)).sum())):.1f} of {size}"
        if size <= 64:
            ax.bar(np.arange(size) + (j - (num_tokens - 1) / 2) * width, share, width=width, label=label)
        else:
            ax.stairs(share, np.arange(size + 1) - 0.5, label=label)
    ax.set(xlabel="code", ylabel="share of pairs", ylim=(0, 1), xlim=(-0.5, size - 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return save(figure, path)


def confusion_codes(counts: np.ndarray) -> np.ndarray:
    """The codes a confusion matrix shows: all, or the ``CONFUSION_CODES`` most frequent LAQ codes over all
    tokens (``counts`` (K, C)), in code order."""
    return np.sort(np.argsort(-counts.sum(0), kind="stable")[:CONFUSION_CODES])


def confusion(path: Path, matrices: np.ndarray, codes: np.ndarray, size: int) -> Path:
    """Per token, the row-normalised confusion matrix (``matrices`` (K, S, S): LAQ code x predicted code, over
    ``codes`` of a codebook of ``size``), side by side on one Axes."""
    num_tokens, shown = matrices.shape[:2]
    starts = np.arange(num_tokens) * (shown + 1)  # a blank column between tokens
    blocks = np.full((shown, starts[-1] + shown), np.nan)
    for start, matrix in zip(starts, matrices, strict=True):
        blocks[:, start : start + shown] = matrix
    note = "" if size <= CONFUSION_CODES else f" ({CONFUSION_CODES} most frequent LAQ codes of {size})"
    width = min(2 + 0.25 * blocks.shape[1], 16)
    title = f"Predicted vs LAQ code per token, rows sum to 1{note}"
    figure, (ax,) = plot_figure(title, (width, 3.8), (0.7, 0.55, 1, 0.7))
    image = ax.imshow(blocks, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ticks = np.arange(shown) if shown <= 16 else np.arange(0, shown, shown // 8)
    ax.set_xticks((starts[:, None] + ticks).ravel(), np.tile(codes[ticks], num_tokens), fontsize=7)
    ax.set_yticks(ticks, codes[ticks], fontsize=7)
    ax.tick_params(length=2)
    ax.spines[:].set_visible(False)
    for j, start in enumerate(starts):
        ax.add_patch(
            Rectangle((start - 0.5, -0.5), shown, shown, fill=False, edgecolor="#999999", linewidth=0.8)
        )
        ax.text(start + (shown - 1) / 2, -0.7, f"token {j}", ha="center", va="bottom", fontsize=9)
    ax.set(xlabel="predicted code", ylabel="LAQ code")
    place = ax.get_position()
    figure.colorbar(
        image, cax=figure.add_axes((place.x1 + 0.2 / width, place.y0, 0.12 / width, place.height))
    )
    return save(figure, path)


def topk(path: Path, accuracy: np.ndarray) -> Path:
    """Per token, top-k accuracy for k = 1..C (``accuracy`` (K, C)) against chance k/C."""
    size = accuracy.shape[1]
    ks = np.arange(1, size + 1)
    figure, (ax,) = plot_figure("Top-k accuracy of the predicted codes", (4.5, 3.2), (0.7, 0.55, 0.2, 0.4))
    for j, row in enumerate(accuracy):
        ax.plot(ks, row, marker="." if size <= 32 else None, label=f"token {j}")
    ax.plot(ks, ks / size, linestyle="--", color="grey", label="chance")
    ax.set(xlabel="k", ylabel="accuracy", ylim=(0, 1.02), xscale="log" if size > 32 else "linear")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save(figure, path)


@dataclass(frozen=True)
class Trace:
    """The actions of one episode's consecutive frames: true and predicted (T, A), in robot units."""

    label: str
    true: np.ndarray
    predicted: np.ndarray


def end_to_end(actions: list[np.ndarray], d: int) -> np.ndarray:
    """Dimension ``d`` of each episode's actions (T, A), one after the other, a NaN (a break in a line) after each."""
    return np.concatenate([np.append(values[:, d], np.nan) for values in actions])


def action_traces(path: Path, traces: list[Trace]) -> Path:
    """One panel per action dimension, the episodes side by side (a grey line between them): true (black) and
    predicted (red) action over each episode's frames."""
    dims, longest = traces[0].true.shape[1], max(len(trace.true) for trace in traces)
    gap = longest // 10  # frames between two episodes
    starts = np.cumsum([0] + [len(trace.true) + gap for trace in traces])[:-1]
    x = np.concatenate([start + np.arange(len(t.true) + 1) for start, t in zip(starts, traces, strict=True)])
    title = "Predicted (red) vs true (black) actions on held-out episodes"
    figure, axes = plot_figure(title, (1 + 4 * len(traces), 1.2 * dims + 0.9), (0.75, 0.45, 0.2, 0.65), dims)
    for d, ax in enumerate(axes):
        ax.plot(x, end_to_end([trace.true for trace in traces], d), color="black", linewidth=1.2)
        ax.plot(x, end_to_end([trace.predicted for trace in traces], d), color=HIGHLIGHT, linewidth=1.2)
        ax.set_ylabel(f"action[{d}]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(3))
        for start in starts[1:]:
            ax.axvline(start - gap / 2, color="grey", linewidth=0.8)
    frames = MaxNLocator(4, integer=True).tick_values(0, longest - 1).astype(int)
    ticks = [
        (start + f, f)
        for start, t in zip(starts, traces, strict=True)
        for f in frames
        if 0 <= f < len(t.true)
    ]
    axes[-1].set_xticks(*zip(*ticks, strict=True))
    axes[-1].set(xlabel="frame of the episode", xlim=(-1, x[-1]))
    above = axes[0].get_xaxis_transform()  # x in data, y in axes fraction
    for start, trace in zip(starts, traces, strict=True):
        axes[0].text(start + len(trace.true) / 2, 1.04, trace.label, transform=above, ha="center", fontsize=8)
    return save(figure, path)


def success(path: Path, rates: dict[str, float], overall: float, episodes: str) -> Path:
    """Closed-loop success rate per task and over all episodes (``episodes``: how many, e.g. "10 per task")."""
    names, values = [*rates, "all tasks"], [*rates.values(), overall]
    left = 0.2 + text_width(max(names, key=len), 8) / DPI
    title = f"Closed-loop success ({episodes} episodes)"
    figure, (ax,) = plot_figure(title, (6, 0.3 * len(names) + 1), (left, 0.5, 0.2, 0.35))
    bars = ax.barh(np.arange(len(names)), values, color=["#1f77b4"] * len(rates) + ["#555555"])
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), xlabel="success rate")
    ax.grid(axis="x", alpha=0.3)
    return save(figure, path)
