"""Issue 13, item 5, "one line for every mistake": the bad-input matrix, one row per case.

Each row of ``MATRIX`` is run in-process through ``run_cli`` (the same path as the scripts) against one tiny model
folder built once per session, and must give: the exit code of the row, exactly one non-empty stderr line, starting
with ``error:`` and holding the row's text, no traceback, and every file that existed before unchanged (no staging
folder left; nothing written at all, except for the disk-full rows). ``--debug`` adds the traceback (in-process on
every CLI, and once in a real script run as a subprocess); the interrupt tests check 130 for Ctrl-C and 143 for
SIGTERM on every CLI; bugs keep their traceback. Progress bars of diffusers' loading are not messages and are ignored.
Read- and write-permission errors are simulated (``chmod`` does not bind root, which runs these tests in CI).

Columns: case id | CLI | set-up (what is broken) | extra flags (after the defaults of ``_defaults``) | exit | text.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import generate_main
from test_generate_cli import TINY_VQ
from test_validate_cli import _write_users
from vqvae_transformer.analysis import codebook as codebook_mod
from vqvae_transformer.cli import run_cli
from vqvae_transformer.data import load_image_folder, save_split, stratified_split
from vqvae_transformer.data.provenance import save_data_info
from vqvae_transformer.inference import generate as generate_mod
from vqvae_transformer.models.fingerprint import stage1_fingerprint, write_fingerprint
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.models.prior import build_prior, build_prior_config
from vqvae_transformer.training import main as train_mod
from vqvae_transformer.validation import cli as validate_mod

REPO = Path(__file__).resolve().parents[1]
USERS = (1, 2, 3)


# ----------------------------------------------------------------------------------------------------------------
# The tiny model folder (built once; nothing is trained: a k-means initialised first stage and a random prior)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """``data/`` (3 users x 4 images of 16 px), ``model/`` (pipeline, fingerprints, data_info.json, split.json),
    ``kl_vqvae/`` and ``other_vqvae/`` (first stages of the other kind / another training), ``generated/``."""
    root = tmp_path_factory.mktemp("bad_input")
    data_dir = _write_users(root / "data", user_ids=USERS, per_user=4)
    data = load_image_folder(data_dir, 16)
    model = root / "model"
    torch.manual_seed(0)
    vq = build_first_stage("vq", **TINY_VQ)
    vq.train()(data.images[:8])  # k-means init + one EMA update
    prior = build_prior(build_prior_config(32, len(USERS), (8, 8), n_layer=1, n_embd=32, n_head=2,
                                           user_ids=list(USERS)))
    VQVAETransformerPipeline(vqvae=vq.eval(), prior=prior.eval()).save_pretrained(model)
    fingerprint = stage1_fingerprint(model / "vqvae")
    write_fingerprint(model, fingerprint)
    write_fingerprint(model / "prior", fingerprint)
    train_idx, val_idx = stratified_split(data.labels, 0.25, 0)
    save_split(model / "split.json", data, train_idx, val_idx, seed=0, val_fraction=0.25)
    save_data_info(model, data, data_dir=data_dir, resolution=16, channels=1, num_users=None, skip_bad_images=False)
    build_first_stage("kl", **TINY_VQ).eval().save_pretrained(root / "kl_vqvae")
    torch.manual_seed(1)
    build_first_stage("vq", **TINY_VQ).eval().save_pretrained(root / "other_vqvae")
    shutil.copytree(data_dir, root / "generated")
    return root


@dataclass
class Case:
    """What a row's set-up works with; ``model`` starts as the shared folder and set-ups replace it by a copy."""

    base: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    model: Path
    out: Path
    data: Path
    gen: Path

    def copy_model(self) -> Path:
        self.model = self.tmp / "model"
        shutil.copytree(self.base / "model", self.model)
        return self.model


# ----------------------------------------------------------------------------------------------------------------
# Set-ups: each breaks one thing


def ok(case: Case) -> None:
    """Nothing broken: the flags are the mistake."""


