"""Populations in the training loop: M members of one task trained at once, each writing the run folder
its solo run would write.

The loop is the solo engine's (repro/engine.py, `Trainer`); what differs is per member and lives here:
the update runs on the stacked parameters (repro/population.py) with per-member optimizer and filter
(repro/population_optim.py, repro/population_filter.py), every evaluation yields a value per member,
and at each flush every member is checked on its own: a member whose loss turned non-finite, or whose
validation accuracy held the early-stop threshold, is stopped there (its parameters and state no longer
change, its folder is closed with its summary) while the others go on.
"""
import dataclasses
import os
import sys

import torch

from repro import checkpoint as ckpt
from repro.config import Config
from repro.distributed import resolve_device
from repro.engine import NO_EARLIER_SEGMENTS, Trainer
from repro.errors import RunAlreadyFinished, UserError
from repro.graphs import GraphedEvaluate, GraphedTrainStep
from repro.metrics import early_stop
from repro.population import Population, check_member_configs, unsupported_flags
from repro.population_filter import make_stacked_filter
from repro.population_optim import make_stacked_optimizer
from repro.precision import Precision, set_tf32
from repro.run_folder import RunFolder, out_dir_for
from repro.step import TWO_STAGE_STEPS, warmup_factor


@dataclasses.dataclass
class Member:
    cfg: Config
    folder: RunFolder
    state: dict | None  # the checkpoint it resumes from
    stopped: str = "budget"
    streak: int = 0
    done: bool = False  # its folder is closed: summary written, nothing more to do


class PopulationTask:
    """The template task's interface with the population's calls: every tensor it returns is per member."""

    def __init__(self, population: Population):
        self.population, self.template = population, population.template
        self.name, self.model = self.template.name, self.template.model

    def is_eval_step(self, step: int) -> bool:
        return self.template.is_eval_step(step)

    def train_metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.population.train_metrics(sums)

    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        return self.population.evaluate(step)

    def eval_graph_key(self, step: int):
        return self.template.eval_graph_key(step)

    def stage_eval(self, step: int) -> None:
        self.template.stage_eval(step)

    def table_metrics(self, records: list[dict]) -> dict:
        return self.template.table_metrics(records)


def refuse_unsupported(cfg: Config) -> None:
    unsupported = unsupported_flags(cfg)
    if unsupported:
        raise UserError(f"a population does not support {', '.join(unsupported)}: run those members solo")


