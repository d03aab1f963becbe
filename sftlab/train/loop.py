"""The training loop on accelerate: :func:`train`, read top to bottom. ``_train`` loads the model
(``sftlab.model.loading.load_training_model``) and the data, then runs ``_train_steps``: each
optimizer step is ``_optimizer_step`` (forward, backward, one all-reduce, the update, the log)
then ``_after_step`` (validation, the stop decision, checkpoints); ``_finish`` writes the final
model and the manifest's outcome (``sftlab.train.run_record``).

One optimizer step takes ``micro_batch_size x grad_accum`` rows on each of the ``world_size``
processes. The objective's denominator is the trained weight of the *whole* step, so the loop
first collates every micro-batch of the step, all-reduces their total weight
(``step_normaliser``), and only then runs forward/backward on each micro-batch with
``loss_sum / total_weight x world_size`` (DDP averages gradients over ranks, the factor undoes
that). Gradient synchronisation is skipped (``accelerator.no_sync``) for all but the last
micro-batch. The result does not depend on how the step's rows are split over micro-batches
or processes (DESIGN invariant 1).

The data of each epoch is a deterministic function of (seed, epoch): mixture sample, slice loss
weights, pack, shuffle. A checkpoint stores (epoch, step within the epoch), so a resumed run
rebuilds the same epoch and continues at the same step, with the same optimizer, scheduler and
RNG state: its final weights equal those of an uninterrupted run (DESIGN invariant 8).
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftlab.errors import UsageError
from sftlab.evaluation.evaluate import generation_eval
from sftlab.evaluation.loss import slice_sums
from sftlab.run_dir import check_run_dir
from sftlab.fingerprints import weights_sha256
from sftlab.manifest import flatten, read_run_json, tokenizer_fingerprint, update_manifest
from sftlab.model.adapters import recorded_base
from sftlab.model.loading import load_training_model
from sftlab.model.objective import micro_batch_loss, step_normaliser
from sftlab.progress import progress_bar
from sftlab.train.checkpoint import (choose_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint,
                                     save_final, step_dirs, weights_mismatch)
from sftlab.train.config import TrainConfig
from sftlab.train.curves import plot_curves
from sftlab.train.metrics import MetricsLog, resolve_trackers
from sftlab.train.data import TrainData, gen_eval_settings, prepare_data, quarantine_rule
from sftlab.train.mixture import PLAN_VERSION
from sftlab.train.preemption import SIGNALS, Preempted, StopSignals
from sftlab.train.rundir import RunLock, refuse_message, resume_differences
from sftlab.train.run_record import (finish_manifest, read_json, record_manifest, start_segment, stop_on_nan,
                                     stop_on_signal)
from sftlab.train import sharding
from sftlab.train.throughput import PhaseTimes, Throughput


def train(cfg: TrainConfig, *, resume: bool = False, allow_changes: bool = False,
          fallback_checkpoint: bool = False, config_path: str | None = None,
          trackers: tuple = ()) -> int:
    """Train as ``cfg`` says, into ``cfg.out``; returns the exit code.

    0: done; 1: done but a data check failed (held-out leakage, refusals without a benign
    contrast: RUN/data/stats.json), more records were quarantined than
    ``data.max_quarantined_share`` allows, or stopped on a NaN/inf loss (the last good checkpoint
    stays). The manifest's ``outcome.train.exit_reason`` names the rule that decided. Raises
    ``UsageError`` for unusable input, for a run directory another run holds (``RUN/.lock``),
    and, on ``resume``, for a change of anything that changes the result unless
    ``allow_changes`` (see ``sftlab.train.rundir``), and for a damaged newest checkpoint unless
    ``fallback_checkpoint`` (then the newest intact one is used). ``trackers``: extra
    ``accelerate.tracking.GeneralTracker`` objects, beside those ``log.trackers`` names.
    SIGTERM or SIGINT: 143 or 130, after the current step and a verified checkpoint of it
    (``sftlab.train.preemption``); the lock is released in every case.
    """
    run = check_run_dir(cfg.out)
    lock = RunLock(run, config=config_path)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:  # the main process holds the lock
        lock.acquire()
    signals = StopSignals()
    try:
        with signals:
            return _train(cfg, resume=resume, allow_changes=allow_changes, fallback_checkpoint=fallback_checkpoint,
                          trackers=trackers, signals=signals)
    except Preempted as e:  # before the first step, or a second signal: nothing more is written
        if main:
            last = latest_checkpoint(run)
            when = "at once (a second signal)" if signals.deferred else "before training started"
            print(f"sftlab train: stopped by {e.signum.name} {when}; "
                  + (f"the newest checkpoint is {last}" if last else "no checkpoint was written"), file=sys.stderr)
        return e.exit_code
    finally:
        lock.release()


class _NonFiniteLoss(Exception):
    """A step whose loss or gradient norm is NaN/inf: the loop stops before it changes any weight."""

    def __init__(self, step: int, loss: float, grad_norm: float | None):
        super().__init__(step, loss, grad_norm)
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


@dataclass
class _Loop:
    """What every optimizer step of a run uses: the prepared model and optimizer, the data, the
    logs and the loop state (``state``: epoch, step_in_epoch, step, early-stopping counters; saved
    in every checkpoint)."""
    cfg: TrainConfig
    run: Path
    accelerator: Any
    model: Any  # as accelerate prepared it (DDP-wrapped on several processes)
    raw: Any  # the model itself
    optimizer: Any
    scheduler: Any
    data: TrainData
    state: dict
    metrics: MetricsLog
    phases: PhaseTimes
    speed: Throughput
    signals: Any
    tokenizer: Any
    template: Any
    bar: Any = None

    def checkpoint(self, at: int) -> None:
        main = self.accelerator.is_main_process
        with self.phases("save"):
            save_checkpoint(self.run, at, model=self.raw, tokenizer=self.tokenizer, optimizer=self.optimizer,
                            scheduler=self.scheduler, state=self.state, keep_last=self.cfg.checkpointing.keep_last,
                            manifest=read_run_json(self.run, missing_ok=True, damaged_ok=True) if main else None,
                            rank=self.accelerator.process_index, barrier=self.accelerator.wait_for_everyone)


def _train(cfg: TrainConfig, *, resume: bool, allow_changes: bool, fallback_checkpoint: bool,
           trackers: tuple, signals) -> int:
    from accelerate.utils import set_seed  # lazy, as accelerate and transformers below: they load when a run starts
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one that matters
    run = Path(cfg.out)
    ckpt = _checkpoint_to_resume(run, resume, fallback_checkpoint)  # None: a new run
    accelerator, autocast = _accelerator(cfg, run, trackers)
    main, world = accelerator.is_main_process, accelerator.num_processes
    set_seed(cfg.seed)

    # -- model, tokenizer, template, data ----------------------------------------------------
    phases = PhaseTimes()
    with phases("load"):
        model, tokenizer, template, role_tokens = load_training_model(cfg)
    old = (read_run_json(ckpt, missing_ok=True, damaged_ok=True) or read_run_json(run, missing_ok=True, damaged_ok=True)
           if ckpt else None)
    changed: list[dict] = []
    # LoRA: the adapter means nothing on other base weights; hashed once, then known by file stamps
    base = weights_sha256(cfg.model.path, known=((old or {}).get("model") or {}).get("base_files")) \
        if cfg.lora.enabled else (None, {})

    def check_resume(data: TrainData) -> None:  # before anything in RUN is written
        diffs = _check_resume(old, cfg, data, tokenizer, template, ckpt, allow_changes, base[0])
        if ckpt is not None:
            _check_checkpoint_fits(ckpt, model, cfg, world)
        if diffs and main:
            print(f"sftlab train: continuing {ckpt} with changed {', '.join(d['path'] for d in diffs)} "
                  "(recorded in run.json segments)", file=sys.stderr)
        changed.extend(diffs)

    with phases("prepare"):
        data = prepare_data(cfg, tokenizer, template, run, write=main, check=check_resume, accelerator=accelerator,
                            plan=_plan_of(old))
    total_steps = data.total_steps(world)
    if main:
        record_manifest(run, cfg, data, model, tokenizer, template, role_tokens, base)
        start_segment(run, old, _step_of(ckpt) if ckpt else 0, changed)
    model = sharding.shard(model, accelerator, cfg)  # FSDP2 where the accelerate config asks and accelerate will not
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    scheduler = lr_scheduler(optimizer, cfg, total_steps)
    model, optimizer = sharding.prepare(accelerator, model, optimizer)
    raw = accelerator.unwrap_model(model)
    speed = Throughput(raw, accelerator.device, torch.bfloat16 if autocast else next(raw.parameters()).dtype)
    state = _loop_state(cfg, world, ckpt, raw, optimizer, scheduler, accelerator.process_index, main, changed)
    metrics = MetricsLog(run / "metrics.jsonl", enabled=main, accelerator=accelerator,
                         keep_until=(state["step"], state["epoch"], state["step_in_epoch"]) if resume else None)
    loop = _Loop(cfg, run, accelerator, model, raw, optimizer, scheduler, data, state, metrics, phases, speed,
                 signals, tokenizer, template)

    # -- the loop: epochs of optimizer steps of micro-batches ---------------------------------
    loop.bar = progress_bar(total=total_steps, initial=state["step"], desc="train", unit="step",
                            enabled=main and cfg.log.progress)
    model.train()
    phases.start("train")
    signals.defer()  # from here a stop signal ends the run after the current step, with a checkpoint
    try:
        stop, signalled = _train_steps(loop, total_steps)
    except _NonFiniteLoss as e:
        loop.bar.close()
        return stop_on_nan(e.step, e.loss, e.grad_norm, run, metrics, main)
    loop.bar.close()
    phases.stop("train")
    if signalled is not None:  # the last checkpoint wrote this step
        return stop_on_signal(run, state["step"], stop, signalled, metrics, main)
    return _finish(loop, stop, resumed=ckpt is not None)


def _checkpoint_to_resume(run: Path, resume: bool, fallback: bool) -> Path | None:
    """The checkpoint a ``--resume`` continues (``None`` for a new run); a new run into a directory
    that holds checkpoints is refused."""
    if step_dirs(run) and not resume:
        raise UsageError(f"{run} already holds checkpoints ({step_dirs(run)[-1].name}); pass --resume to "
                         "continue that run, or choose another out")
    return choose_checkpoint(run, fallback=fallback,
                             say=lambda m: print(f"sftlab train: {m}", file=sys.stderr)) if resume else None


def _accelerator(cfg: TrainConfig, run: Path, trackers: tuple):
    """``(accelerator, autocast)``: accelerate on the GPU when there is one, bf16 autocast as
    ``model.dtype`` says, the trackers ``log.trackers`` names and ``trackers`` started."""
    from accelerate import Accelerator  # lazy: accelerate loads when a run starts
    from accelerate.utils import ProjectConfiguration

    cuda = torch.cuda.is_available()
    try:
        log_with = resolve_trackers(cfg.log.trackers) + list(trackers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    autocast = cfg.model.dtype == "bf16-mixed" or (cuda and cfg.model.dtype == "auto")
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if autocast else "no",
                              log_with=log_with or None,
                              project_config=ProjectConfiguration(project_dir=str(run),
                                                                  logging_dir=str(run / "tensorboard")))
    if log_with:
        accelerator.init_trackers(run.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in flatten(cfg.to_dict()).items()})
    return accelerator, autocast


def _loop_state(cfg: TrainConfig, world: int, ckpt: Path | None, raw, optimizer, scheduler, rank: int,
                main: bool, changed: list[dict]) -> dict:
    """The loop state at the first step: a new run's, or the checkpoint's (its weights, optimizer
    and scheduler loaded; a changed ``optim`` setting applied over the saved one)."""
    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": None, "bad_evals": 0,
             "rows_per_step": cfg.optim.micro_batch_size * cfg.optim.grad_accum * world,
             "config_sha256": cfg.sha256()}
    if ckpt is None:
        return state
    state = _resume_state(state, load_checkpoint(ckpt, model=raw, optimizer=optimizer,
                                                 scheduler=scheduler, rank=rank), ckpt, main)
    if any(d["path"].startswith("config.optim.") for d in changed):
        _apply_optim_settings(optimizer, scheduler, cfg)  # the checkpoint's state would win
    return state


def _train_steps(loop: _Loop, total_steps: int) -> tuple[str | None, object]:
    """Optimizer steps until the last one, early stopping or a stop signal: ``(why it stopped,
    the signal that stopped it or None)``. Each epoch's rows are drawn afresh from (seed, epoch)."""
    data, state, world = loop.data, loop.state, loop.accelerator.num_processes
    stop = signalled = None
    while state["step"] < total_steps and stop is None:
        epoch = state["epoch"]
        rows = data.epoch_rows(epoch)
        if state["step_in_epoch"] == 0:
            loop.metrics.write({"epoch": epoch, "realised_mixture": data.realised_mixture(epoch)})
        for s in range(state["step_in_epoch"], data.steps_in_epoch(epoch, world)):
            signalled = _optimizer_step(loop, rows, epoch, s, total_steps)
            stop, signalled = _after_step(loop, total_steps, signalled)
            if stop is not None:
                break
        else:
            state.update(epoch=epoch + 1, step_in_epoch=0)
    return stop, signalled