def _damage(edit):
    """A set-up that copies the model folder and applies ``edit(model_folder, case)`` to the copy."""
    def setup(case: Case) -> None:
        edit(case.copy_model(), case)
    setup.__name__ = edit.__name__
    return setup


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


VQ_W = "vqvae/diffusion_pytorch_model.safetensors"
no_index = _damage(lambda m, c: (m / "model_index.json").unlink())
index_cut = _damage(lambda m, c: _cut(m / "model_index.json"))
vq_config_missing = _damage(lambda m, c: (m / "vqvae/config.json").unlink())
vq_config_empty = _damage(lambda m, c: (m / "vqvae/config.json").write_text(""))
vq_config_cut = _damage(lambda m, c: _cut(m / "vqvae/config.json"))
vq_config_not_json = _damage(lambda m, c: (m / "vqvae/config.json").write_text("hello, not json"))
vq_weights_missing = _damage(lambda m, c: (m / VQ_W).unlink())
vq_weights_empty = _damage(lambda m, c: (m / VQ_W).write_bytes(b""))
vq_weights_cut = _damage(lambda m, c: _cut(m / VQ_W))
prior_config_cut = _damage(lambda m, c: _cut(m / "prior/config.json"))
prior_weights_missing = _damage(lambda m, c: (m / "prior/model.safetensors").unlink())
prior_weights_cut = _damage(lambda m, c: _cut(m / "prior/model.safetensors"))
config_kl_weights_vq = _damage(lambda m, c: shutil.copy(c.base / "kl_vqvae/config.json", m / "vqvae/config.json"))
config_vq_weights_kl = _damage(lambda m, c: shutil.copy(c.base / "kl_vqvae" / VQ_W.split("/")[1], m / VQ_W))
swapped_stage1 = _damage(lambda m, c: (shutil.rmtree(m / "vqvae"), shutil.copytree(c.base / "other_vqvae",
                                                                                   m / "vqvae")))
data_moved = _damage(lambda m, c: (m / "data_info.json").write_text(
    (m / "data_info.json").read_text().replace(str(c.base / "data"), str(c.tmp / "moved_away"))))


def out_is_file(case: Case) -> None:
    case.out.write_text("my notes")


def out_parent_read_only(case: Case) -> None:
    """The output's parent refuses new files (chmod does not bind root, so the refusal is simulated)."""
    import tempfile

    parent = case.out.parent
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - mkstemp's own argument name
        if dir is not None and Path(dir).absolute() == parent.absolute():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    case.monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _unreadable(folder: Path, case: Case) -> None:
    """``os.scandir(folder)`` fails with EACCES (simulated: chmod 000 does not bind root)."""
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).absolute() == folder.absolute():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real(path)

    case.monkeypatch.setattr(os, "scandir", scandir)


def real_data_unreadable(case: Case) -> None:
    _unreadable(case.data, case)


def real_data_bad_image(case: Case) -> None:
    case.data = case.tmp / "data"
    shutil.copytree(case.base / "data", case.data)
    (case.data / "ID_2" / "img_1.png").write_bytes(b"\x89PNG truncated")


