"""The explanation pane: everything known about the token under the cursor."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from textual.geometry import Size
from textual.renderables.blank import Blank
from textual.scroll_view import ScrollView
from textual.scrollbar import ScrollBar
from textual.strip import Strip

from ...core.types import Candidate, Explanation, Sampling
from ...terminal_text import visible
from ..state import UiState
from .branch_view import branch_lines
from .colors import fidelity_t, legend_swatch
from .strip_layout import display_text
from .textual_private import start_scrollbar, update_scroll

UNTRAINED_NOTE = ("demo pair: the AV is untrained, so these explanations are not faithful "
                  "(they exercise the pipeline only)")
# Wraps and renders the pane's Rich text (no terminal: the width is given per wrap).
_console = Console(width=200, color_system="truecolor", legacy_windows=False, markup=False)
_LABEL_STYLE = {"good": "bold green", "mediocre": "bold yellow", "poor": "bold red",
                "unreliable": "bold magenta"}


def explanation_text(ex: Explanation, label: str) -> str:
    """What `y` copies: the explanation and its score (with its verdict) on one block."""
    s = ex.score
    score = "" if s is None else (
        f"\n[{label}] cos={s.cos:.3f} mse_nrm={s.mse_nrm:.3f}"
        + ("" if s.fve_nrm is None else f" fve_nrm={s.fve_nrm:.3f}"))
    return f"{ex.text}{score}"


def _score_line(ex: Explanation, label: str) -> Text:
    t = Text()
    s = ex.score
    if s is None:
        return Text("score: not scored (no AR)", style="dim")
    t.append(" ", style=legend_swatch("fid", fidelity_t(s)))
    t.append(f" {label} ", style=_LABEL_STYLE[label])
    t.append(f" cos {s.cos:.3f} · mse_nrm {s.mse_nrm:.3f} · fve_nrm ")
    t.append("n/a (no variance baseline)" if s.fve_nrm is None else f"{s.fve_nrm:.3f}")
    return t


def controls_line(c: dict[str, float]) -> str:
    """A sweep's controls (docs/CORPUS.md): how much better the explanation fits its own
    vector than other positions' (specificity), and what a content-free sentence gets (prior)."""
    parts = []
    if "specificity" in c:
        parts.append(f"specificity {c['specificity']:+.2f} (vs {int(c.get('others', 0))} others)")
    if "prior_fve" in c:
        parts.append(f"prior {c['prior_fve']:.2f}")
    return "controls: " + " · ".join(parts) if parts else ""


def _sampling_note(sp: Sampling, prompt: str | None) -> str:
    how = "greedy" if sp.temperature == 0 else f"t={sp.temperature:g} seed={sp.seed}"
    return f"{how} · max {sp.max_new_tokens} tok · prompt: {'custom' if prompt else 'default'}"


SUPPORT_FULL = 0.2  # a sentence whose removal costs this much fidelity is shown at full weight


def shaded_sentences(ex: Explanation) -> Text:
    """The explanation with each sentence shaded by its support (per-sentence fidelity,
    core/nla/sentences.py): bold where leaving it out costs the most, dim where nothing."""
    t = Text()
    full = ex.score.fidelity if ex.score else None
    for n, part in enumerate(ex.sentences or []):
        sup = part.support(full)
        style = ("dim" if sup is None or sup < SUPPORT_FULL / 4 else
                 "bold" if sup >= SUPPORT_FULL else "")
        t.append(" " if n else "")
        t.append(visible(part.text), style=style)
    t.append("\nsentences shaded by support: bold carries most of the vector, dim adds nothing", style="dim italic")
    return t


def lens_view(layers: list[list[Candidate]], av_layer: int | None) -> Text:
    """The logit lens as layers x top-3: what the subject would predict next if it stopped
    at each layer (its final norm and unembedding on that layer's residual). Not learned,
    so it is a check on the AV beside it; the AV's own layer is marked."""
    t = Text()
    t.append("\nlogit lens", style="bold")
    t.append("  layer: the subject's top-3 read through its final norm + unembedding\n", style="dim")
    for k, top in enumerate(layers):
        t.append(f"  L{k:<3}", style="bold cyan" if k == av_layer else "cyan")
        for n, cand in enumerate(top):
            t.append(" · " if n else " ", style="dim")
            t.append(f"“{display_text(cand.text)}”")
            t.append(f" {cand.prob * 100:.0f}%", style="dim")
        t.append("  ◂ AV layer\n" if k == av_layer else "\n", style="bold cyan")
    return t


