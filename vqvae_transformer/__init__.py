"""vqvae_transformer: a two-stage (VQ tokenizer + GPT-2 prior) generator of per-user radar micro-Doppler spectrograms."""

__version__ = "0.1.0"
