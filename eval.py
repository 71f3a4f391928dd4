"""Evaluate a saved IZF checkpoint: python eval.py ckpt_path=... [dataset=...] [overrides].
The installed package's `izf-eval` command runs the same function (izf.cli.evaluate)."""

from izf.cli import evaluate

if __name__ == "__main__":
    evaluate()
