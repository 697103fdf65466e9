"""vqvae_transformer: a two-stage (VQ tokenizer + GPT-2 prior) generator of per-user radar micro-Doppler spectrograms.

``from vqvae_transformer import VQVAETransformerPipeline`` works once the package is installed
(``pip install .``). The pipeline is imported lazily on first access, so ``import vqvae_transformer`` stays
cheap (no torch, diffusers or transformers) for the standard-library set-up scripts.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"


# While ``python -m`` locates a module it imports the parent packages with ``sys.argv[0] == "-m"`` (documented in
# the Python command-line reference): then a Ctrl-C before the tool's ``run_cli`` starts (torch and friends take
# seconds to import) prints one line, as everywhere else. Importing the package elsewhere (a notebook, a script)
# changes nothing.
if sys.argv[:1] == ["-m"]:
    from .cli import quiet_interrupt_before_run_cli

    quiet_interrupt_before_run_cli()

# Public name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY_EXPORTS = {
    "VQVAETransformerPipeline": "vqvae_transformer.models.pipeline",
    "VQVAETransformerPipelineOutput": "vqvae_transformer.models.pipeline",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str):
    """Import a lazily exported name (the pipeline) from its module on first use."""
    if name in _LAZY_EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """Module attributes including the lazy exports."""
    return sorted({*globals(), *_LAZY_EXPORTS})
