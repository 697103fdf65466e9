"""Train both stages of vqvae_transformer: ``python train_main.py --num_users 31`` (see --help).

Exit codes: 0 done, 2 a bad flag or path (one ``error:`` line on stderr; ``--debug`` adds the traceback), 130 Ctrl-C
and 143 SIGTERM (a checkpoint at the current step is saved first; continue with --resume_from_checkpoint latest).
"""

import sys

from vqvae_transformer.cli import quiet_interrupt_before_run_cli

if __name__ == "__main__":  # run as a script (an import, e.g. by the tests, changes no handler)
    quiet_interrupt_before_run_cli()  # Ctrl-C while the libraries load (seconds): one line, like anywhere else

from vqvae_transformer.cli import run_cli
from vqvae_transformer.training.main import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
