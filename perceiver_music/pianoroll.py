"""Piano-roll pictures (PNG) of a NoteSequence: the primer in one colour, the continuation in another.

Drawn with matplotlib's object API (a `Figure` on an Agg canvas, never pyplot), so no global
figure state is shared and the web app can draw from several threads at once. note_seq's own
`plot_sequence` needs bokeh 2 and is broken with bokeh 3.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

PRIMER_COLOUR = "#3b6fb6"  # blue
CONTINUATION_COLOUR = "#e07b39"  # orange
SEAM_COLOUR = "#222222"
DRUM_COLOUR = "#777777"
MIN_PITCH_SPAN = 24  # semitones shown at least, so a few notes do not fill the picture
EMPTY_PITCH_RANGE = (48, 84)  # C3..C6 for a blank roll
MIN_OPACITY = 0.25  # velocity 1 is still visible; velocity 127 is opaque


def _as_sequence(ns: Any):
    if isinstance(ns, (list, tuple, np.ndarray)):  # token ids from the model
        from .tokenizer import decode

        return decode(ns)
    return ns


def _note_arrays(ns) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start, end, pitch and velocity of the pitched (non-drum) notes."""
    notes = [n for n in ns.notes if not n.is_drum]
    start = np.array([n.start_time for n in notes], dtype=float)
    end = np.array([n.end_time for n in notes], dtype=float)
    pitch = np.array([n.pitch for n in notes], dtype=int)
    velocity = np.array([n.velocity for n in notes], dtype=float)
    return start, end, pitch, velocity


def _pitch_range(pitch: np.ndarray) -> tuple[int, int]:
    if pitch.size == 0:
        return EMPTY_PITCH_RANGE
    low, high = int(pitch.min()) - 2, int(pitch.max()) + 2
    missing = MIN_PITCH_SPAN - (high - low)
    if missing > 0:
        low -= missing // 2
        high += missing - missing // 2
    return max(0, low), min(127, high)


def _note_name(pitch: int) -> str:
    return f"C{pitch // 12 - 1}"  # only Cs are labelled: MIDI 60 is C4


def _colours(start: np.ndarray, velocity: np.ndarray, seam_seconds: float | None) -> np.ndarray:
    from matplotlib.colors import to_rgba

    primer, continuation = np.array(to_rgba(PRIMER_COLOUR)), np.array(to_rgba(CONTINUATION_COLOUR))
    # A note belongs to the part it starts in: a primer chord held across the seam stays blue.
    after = np.zeros(start.shape, dtype=bool) if seam_seconds is None else start >= seam_seconds - 1e-9
    colours = np.where(after[:, None], continuation, primer)
    colours[:, 3] = MIN_OPACITY + (1.0 - MIN_OPACITY) * np.clip(velocity, 0, 127) / 127.0
    return colours


