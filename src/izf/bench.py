"""Benchmark IZF training and evaluation on generated data of a benchmark's shape.

    python -m izf.bench --shape AWA2 --steps 10            # CPU
    python -m izf.bench --shape CUB --device cuda --steps 200

Prints a table and one JSON line (prefix "BENCH_JSON "). Achieved FLOP/s are counted
analytically for the flow's matmuls (the bulk of the work) and compared with torch.mm on the
flow's own shapes, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from unittest import mock

import lightning.pytorch as L
import torch
from rich.console import Console
from rich.table import Table

from izf.data.generate import BENCHMARKS
from izf.model import losses
from izf.training.module import IZF

# The paper's loss settings, as in conf/model/izf.yaml.
LOSS = {"semantic": 10.0, "negative": 1.0, "centralising": 1.0,
        "mmd_scales": [0.1, 0.2, 1.5, 3.0, 5.0, 10.0], "mmd_unbiased": False, "negative_margin": None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Accumulates wall time per named phase, synchronising the device around each."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[phase] += time.perf_counter() - start

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            with self(phase):
                return fn(*args, **kwargs)
        return timed


def flow_gflop_per_row(dim: int, hidden: int, blocks: int) -> float:
    """Matmul GFLOP of one pass (forward or inverse) of one row: per block two subnets,
    each Linear(D/2 → H) and Linear(H → D)."""
    return blocks * 2 * 2 * (dim // 2 * hidden + hidden * dim) / 1e9


def matmul_gflops(batch: int, dim: int, hidden: int, device: torch.device, dtype: torch.dtype,
                  seconds: float = 1.0) -> float:
    """torch.mm throughput on the flow's own shapes (both subnet layers, forward)."""
    def rand(*size):
        return torch.rand(*size, device=device, dtype=dtype)

    a1, w1, a2, w2 = rand(batch, dim // 2), rand(dim // 2, hidden), rand(batch, hidden), rand(hidden, dim)
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


def build_model(num_classes: int, semantic_dim: int, args, margin: float | None = None) -> IZF:
    """The paper's model (conf/model/izf.yaml defaults) at the benchmark's sizes."""
    return IZF(num_classes=num_classes, feature_dim=args.feature_dim, semantic_dim=semantic_dim,
               flow={"blocks": args.blocks, "hidden": args.hidden}, loss=LOSS | {"negative_margin": margin},
               optimizer={"lr": 5e-4, "weight_decay": 1e-5},
               softmax={"n_gen": args.n_gen, "epochs": args.epochs, "lr": 1e-3, "batch_size": 512,
                        "weight_decay": 0.0, "generation_batch": 8192})


def make_model(shape: dict, args, device: torch.device) -> tuple[IZF, torch.Tensor, torch.Tensor]:
    """The model on random class semantics, and random trainval features of the shape's size."""
    num_classes = shape["seen"] + shape["unseen"]
    model = build_model(num_classes, shape["semantic_dim"], args).to(device)
    model.set_classes(torch.rand(num_classes, shape["semantic_dim"], device=device),
                      torch.arange(shape["seen"], device=device))
    n_train = shape["splits"][0]
    x = torch.rand(n_train, args.feature_dim, device=device)
    y = torch.randint(shape["seen"], (n_train,), device=device)
    return model, x, y


def raw_steps(model: IZF, x: torch.Tensor, y: torch.Tensor, args, timer: PhaseTimer | None) -> float:
    """Seconds per training step (the module's own loss, backward, clipping, Adam)."""
    optimizer = model.configure_optimizers()
    device = x.device
    phase = timer if timer is not None else (lambda name: nullcontext())
    patches = []
    if timer is not None:
        patches = [mock.patch.object(model.flow, "forward", timer.wrap("flow forward", model.flow.forward)),
                   mock.patch.object(model.flow, "inverse", timer.wrap("reverse generation", model.flow.inverse)),
                   mock.patch.object(losses, "mmd2", timer.wrap("MMD", losses.mmd2))]
    for p in patches:
        p.start()
    try:
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                sync(device)
                start = time.perf_counter()
                if timer is not None:
                    timer.seconds.clear()
            rows = torch.randint(len(x), (args.batch,), device=device)
            batch = x[rows]
            terms = model.loss_terms(batch + model.hparams.jitter * torch.rand_like(batch), y[rows])
            loss = torch.stack(list(terms.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            with phase("backward"):
                loss.backward()
            with phase("clip + optimiser"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
        sync(device)
        return (time.perf_counter() - start) / args.steps
    finally:
        for p in patches:
            p.stop()


def evaluation_seconds(model: IZF, x: torch.Tensor, y: torch.Tensor, shape: dict, args) -> dict[str, float]:
    device = x.device
    n_seen, n_unseen = shape["splits"][1:]
    test = torch.rand(n_seen + n_unseen, args.feature_dim, device=device)
    out = {}
    model.eval()
    sync(device)
    start = time.perf_counter()
    model._softmax = model.fit_softmax_classifiers(x, y)
    sync(device)
    out["softmax fit (generate + train)"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for rows in test.split(8192):
            model.scores(rows)
    sync(device)
    out["scores, both classifiers, test sets"] = time.perf_counter() - start
    return out


def efficiency_curve(args, device: torch.device) -> list[dict]:
    """GZSL H against training steps: one flow trained on the benchmark's generated stand-in
    (generate.like: its sizes, ResNet-like feature statistics, class structure from the
    attributes), evaluated at each milestone with both classifiers."""
    from izf.data import ZSLDataModule

    datamodule = ZSLDataModule(name=f"{args.shape} stand-in", source="stand_in", batch_size=args.batch,
                               generator={"name": args.shape, "feature_dim": args.feature_dim, "seed": 0})
    datamodule.setup()
    model = build_model(len(datamodule.semantics), datamodule.semantics.shape[1], args, margin=args.margin)
    milestones = sorted(int(s) for s in args.curve.split(","))
    curve, start = [], time.perf_counter()

    class Milestones(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *_):
            if trainer.global_step in milestones:
                metrics = pl_module.evaluate(datamodule)
                row = {"steps": trainer.global_step, "elapsed_s": time.perf_counter() - start} | {
                    k: metrics[k] for k in ("nb/gzsl/H", "softmax/gzsl/H", "softmax/zsl/T1")}
                print("CURVE_JSON " + json.dumps(row), flush=True)
                curve.append(row)

    L.Trainer(max_steps=milestones[-1], accelerator=device.type, devices=1, logger=False, callbacks=[Milestones()],
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              gradient_clip_val=10.0).fit(model, datamodule=datamodule)
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="AWA2", choices=sorted(BENCHMARKS), help="benchmark whose sizes to use")
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n-gen", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=30, help="softmax classifier epochs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--curve", help="instead: GZSL H at these training steps, e.g. 250,500,1000")
    parser.add_argument("--margin", type=float, default=None, help="with --curve: model.loss.negative_margin")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = BENCHMARKS[args.shape]
    L.seed_everything(0, verbose=False)
    if args.curve:
        return {"curve": efficiency_curve(args, device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model, x, y = make_model(shape, args, device)
    timer = PhaseTimer(device)
    raw_steps(model, x, y, args, timer)  # instrumented: where the time goes
    step_s = raw_steps(model, x, y, args, None)  # plain: how fast a step is
    phases = {k: v / args.steps for k, v in timer.seconds.items()}

    # forward of B rows + inverse of B unseen rows and ~min(B, seen) prototypes, backward ≈ 2× forward
    rows = 2 * args.batch + min(args.batch, shape["seen"])
    step_gflop = 3 * rows * flow_gflop_per_row(args.feature_dim, args.hidden, args.blocks)
    mm = matmul_gflops(args.batch, args.feature_dim, args.hidden, device, torch.float32)
    result = {
        "shape": args.shape, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "batch": args.batch, "blocks": args.blocks,
        "hidden": args.hidden, "feature_dim": args.feature_dim, "steps_per_s": 1 / step_s,
        "samples_per_s": args.batch / step_s, "step_ms": 1000 * step_s, "step_gflop": step_gflop,
        "achieved_gflops": step_gflop / step_s, "matmul_gflops": mm, "utilisation": step_gflop / step_s / mm,
        "phases_ms": {k: 1000 * v for k, v in phases.items()},
    }
    if not args.no_eval:
        result["eval_s"] = evaluation_seconds(model, x, y, shape, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    table = Table(title=f"IZF benchmark: {args.shape} shape on {device} "
                        f"(D={args.feature_dim}, batch {args.batch}, K={args.blocks}, H={args.hidden})")
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