def disk_full(case: Case) -> None:
    """Writing PNGs fails with ENOSPC (what a full disk gives)."""
    def save(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    case.monkeypatch.setattr(PIL.Image.Image, "save", save)


def report_disk_full(case: Case) -> None:
    """Writing the codebook report fails with ENOSPC."""
    def write(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    case.monkeypatch.setattr(codebook_mod, "write_json_atomic", write)


def little_memory(case: Case) -> None:
    """1 MiB of free memory: 2000 images of one user (4 MB as float32) cannot be held before writing."""
    case.monkeypatch.setattr(generate_mod, "_available_memory", lambda: 1 << 20)


# ----------------------------------------------------------------------------------------------------------------
# The matrix

G, V, C, T = "generate_main.py", "validate_main.py", "codebook", "train_main.py"
MATRIX = [
    # --- model folder: every file present, complete, of the kind its config says, stage 1 matching the prior
    ("gen-no-model-index", G, no_index, [], 2, "model_index.json is missing"),
    ("gen-model-index-cut", G, index_cut, [], 2, "model_index.json is not valid JSON"),
    ("gen-vq-config-missing", G, vq_config_missing, [], 2, "vqvae/config.json is missing"),
    ("val-vq-config-missing", V, vq_config_missing, [], 2, "vqvae/config.json is missing"),
    ("cb-vq-config-missing", C, vq_config_missing, [], 2, "vqvae/config.json is missing"),
    ("gen-vq-config-empty", G, vq_config_empty, [], 2, "vqvae/config.json is empty"),
    ("val-vq-config-empty", V, vq_config_empty, [], 2, "vqvae/config.json is empty"),
    ("cb-vq-config-empty", C, vq_config_empty, [], 2, "vqvae/config.json is empty"),
    ("gen-vq-config-cut", G, vq_config_cut, [], 2, "vqvae/config.json is not valid JSON"),
    ("val-vq-config-cut", V, vq_config_cut, [], 2, "vqvae/config.json is not valid JSON"),
    ("cb-vq-config-cut", C, vq_config_cut, [], 2, "vqvae/config.json is not valid JSON"),
    ("gen-vq-config-not-json", G, vq_config_not_json, [], 2, "vqvae/config.json is not valid JSON"),
    ("gen-vq-weights-missing", G, vq_weights_missing, [], 2, f"{VQ_W} is missing"),
    ("val-vq-weights-missing", V, vq_weights_missing, [], 2, f"{VQ_W} is missing"),
    ("cb-vq-weights-missing", C, vq_weights_missing, [], 2, f"{VQ_W} is missing"),
    ("gen-vq-weights-empty", G, vq_weights_empty, [], 2, f"{VQ_W} is empty"),
    ("val-vq-weights-empty", V, vq_weights_empty, [], 2, f"{VQ_W} is empty"),
    ("cb-vq-weights-empty", C, vq_weights_empty, [], 2, f"{VQ_W} is empty"),
    ("gen-vq-weights-cut", G, vq_weights_cut, [], 2, f"{VQ_W} is not a complete safetensors file"),
    ("val-vq-weights-cut", V, vq_weights_cut, [], 2, f"{VQ_W} is not a complete safetensors file"),
    ("cb-vq-weights-cut", C, vq_weights_cut, [], 2, f"{VQ_W} is not a complete safetensors file"),
    ("gen-prior-config-cut", G, prior_config_cut, [], 2, "prior/config.json is not valid JSON"),
    ("gen-prior-weights-missing", G, prior_weights_missing, [], 2, "prior/model.safetensors is missing"),
    ("gen-prior-weights-cut", G, prior_weights_cut, [], 2, "prior/model.safetensors is not a complete safetensors"),
    ("gen-config-kl-weights-vq", G, config_kl_weights_vq, [], 2, "holds a vq first stage but"),
    ("val-config-kl-weights-vq", V, config_kl_weights_vq, [], 2, "holds a vq first stage but"),
    ("cb-config-kl-weights-vq", C, config_kl_weights_vq, [], 2, "holds a vq first stage but"),
    ("gen-config-vq-weights-kl", G, config_vq_weights_kl, [], 2, "holds a kl first stage but"),
    ("val-config-vq-weights-kl", V, config_vq_weights_kl, [], 2, "holds a kl first stage but"),
    ("cb-config-vq-weights-kl", C, config_vq_weights_kl, [], 2, "holds a kl first stage but"),
    ("gen-swapped-stage1", G, swapped_stage1, [], 2, "prior/ was trained on another first stage"),
    ("val-swapped-stage1", V, swapped_stage1, [], 2, "prior/ was trained on another first stage"),
    ("cb-swapped-stage1", C, swapped_stage1, [], 2, "prior/ was trained on another first stage"),
    ("gen-model-dir-missing", G, ok, ["--model_dir", "{tmp}/no_model"], 2, "no_model"),
    ("val-model-dir-missing", V, ok, ["--model_dir", "{tmp}/no_model"], 2, "--model_dir"),
    # --- paths: not a folder, read-only, unreadable, disk full; checked before any work
    ("gen-output-is-a-file", G, out_is_file, [], 2, "is a file, not a folder"),
    ("val-output-is-a-file", V, out_is_file, [], 2, "is a file, not a folder"),
    ("cb-output-is-a-file", C, out_is_file, [], 2, "is a file, not a folder"),
    ("train-output-is-a-file", T, out_is_file, [], 2, "--output_dir {out} is a file, not a folder"),
    ("gen-output-parent-read-only", G, out_parent_read_only, [], 2, "cannot write in"),
    ("val-output-parent-read-only", V, out_parent_read_only, [], 2, "cannot write in"),
    ("val-real-data-unreadable", V, real_data_unreadable, ["--real_data_dir", "{data}"], 2, "(EACCES)"),
    ("val-real-data-missing", V, ok, ["--real_data_dir", "{tmp}/nothing"], 2, "--real_data_dir"),
    ("val-training-data-moved", V, data_moved, [], 2, "pass --real_data_dir"),
    ("cb-training-data-moved", C, data_moved, [], 2, "pass --data_dir"),
    ("val-real-data-bad-image", V, real_data_bad_image, ["--real_data_dir", "{data}"], 2,
     "img_1.png; fix or remove them (train_main.py --skip_bad_images"),
    ("gen-disk-full", G, disk_full, [], 2, "the disk filled up while writing (No space left on device)"),
    ("cb-disk-full", C, report_disk_full, [], 2, "codebook_report.json: No space left on device (ENOSPC)"),
    # --- flags: caps, non-finite and out-of-range values, negative counts, names that exist
    ("gen-samples-1e20", G, ok, ["--samples_per_user", "1e20"], 2, "invalid int value: '1e20'"),
    ("gen-samples-10**12-disk", G, ok, ["--samples_per_user", str(10**12)], 2, "on disk"),
    ("gen-samples-memory", G, little_memory, ["--samples_per_user", "2000"], 2, "--samples_per_user 2000 needs"),
    ("gen-samples-negative", G, ok, ["--samples_per_user", "-3"], 2, "--samples_per_user must be a positive"),
    ("gen-batch-size-0", G, ok, ["--batch_size", "0"], 2, "--batch_size must be a positive integer, got 0"),
    ("gen-guidance-inf", G, ok, ["--guidance_scale", "inf"], 2, "--guidance_scale must be a finite number"),
    ("gen-guidance-nan", G, ok, ["--guidance_scale", "nan"], 2, "--guidance_scale must be a finite number"),
    ("gen-temperature-0", G, ok, ["--temperature", "0"], 2, "--temperature must be > 0, got 0.0"),
    ("gen-guidance-negative", G, ok, ["--guidance_scale", "-1"], 2, "--guidance_scale must be > 0, got -1.0"),
    ("gen-temperature-nan", G, ok, ["--temperature", "nan"], 2, "--temperature must be a finite number > 0"),
    ("gen-top-p-0", G, ok, ["--top_p", "0"], 2, "--top_p must be in (0, 1]"),
    ("gen-top-p-1.5", G, ok, ["--top_p", "1.5"], 2, "--top_p must be in (0, 1]"),
    ("gen-top-k-0", G, ok, ["--top_k", "0"], 2, "--top_k must be a positive integer"),
    ("gen-unknown-user", G, ok, ["--user_ids", "9"], 2, "unknown user id(s) [9]"),
    ("cb-batch-size-0", C, ok, ["--batch_size", "0"], 2, "--batch_size must be a positive integer"),
    ("val-judge-epochs-0", V, ok, ["--judge_epochs", "0"], 2, "--judge_epochs 0 must be at least 1"),
    ("val-no-skip-bad-images-flag", V, ok, ["--skip_bad_images"], 2, "unrecognized arguments: --skip_bad_images"),
    ("train-report-to-foo", T, ok, ["--report_to", "foo"], 2, "use none, all or one of aim, tensorboard, wandb"),
    ("train-num-users-negative", T, ok, ["--num_users", "-1"], 2, "--num_users must be a positive integer"),
    ("train-attention-dropout-1", T, ok, ["--prior_attention_dropout", "1"], 2,
     "--prior_attention_dropout must lie in [0, 1), got 1.0"),
]


def _defaults(cli: str, case: Case) -> list[str]:
    """Tiny settings that would succeed on the intact model."""
    if cli == G:
        return ["--model_dir", "{model}", "--output_dir", "{out}", "--samples_per_user", "2", "--batch_size", "4",
                "--device", "cpu"]
    if cli == V:
        return ["--model_dir", "{model}", "--generated_data_dir", "{gen}", "--output_dir", "{out}", "--judge_epochs",
                "1"]
    if cli == C:
        return ["--model_dir", "{model}", "--output_dir", "{out}"]
    return ["--output_dir", "{out}", "--preset", "cpu", "--num_users", "2", "--simulated_per_user", "2",
            "--resolution", "16", "--vqvae_steps", "1", "--prior_steps", "1"]


PROGRESS_BAR = re.compile(r"\d+%\|")  # diffusers' loading and sampling bars (tqdm), not messages
MAINS = {G: generate_main._main, V: validate_mod._main, C: codebook_mod.main, T: train_mod.main}


def _snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` (by path)."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else [folder] if folder.is_file() else []:
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize("case_id, cli, setup, extra, code, text", MATRIX, ids=[row[0] for row in MATRIX])
def test_bad_input_gives_one_line(base, tmp_path, monkeypatch, capsys, case_id, cli, setup, extra, code, text):
    case = Case(base, tmp_path, monkeypatch, base / "model", tmp_path / "out", base / "data", base / "generated")
    setup(case)
    fields = {k: getattr(case, k) for k in ("model", "out", "data", "gen", "tmp")}
    argv = [a.format(**fields) for a in _defaults(cli, case) + extra]
    before = _snapshot(base, tmp_path)
    capsys.readouterr()

    assert run_cli(MAINS[cli], argv) == code

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines  # one line, no traceback
    assert "Traceback" not in err and err.rstrip().splitlines()[-1] == lines[0]
    assert text.format(**fields) in lines[0], lines[0]
    after = _snapshot(base, tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that existed was changed
    assert not [p for p in after if ".tmp-" in p or ".partial-" in p]  # no staging folder left
    if "disk-full" not in case_id:
        assert not case.out.is_dir()  # refused before anything was written


# ----------------------------------------------------------------------------------------------------------------
# --debug: the traceback before the same one line, same exit code (in-process on every CLI, and one real script)


@pytest.mark.parametrize("cli", [G, V, C, T])
def test_debug_shows_the_traceback_then_the_line(base, tmp_path, monkeypatch, capsys, cli):
    case = Case(base, tmp_path, monkeypatch, base / "model", tmp_path / "out", base / "data", base / "generated")
    out_is_file(case)
    fields = {k: getattr(case, k) for k in ("model", "out", "data", "gen", "tmp")}
    capsys.readouterr()
    assert run_cli(MAINS[cli], [a.format(**fields) for a in _defaults(cli, case)] + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UserInputError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: --output_dir")


def test_debug_in_a_real_script_shows_the_traceback(base, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(base / "model", model)
    _cut(model / VQ_W)
    argv = [sys.executable, "generate_main.py", "--model_dir", str(model), "--output_dir", str(tmp_path / "out"),
            "--device", "cpu", "--debug"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "is not a complete safetensors file" in lines[-1], lines[-3:]
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# Interrupts: 130 for Ctrl-C, 143 for SIGTERM, one line, on every CLI; bugs keep their traceback


def _interrupt_during(cli: str, case: Case, how: str) -> None:
    """Make the CLI's first real step receive SIGTERM (or raise KeyboardInterrupt, as Ctrl-C does)."""
    def hit(*args, **kwargs):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    target = {G: (VQVAETransformerPipeline, "__call__"), V: (validate_mod, "run_validation"),
              C: (codebook_mod, "encode_tokens"), T: (train_mod, "train")}[cli]
    case.monkeypatch.setattr(*target, hit)


@pytest.mark.parametrize("cli", [G, V, C, T])
@pytest.mark.parametrize("how, code", [("sigint", 130), ("sigterm", 143)])
def test_interrupts_exit_130_or_143_with_one_line(base, tmp_path, monkeypatch, capsys, cli, how, code):
    case = Case(base, tmp_path, monkeypatch, base / "model", tmp_path / "out", base / "data", base / "generated")
    _interrupt_during(cli, case, how)
    fields = {k: getattr(case, k) for k in ("model", "out", "data", "gen", "tmp")}
    before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    assert run_cli(MAINS[cli], [a.format(**fields) for a in _defaults(cli, case)]) == code
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)] == ["interrupted"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_bugs_and_unknown_os_errors_keep_their_traceback():
    def bug(argv):
        raise RuntimeError("a bug")

    def odd_os_error(argv):
        raise OSError(errno.EIO, "Input/output error", "/dev/sda")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(bug, [])
    with pytest.raises(OSError):
        run_cli(odd_os_error, [])


# ----------------------------------------------------------------------------------------------------------------
# Warnings that name what the user sees: folder ids, odd image sizes


def test_single_image_warning_names_the_folder_ids(caplog):
    labels = [0, 0, 0, 1, 2, 2]  # label 1 (folder ID_7) has a single image
    with caplog.at_level("WARNING"):
        stratified_split(labels, 0.5, 0, user_ids=[3, 7, 9])
    assert "ID_7" in caplog.text and "label" not in caplog.text


def test_tiny_and_very_elongated_images_are_warned_about_once(tmp_path, caplog):
    for user, size in ((1, (1, 1)), (1, (32, 32)), (2, (10000, 50)), (2, (32, 32))):
        folder = tmp_path / f"ID_{user}"
        folder.mkdir(exist_ok=True)
        PIL.Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(folder / f"{size[0]}x{size[1]}.png")
    with caplog.at_level("WARNING"):
        load_image_folder(tmp_path, 16)
    warnings = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "2 image(s)" in warnings[0] and "1x1.png (1x1)" in warnings[0] and "10000x50" in warnings[0]


@pytest.mark.parametrize("script", ["train_main.py", "generate_main.py", "validate_main.py",
                                    "-m vqvae_transformer.data.simulate", "-m vqvae_transformer.analysis.codebook"])
def test_ctrl_c_while_the_libraries_load_prints_one_line(script):
    """SIGINT one second in (torch, diffusers and transformers are still importing): no traceback, exit 130."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    # A test process started in the background by a non-interactive shell inherits SIGINT as ignored, and so would
    # the child (Python then installs no handler): give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, *script.split(), "--help"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the imports finished within a second on this machine")
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "interrupted"


def test_sigint_exits_from_its_handler_until_run_cli_restores_python_s():
    """Between quiet_interrupt_before_run_cli() and run_cli, SIGINT is handled without raising (a KeyboardInterrupt
    inside a compiled extension's initialisation can abort the process); run_cli gives Ctrl-C back to Python."""
    import signal
    import sys

    from vqvae_transformer import cli

    before, hook = signal.getsignal(signal.SIGINT), sys.excepthook
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cli.quiet_interrupt_before_run_cli()
        assert signal.getsignal(signal.SIGINT) is cli._exit_interrupted
        seen = []
        assert cli.run_cli(lambda argv: seen.append(signal.getsignal(signal.SIGINT)), []) == 0
        assert seen == [signal.default_int_handler]
    finally:
        signal.signal(signal.SIGINT, before)
        sys.excepthook = hook