def _optimizer_step(loop: _Loop, rows, epoch: int, s: int, total_steps: int):
    """Step ``s`` of the epoch: forward and backward over its micro-batches, one all-reduce of the
    sums, then the optimizer; logged. Returns the stop signal any process received, or None."""
    accelerator, cfg, world = loop.accelerator, loop.cfg, loop.accelerator.num_processes
    t0 = time.perf_counter()
    # collate the whole step first: the denominator is its total trained weight, all ranks
    micro = loop.data.micro_batches(rows, s, accelerator.process_index, world)
    counts = [sum(int(b["seq_lengths"].sum()) for b in micro), sum(_trained_tokens(b) for b in micro),
              sum(int((b["seq_lengths"].long() ** 2).sum()) for b in micro)]  # attention FLOPs
    micro = [_to_device(b, accelerator.device) for b in micro]
    total_weight = step_normaliser(micro, reduction=cfg.loss.normalisation, all_reduce=True)
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1  # gradients are all-reduced once, after the last one
        with (nullcontext() if last else accelerator.no_sync(loop.model)), accelerator.autocast():
            loss = micro_batch_loss(loop.model, batch, total_weight, reduction=cfg.loss.normalisation,
                                    chunk_size=cfg.loss.chunk_size, world_size=world)
        accelerator.backward(loss)
        loss_sum += loss.detach().float()
    asked = [float(loop.signals.received == sig) for sig in SIGNALS]  # a stop signal on any process
    sums = torch.tensor([loss_sum.item(), *counts, *asked], dtype=torch.float64)  # one sync per step
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    signalled = next((sig for sig, n in zip(SIGNALS, sums[-len(SIGNALS):]) if n > 0), None)
    step_loss = sums[0].item() / world
    grad_norm = None
    if cfg.optim.max_grad_norm:
        grad_norm = float(accelerator.clip_grad_norm_(loop.model.parameters(), cfg.optim.max_grad_norm))
    step = loop.state["step"] + 1
    if not math.isfinite(step_loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
        raise _NonFiniteLoss(step, step_loss, grad_norm)
    lr = loop.scheduler.get_last_lr()[0]  # the rate this step uses
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.state.update(step=step, step_in_epoch=s + 1)
    seconds = max(time.perf_counter() - t0, 1e-9)
    tokens_per_s = sums[1].item() / seconds
    mfu = loop.speed.mfu(int(sums[1].item()), int(sums[3].item()), seconds, world, trained=int(sums[2].item()))
    loop.bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}",
                         **({"mfu": f"{mfu:.1%}"} if mfu is not None else {}), refresh=False)
    loop.bar.update(1)  # after the postfix: the bar shows this step's loss
    if step % cfg.log.every_n_steps == 0 or step == total_steps:
        loop.metrics.write({"step": step, "epoch": epoch, "loss": step_loss, "lr": lr, "tokens_per_s": tokens_per_s,
                            "mfu": mfu, "trained_tokens": int(sums[2].item()), "grad_norm": grad_norm})
    return signalled


