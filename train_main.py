"""Train both stages of vqvae_transformer: ``python train_main.py --num_users 31`` (see --help)."""

import sys

from vqvae_transformer.cli import run_cli
from vqvae_transformer.training.main import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
