"""`nla-tui sweep --ray`: the same sweep on a Ray cluster (optional extra `[cluster]`).

One engine actor per GPU of the cluster (or `actors` of them; on a cluster without GPUs,
one per machine-sized CPU slot), each loading the models once. Waves of shards (sweep.waves,
as in one process) go to whichever actor is free; each actor runs the in-process code
(sweep.explain_wave) and returns the rows, and the driver writes and indexes them with the
same writer (sweep.commit_shard), so resume, manifest and index behave exactly as in one
process. A wave whose actor dies (lost node, out of memory) goes back in the queue for
another actor; the sweep fails only when no actor is left. docs/CORPUS.md, "Several GPUs or nodes".
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError
from .plan import Plan
from .sweep import SweepOptions, SweepProgress, commit_shard, prepare_run, wave_size, waves


def require_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'nla-tui[cluster]' (on every node of the cluster).") from None
    return ray


class EngineActor:
    """Lives in a Ray worker process: one loaded Engine, explaining whole shards."""

    def __init__(self, options, niceness: int = 0):
        from ..runtime.engine import Engine

        # Ray starts workers at niceness 15 so that its own daemons stay responsive; this
        # worker *is* the job, and on a small machine the daemons' share cost the sweep 16-22 %
        # (BENCHMARKS.md). Take the driver's priority back where the OS allows (root or
        # RLIMIT_NICE); a local Ray started by RaySweep starts its workers at 0 anyway.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        except OSError:
            pass
        self.engine = Engine(options)
        self.engine.load()
        self.prior: dict = {}

    def info(self) -> dict:
        return self.engine.info.to_json()

    def wave(self, plan: Plan, wave: list[tuple[int, int]], opts: SweepOptions):
        """[(rows, activations, conversation numbers)] of each (shard, target) in `wave`."""
        from .sweep import explain_wave, prior_reconstruction

        key = opts.prior_text
        if key not in self.prior:
            self.prior[key] = prior_reconstruction(self.engine, opts)
        results = explain_wave(self.engine, plan, wave, opts, self.prior[key])
        return [(rows, acts, [plan.items.index(c) for c in convs]) for rows, acts, convs in results]


class RaySweep:
    def __init__(self, options, address: str | None = None, actors: int | None = None,
                 init_kwargs: dict | None = None):
        ray = require_ray()
        self.ray = ray
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            if address is None and not os.environ.get("RAY_ADDRESS"):  # a local Ray of our own: workers at
                kwargs.setdefault("_system_config", {"worker_niceness": 0})  # the driver's priority (see EngineActor)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **kwargs)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = actors or gpus or 1
        if gpus and n > gpus:
            raise InputError(f"--ray-actors {n}: the cluster has {gpus} GPU(s); one actor per GPU at most.")
        cpus = max(1, int(resources.get("CPU", 1)) // n) if not gpus else 1
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=cpus)(EngineActor)
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        self.actors = [remote.remote(options, niceness) for _ in range(n)]
        try:  # every actor loaded, or the reason now
            infos = ray.get([a.info.remote() for a in self.actors])
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
            why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise InputError(f"A Ray engine actor could not start: {why}") from None
        self.info_json = infos[0]

    def run(self, plan: Plan, out: Path, opts: SweepOptions, limit: int | None = None,
            on_progress: Callable[[SweepProgress], None] | None = None) -> SweepProgress:
        ray = self.ray
        out = Path(out)
        targets, work, db = prepare_run(out, plan, limit)
        total = sum(targets[k] for k in work)
        plan_ref = ray.put(plan)
        size = wave_size(str(self.info_json.get("device", "")), opts)
        queue, idle, running = waves(work, targets, size), list(self.actors), {}
        start, done, finished = time.monotonic(), 0, 0
        progress = SweepProgress(0, total, 0, len(work), 0.0)
        try:
            while queue or running:
                while queue and idle:
                    actor, wave = idle.pop(0), queue.pop(0)
                    running[actor.wave.remote(plan_ref, [(k, targets[k]) for k in wave], opts)] = (actor, wave)
                ready, _ = ray.wait(list(running), num_returns=1)
                actor, wave = running.pop(ready[0])
                try:
                    results = ray.get(ready[0])
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.OutOfMemoryError) as e:
                    queue.insert(0, wave)  # this actor is gone: its wave goes to another
                    if not idle and not running:
                        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                        left = sum(len(w) for w in queue) - 1
                        raise InputError(f"Every Ray actor failed (the last: {why}); shard {wave[0]} and {left} "
                                         f"more are not done. Run the same command again to resume.") from None
                    continue
                idle.append(actor)
                for k, (rows, acts, conv_numbers) in zip(wave, results):
                    commit_shard(out, db, k, rows, acts, [plan.items[c] for c in conv_numbers], opts)
                    done, finished = done + len(rows), finished + 1
                    progress = SweepProgress(done, total, finished, len(work), time.monotonic() - start)
                    if on_progress:
                        on_progress(progress)
        finally:
            db.close()
        return progress

    def shutdown(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
