"""Validate generated spectrograms against the real data of a trained vqvae_transformer model.

Examples::

    python validate_main.py                                   # outputs/vqvae_transformer + generated_images
    python validate_main.py --target_user_id 3 --output_dir validation_u3
    python validate_main.py --real_data_dir other_data --max_memorization 0.02

The logic lives in :mod:`vqvae_transformer.validation`; this script only hands over the flags.
Exit codes: 0 all thresholds pass, 1 a threshold fails, 2 bad input (one ``error:`` line on stderr; ``--debug`` adds
the traceback), 130 Ctrl-C, 143 SIGTERM.
"""

import sys

from vqvae_transformer.cli import quiet_interrupt_before_run_cli

if __name__ == "__main__":  # run as a script (an import, e.g. by the tests, changes no handler)
    quiet_interrupt_before_run_cli()  # Ctrl-C while the libraries load (seconds): one line, like anywhere else

from vqvae_transformer.validation.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
