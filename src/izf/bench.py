"""Benchmark IZF training and evaluation: the real config, the real training step, inside a
Lightning run, on generated data of a benchmark's shape (dataset=stand_in).

    python -m izf.bench                                          # AWA2 shape, schedule=paper, CPU
    python -m izf.bench dataset.generator.name=CUB trainer.accelerator=gpu --steps 200
    python -m izf.bench schedule=cpu --curve 250,500,1000        # GZSL H against training steps
    python -m izf.bench --time-to-accuracy izf,cada_vae dataset=custom dataset.root=DIR schedule=cpu

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
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning.pytorch as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from izf.config import compose
from izf.evaluation.protocol import TEST_SPLITS, score_splits
from izf.io import save_figure, write_csv
from izf.model.optim import adam
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


def post_backward_ms(parameters, optimizer: dict, repeats: int = 5) -> dict[str, float]:
    """The work between backward and the next step on copies of the model's own parameters, with its
    optimiser settings: done tensor by tensor (as before the time-to-accuracy round) and the way the
    step does it now."""
    params = [p.detach().clone().requires_grad_() for p in parameters]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    grads = [p.grad for p in params]

    def ms(work) -> float:
        work()
        sync(params[0].device)
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        sync(params[0].device)
        return 1000 * (time.perf_counter() - started) / repeats

    return {"Adam, tensor by tensor": ms(torch.optim.Adam(params, **optimizer, foreach=False).step),
            "Adam, as the step does it (izf.model.optim.adam)": ms(adam(params, **optimizer).step),
            "finite check, tensor by tensor": ms(lambda: torch.stack([torch.isfinite(g).all() for g in grads]).all()),
            "finite check, one gradient norm (the guard now)": ms(
                lambda: torch.isfinite(torch.nn.utils.get_total_norm(grads)))}


def evaluation_seconds(model, datamodule) -> dict[str, float]:
    """The protocol's two phases, through its own public functions."""
    device, out = model.device, {}
    model.eval()
    sync(device)
    start = time.perf_counter()
    x, y = datamodule.split("trainval")
    fitted = model.fit_classifiers(x.to(device), y.to(device), progress=lambda *_: nullcontext(lambda: None))
    sync(device)
    out["classifier fit (generate + train)"] = time.perf_counter() - start
    start = time.perf_counter()
    score_splits(model, fitted, {split: datamodule.split(split) for split in TEST_SPLITS},
                 datamodule.hparams.eval_batch_size)
    sync(device)
    out["scores, every classifier, test sets"] = time.perf_counter() - start
    return out


def efficiency_curve(overrides: list[str], milestones: list[int]) -> list[dict]:
    """GZSL H against training steps: one flow, evaluated with the full protocol at each milestone."""
    curve, start = [], time.perf_counter()

    class Milestones(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *_):
            if trainer.global_step in milestones:
                metrics = evaluate_model(pl_module, trainer.datamodule).metrics
                row = {"steps": trainer.global_step, "elapsed_s": time.perf_counter() - start} | {
                    k: metrics[k] for k in ("nb/gzsl/H", "softmax/gzsl/H", "softmax/zsl/T1", "gzsl/H", "zsl/T1")}
                print("CURVE_JSON " + json.dumps(row), flush=True)
                curve.append(row)

    fit(bench_config(overrides, max(milestones)), [Milestones()])
    return curve


def time_to_accuracy(overrides: list[str], methods: list[str], fractions: list[float], out: Path) -> list[dict]:
    """Validation GZSL H against wall time, each method in turn in this one process (same threads,
    nothing beside it): the method's own config on the validation task of the data the overrides
    name, evaluated with the full protocol at fractions of its training length. A point's time is the
    setup, the training up to it and its own evaluation (not the earlier points' evaluations); H is
    the reported classifier's at its best γ, which is what the per-dataset choice scores."""
    rows = []
    for method in methods:
        cfg = compose("train", [*overrides, f"model={method}", "dataset.split=validation", "logger=none",
                                "callbacks=none", f"paths.output_dir={tempfile.mkdtemp(prefix='izf-bench-')}"])
        milestones = sorted({max(1, round(f * cfg.trainer.max_steps)) for f in fractions})
        start, evaluating = time.perf_counter(), [0.0]

        class Milestones(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, *_):
                last = trainer.should_stop  # a closed form (ESZSL) is done after its one step
                if trainer.global_step in milestones or last:
                    trained = time.perf_counter() - start - evaluating[0]
                    begun = time.perf_counter()
                    metrics = evaluate_model(pl_module, trainer.datamodule).metrics
                    evaluating[0] += time.perf_counter() - begun
                    name = cfg.model.classifier
                    rows.append({"method": method, "steps": trainer.global_step,
                                 "wall_s": trained + time.perf_counter() - begun,
                                 "gzsl/H": metrics[f"{name}/best_gamma/gzsl/H"], "zsl/T1": metrics["zsl/T1"]})
                    print("TIME_TO_ACCURACY_JSON " + json.dumps(rows[-1]), flush=True)

        fit(cfg, [Milestones()])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "time_to_accuracy.csv", list(rows[0]), ([row[k] for k in rows[0]] for row in rows))
    import matplotlib.pyplot as plt  # the Agg backend: chosen by izf.evaluation.pictures

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for method in methods:
        points = [row for row in rows if row["method"] == method]
        axes.plot([r["wall_s"] for r in points], [100 * r["gzsl/H"] for r in points], marker="o", label=method)
    axes.set(xlabel="wall time (s): setup + training + evaluation", ylabel="validation GZSL H (%), best γ",
             title="Time to accuracy on the validation task")
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, out / "time_to_accuracy.png")
    table = Table(title=f"Time to accuracy (validation task; {', '.join(overrides)})")
    for column in ("method", "steps", "wall s", "H (best γ)", "ZSL T1"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(row["method"], str(row["steps"]), f"{row['wall_s']:.0f}", f"{100 * row['gzsl/H']:.2f}",
                      f"{100 * row['zsl/T1']:.2f}")
    Console().print(table)
    print(f"wrote time_to_accuracy.csv and time_to_accuracy.png in {out}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.generator.name=CUB schedule=cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--curve", help="instead: GZSL H at these training steps, e.g. 250,500,1000")
    parser.add_argument("--time-to-accuracy", metavar="METHODS",
                        help="instead: validation H against wall time of these methods, one after another, e.g. "
                             "izf,cada_vae,clswgan,eszsl (give the data as overrides: dataset=custom dataset.root=...)")
    parser.add_argument("--fractions", default="0.25,0.5,1", help="with --time-to-accuracy: points along each run")
    parser.add_argument("--out", type=Path, default=Path("logs/bench"), help="with --time-to-accuracy: where the "
                        "table (CSV) and the plot (PNG) go")
    args = parser.parse_args(argv)
    if args.time_to_accuracy:
        return {"time_to_accuracy": time_to_accuracy(args.overrides, args.time_to_accuracy.split(","),
                                                     [float(f) for f in args.fractions.split(",")], args.out)}
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
    result["post_backward_ms"] = post_backward_ms(list(model.flow.parameters()), dict(cfg.model.optimizer))
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
    for name, ms in result["post_backward_ms"].items():
        table.add_row(f"apart: {name}", f"{ms:.1f} ms")
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