def pair_section(state: UiState, index: int) -> Text:
    """The extra pair's explanation of the token (--extra-pair), under its label and layer,
    scored by its own AR: the same token read by a second pair, beside the main one."""
    pair = state.pair
    out = Text("\n")
    out.append("extra pair", style="bold underline")
    out.append(visible(f" [{pair.label} · layer {pair.layer}]"), style="cyan")
    exps = state.pair_explanations.get(index, [])
    partial = state.pair_partial.get(index)
    if partial is not None:
        out.append("  (writing…)\n", style="italic dim")
        out.append(visible(partial) or "…", style="italic")
        out.append("\n")
    elif not exps:
        out.append("\nnot explained with this pair yet: press 2\n", style="dim")
    if exps:
        best = exps[0]
        out.append("\n" if partial is None else "previous: ", style="dim")
        out.append_text(_score_line(best, state.verdict(best)))
        out.append("\n")
        for w in best.warnings:
            out.append(f"⚠ {visible(str(w))}\n", style="yellow")
        out.append(_sampling_note(best.sampling, best.prompt) + "\n", style="dim")
        out.append(visible(best.text.strip()) or "(empty)", style="bold" if partial is None else "dim")
        out.append("\n")
    return out


def render_token(state: UiState, index: int) -> Text:
    """The whole pane as Rich Text (kept pure so tests can read it)."""
    out = Text()
    if not 0 <= index < len(state.tokens):
        out.append("No token selected.\n", style="bold")
        out.append("Type a message in the chat box (i) and press Enter, or open a "
                   "transcript (o). Then move along the token strip with ←/→ and press e.",
                   style="dim")
        return out
    tok = state.tokens[index]
    out.append(f"“{display_text(tok.text)}”", style="bold reverse")
    out.append(visible(f" #{tok.index} · id {tok.token_id} · {tok.role} · turn {tok.turn}"))
    ratio = f" ({tok.norm / state.median_norm:.1f}×)" if state.median_norm else ""
    out.append(f" · norm {tok.norm:.1f}{ratio}\n", style="dim")
    for caveat in state.caveats(index):
        out.append(f"⚠ {caveat.text}\n", style="yellow")
    out.append_text(branch_lines(state, index))  # on a branch: the diff against the parent (P: beside it)
    for note in state.notes_at(index):
        out.append(f"✎ {note.span_label()}: ", style="bold green")
        out.append(visible(note.text.strip()) + "\n", style="green")
    exps = state.explanations.get(index, [])
    untrained = state.untrained_av or any(e.untrained_av for e in exps)
    out.append("explanation", style="bold underline")
    if untrained:
        out.append(" [untrained AV: not faithful]", style="magenta")
    elif state.info and state.info.pair_label:
        out.append(f" [{state.info.pair_label}]", style="cyan")
    partial = state.partial.get(index)
    if partial is not None:
        out.append("  (writing…)\n", style="italic dim")
        out.append(visible(partial) or "…", style="italic")
        out.append("\n")
    elif not exps:
        queued = "  (running…)" if state.explaining == index else ""
        out.append(f"{queued}\n")
        if state.read_only:
            out.append("not explained in this session: press L to load the models, then e\n", style="dim")
        else:
            out.append("not explained yet: press e (R for 4 ranked samples, a for all)\n", style="dim")
    if exps:
        best = exps[0]
        # Score and warnings first: an untrained or failed AV can write pages.
        out.append("\n" if partial is None else "previous: ", style="dim")
        out.append_text(_score_line(best, state.verdict(best)))
        out.append("\n")
        for w in state.warnings(index):
            out.append(f"⚠ {visible(str(w))}\n", style="yellow")
        if best.controls:
            out.append(controls_line(best.controls) + "\n")
        out.append(_sampling_note(best.sampling, best.prompt) + "\n", style="dim")
        if best.sentences and best.score is not None and partial is None:
            out.append_text(shaded_sentences(best))
        else:
            out.append(visible(best.text.strip()) or "(empty)", style="bold" if partial is None else "dim")
        out.append("\n")
        if len(exps) > 1:
            out.append("\nother samples, ranked by AR score\n", style="bold")
            for rank, ex in enumerate(exps[1:], 2):
                label = state.verdict(ex)
                fid = f"{ex.score.fidelity:.3f}" if ex.score else "-"
                out.append(f"{rank}. [{label} {fid}] ", style=_LABEL_STYLE.get(label, "dim"))
                out.append(visible(ex.text.strip()) + "\n")
    if state.pair is not None and state.pair_shown:
        out.append_text(pair_section(state, index))
    if tok.top:
        out.append("\nsubject's next-token candidates\n", style="bold")
        for cand in tok.top[:5]:
            bar = "█" * max(1, round(cand.prob * 10)) if cand.prob >= 0.005 else "·"
            out.append(f"  {cand.prob * 100:5.1f}% ", style="cyan")
            out.append(f"{bar:<10} ", style="cyan")
            out.append(f"“{display_text(cand.text)}”\n")
    lens = state.lens.get(index)
    if lens:
        out.append_text(lens_view(lens, state.info.layer if state.info else None))
    if untrained:
        out.append(f"\nnote: {UNTRAINED_NOTE}\n", style="italic magenta")
    elif state.pair_note:
        out.append(visible(f"\nnote: {state.pair_note}\n"), style="italic cyan")
    return out


