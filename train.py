"""Train IZF and evaluate it under the (G)ZSL protocol: python train.py [overrides].
The installed package's `izf-train` command runs the same function (izf.cli.train)."""

from izf.cli import train

if __name__ == "__main__":
    train()