def _after_step(loop: _Loop, total_steps: int, signalled) -> tuple[str | None, object]:
    """Validation when it is due, then whether the run stops here and why, and a checkpoint when
    it stops or one is due: ``(why it stops or None, the signal that stopped it or None)``."""
    cfg, data, step = loop.cfg, loop.data, loop.state["step"]
    stop = None
    every = cfg.eval.every_n_steps
    if (data.eval_sets or data.gen_prompts) and ((every and step % every == 0) or step >= total_steps):
        with loop.phases("eval"):
            stop = _validate(loop.raw, data, cfg, loop.accelerator, loop.metrics, step, loop.state,
                             loop.tokenizer, loop.template)
    if stop is None and step >= total_steps:
        stop = "done"
    if stop is None and signalled is not None:
        stop = f"stopped by {signalled.name} after step {step} of {total_steps}"
    else:
        signalled = None  # the run ended at this step anyway
    every = cfg.checkpointing.every_n_steps
    if stop is not None or (every and step % every == 0):
        loop.checkpoint(step)  # after validation, so early-stopping counters resume too
    return stop, signalled


def _finish(loop: _Loop, stop: str | None, resumed: bool) -> int:
    """After the last step: the final model, the curves, the manifest's outcome, timing and
    throughput; returns the exit code (:func:`exit_rule`)."""
    cfg, run, accelerator, step = loop.cfg, loop.run, loop.accelerator, loop.state["step"]
    accelerator.wait_for_everyone()
    code, reason = exit_rule(loop.data, cfg)
    sharding.consolidate(loop.raw)  # sharded weights gathered whole on the main process (in place), for final/
    if accelerator.is_main_process:
        merge = cfg.lora.enabled and cfg.lora.merge_on_save
        base = loop.raw.peft_config["default"].base_model_name_or_path if cfg.lora.enabled else None
        with loop.phases("save"):
            save_final(run / "final", loop.raw, loop.tokenizer, loop.template, merge=merge,
                       adapter_base=recorded_base(base) if base else None)
        plot_curves(run / "metrics.jsonl", run / "curves.png", title=f"{run.name}: {stop or 'done'}")
        finish_manifest(run, cfg, step, stop, exit_rule=(code, reason))
        recorded = read_run_json(run, missing_ok=True, damaged_ok=True)
        update_manifest(run, timing=loop.phases.describe(recorded, resumed=resumed),
                        throughput=loop.speed.describe())
    loop.metrics.close()
    accelerator.wait_for_everyone()
    return code