class _GutterScrollBar(ScrollBar):
    """A vertical scrollbar that is always arranged but draws as a blank gutter
    while the text fits: the pane then never toggles its scrollbar, and each
    toggle was a layout of the whole screen (and a re-wrap at another width)."""

    def render(self):
        if self.window_virtual_size <= self.window_size:
            return Blank(self.parent.background_colors[1])
        return super().render()


class ExplanationPane(ScrollView, can_focus=False):
    """Scrollable side pane; the app calls show(index) on cursor moves and results.

    Line API, like the token strip: show() wraps the new text itself and repaints
    the pane's own region. A Static inside a VerticalScroll changed height on nearly
    every cursor move, and each height change is a layout of the whole screen (every
    chat message included) and a repaint of all of it; that was most of a keypress.
    The scrollbar's column is always reserved (overflow-y: scroll, drawn blank while
    the text fits), so the wrap width never changes and the pane never asks for a
    layout.
    """

    DEFAULT_CSS = """
    ExplanationPane { overflow-x: hidden; overflow-y: scroll; }
    """

    def __init__(self, state: UiState, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.index = -1
        self.text = Text()
        self._lines: list[Strip] = []
        self._wrapped_at = -1  # the width self._lines were wrapped to; -1: stale

    def render(self) -> Text:
        """The pane's text (what tests and copy read); drawing goes through render_line."""
        return self.text

    def show(self, index: int) -> None:
        if index != self.index and self.scroll_offset.y:
            self.scroll_to(y=0, animate=False, immediate=True)
        self.index = index
        self.text = render_token(self.state, index)
        before = len(self._lines)
        self._wrapped_at = -1
        self._fit()
        if self.scroll_offset.y or self._wrapped_at < 0:
            self.refresh()
        else:  # only the rows that held text, before or now: the blank rest stays as it was
            self.refresh_lines(0, max(before, len(self._lines)))

    def _wrap(self, width: int) -> list[Strip]:
        # Rich's own wrap and render: ~1.7 ms for a typical pane against ~12 ms through
        # Textual's Visual pipeline, paid on every cursor move (bench ui).
        width = max(1, width)
        base = self.rich_style
        return [Strip(list(line.render(_console))).apply_style(base).crop(0, width).extend_cell_length(width, base)
                for line in self.text.wrap(_console, width)]

    @property
    def vertical_scrollbar(self) -> ScrollBar:
        if self._vertical_scrollbar is None:
            bar = _GutterScrollBar(vertical=True, name="vertical", thickness=self.scrollbar_size_vertical)
            self._vertical_scrollbar = bar
            bar.display = False
            start_scrollbar(self, bar)
        return self._vertical_scrollbar

    def _fit(self) -> None:
        """Wrap the text to the width beside the (always reserved) scrollbar column and
        set the virtual size without a layout."""
        # container_size still includes the scrollbar's column; overflow-y: scroll
        # always reserves it, so this is the width render_line draws at.
        width = self.container_size.width - self.styles.scrollbar_size_vertical
        if width <= 0:
            return  # not laid out yet: on_resize wraps
        lines = self._wrap(width)
        self._lines, self._wrapped_at = lines, width
        size, old = Size(width, len(lines)), self.virtual_size
        if size != old:
            self.set_reactive(ScrollView.virtual_size, size)
            window = self.scrollable_content_region.height
            if size.height > window or old.height > window:
                # Scrollbar thumb and scroll clamp; skipped while the text fits before and
                # after (repainting the blank bar was ~4 ms of every key).
                update_scroll(self, size)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if self._wrapped_at != width:
            self._lines, self._wrapped_at = self._wrap(width), width
        r = y + int(self.scroll_offset.y)
        if 0 <= r < len(self._lines):
            return self._lines[r]
        # Empty: the styles cache pads it with the pane's own background style, so
        # the rows below the text merge with the padding as a container's did.
        return Strip([])

    def on_resize(self) -> None:
        self._wrapped_at = -1
        self._fit()
