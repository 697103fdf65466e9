"""Test-session settings: tiny tensors run faster on one thread (tiny generate() calls were ~50x slower with two
threads on a loaded 2-core machine, measured), and the simulated data cache is private."""

import os

# Set before torch starts its thread pools (subprocesses of the CLI tests inherit them too).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """Simulated datasets of this test session go to a temporary cache, not the user's."""
    cache = tmp_path_factory.mktemp("vqvae_transformer_cache")
    previous = os.environ.get("VQVAE_TRANSFORMER_CACHE")
    os.environ["VQVAE_TRANSFORMER_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("VQVAE_TRANSFORMER_CACHE", None)
    else:
        os.environ["VQVAE_TRANSFORMER_CACHE"] = previous


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts with no Accelerate state: mixed precision is fixed per process once an Accelerator exists,
    and in-process runs differ in it (the presets' ``auto`` is bf16 on CPUs with native bf16, ``LoopConfig``'s
    default is ``no``)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
