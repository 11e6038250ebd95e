"""The nla-tui application: chat, token strip and explanation pane over one worker.

The app never runs a model: it submits jobs to a worker (core.worker.EngineWorker,
or a ReplayWorker over a saved session) and folds the events it posts back. The
worker's callback runs on the worker thread and only calls `post_message`, which
is thread-safe, so a slow model never blocks a key press.

Messages go up, state comes down: each core event arrives as a typed message
(ui/messages.py; streamed text and progress are coalesced by Textual), is folded once
into UiState, and the widgets redraw from the resulting `Change`. The keys' work is
done by small controllers (find, steer, sessions, inputs), each holding the app as a
typed `AppHost` (ui/host.py); the app binds the keys (ui/keys.py) and hands them over.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.filter import LineFilter
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input

from ..core import events as ev
from ..core.types import Sampling
from ..terminal_text import visible
from .branch_actions import Branching
from .commands import palette_commands
from .find_actions import Finder
from .host import EngineWorkerFactory, WorkerFactory, WorkerLike
from .input_actions import Inputs
from .keys import bindings_for
from .literal import ShowControls
from .note_actions import Notes
from .pair_actions import PairView
from .messages import EngineEvent, ExplainTextArrived, PairTextArrived, ProgressArrived, engine_message
from .options import UiOptions
from .screens.help import HelpScreen
from .screens.fidelity import FidelityScreen
from .session_actions import Sessions
from .saving import SessionKeeper
from .state import Change, UiState
from .steer_actions import Steering
from .widgets.chat import ChatPane
from .widgets.explanation import ExplanationPane, explanation_text
from .widgets.minimap import Minimap
from .widgets.status import ExplainAllBar, Legend, StatusLine, legend_text, status_text
from .widgets.token_strip import TokenStrip

NARROW = 100  # below this many columns the explanation pane folds under the strip
RESAMPLE_TEMPERATURE = 0.7  # r / n from greedy settings: sampling needs some temperature

__all__ = ["EngineWorkerFactory", "NlaApp", "WorkerFactory", "create_app"]


class NlaApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "nla-tui"
    AUTO_FOCUS = "#strip"  # keys drive the strip from the first frame
    BINDINGS = bindings_for("app")  # the one keymap: ui/keys.py

    def __init__(self, worker_factory: WorkerFactory, options: UiOptions | None = None,
                 engine_worker: EngineWorkerFactory | None = None) -> None:
        super().__init__()
        self.worker_factory = worker_factory
        self.engine_worker = engine_worker
        self.options = options or UiOptions()
        self.state = UiState()
        self.worker: WorkerLike | None = None
        self.temperature = 0.0
        self.av_prompt: str | None = None
        self.auto_explain = False
        self._seeds = itertools.count(1)
        self._auto_timer: Timer | None = None
        self.finder = Finder(self)
        self.steering = Steering(self)
        self.inputs = Inputs(self)
        self.sessions = Sessions(self)
        self.notes = Notes(self, self.sessions.keeper, self.sessions.autosave)
        self.branching = Branching(self)
        self.pair_view = PairView(self)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ChatPane(id="chat")
                yield TokenStrip(self.state, id="strip")
                yield Minimap(self.state, id="minimap")
                yield Legend(legend_text(True), id="legend")
            yield ExplanationPane(self.state, id="side")
        yield ExplainAllBar(id="allbar")
        yield StatusLine(id="status")
        yield Footer()

    @property
    def strip(self) -> TokenStrip:
        return self.query_one(TokenStrip)

    @property
    def chat(self) -> ChatPane:
        return self.query_one(ChatPane)

    @property
    def pane(self) -> ExplanationPane:
        return self.query_one(ExplanationPane)

    @property
    def minimap(self) -> Minimap:
        return self.query_one(Minimap)

    @property
    def allbar(self) -> ExplainAllBar:
        return self.query_one(ExplainAllBar)

    @property
    def keeper(self) -> SessionKeeper:
        return self.sessions.keeper

    def find_changed(self) -> None:
        """Shown tokens, matches or the role filter changed: legend and overview follow."""
        strip = self.strip
        self.query_one(Legend).update(legend_text(strip.show_special, self.finder.status(), bool(self.state.changed)))
        self.minimap.update_map(strip.shown_indices, strip.hits)
        self.minimap.set_cursor(strip.cursor)

    def on_mount(self) -> None:
        self.sessions.mount()
        self._fold(self.size.width)
        self.pane.show(-1)
        self.update_status()
        self.strip.type_target = self._type_into_chat
        self.strip.on_cursor = self._cursor_moved
        # Nothing to browse yet: the first keys a newcomer types are a message, not
        # commands (e, a, n, r, t, o are all bound). A conversation arriving later
        # (transcript, saved session) hands the keys to the strip.
        self.chat.input.focus()
        # The worker queues LoadModels itself when built, so the first frame is up
        # (and navigable) while the models load.
        self.worker = self.worker_factory(self.emit)
        self.worker.start()
        if self.options.messages:
            self.inputs.open_transcript(self.options.messages)

    def on_unmount(self) -> None:
        self.sessions.unmount()  # before the worker stops: autosave on exit
        if self.worker is not None:
            self.worker.stop()

    def on_resize(self, event: events.Resize) -> None:
        self._fold(event.size.width)

    def _fold(self, width: int) -> None:
        self.screen.set_class(width < NARROW, "-narrow")
        self.chat.log.set_gap(0 if width < NARROW else 1)

    def emit(self, event: ev.Event) -> None:
        """The worker's callback (worker thread): hand the event to the UI thread as a typed
        message (ui/messages.py: streamed text and progress are coalesced there)."""
        self.post_message(engine_message(event))

    def submit(self, job: ev.Job) -> None:
        if isinstance(job, (ev.Chat, ev.SetConversation)):
            self.forget_example()  # the user's own conversation wins
        if self.worker is not None:
            self.worker.submit(job)

    def forget_example(self) -> None:
        self.inputs.example_pending = False

    # ------------------------------------------------------------ events

    @on(EngineEvent)
    @on(ExplainTextArrived)
    @on(PairTextArrived)
    @on(ProgressArrived)
    def _engine_event(self, message: EngineEvent) -> None:
        """Fold the event into UiState (state.py unpacks it; nothing else does), then
        redraw from what changed."""
        st, strip = self.state, self.strip
        following, had_tokens = strip.follow, bool(st.tokens)
        change = st.apply(message.event)
        if change.chat_started:
            strip.follow = following or strip.cursor < 0
        if change.tokens:
            strip.refresh_tokens()
            strip.set_noted(st.noted_indices())
        if change.captured:
            self.chat.set_messages(st.messages)
        if change.reply:
            self.chat.append_reply(change.reply)
            strip.refresh_pending()
        if change.explained and change.index is not None:
            strip.refresh_index(change.index)
            self.minimap.update_map()
        if change.captured or change.explained:
            self.finder.changed(change)
        if change.captured or change.models or (change.index is not None and change.index == strip.cursor):
            self.pane.show(strip.cursor)
        if change.captured and not had_tokens and st.tokens and self.focused is self.chat.input \
                and not self.chat.input.value:
            strip.focus()  # a loaded conversation (transcript, session) is there to browse
        if change.progress is not None:
            bar = self.allbar
            bar.display = st.all_progress is not None
            bar.show_progress(change.progress.done, change.progress.total, change.progress.eta_s)
        if change.capture is not None:
            bar = self.allbar
            bar.display = st.capture_progress is not None
            bar.show_progress(change.capture.done, change.capture.total, None, "capturing", " tokens")
        if change.ended is not None:
            self._job_ended(change)
        if change.models:
            self.inputs.open_example()
        if change.fidelity is not None:
            self._show_fidelity(change.fidelity)
        self.update_status()
        self.branching.changed(change)
        self.steering.changed(change)
        self.sessions.changed(change)
        if change.captured and self.inputs.example_capturing:
            # The example alone is not the user's work: no session is saved for it
            # until they explain, chat or save (every demo start would leave one).
            self.inputs.example_capturing = False
            self.keeper.mark_saved()

    def _job_ended(self, change: Change) -> None:
        kind = change.ended
        assert kind is not None
        if kind is ev.JobKind.EXPLAIN_ALL:
            self.allbar.display = False
        if kind.is_chat and self.state.reply is None:
            self.strip.refresh_pending()
        if change.failure is not None:
            self.notify(change.failure, title=f"{kind.words} failed", severity="error", timeout=8)
        elif change.cancelled:
            self.notify(f"{kind.words} cancelled", timeout=3)
        self.pane.show(self.strip.cursor)

    def _cursor_moved(self, index: int) -> None:
        self.pane.show(index)
        self.minimap.set_cursor(index)
        if self.auto_explain and self.state.best(index) is None:
            if self._auto_timer is not None:
                self._auto_timer.stop()
            # Debounced: holding → submits once when the cursor settles, and the
            # worker supersedes a queued explain anyway.
            self._auto_timer = self.set_timer(0.25, self.action_explain)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-input":
            return
        text = event.value.strip()
        if not text:
            self.notify("Type a message first.", severity="warning")
            return
        if self.state.reply is not None:
            self.notify("A reply is still streaming; wait for it or press Esc to cancel.",
                        severity="warning")
            return
        self.inputs.warn_control_markers([text])
        event.input.clear()
        self.chat.start_reply(text)
        self.strip.follow = True
        self.submit(ev.Chat(text, self.options.max_new_tokens))
        self.strip.focus()

    def update_status(self) -> None:
        self.query_one(StatusLine).update(
            status_text(self.state, self.temperature, self.auto_explain))

    # ------------------------------------------------------------ actions

    def cursor_index(self) -> int | None:
        index = self.strip.cursor
        if index < 0:
            self.notify("No token yet: chat first (i) or open a transcript (o).",
                        severity="warning")
            return None
        return index

    def sampling(self, resample: bool) -> Sampling:
        if not resample:
            return Sampling(temperature=self.temperature)
        return Sampling(temperature=self.temperature or RESAMPLE_TEMPERATURE, seed=next(self._seeds))

    def needs_models(self, what: str) -> bool:
        """True (and says so, offering L) when a read-only session cannot do `what`."""
        if not self.state.read_only:
            return False
        self.notify(f"Read-only session: {what} needs the models, which are not loaded. "
                    "Press L to load them.", severity="warning", timeout=6)
        return True

    def action_explain(self) -> None:
        index = self.cursor_index()
        if index is None:
            return
        if self.state.best(index) is None and self.needs_models(f"explaining token {index}"):
            return  # a recorded explanation is still shown (the replay has it)
        sampling = self.sampling(False)
        if any(e.sampling == sampling and e.prompt == self.av_prompt for e in self.state.explanations.get(index, [])):
            # Already on screen with these settings: the UI's copy is the one in-memory cache.
            self.notify("Already explained with these settings: r draws a new sample, R four ranked ones.",
                        timeout=3, markup=False)
        else:
            self.submit(ev.Explain(index, sampling, self.av_prompt))
        self.branching.explain_parent_side(index)  # P shown: the parent's side too

    def action_resample(self) -> None:
        index = self.cursor_index()
        if index is not None and not self.needs_models("resampling an explanation"):
            self.submit(ev.Explain(index, self.sampling(True), self.av_prompt, force=True))

    def action_samples(self) -> None:
        index = self.cursor_index()
        if index is not None and not self.needs_models("drawing 4 ranked samples"):
            self.submit(ev.Explain(index, self.sampling(True), self.av_prompt, samples=4,
                                   force=True))

    def on_minimap_jump(self, message: Minimap.Jump) -> None:
        self.strip.set_cursor(message.index)

    def action_explain_all(self, turn_only: bool) -> None:
        index = self.cursor_index()
        if index is None:
            return
        toks = self.state.tokens
        turn = toks[index].turn
        self.start_explain_all([i for i in self.strip.shown_indices if i not in self.state.explanations
                                and (not turn_only or toks[i].turn == turn)])

    def start_explain_all(self, indices: list[int]) -> None:
        """Explain `indices` in the background (a, A and the limited scopes of E)."""
        if not indices:
            self.notify("Every token there is already explained.")
            return
        if self.needs_models("explaining the tokens not recorded"):
            return
        bar = self.allbar
        bar.display = True
        bar.show_progress(0, len(indices), None)
        self.submit(ev.ExplainAll(indices, self.sampling(False), self.av_prompt))

    def action_cancel(self) -> None:
        if isinstance(self.focused, Input):
            # Esc in the message box only leaves it: typing the next message while a
            # reply streams must not cancel that reply.
            self.strip.focus()
            return
        self.steering.clear_compare_mark()
        if self.worker is not None:
            self.worker.cancel_current()
        if self.state.all_progress is None:
            # A queued explain-all is dropped without an event; a running one
            # reports JobFinished(cancelled) and hides the bar itself.
            self.allbar.display = False

    # ------------------------------------------------------------ keys a controller handles
    # ui/keys.py binds these on the app (so help, the palette and docs/TUI.md follow the
    # one keymap); the work is the controller's.

    def action_search(self) -> None:
        self.finder.search()

    def action_match(self, direction: int) -> None:
        self.finder.match(direction)

    def action_jump(self, kind: str, direction: int) -> None:
        self.finder.jump(kind, direction)

    def action_role_filter(self) -> None:
        self.finder.cycle_role_filter()

    def action_map_step(self, direction: int) -> None:
        self.finder.map_step(direction)

    def action_map_mode(self) -> None:
        self.finder.map_mode()

    def action_explain_scope(self) -> None:
        self.finder.explain_scope_dialog()

    def action_steer(self) -> None:
        self.steering.steer()

    def action_compare(self) -> None:
        self.steering.compare()

    def action_temperature(self) -> None:
        self.inputs.temperature()

    def action_prompt(self) -> None:
        self.inputs.prompt()

    def action_open_transcript(self) -> None:
        self.inputs.open_transcript_dialog()

    def action_note(self) -> None:
        self.notes.write_dialog()

    def action_notes(self) -> None:
        self.notes.panel()

    def action_edit_message(self) -> None:
        self.branching.edit_dialog()

    def action_branches(self) -> None:
        self.branching.list_screen()

    def action_compare_parent(self) -> None:
        self.branching.toggle_parent()
    def action_explain_pair(self) -> None:
        self.pair_view.explain_or_toggle()

    def action_save_session(self) -> None:
        self.sessions.save_dialog()

    def action_sessions(self) -> None:
        self.sessions.browse()

    def action_export(self) -> None:
        self.sessions.export_dialog()

    def action_check_fidelity(self, recheck: bool = False) -> None:
        if self.needs_models("the fidelity self-check"):
            return
        self.submit(ev.CheckFidelity(recheck=recheck))
        self.notify("Fidelity self-check started: it loads the subject again in the reference precision "
                    "(minutes on a 27B; a cached result comes at once).", timeout=5, markup=False)

    def _show_fidelity(self, checked: ev.FidelityChecked) -> None:
        def closed(again: bool | None) -> None:
            if again:
                self.action_check_fidelity(recheck=True)
        self.push_screen(FidelityScreen(checked.report, checked.cached), closed)

    def action_load_models(self) -> None:
        self.sessions.load_models()

    def action_corpus(self) -> None:
        self.sessions.corpus.open_dialog()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_special(self) -> None:
        strip = self.strip
        strip.show_special = not strip.show_special
        strip.refresh_tokens()
        self.find_changed()
        self.pane.show(strip.cursor)

    def action_toggle_auto(self) -> None:
        self.auto_explain = not self.auto_explain
        self.notify(f"auto-explain {'on' if self.auto_explain else 'off'}", timeout=2)
        self.update_status()

    def action_copy(self) -> None:
        best = self.state.best(self.strip.cursor) if self.strip.cursor >= 0 else None
        if best is None:
            self.notify("Nothing to copy: explain this token first (e).", severity="warning")
            return
        self.copy_to_clipboard(explanation_text(best, self.state.verdict(best)))
        self.notify("Explanation copied (OSC 52).", timeout=2)

    def action_focus_input(self) -> None:
        self.chat.input.focus()

    def _type_into_chat(self, char: str) -> None:
        self.chat.input.insert_text_at_cursor(char)
        self.chat.input.focus()

    def notify(self, message: str, *, title: str = "", **kwargs: Any) -> None:
        # Job errors and session names are data: never let their control characters out.
        # markup=False: a session named `notes [/tmp/x]` is text, not a Textual markup tag.
        super().notify(visible(str(message)), title=visible(title), **{**kwargs, "markup": False})

    def get_line_filters(self) -> Sequence[LineFilter]:
        # Every widget's lines, last: no control character from data reaches the terminal (ui/literal.py).
        return [*super().get_line_filters(), _SHOW_CONTROLS]

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from self.sessions.commands()
        yield from palette_commands(self)


_SHOW_CONTROLS = ShowControls()


def create_app(worker_factory: WorkerFactory, options: UiOptions | None = None,
               engine_worker: EngineWorkerFactory | None = None) -> NlaApp:
    """The app factory shared by the CLI and the tests (tests pass a ReplayWorker)."""
    from .terminal import apply_color_system

    apply_color_system(options.color_system if options else None)
    return NlaApp(worker_factory, options, engine_worker)