class PopulationStep:
    """The population's update (forward + backward of every member, then clip -> filter -> optimizer
    step, each masked to the active members) and evaluation, eager or replayed as CUDA graphs."""

    def __init__(self, cfgs: list[Config], population: Population, device: torch.device):
        self.cfg, self.population = cfgs[0], population
        self.optimizer = make_stacked_optimizer(cfgs, population.flat)
        self.filter = make_stacked_filter(cfgs, population.flat)
        self.max_norms = torch.tensor([c.clip_grad_norm for c in cfgs], device=device)
        if self.cfg.compile:  # fuses the elementwise work around the matmuls (on an H200 at 64-128 members:
            # the loss alone 1.2-1.3x, results/bench; with update and evaluation 1.35-1.5x, docs/performance.md);
            # compiles at the first step. Not MA's filter: its ring position is a Python int that changes
            # every step, so it would recompile each time
            population.loss_and_sums = torch.compile(population.loss_and_sums)
            population.evaluate = torch.compile(population.evaluate)
            self.optimizer.apply = torch.compile(self.optimizer.apply)  # its per-member scalars stay eager
            if self.filter and self.filter.kind == "ema":
                self.filter.step = torch.compile(self.filter.step)
        self.clips = any(c.clip_grad_norm for c in cfgs)
        self.active = torch.ones(population.size, dtype=torch.bool, device=device)
        refuse_unsupported(self.cfg)
        self.precision = Precision(self.cfg.amp, device)
        graphs = self.cfg.cuda_graphs and device.type == "cuda"
        self.use_graphs = graphs  # bf16's autocast too (fp16 is refused above)
        self.graphed_step, self.eager_step_done = None, False
        task = PopulationTask(population)
        self.graphed_eval = GraphedEvaluate(task) if graphs and population.template.graph_safe_eval else None
        self.task, self.skipped_steps = task, 0

    def pipeline(self) -> list:
        phases = [(lambda: self.population.clip_grad_norms_(self.max_norms), True)] if self.clips else []
        if self.filter:
            phases.append((lambda: self.filter.step(self.active),
                           self.filter.kind == "ema" and not self.cfg.two_stage))
        phases.append((lambda: self.optimizer.step(self.active), True))
        return phases

    def _loss_and_sums(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(the members' summed loss, for backward; [losses | sums] per member, flattened)."""
        with self.precision.autocast():
            losses, sums = self.population.loss_and_sums(batch)
        rows = losses[:, None] if sums is None else torch.cat([losses[:, None], sums.to(losses.dtype)], 1)
        return losses.sum(), rows.reshape(-1)

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update `step` of every active member -> (losses [M], the task's batch sums [M, k] or None)."""
        cfg = self.cfg
        if step <= cfg.warmup_steps:
            self.optimizer.set_lr_factor(warmup_factor(cfg, step))
        if self.filter and cfg.two_stage:
            self.filter.enabled = step >= TWO_STAGE_STEPS
        batch = self.population.train_batch(step)
        if self.use_graphs and step > cfg.warmup_steps and self.eager_step_done:
            if self.graphed_step is None:
                self.graphed_step = GraphedTrainStep(self._loss_and_sums, [self.population.flat], self.pipeline())
            _, rows = self.graphed_step(batch)
        else:
            flat = self.population.flat
            if self.use_graphs and flat.grad is not None:  # graphs need a .grad that stays put
                flat.grad.zero_()
            else:
                flat.grad = None
            loss, rows = self._loss_and_sums(batch)
            loss.backward()  # exact per member: members share no parameter
            rows = rows.detach()
            for phase, _ in self.pipeline():
                phase()
            self.eager_step_done = True
        rows = rows.reshape(self.population.size, -1)
        return rows[:, 0], (rows[:, 1:] if rows.shape[1] > 1 else None)

    def keep_(self, rows: list[int]) -> None:
        """Only the members in `rows` go on: the stack, the optimizer's and filter's state and the
        per-member vectors shrink to them; the CUDA graphs are captured anew for the new shapes."""
        self.population.keep_(rows)
        self.optimizer.keep_(rows, self.population.flat)
        if self.filter:
            self.filter.keep_(rows, self.population.flat)
        self.max_norms, self.active = self.max_norms[rows], self.active[rows]
        self.graphed_step, self.eager_step_done = None, False
        if self.graphed_eval:
            self.graphed_eval = GraphedEvaluate(self.task)

    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        key = self.task.eval_graph_key(step) if self.graphed_eval else None
        return self.task.evaluate(step) if key is None else self.graphed_eval(step, key)


def rows_to_keep(done: list[bool], compiled: bool) -> list[int] | None:
    """The stack's rows to keep once members have stopped, or None to keep them all.

    A population computes every row it holds (a stopped member's, masked, too), so a sweep whose members
    stop at different times would pay for each until its last member stops. The stack drops its stopped
    members once that at least halves it, which bounds the re-captures (and, compiled, the recompilations
    for a new member count) to log2(members). A compiled stack keeps two rows rather than one (a stopped
    member stays, masked): torch.compile specialises a dimension of size 1 and would compile everything
    again; two reuse what a first shrink compiled, shapes generic."""
    keep = [i for i, stopped in enumerate(done) if not stopped]
    if compiled and len(keep) == 1 and len(done) > 1:
        keep = sorted(keep + [done.index(True)])
    return keep if 2 * len(keep) <= len(done) else None


class PopulationTrainer(Trainer):
    """Trainer's loop over a population; `members` holds each member's folder and stop, in the order of
    the population's rows; `closed` the members dropped from the stack (see _compact)."""

    def __init__(self, cfgs: list[Config], task_cls, argv: list[str] | None = None):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("a population trains in one process: run it without torchrun")
        check_member_configs(cfgs)
        refuse_unsupported(cfgs[0])  # before any member's folder is opened
        set_tf32(cfgs[0].tf32)  # shared: not a member field
        self.device, self.dist, self.is_main = resolve_device(cfgs[0].device), None, True
        tasks = [task_cls(cfg, self.device) for cfg in cfgs]
        self.members, tasks = self._open_members(cfgs, tasks)
        self.closed, self.population_size = [], len(self.members)
        steps = {m.state["step"] if m.state else 0 for m in self.members}
        try:
            if len(steps) > 1:
                raise UserError(f"population members are at different steps {sorted(steps)}: resume them separately")
            self.population = Population(tasks)
            self.runner = PopulationStep([m.cfg for m in self.members], self.population, self.device)
        except BaseException:
            self._close_all()
            raise
        self.task, self.cfg = self.runner.task, self.members[0].cfg
        self.step, self.window_sums, self.checkpoint_step = steps.pop(), [], None
        self.previous = dict(NO_EARLIER_SEGMENTS)
        if self.step:
            self._load_members()
        paths = [str(m.folder.path) for m in self.members]
        for i, m in enumerate(self.members):
            m.folder.write_start(m.cfg, self.device, argv, resumed_at=self.step if m.state else None,
                                 extra={"population": {"size": len(paths), "index": i, "members": paths}})
        self.folder = self.members[0].folder  # the loop's progress bar and timers name it
        self.out_dir = self.folder.path.parent
        self.stopped, self.interrupted = "budget", None

    def _open_members(self, cfgs: list[Config], tasks: list) -> tuple[list[Member], list]:
        """Each member's folder, locked; a member whose run is finished is left out (and says so)."""
        members, kept = [], []
        for cfg, task in zip(cfgs, tasks):
            folder = RunFolder(out_dir_for(cfg, task.run_name_part()))
            try:
                cfg, state = folder.open(cfg, self.device)
            except RunAlreadyFinished as done:
                print(done)
                continue
            except BaseException:
                for m in members:
                    m.folder.close()
                raise
            members.append(Member(cfg, folder, state))
            kept.append(task)
        if not members:
            raise RunAlreadyFinished("nothing to do: every member's run is finished")
        return members, kept

    def _close_all(self) -> None:
        for m in self.members:
            m.folder.close()

    def _load_members(self) -> None:
        states = [m.state for m in self.members]
        self.population.load_member_state_dicts([s["model"] for s in states])
        self.runner.optimizer.load_member_state_dicts([s["optimizer"] for s in states], self.population.layout)
        if self.runner.filter:
            self.runner.filter.load_member_state_dicts([s["filter"] for s in states], self.population.layout)
        ckpt.set_rng_state(states[0]["rng"])
        for key in self.previous:
            self.previous[key] = states[0].get(key, self.previous[key])
        sums = [s.get("train_sums") for s in states]
        if all(x is not None for x in sums):
            self.window_sums = [torch.stack(sums)]
        for m in self.members:
            m.streak = early_stop(m.folder.log.records, m.cfg.early_stop_acc, m.cfg.early_stop_patience)[0]

    # ---- per-member bookkeeping -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.clock.sync()
        sums = self._train_sums()
        layout, totals = self.population.layout, self._totals()
        for i, m in enumerate(self.members):
            if not m.done:
                self._save_member(i, m, sums, layout, totals)
        self.checkpoint_step = self.step

    def _save_member(self, i: int, m: Member, sums, layout, totals: dict) -> None:
        runner = self.runner
        use_filter = runner.filter is not None and m.cfg.filter != "none"
        state = {"model": self.population.member_state_dict(i),
                 "optimizer": runner.optimizer.member_state_dict(i, layout),
                 "filter": runner.filter.member_state_dict(i, layout) if use_filter else None,
                 "scaler": None, "config": m.cfg.to_dict(), "step": self.step, "rng": ckpt.rng_state(),
                 "train_sums": None if sums is None else sums[i],
                 "num_records": sum(1 for r in m.folder.log.records if r["step"] <= self.step), **totals}
        m.folder.save_checkpoint(state)

    def _check_early_stop(self, new_records: list[dict]) -> None:
        """Per member instead: in _flush, and for resumed records in _load_members."""

    def _check_finite(self, losses: torch.Tensor, first_step: int) -> None:
        """Per member: a non-finite loss since the last flush stops that member."""
        if self.cfg.on_nonfinite != "stop" or not len(losses):
            return
        params_finite = torch.isfinite(self.population.flat.detach()).all(1).cpu()
        for i, m in enumerate(self.members):
            if m.done or m.stopped != "budget":
                continue
            bad = (~torch.isfinite(losses[:, i])).nonzero()
            if len(bad):
                m.stopped = f"non-finite training loss at step {first_step + int(bad[0]) + 1}"
            elif not params_finite[i]:
                m.stopped = f"non-finite parameters in steps {first_step + 1}-{self.step}"

    def _flush(self) -> None:
        """The solo flush on per-member values: each member's records go to its own log."""
        pending = self.pending_evals
        self.pending_evals = []
        super()._flush()  # losses, timers, progress; and _check_finite per member
        if pending:
            flat = torch.cat([torch.stack([v.float() for v in ev.values()]) for _, ev, _ in pending]).cpu()
            offset, rows = 0, []
            for step, ev, mark in pending:
                elapsed = round(self.previous["elapsed_s"] + self.clock.seconds_since_start(mark), 4)
                rows.append((step, list(ev), flat[offset:offset + len(ev)].T.tolist(), elapsed))
                offset += len(ev)
            for i, m in enumerate(self.members):
                if m.done:
                    continue
                records = [{"step": step, **dict(zip(keys, values[i])), "elapsed_s": elapsed}
                           for step, keys, values, elapsed in rows]
                m.folder.log.append(records)
                m.streak, reason = early_stop(records, m.cfg.early_stop_acc, m.cfg.early_stop_patience, m.streak)
                if reason and m.stopped == "budget":
                    m.stopped = reason
            live = [m for m in self.members if not m.done]
            self._report(live[0].folder.log.records[-1])  # the progress line shows the first member
        self._close_stopped()

    def _close_stopped(self) -> None:
        stopping = [i for i, m in enumerate(self.members) if not m.done and m.stopped != "budget"]
        if stopping:
            self._close(stopping)
        if all(m.done for m in self.members):
            self.stopped = "every member stopped"
        else:
            self._compact()

    def _compact(self) -> None:
        """Drop the stopped members from the stack when rows_to_keep says so."""
        keep = rows_to_keep([m.done for m in self.members], self.cfg.compile)
        if keep is None:
            return
        sums = self._train_sums()  # [members, k]: the batches since the last evaluation
        self.runner.keep_(keep)
        self.window_sums = [] if sums is None else [sums[keep]]
        self.closed += [m for i, m in enumerate(self.members) if i not in keep]
        live = sum(not self.members[i].done for i in keep)
        print(f"step {self.step}: {len(self.members) - len(keep)} stopped members leave the stack, "
              f"{live} train on", flush=True)
        self.members = [self.members[i] for i in keep]

    def _close(self, indices: list[int]) -> None:
        """Members that stop now: frozen in the population, checkpointed unless they diverged, their
        folders finished with their summaries."""
        self.clock.sync()
        for i in indices:
            self.runner.active[i] = False
        sums, layout, totals = self._train_sums(), self.population.layout, self._totals()
        for i in indices:
            m = self.members[i]
            if not m.stopped.startswith("non-finite"):
                self._save_member(i, m, sums, layout, totals)
            summary = {**self.run_summary(m.folder, m.cfg, m.stopped, totals), "population_size": self.population_size}
            m.folder.write_summary(summary)
            m.folder.close()
            m.done = True
            self.summaries[m.folder.path] = summary

    def run(self) -> dict:
        self.summaries = {}
        try:
            return super().run()
        finally:
            self._close_all()

    def _finish(self) -> dict:
        if self.interrupted:
            for m in self.members:
                if not m.done:
                    m.stopped = f"interrupted ({self.interrupted}) at step {self.step}"
        live = [i for i, m in enumerate(self.members) if not m.done]
        if live:
            self._close(live)
        diverged = [m for m in self.closed + self.members if m.stopped.startswith("non-finite")]
        for m in diverged:
            print(f"error: {m.folder.path}: {m.stopped}", file=sys.stderr)
        return {"stopped": self.stopped, "members": self.summaries, "diverged": len(diverged)}