def exit_rule(data: TrainData, cfg: TrainConfig) -> tuple[int, str]:
    """``(exit code, the rule that decided it)`` of a run that trained to the end."""
    if data.failed_checks:
        return 1, "data check failed: " + ", ".join(c["name"] for c in data.failed_checks)
    rule = quarantine_rule(data.records, data.quarantine_reasons, cfg.data.max_quarantined_share,
                           str(Path(cfg.out) / "data" / "quarantine.jsonl"))
    return rule or (0, "trained; no record quarantined and every data check passed")


def lr_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """The ``optim.schedule`` with its linear warm-up, as a ``LambdaLR`` (its state is JSON).

    Step k (counted from 1) of a W-step warm-up runs at ``lr * k / W``, so the first step runs at
    ``lr / W``, never at 0; after the warm-up, ``cosine`` and ``linear`` decay from ``lr`` towards 0
    over the remaining steps (the last step stays above 0) and ``constant`` keeps ``lr``::

        >>> import torch
        >>> from sftlab.train.config import load_config
        >>> cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "optim.lr=1.0",
        ...                          "optim.schedule=linear", "optim.warmup_steps=2"])
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched, rates = lr_scheduler(opt, cfg, 6), []
        >>> for _ in range(6):
        ...     rates.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
        >>> rates
        [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    o = cfg.optim
    warmup = o.warmup_steps if o.warmup_steps is not None else math.ceil(o.warmup_ratio * total_steps)
    decay = max(1, total_steps - warmup)
    kind = o.schedule

    def factor(s: int) -> float:  # s: optimizer steps taken so far (0 for the first step)
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / decay)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices, not biases or norm scales (the usual AdamW split)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


# -- validation ----------------------------------------------------------------------------------

def evaluate(model, data: TrainData, cfg: TrainConfig, accelerator) -> dict[str, float]:
    """Held-out loss per slice and over all slices: the training objective, normalised per slice
    (``sftlab.evaluation.loss.slice_sums``, the scorer ``sftlab eval`` uses too).

    Each process scores every ``world_size``-th example of a slice; sums are all-reduced.
    """
    names = sorted(data.eval_sets)
    rows = {name: data.eval_rows(name, accelerator.process_index, accelerator.num_processes) for name in names}
    rows = sharding.even_rows(rows, model, accelerator.num_processes, data.pad_id)
    sums = slice_sums(model, rows, data.pad_id, micro_batch_size=cfg.eval.micro_batch_size,
                      reduction=cfg.loss.normalisation, chunk_size=cfg.loss.chunk_size,
                      device=accelerator.device, autocast=accelerator.autocast)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    out = {"all": _ratio(sums[:, 0].sum(), sums[:, 1].sum())}
    out.update({name: _ratio(sums[j, 0], sums[j, 1]) for j, name in enumerate(names)})
    return out


def _ratio(num, den) -> float | None:
    return float(num / den) if den > 0 else None


def _validate(model, data, cfg, accelerator, metrics, step: int, state: dict,
              tokenizer=None, template=None) -> str | None:
    """Log the eval losses (and generation-based refusal rates when ``eval.prompts`` names
    prompts); return a stop reason when early stopping says so."""
    losses = evaluate(model, data, cfg, accelerator) if data.eval_sets else {}
    if losses:
        metrics.write({"step": step, "eval_loss": losses})
    if data.gen_prompts and accelerator.is_main_process:
        metrics.write({"step": step, "gen_eval": generation_eval(model, tokenizer, template, data.gen_prompts,
                                                                 gen_eval_settings(cfg))})
    if data.gen_prompts:
        accelerator.wait_for_everyone()
    es = cfg.eval.early_stopping
    value = losses.get(es.metric.removeprefix("eval_loss/"))
    if es.patience is None or value is None:
        return None
    if state["best"] is None or value < state["best"]:
        state.update(best=value, bad_evals=0)
        return None
    state["bad_evals"] += 1
    if state["bad_evals"] >= es.patience:
        return (f"early stop at step {step}: {es.metric} did not improve for {es.patience} "
                f"validations (best {state['best']:.4f})")
    return None


# -- small helpers of the loop -------------------------------------------------------------------

def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _trained_tokens(batch: dict) -> int:
    """Targets with a non-zero weight (the first token of an example is never a target)."""
    w, pos = batch["loss_weights"][:, 1:], batch["position_ids"][:, 1:]
    return int(((w != 0) & (pos != 0)).sum().item())


def _resume_state(fresh: dict, saved: dict, ckpt: Path, main: bool) -> dict:
    """The checkpoint's loop state, checked against this run's global batch."""
    if saved.get("rows_per_step", fresh["rows_per_step"]) != fresh["rows_per_step"]:
        raise UsageError(f"{ckpt} was written with {saved['rows_per_step']} rows per optimizer step, this run "
                         f"takes {fresh['rows_per_step']} (micro_batch_size x grad_accum x processes); "
                         "resume with the same global batch so the data position means the same rows")
    if main and saved.get("config_sha256") != fresh["config_sha256"]:
        print(f"sftlab train: note: the config differs from the one that wrote {ckpt}; "
              "continuing with the new one", file=sys.stderr)
    return {**saved, "config_sha256": fresh["config_sha256"]}


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.removeprefix("step-"))


def _check_resume(old: dict | None, cfg: TrainConfig, data: TrainData, tokenizer, template,
                  ckpt: Path | None, allow_changes: bool, base_sha256: str | None = None) -> list[dict]:
    """Differences that change the result between the checkpoint's run and this one; refused
    (``UsageError`` listing them) unless ``allow_changes``. A LoRA run also compares the base
    model's weights (``base_sha256``): its adapter means nothing on other weights at the same path."""
    if old is None or ckpt is None:
        return []
    new = {"config": cfg.to_dict(), "data": {"splits": data.splits},
           "template": template.describe(), "tokenizer": tokenizer_fingerprint(tokenizer),
           "policy": data.policy.manifest_entry() if data.policy is not None else None}
    if cfg.lora.enabled:
        new["model"] = {"base_sha256": base_sha256}
    diffs = resume_differences(old, new)
    if diffs and not allow_changes:
        raise UsageError(refuse_message(ckpt, diffs))
    return diffs


