"""Benchmark IZF training and evaluation: the real config, the real training step, inside a
Lightning run, on generated data of a benchmark's shape (dataset=stand_in).

    python -m izf.bench                                          # AWA2 shape, schedule=paper, CPU
    python -m izf.bench dataset.generator.name=CUB trainer.accelerator=gpu --steps 200
    python -m izf.bench schedule=cpu --curve 250,500,1000        # GZSL H against training steps

Arguments without dashes are Hydra overrides, as for train.py. Prints a table and one JSON line
(prefix "BENCH_JSON "). Phases come from profiler marks in the flow and the losses
(izf.flow.forward, izf.flow.inverse, izf.mmd) and from the Lightning hooks around backward and
the optimiser step. Achieved FLOP/s are counted analytically for the flow's matmuls (the bulk of
the work) and compared with torch.mm on the flow's own shapes, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections import defaultdict

import hydra
import lightning.pytorch as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from izf.config import compose
from izf.evaluation.protocol import TEST_SPLITS, fit_softmax_classifiers, score_splits
from izf.training.evaluate import evaluate_model
from izf.training.run import build

MARKS = {"izf.flow.forward": "flow forward", "izf.flow.inverse": "reverse generation", "izf.mmd": "MMD"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time of the training steps after `warmup` ones, and its split at the Lightning hooks:
    forward + losses, backward, clipping + checks + optimiser, and the rest (batches, logging).
    The device is synchronised at each hook."""

    def __init__(self, warmup: int):
        self.warmup, self.seconds, self.steps, self.total = warmup, defaultdict(float), 0, 0.0
        self._step, self._last, self._first = 0, 0.0, 0.0

    def _now(self, pl_module: L.LightningModule) -> float:
        sync(pl_module.device)
        return time.perf_counter()

    def _phase(self, pl_module: L.LightningModule, phase: str) -> None:
        now = self._now(pl_module)
        if self._step >= self.warmup:
            self.seconds[phase] += now - self._last
        self._last = now

    def on_train_batch_start(self, trainer, pl_module, *_) -> None:
        self._step, self._last = trainer.global_step, self._now(pl_module)
        if self._step == self.warmup:
            self._first = self._last

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._phase(pl_module, "forward + losses")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._phase(pl_module, "backward")

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        self._phase(pl_module, "clip + checks + optimiser")
        if self._step >= self.warmup:
            self.steps += 1
            self.total = self._last - self._first  # first timed step's start to this one's end

    def per_step(self) -> tuple[float, dict[str, float]]:
        """(seconds per step, seconds per step of each phase)."""
        phases = {k: v / self.steps for k, v in self.seconds.items()}
        step = self.total / self.steps
        return step, phases | {"batches, logging, hooks": step - sum(phases.values())}


def bench_config(overrides: list[str], steps: int) -> DictConfig:
    """The training config as train.py composes it, on the stand-in data, without outputs."""
    return compose("train", ["dataset=stand_in", *overrides, f"trainer.max_steps={steps}", "logger=none",
                             "callbacks=none", f"paths.output_dir={tempfile.mkdtemp(prefix='izf-bench-')}"])


