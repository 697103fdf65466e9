"""Nothing a user wrote is ever replaced: output-folder ownership, --overwrite, --skip_existing, writability
checks before any sampling, stale staging folders and SIGTERM (vqvae_transformer/output_folder.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import generate_main
from test_generate_cli import model_dir  # noqa: F401 - the tiny saved pipeline fixture
from vqvae_transformer import output_folder
from vqvae_transformer.cli import run_cli
from vqvae_transformer.data import simulate as simulate_mod
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.output_folder import MANIFEST_NAME, clear_stale_staging, sigterm_as_keyboard_interrupt

REPO = Path(__file__).resolve().parents[1]
REAL = b"\x89PNG real user image bytes"


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_dir", str(model), "--output_dir", str(out), "--samples_per_user", "2", "--batch_size", "4",
            "--device", "cpu", *extra]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("gen_*.png"))}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture()
def no_sampling(monkeypatch):
    """Fail the test if the pipeline samples anything."""
    def forbidden(self, *args, **kwargs):
        raise AssertionError("sampled although the output folder was refused")
    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", forbidden)


def test_real_images_are_refused_in_one_line_and_kept(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    (out / "ID_1").mkdir(parents=True)
    (out / "ID_1" / "real.png").write_bytes(REAL)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "generate_main.py", *_argv(model_dir, out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "ID_1/real.png" in lines[0], result.stderr
    assert "--overwrite" in lines[0]
    assert (out / "ID_1" / "real.png").read_bytes() == REAL
    assert sorted(p.name for p in out.rglob("*")) == ["ID_1", "real.png"]


def test_overwrite_writes_beside_foreign_files_only(model_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    (out / "ID_7").mkdir(parents=True)  # a user the model does not know: not written
    (out / "ID_7" / "real.png").write_bytes(REAL)
    (out / "notes.txt").write_text("mine")
    assert generate_main.main(_argv(model_dir, out)) == 2  # refused without the flag
    assert generate_main.main(_argv(model_dir, out, "--overwrite")) == 0
    assert (out / "ID_7" / "real.png").read_bytes() == REAL and (out / "notes.txt").read_text() == "mine"
    assert sorted(_pngs(out)) == [f"ID_{k}/gen_000{i}.png" for k in (1, 2, 5) for i in (0, 1)]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "notes.txt" not in manifest["files"] and "ID_7/real.png" not in manifest["files"]

    (out / "ID_2" / "real.png").write_bytes(REAL)  # foreign file inside a folder it would write
    before = _pngs(out)
    capsys.readouterr()
    assert generate_main.main(_argv(model_dir, out, "--overwrite")) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "ID_2/real.png" in errors[0], errors
    assert (out / "ID_2" / "real.png").read_bytes() == REAL and _pngs(out) == before


def test_rerun_into_own_folder_replaces_only_its_own_files(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert generate_main.main(_argv(model_dir, out, "--samples_per_user", "3")) == 0
    assert len(list((out / "ID_1").iterdir())) == 3
    assert generate_main.main(_argv(model_dir, out, "--user_ids", "1")) == 0  # no flag needed, 3 -> 2 images
    assert sorted(p.name for p in (out / "ID_1").iterdir()) == ["gen_0000.png", "gen_0001.png"]
    assert len(list((out / "ID_2").iterdir())) == 3  # users not asked for are left alone
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "ID_1/gen_0002.png" not in manifest["files"] and "ID_2/gen_0002.png" in manifest["files"]

    (out / ".grid.png.12345.tmp.png").write_bytes(b"half")  # its own atomic write's leftover after kill -9
    assert generate_main.main(_argv(model_dir, out, "--user_ids", "1")) == 0
    assert not (out / ".grid.png.12345.tmp.png").exists()
    (out / ".notes.txt.abc.tmp").write_bytes(b"yours")  # looks alike, but not a file of this tool: foreign
    assert generate_main.main(_argv(model_dir, out, "--user_ids", "1")) == 2
    assert (out / ".notes.txt.abc.tmp").read_bytes() == b"yours"


def test_skip_existing_resumes_an_interrupted_run(model_dir, tmp_path, monkeypatch):  # noqa: F811
    full, part = tmp_path / "full", tmp_path / "part"
    assert generate_main.main(_argv(model_dir, full)) == 0
    original = VQVAETransformerPipeline.__call__
    calls = {"n": 0}

    def interrupted_second_group(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # groups of batch_size // samples_per_user = 2 users: [1, 2] then [5]
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", interrupted_second_group)
    assert generate_main.main(_argv(model_dir, part)) == 130
    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", original)
    assert sorted(p.name for p in part.glob("ID_*")) == ["ID_1", "ID_2"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # staging removed
    kept = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in part.rglob("gen_*.png")}

    assert generate_main.main(_argv(model_dir, part, "--skip_existing")) == 0
    assert _pngs(part) == _pngs(full)  # the same files as one uninterrupted run
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in kept} == kept
    info = json.loads((part / "generation_info.json").read_text())
    assert info["skipped_user_ids"] == [1, 2] and info["generated_user_ids"] == [5]
    # other settings than the kept images': refused, naming what differs
    assert generate_main.main(_argv(model_dir, part, "--skip_existing", "--seed", "3")) == 2


def test_output_path_that_is_a_file_fails_before_sampling(model_dir, tmp_path, capsys, no_sampling):  # noqa: F811
    target = tmp_path / "out"
    target.write_text("a file")
    assert generate_main.main(_argv(model_dir, target)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "is a file" in errors[0], errors
    assert target.read_text() == "a file"


def test_read_only_parent_fails_before_sampling(model_dir, tmp_path, capsys, monkeypatch, no_sampling):  # noqa: F811
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permissions: make the probe see what a normal user would
        real_mkstemp = output_folder.tempfile.mkstemp

        def denied(*args, **kwargs):
            if Path(kwargs.get("dir", "")).resolve() == parent.resolve():
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*args, **kwargs)
        monkeypatch.setattr(output_folder.tempfile, "mkstemp", denied)
    try:
        assert generate_main.main(_argv(model_dir, parent / "out")) == 2
    finally:
        parent.chmod(0o700)
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "cannot write" in errors[0] and str(parent) in errors[0], errors
    assert not (parent / "out").exists()


def test_simulate_refuses_a_folder_with_foreign_files(tmp_path, capsys):
    out = tmp_path / "data"
    (out / "ID_1").mkdir(parents=True)
    (out / "ID_1" / "real.png").write_bytes(REAL)
    argv = ["--num_users", "1", "--samples_per_user", "1", "--resolution", "16", "--output_dir", str(out),
            "--no_progress"]
    assert run_cli(simulate_mod.main, argv) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "ID_1/real.png" in errors[0], errors
    assert sorted(p.name for p in out.rglob("*")) == ["ID_1", "real.png"]
    assert (out / "ID_1" / "real.png").read_bytes() == REAL


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("kind", ["tmp", "partial"])
def test_stale_staging_of_dead_processes_is_removed(tmp_path, kind):
    target = tmp_path / "out"
    host = output_folder._host_tag()
    dead = tmp_path / f".out.{kind}-{host}-{_dead_pid()}-abc123"
    live = tmp_path / f".out.{kind}-{host}-{os.getpid()}-def456"
    other_host = tmp_path / f".out.{kind}-elsewhere{host}-{_dead_pid()}-abc123"
    unrelated = tmp_path / f".other.{kind}-{host}-{_dead_pid()}-abc123"
    for folder in (dead, live, other_host, unrelated):
        folder.mkdir()
        (folder / "x.png").write_bytes(b"x")
    assert clear_stale_staging(target, kind) == [dead]
    assert not dead.exists() and live.exists() and other_host.exists() and unrelated.exists()


def test_generate_and_simulate_clear_their_stale_staging_on_start(model_dir, tmp_path):  # noqa: F811
    host = output_folder._host_tag()
    gen_stale = tmp_path / f".gen.tmp-{host}-{_dead_pid()}-aaaa"
    sim_stale = tmp_path / f".sim.partial-{host}-{_dead_pid()}-bbbb"
    for folder in (gen_stale, sim_stale):
        folder.mkdir()
    assert generate_main.main(_argv(model_dir, tmp_path / "gen", "--user_ids", "1")) == 0
    assert simulate_mod.simulate_dataset(tmp_path / "sim", num_users=1, samples_per_user=1, resolution=16,
                                         workers=1).is_dir()
    assert not gen_stale.exists() and not sim_stale.exists()


def test_sigterm_becomes_keyboard_interrupt_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_keyboard_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns to Python code
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_during_generation_keeps_finished_users(model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "out"
    original = VQVAETransformerPipeline.__call__
    calls = {"n": 0}

    def terminated_second_group(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", terminated_second_group)
    before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    assert generate_main.main(_argv(model_dir, out)) == 143  # 128 + SIGTERM, as training (Ctrl-C: 130)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before
    assert sorted(p.name for p in out.glob("ID_*")) == ["ID_1", "ID_2"]  # the first group was committed
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_sigterm_during_simulation_removes_the_staging_folder(tmp_path, monkeypatch, capsys):
    original = simulate_mod.simulate_user_images
    calls = {"n": 0}

    def terminated_second_user(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(simulate_mod, "simulate_user_images", terminated_second_user)
    monkeypatch.setattr(simulate_mod, "_usable_cores", lambda: 1)
    argv = ["--num_users", "3", "--samples_per_user", "1", "--resolution", "16", "--output_dir",
            str(tmp_path / "sim"), "--no_progress"]
    assert run_cli(simulate_mod.main, argv) == 143
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
    assert list(tmp_path.iterdir()) == []
