"""One source for every default: the constructors, the CPU preset and ``--help`` agree (models/defaults.py)."""

from __future__ import annotations

import inspect
import re

import pytest

from vqvae_transformer.layout import DEFAULT_MODEL_DIR
from vqvae_transformer.models.first_stage import KLFirstStage, VQFirstStage
from vqvae_transformer.models.prior import build_prior_config
from vqvae_transformer.models.quantizer import EMAVectorQuantizer
from vqvae_transformer.training.main import STAGE1_CONFIG_KEYS, build_parser
from vqvae_transformer.training.presets import CPU_PRESET, PRESETS


@pytest.mark.parametrize("cls", [VQFirstStage, KLFirstStage])
def test_a_first_stage_built_without_arguments_is_the_cpu_presets(cls):
    config = cls().config
    for flag, key in STAGE1_CONFIG_KEYS.items():
        if flag in CPU_PRESET:
            value = config[key]
            assert (list(value) if isinstance(value, (list, tuple)) else value) == \
                (list(CPU_PRESET[flag]) if isinstance(CPU_PRESET[flag], tuple) else CPU_PRESET[flag]), flag


def test_the_quantizer_and_the_prior_default_to_the_cpu_presets_values():
    defaults = {k: p.default for k, p in inspect.signature(EMAVectorQuantizer).parameters.items()}
    assert defaults["beta"] == CPU_PRESET["commitment_beta"] and defaults["decay"] == CPU_PRESET["ema_decay"]
    for key in ("use_l2_norm", "dead_code_threshold", "restart_sampling"):
        assert defaults[key] == CPU_PRESET[key], key
    config = build_prior_config(CPU_PRESET["codebook_size"], 3, (16, 16))
    assert (config.n_layer, config.n_embd, config.n_head, config.resid_pdrop, config.token_order) == (
        CPU_PRESET["n_layer"], CPU_PRESET["n_embd"], CPU_PRESET["n_head"], CPU_PRESET["prior_dropout"],
        CPU_PRESET["token_order"])


def test_help_names_each_presets_values_once_and_nothing_else():
    parser = build_parser()
    for action in parser._actions:
        text = action.help or ""
        mentions = re.findall(r"\(preset[^)]*\)", text)
        in_presets = [name for name, preset in PRESETS.items() if action.dest in preset]
        if not in_presets:
            assert not mentions, (action.dest, text)
            continue
        assert len(mentions) == 1, (action.dest, text)
        cpu = CPU_PRESET[action.dest]
        shown = {True: "on", False: "off"}.get(cpu, None) if isinstance(cpu, bool) else \
            " ".join(map(str, cpu)) if isinstance(cpu, tuple) else str(cpu)
        assert shown in mentions[0], (action.dest, mentions[0], cpu)
    assert parser.get_default("output_dir") == DEFAULT_MODEL_DIR


def test_every_tool_defaults_to_the_same_model_folder():
    import generate_main
    import validate_main
    from vqvae_transformer.analysis import codebook, latent_space

    for parser in (generate_main.build_parser(), validate_main.build_parser(), codebook.build_parser(),
                   latent_space.build_parser()):
        assert parser.get_default("model_dir") == DEFAULT_MODEL_DIR


def test_train_mains_former_samples_per_user_spelling_still_works_and_warns(caplog):
    parser = build_parser()
    assert parser.parse_args(["--simulated_per_user", "12"]).samples_per_user == 12
    with caplog.at_level("WARNING"):
        assert parser.parse_args(["--samples_per_user", "7"]).samples_per_user == 7
    assert "--samples_per_user is deprecated" in caplog.text and "--simulated_per_user" in caplog.text