def _check_checkpoint_fits(ckpt: Path, model, cfg: TrainConfig, world: int) -> None:
    """What would make loading ``ckpt`` fail, refused before anything in RUN is written: another
    global batch, weights of another shape or kind (LoRA on/off, rank, targets, base model)."""
    saved = read_json(ckpt / "state.json") or {}
    rows = cfg.optim.micro_batch_size * cfg.optim.grad_accum * world
    if saved.get("rows_per_step", rows) != rows:
        raise UsageError(f"{ckpt} was written with {saved['rows_per_step']} rows per optimizer step, this run "
                         f"takes {rows} (micro_batch_size x grad_accum x processes); resume with the same "
                         "global batch so the data position means the same rows; nothing was changed")
    why = weights_mismatch(ckpt, model, world)
    if why is not None:
        raise UsageError(f"--resume: {ckpt} cannot be continued by this run: {why}; resume with the "
                         "settings that wrote it or train into another out; nothing was changed")


def _plan_of(old: dict | None) -> int | None:
    """A resumed run draws its epochs as it started (run.json ``mixture.plan``; a run from before
    plans were recorded drew plan 1); a new run draws the current plan (``None``)."""
    if old is None:
        return None
    plan = (old.get("mixture") or {}).get("plan", 1)
    if plan not in range(1, PLAN_VERSION + 1):
        raise UsageError(f"run.json: mixture.plan = {plan!r}: this sftlab draws epoch plans 1 to {PLAN_VERSION}; "
                         "resume with the sftlab version that started the run")
    return plan


def _apply_optim_settings(optimizer, scheduler, cfg: TrainConfig) -> None:
    """After loading a checkpoint: this run's lr, betas and weight decay, not the saved ones,
    on the saved schedule position (so the manifest's config is what is used)."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for i, (group, lam) in enumerate(zip(optimizer.param_groups, scheduler.lr_lambdas)):
        group.update(initial_lr=o.lr, lr=o.lr * lam(scheduler.last_epoch), betas=tuple(o.betas),
                     weight_decay=o.weight_decay if i == 0 else 0.0)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


