"""The methods IZF is compared with, in the same harness (data, protocol, metrics, reports):
ESZSL (closed form), f-CLSWGAN (a conditional WGAN of features) and CADA-VAE (aligned VAEs)."""