def pianoroll_png(
    ns: Any,
    seam_seconds: float | None = None,
    title: str | None = None,
    width_px: int = 1200,
    height_px: int = 360,
    time_offset: float = 0.0,
) -> bytes:
    """A PNG of the notes: time across, pitch up, velocity as opacity, and the seam marked.

    `ns` is a NoteSequence or a list of token ids. Notes that start before `seam_seconds` are
    the primer's colour, the rest the continuation's; an empty sequence gives a blank roll.
    Drum notes are ticks in a lane under the lowest pitch. `time_offset` is added to the times
    on the axis (a roll of a piece's last seconds is labelled in the piece's own seconds).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    if not (16 <= int(width_px) <= 10000 and 16 <= int(height_px) <= 10000):
        raise ValueError(f"a piano roll of {width_px}x{height_px} pixels is out of range (16 to 10000)")
    ns = _as_sequence(ns)
    start, end, pitch, velocity = _note_arrays(ns)
    drums = np.array([n.start_time for n in ns.notes if n.is_drum], dtype=float)
    low, high = _pitch_range(pitch)
    lane = max(3, (high - low) // 8)  # the drum lane, under the lowest pitch
    if drums.size:
        low -= lane
    last = float(max(end.max() if end.size else 0.0, drums.max() if drums.size else 0.0, 1.0))
    if seam_seconds is not None:  # room after the seam for its label, even before any continuation
        last = max(last, seam_seconds + max(1.0, 0.15 * seam_seconds))
    start, end, drums = start + time_offset, end + time_offset, drums + time_offset
    if seam_seconds is not None:
        seam_seconds = seam_seconds + time_offset

    dpi = 100
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_xlim(time_offset, time_offset + last * 1.01)
    axes.set_ylim(low - 0.5, high + 0.5)
    axes.set_xlabel("seconds")
    octaves = [p for p in range(low + (lane if drums.size else 0), high + 1) if p % 12 == 0]
    axes.set_yticks(octaves, [_note_name(p) for p in octaves])
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    if title:
        axes.set_title(title, fontsize=10)

    if start.size:
        # One PolyCollection for all notes: thousands of notes draw in milliseconds.
        shortest = last / width_px  # a very short note is still one pixel wide
        right = np.maximum(end, start + shortest)
        boxes = np.stack(
            [
                np.stack([start, pitch - 0.4], axis=1),
                np.stack([start, pitch + 0.4], axis=1),
                np.stack([right, pitch + 0.4], axis=1),
                np.stack([right, pitch - 0.4], axis=1),
            ],
            axis=1,
        )
        axes.add_collection(
            PolyCollection(boxes, facecolors=_colours(start, velocity, seam_seconds), edgecolors="none")
        )
    elif not drums.size:
        axes.text(0.5, 0.5, "no notes", transform=axes.transAxes, ha="center", va="center", color="#888888")
    if drums.size:
        axes.vlines(drums, low - 0.4, low + lane - 1.4, colors=DRUM_COLOUR, linewidth=0.8)
        axes.axhline(low + lane - 0.9, color="#cccccc", linewidth=0.6)
        axes.text(time_offset, low + lane - 0.9, " drums", va="bottom", ha="left", fontsize=7, color=DRUM_COLOUR)

    if seam_seconds is not None:
        axes.axvline(seam_seconds, color=SEAM_COLOUR, linewidth=1.2, linestyle="--")
        top = high + 0.3
        label = dict(va="top", fontsize=8, bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=1))
        axes.text(seam_seconds, top, "\u2190 primer ", ha="right", color=PRIMER_COLOUR, **label)
        axes.text(seam_seconds, top, " continuation \u2192", ha="left", color=CONTINUATION_COLOUR, **label)

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def pianoroll_svg(
    notes: Sequence[Any],
    seam_seconds: float | None,
    span_seconds: float,
    now_seconds: float | None = None,
    time_offset: float = 0.0,
    width: int = 1000,
    height: int = 220,
) -> str:
    """A light SVG piano roll for the live view (drawn many times a second while the music is
    written; matplotlib would cost ~0.2 s a frame). The same colours as `pianoroll_png`: the
    primer blue, the continuation orange, the seam dashed, drums as ticks in a bottom lane, and
    a thin line where the writing has got to (`now_seconds`)."""
    pitched = [n for n in notes if not n.is_drum]
    drums = [n for n in notes if n.is_drum]
    low, high = _pitch_range(np.array([n.pitch for n in pitched], dtype=int))
    lane = max(3, (high - low) // 8)
    lanes = high - low + 1 + (lane if drums else 0)
    span = max(float(span_seconds), 1.0)
    left, bottom = 34.0, 16.0
    plot_w, plot_h = width - left - 4, height - bottom - 4
    x = lambda t: left + plot_w * min(max(t, 0.0), span) / span  # noqa: E731
    row = plot_h / lanes
    y = lambda p: 4 + (high - p) * row  # noqa: E731
    seam = seam_seconds if seam_seconds is not None else -1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
           f'preserveAspectRatio="none" role="img" aria-label="piano roll">',
           f'<rect x="{left}" y="4" width="{plot_w:.1f}" height="{plot_h:.1f}" fill="#fafafa" stroke="#ddd"/>']
    for p in range(low, high + 1):
        if p % 12 == 0:
            out.append(f'<text x="{left - 3}" y="{y(p) + row:.1f}" font-size="9" text-anchor="end" fill="#666">'
                       f'{_note_name(p)}</text>')
    for n in pitched:
        colour = CONTINUATION_COLOUR if n.start_time >= seam - 1e-9 and seam >= 0 else PRIMER_COLOUR
        opacity = MIN_OPACITY + (1.0 - MIN_OPACITY) * min(127, max(0, n.velocity)) / 127.0
        w = max(x(n.end_time) - x(n.start_time), 1.0)
        out.append(f'<rect x="{x(n.start_time):.1f}" y="{y(n.pitch):.1f}" width="{w:.1f}" height="{max(row, 1):.1f}" '
                   f'fill="{colour}" fill-opacity="{opacity:.2f}"/>')
    if drums:
        top = 4 + plot_h - (lane - 0.5) * row
        for n in drums:
            out.append(f'<rect x="{x(n.start_time):.1f}" y="{top:.1f}" width="1" height="{(lane - 1) * row:.1f}" '
                       f'fill="{DRUM_COLOUR}"/>')
    if seam >= 0:
        out.append(f'<line x1="{x(seam):.1f}" y1="4" x2="{x(seam):.1f}" y2="{4 + plot_h:.1f}" stroke="{SEAM_COLOUR}" '
                   'stroke-dasharray="4 3"/>')
    if now_seconds is not None:
        out.append(f'<line class="pm-now" x1="{x(now_seconds):.1f}" y1="4" x2="{x(now_seconds):.1f}" '
                   f'y2="{4 + plot_h:.1f}" stroke="{CONTINUATION_COLOUR}" stroke-width="1.5"/>')
    step = 1 if span <= 12 else 2 if span <= 25 else 5 if span <= 60 else 10 if span <= 120 else 30
    import math

    label = math.ceil(time_offset / step - 1e-9) * step  # round times of the piece itself
    while label - time_offset <= span + 1e-9:
        out.append(f'<text x="{x(label - time_offset):.1f}" y="{height - 3}" font-size="9" text-anchor="middle" '
                   f'fill="#666">{label:g}</text>')
        label += step
    out.append("</svg>")
    return "".join(out)


__all__: Sequence[str] = ("pianoroll_png", "pianoroll_svg")
