"""F: the fidelity self-check from the TUI, over a replay of the recorded session. The replay
worker has no models, so the worker's answer is posted as it would arrive (the real engine's
run of the same job: tests/integration/test_fidelity_check.py)."""

from dataclasses import replace

from textual.widgets import Static

from nla_tui.core import events as ev
from nla_tui.core.fidelity_report import FidelityReport
from nla_tui.ui.messages import EngineEvent
from nla_tui.ui.screens.fidelity import FidelityScreen
from nla_tui.ui.widgets.status import StatusLine

from tests._support_ui import Holder, async_test, replay_app, settle_replay, wait_until

DRIFTING = FidelityReport(running={"subject": "nf4", "av": "fp32", "ar": "fp32"}, reference="fp32", layer=12,
                          conversations=["fixed conversation (107 tokens)"], positions=106, explained=12,
                          cos_min=0.8996, cos_median=0.9848, fve_reference=0.508, fve_running=0.44,
                          fve_running_vs_reference=0.45, ar_running=0.508, ar_reference=None, ar_abs_delta=0.0,
                          key="k", created="2026-12-06T19:00:00+00:00")


@async_test
async def test_F_runs_the_check_and_shows_its_table_and_the_verdict_on_the_status_line():
    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("F")
        await wait_until(pilot, lambda: any(isinstance(j, ev.CheckFidelity) for j in holder.worker.jobs_seen),
                         "the check job")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, ev.CheckFidelity)][-1]
        assert not job.recheck
        info = replace(app.state.info, quants=DRIFTING.running, quant="subject nf4 · av fp32 · ar fp32",
                       fidelity=DRIFTING.verdict(), fidelity_drifts=True, device="cpu")
        app.post_message(EngineEvent(ev.FidelityChecked(DRIFTING, False, info)))
        await wait_until(pilot, lambda: isinstance(app.screen, FidelityScreen), "the fidelity table")
        table = str(app.screen.query_one("#fidelity-lines", Static).render())
        assert "0.8996 / 0.9848" in table and "verdict: nf4 subject: readouts drift 0.068 fve from fp32" in table
        status = str(app.query_one(StatusLine).render())
        assert "readouts drift from fp32: try --quant auto or --subject-quant fp32" in status
        assert app.state.info.fidelity_drifts  # what the next save and every export carry
        await pilot.press("r")  # run it again, not from the cache
        await wait_until(pilot, lambda: not isinstance(app.screen, FidelityScreen), "the table closed")
        await wait_until(pilot, lambda: [j.recheck for j in holder.worker.jobs_seen
                                         if isinstance(j, ev.CheckFidelity)] == [False, True], "the recheck job")