def fit(cfg: DictConfig, callbacks: list[L.Callback]):
    """A fresh model trained with the config's own Trainer settings (no checkpoints, logs or bars)."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = build(cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=callbacks, enable_checkpointing=False,
                                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    return trainer, datamodule, model


def marked_phases(cfg: DictConfig, warmup: int) -> dict[str, float]:
    """Seconds per step inside each profiler mark, from a second, profiled run."""
    class Profiled(L.Callback):
        def __init__(self):
            self.profiler, self.steps = None, 0

        def on_train_batch_start(self, trainer, pl_module, *_):
            if trainer.global_step == warmup:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if pl_module.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_train_batch_end(self, trainer, pl_module, *_):
            if self.profiler is not None:
                self.steps += 1
                if trainer.global_step == trainer.max_steps:
                    sync(pl_module.device)
                    self.profiler.__exit__(None, None, None)

    profiled = Profiled()
    fit(cfg, [profiled])
    totals = {event.key: event for event in profiled.profiler.key_averages()}
    on_gpu = cfg.trainer.accelerator == "gpu" or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    return {name: (getattr(totals[mark], "device_time_total" if on_gpu else "cpu_time_total") / 1e6) / profiled.steps
            for mark, name in MARKS.items() if mark in totals}


def flow_gflop_per_row(dim: int, hidden: int, blocks: int) -> float:
    """Matmul GFLOP of one pass (forward or inverse) of one row: per block two subnets,
    each Linear(D/2 → H) and Linear(H → D)."""
    return blocks * 2 * 2 * (dim // 2 * hidden + hidden * dim) / 1e9


def matmul_gflops(batch: int, dim: int, hidden: int, device: torch.device, seconds: float = 1.0) -> float:
    """torch.mm throughput on the flow's own shapes (both subnet layers, forward)."""
    a1, w1 = torch.rand(batch, dim // 2, device=device), torch.rand(dim // 2, hidden, device=device)
    a2, w2 = torch.rand(batch, hidden, device=device), torch.rand(hidden, dim, device=device)
    flop = 2 * batch * (dim // 2 * hidden + hidden * dim)
    for _ in range(3):
        a1 @ w1, a2 @ w2
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a1 @ w1, a2 @ w2
        n += 1
        if n % 10 == 0:
            sync(device)
    sync(device)
    return n * flop / (time.perf_counter() - start) / 1e9


def evaluation_seconds(model, datamodule) -> dict[str, float]:
    """The protocol's two phases, through its own public functions."""
    device, out = model.device, {}
    model.eval()
    sync(device)
    start = time.perf_counter()
    x, y = datamodule.split("trainval")
    softmax = fit_softmax_classifiers(model, x.to(device), y.to(device))
    sync(device)
    out["softmax fit (generate + train)"] = time.perf_counter() - start
    start = time.perf_counter()
    score_splits(model, softmax, {split: datamodule.split(split) for split in TEST_SPLITS},
                 datamodule.hparams.eval_batch_size)
    sync(device)
    out["scores, both classifiers, test sets"] = time.perf_counter() - start
    return out


def efficiency_curve(overrides: list[str], milestones: list[int]) -> list[dict]:
    """GZSL H against training steps: one flow, evaluated with the full protocol at each milestone."""
    curve, start = [], time.perf_counter()

    class Milestones(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *_):
            if trainer.global_step in milestones:
                metrics = evaluate_model(pl_module, trainer.datamodule).metrics
                row = {"steps": trainer.global_step, "elapsed_s": time.perf_counter() - start} | {
                    k: metrics[k] for k in ("nb/gzsl/H", "softmax/gzsl/H", "softmax/zsl/T1")}
                print("CURVE_JSON " + json.dumps(row), flush=True)
                curve.append(row)

    fit(bench_config(overrides, max(milestones)), [Milestones()])
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.generator.name=CUB schedule=cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--curve", help="instead: GZSL H at these training steps, e.g. 250,500,1000")
    args = parser.parse_args(argv)
    if args.curve:
        return {"curve": efficiency_curve(args.overrides, sorted(int(s) for s in args.curve.split(",")))}

    cfg = bench_config(args.overrides, args.warmup + args.steps)
    timer = StepTimer(args.warmup)
    trainer, datamodule, model = fit(cfg, [timer])  # plain: how fast a step is, where its time goes
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, phases = timer.per_step()

    shape, flow, weights = cfg.dataset.generator.name, cfg.model.flow, cfg.model.loss
    batch, dim, seen = cfg.dataset.batch_size, datamodule.features.shape[1], len(datamodule.seen_classes)
    # forward of B rows; reverse of B unseen samples (negative term) and ≤ B prototypes (centralising
    # term); backward ≈ 2× the forward work
    reverse_rows = (batch if weights.negative > 0 else 0) + (min(batch, seen) if weights.centralising > 0 else 0)
    step_gflop = 3 * (batch + reverse_rows) * flow_gflop_per_row(dim, flow.hidden, flow.blocks)
    mm = matmul_gflops(batch, dim, flow.hidden, device)
    result = {
        "shape": shape, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "batch": batch, "blocks": flow.blocks,
        "hidden": flow.hidden, "feature_dim": dim, "steps_per_s": 1 / step_s, "samples_per_s": batch / step_s,
        "step_ms": 1000 * step_s, "step_gflop": step_gflop, "achieved_gflops": step_gflop / step_s,
        "matmul_gflops": mm, "utilisation": step_gflop / step_s / mm,
        "phases_ms": {k: 1000 * v for k, v in phases.items()},
    }
    if not args.no_eval:
        result["eval_s"] = evaluation_seconds(model, datamodule)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    del trainer, datamodule, model
    # Last, so the profiler's own memory and time touch none of the figures above.
    result["phases_ms"] |= {f"within: {name}": 1000 * s for name, s in marked_phases(cfg, args.warmup).items()}

    table = Table(title=f"IZF benchmark: {shape} stand-in on {device} "
                        f"(D={dim}, batch {batch}, K={flow.blocks}, H={flow.hidden})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("training step", f"{result['step_ms']:.1f} ms ({result['steps_per_s']:.2f} steps/s, "
                  f"{result['samples_per_s']:.0f} samples/s)")
    for phase, ms in result["phases_ms"].items():
        table.add_row(f"  {phase}", f"{ms:.1f} ms")
    table.add_row("step work (flow matmuls)", f"{step_gflop:.1f} GFLOP")
    table.add_row("achieved / matmul rate", f"{result['achieved_gflops']:.1f} / {mm:.1f} GFLOP/s "
                  f"= {100 * result['utilisation']:.0f} %")
    for name, s in result.get("eval_s", {}).items():
        table.add_row(name, f"{s:.2f} s")
    table.add_row("peak RSS", f"{result['peak_rss_mb']:.0f} MB")
    if "peak_gpu_mb" in result:
        table.add_row("peak GPU memory", f"{result['peak_gpu_mb']:.0f} MB")
    Console().print(table)
    print("BENCH_JSON " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
