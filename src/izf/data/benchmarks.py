"""The published sizes of the xlsa17 benchmarks: the one place they are written. A benchmark config
(`dataset.benchmark`) checks its folder against them before any work; the stand-in generator
makes data of these sizes."""

from __future__ import annotations

from izf.errors import ConfigError

BENCHMARKS = {
    "AWA1": {"images": 30475, "seen": 40, "unseen": 10, "semantic_dim": 85, "splits": (19832, 4958, 5685)},
    "AWA2": {"images": 37322, "seen": 40, "unseen": 10, "semantic_dim": 85, "splits": (23527, 5882, 7913)},
    "CUB": {"images": 11788, "seen": 150, "unseen": 50, "semantic_dim": 312, "splits": (7057, 1764, 2967)},
    "SUN": {"images": 14340, "seen": 645, "unseen": 72, "semantic_dim": 102, "splits": (10320, 2580, 1440)},
    "APY": {"images": 15339, "seen": 20, "unseen": 12, "semantic_dim": 64, "splits": (5932, 1483, 7924)},
    "FLO": {"images": 8189, "seen": 82, "unseen": 20, "semantic_dim": 1024, "splits": (5631, 1403, 1155)},
}  # splits: trainval, test_seen, test_unseen sizes
# Semantics other than `att` and their dimension (CUB's sent_splits.mat sentence embeddings).
OTHER_SEMANTIC_DIMS = {("CUB", "sent"): 1024}


def expected_sizes(benchmark: str, semantics: str = "att") -> dict[str, int | None]:
    """What a folder of `benchmark` must hold (images, seen, unseen, semantic_dim; None: any)."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"dataset.benchmark={benchmark!r}: expected one of {sorted(BENCHMARKS)} or null")
    facts = BENCHMARKS[benchmark]
    semantic_dim = facts["semantic_dim"] if semantics == "att" else OTHER_SEMANTIC_DIMS.get((benchmark, semantics))
    return {"images": facts["images"], "seen": facts["seen"], "unseen": facts["unseen"], "semantic_dim": semantic_dim}


def resembles(summary: dict[str, int]) -> list[str]:
    """The benchmarks whose class counts and attribute dimension a dataset has (its identity
    whatever config loaded it, e.g. dataset=custom on an APY folder or a reduced copy of one)."""
    return [name for name, facts in BENCHMARKS.items()
            if all(summary[key] == facts[key] for key in ("seen", "unseen", "semantic_dim"))]
