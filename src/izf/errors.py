"""Errors caused by what the user gave (data, config) or by a diverged run: shown as one line,
never a traceback."""


class IZFError(ValueError):
    """Bad input; the message says what was expected and what was found."""


class DatasetError(IZFError):
    """Bad or missing benchmark data: the message names the file, the key and what was expected."""


class ConfigError(IZFError):
    """A config value the framework cannot use: the message names the key."""


class DivergenceError(IZFError):
    """Training produced NaN/inf; the message names the step and the loss term."""


def require_finite_weights(module, purpose: str) -> None:
    """Refuse to `purpose` (evaluate, write a checkpoint) with NaN/inf anywhere in `module`'s weights."""
    import torch  # here, so the light modules that import the error types do not load torch

    bad = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DivergenceError(f"refusing to {purpose}: non-finite weights in {bad[:3]}")
