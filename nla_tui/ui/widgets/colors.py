"""Heat-map colours for the token strip and its legend.

Colours are picked to stay distinct after Rich downsamples truecolor to the
xterm 256-colour cube (SSH sessions without COLORTERM): three hue families for
fidelity (red / amber / green) and one blue ramp for activation norm.
"""

from __future__ import annotations

from functools import lru_cache

from rich.color import Color as RichColor
from rich.style import Style
from textual.color import Color

from ...core.types import Score

STEPS = 16  # quantisation keeps the style cache tiny and 256-colour output stable

POOR = Color.parse("#8b1e1e")
MEDIOCRE = Color.parse("#9a6a00")
GOOD = Color.parse("#1f7a33")
NORM_LOW = Color.parse("#262b36")
NORM_HIGH = Color.parse("#2f5fb0")
PENDING = Color.parse("#3a3a3a")
SEARCH_HIT = Style(color="#ffffff", bgcolor="#a0259a", bold=True)  # magenta: unlike any heat-map hue

ROLE_COLORS = {
    "bos": "#888888",
    "special": "#888888",
    "system": "#c678dd",
    "user": "#61afef",
    "model": "#e5c07b",
    "tool_call": "#56b6c2",
    "tool_result": "#98c379",
}


def fidelity_t(score: Score) -> float:
    """Map a score onto [0, 1] so the label thresholds land at 1/3 and 2/3.

    fve_nrm: 0 -> 0, 0.3 -> 1/3, 0.6 -> 2/3, 1 -> 1; cos: 0.5 -> 1/3, 0.9 -> 2/3.
    """
    if score.fve_nrm is not None:
        points = ((0.0, 0.0), (0.3, 1 / 3), (0.6, 2 / 3), (1.0, 1.0))
        v = score.fve_nrm
    else:
        points = ((0.0, 0.0), (0.5, 1 / 3), (0.9, 2 / 3), (1.0, 1.0))
        v = score.cos
    if v <= points[0][0]:
        return 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if v <= x1:
            return y0 + (y1 - y0) * (v - x0) / (x1 - x0)
    return 1.0


def _q(t: float) -> int:
    return max(0, min(STEPS, round(t * STEPS)))


def _fidelity_color(q: int) -> Color:
    t = q / STEPS
    if t < 0.5:
        return POOR.blend(MEDIOCRE, t * 2)
    return MEDIOCRE.blend(GOOD, (t - 0.5) * 2)


def _rich(c: Color) -> RichColor:
    return RichColor.from_rgb(c.r, c.g, c.b)


@lru_cache(maxsize=512)
def token_style(kind: str, q: int, odd: bool, cursor: bool, noisy: bool, special: bool,
                hit: bool = False) -> Style:
    """The style of one token cell.

    kind: 'fid' (explained), 'norm' (not yet), 'pending' (reply still streaming).
    odd alternates a slight lightness shift so neighbouring tokens of the same
    colour stay distinguishable.
    """
    if kind == "fid":
        bg = _fidelity_color(q)
    elif kind == "norm":
        bg = NORM_LOW.blend(NORM_HIGH, q / STEPS)
    else:
        bg = PENDING
    if odd:
        bg = bg.lighten(0.06)
    fg = bg.get_contrast_text(1.0)
    if special:
        fg = fg.blend(bg, 0.45)
    if cursor:
        return Style(color=_rich(bg), bgcolor="#f0f0f0", bold=True, underline=noisy)
    if hit:  # a search match: the whole match stands out whatever its score
        return SEARCH_HIT + Style(underline=noisy)
    return Style(color=_rich(fg), bgcolor=_rich(bg), underline=noisy, italic=special)


def fidelity_q(score: Score) -> int:
    return _q(fidelity_t(score))


def norm_q(norm: float, scale: float) -> int:
    """Quantised norm relative to `scale` (a high percentile of the conversation)."""
    if scale <= 0:
        return 0
    return _q(max(0.0, min(1.0, norm / scale)))


def legend_swatch(kind: str, t: float) -> Style:
    return token_style(kind, _q(t), False, False, False, False)
