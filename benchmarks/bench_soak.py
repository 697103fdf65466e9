"""Soak benchmark: train -> generate -> validate, five rounds into the same folders, with a kill and a resume.

Every round runs the real CLIs as subprocesses at the tiny settings of ``tests/test_training.py`` (3 simulated
users x 8 images at 32 px, a 3-block tokenizer with K = 32, a 1-layer prior) into ONE work folder: the same
``model/`` (``train_main.py``), ``generated/`` (``generate_main.py``) and ``validation/`` (``validate_main.py``),
and one simulator cache. In round ``--kill_round`` the training subprocess gets SIGKILL as soon as the first
checkpoint of that run appears, and ``train_main.py --resume_from_checkpoint latest`` finishes it.

Per round the table shows the exit codes, whether the round passed, the files in each folder, the staging
leftovers found anywhere under the work folder (``.*.tmp*``, ``.*.old``, ``.partial-*``, ``.checkpoint-*.tmp``,
``.<name>.<kind>-<host>-<pid>-<random>`` staging folders) and the peak RSS of each subprocess (``os.wait4``: that
child's own ``ru_maxrss``, so one run's peak does not mask the next one's).

"Passed" means: every training run exits 0 (the killed one excepted) and the resume after the kill continues that
run from its checkpoint (its log says "resumed from ... at step N"), generation exits 0 and writes
``generation_info.json``, and validation exits 0 or 1 **and** writes ``validation_report.json`` in that run. Exit 1
is validate_main's "a threshold failed", expected of models this tiny; any other code is a crash. The verdict line
requires every round to pass, no leftovers in any round, the same file counts in every round, and the peak RSS of
each command in the last round at most 1.1 x the first round's.

Run from the repository root::

    python -m benchmarks.bench_soak                       # 5 rounds, kill in round 3 (6-12 min on 2 busy cores)
    python -m benchmarks.bench_soak --rounds 2 --kill_round 2 --keep_dir
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, work_dir

DATA = ["--num_users", "3", "--simulated_per_user", "8", "--resolution", "32"]  # tests/test_training.py's
VQVAE = ["--block_out_channels", "8", "8", "16", "--latent_channels", "8", "--codebook_size", "32",
         "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off"]
PRIOR = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2"]
LEFTOVER = re.compile(r"^\..*(\.tmp|\.old$|\.partial-|-\d+-[A-Za-z0-9_]+$)|^\.checkpoint-")
"""Hidden names of staging folders and temporary files (the manifest ``.vqvae_transformer_manifest.json`` is not)."""
FOLDERS = ("model", "generated", "validation")
MEASURED = ("train", "generate", "validate")
GROWTH_LIMIT = 1.1


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="train -> generate -> validate rounds (default: 5)")
    parser.add_argument("--kill_round", type=int, default=3,
                        help="round whose training is killed (SIGKILL) and resumed; 0: none (default: 3)")
    parser.add_argument("--vqvae_steps", type=int, default=16, help="stage-1 steps (default: 16)")
    parser.add_argument("--prior_steps", type=int, default=16, help="stage-2 steps (default: 16)")
    parser.add_argument("--checkpointing_steps", type=int, default=4, help="checkpoint every N steps (default: 4)")
    parser.add_argument("--samples_per_user", type=int, default=4, help="generated images per user (default: 4)")
    parser.add_argument("--judge_epochs", type=int, default=1,
                        help="validate_main's --judge_epochs (default: 1; it still makes its minimum of steps)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the subprocesses (default: 1)")
    parser.add_argument("--keep_dir", action="store_true", help="keep the work folder (its path is printed)")
    parser.add_argument("--json", default=None, help="also write the rows and the verdict to this JSON file")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible values, naming the flag and the value."""
    for flag in ("rounds", "vqvae_steps", "prior_steps", "checkpointing_steps", "samples_per_user", "judge_epochs"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not 0 <= args.kill_round <= args.rounds:
        raise ValueError(f"--kill_round must lie in [0, --rounds {args.rounds}], got {args.kill_round}")
    if args.checkpointing_steps >= args.vqvae_steps:
        raise ValueError(f"--checkpointing_steps {args.checkpointing_steps} must be below --vqvae_steps "
                         f"{args.vqvae_steps}, or the kill cannot land mid-run")


# ----------------------------------------------------------------------------------------------------------
# Subprocesses with their own peak memory


def start(command: list[str], log_path: Path, env: dict) -> tuple[subprocess.Popen, object]:
    """Start ``python <command>`` in the repository root, stdout and stderr into ``log_path``."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def reap(proc: subprocess.Popen, log, block: bool = True) -> tuple[int, float] | None:
    """Wait for ``proc`` with ``os.wait4``: ``(exit code, peak RSS in MiB)``, or None if it still runs.

    The exit code is negative for a signal (-9: SIGKILL), as in :mod:`subprocess`.
    """
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    return proc.returncode, usage.ru_maxrss / 1024  # Linux: KiB


def run(command: list[str], log_path: Path, env: dict) -> dict:
    """Run one command to its end; ``{"code", "rss_mb", "seconds"}``."""
    began = time.perf_counter()
    code, rss = reap(*start(command, log_path, env))
    return {"code": code, "rss_mb": rss, "seconds": time.perf_counter() - began}


def run_and_kill(command: list[str], log_path: Path, env: dict, checkpoints: Path, timeout: float = 600) -> dict:
    """Run training and SIGKILL it once a checkpoint written by this run appears under ``checkpoints``.

    ``killed_at`` in the result: the checkpoint seen (``vqvae/checkpoint-4``), None when the run ended first.
    """
    began, launched = time.perf_counter(), time.time()
    proc, log = start(command, log_path, env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = reap(proc, log, block=False)
        if done is not None:  # finished (or crashed) before any checkpoint could be seen
            return {"code": done[0], "rss_mb": done[1], "seconds": time.perf_counter() - began, "killed_at": None}
        # A complete checkpoint of this run: its state file is newer than the launch (deleting the old ones
        # also updates their folders' times, so those are no sign).
        fresh = [p for p in checkpoints.glob("*/checkpoint-*") if _mtime(p / "training_state.json") > launched]
        if fresh:
            proc.send_signal(signal.SIGKILL)
            code, rss = reap(proc, log)
            return {"code": code, "rss_mb": rss, "seconds": time.perf_counter() - began,
                    "killed_at": f"{fresh[0].parent.name}/{fresh[0].name}"}
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    code, rss = reap(proc, log)
    return {"code": code, "rss_mb": rss, "seconds": time.perf_counter() - began, "killed_at": "timeout"}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned or renamed meanwhile
        return 0.0


# ----------------------------------------------------------------------------------------------------------
# One round


def count_files(folder: Path) -> int:
    """Regular files under ``folder`` (0 when it is missing)."""
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def leftovers(work: Path) -> list[str]:
    """Staging folders and temporary files anywhere under ``work``, relative to it."""
    return sorted(str(p.relative_to(work)) for p in work.rglob(".*") if LEFTOVER.match(p.name))


def run_round(args: argparse.Namespace, work: Path, number: int, env: dict) -> dict:
    """Train (killed and resumed in ``--kill_round``), generate and validate into ``work``; one table row."""
    model, generated, validation, logs = (work / name for name in (*FOLDERS, "logs"))
    train = ["train_main.py", *DATA, *VQVAE, *PRIOR, "--vqvae_steps", str(args.vqvae_steps),
             "--prior_steps", str(args.prior_steps), "--checkpointing_steps", str(args.checkpointing_steps),
             "--eval_steps", str(max(args.vqvae_steps, args.prior_steps)), "--output_dir", str(model)]
    row: dict = {"round": number, "train_codes": [], "notes": []}
    if number == args.kill_round:
        killed = run_and_kill(train, logs / f"round{number}_train_killed.log", env, model / "checkpoints")
        row["train_codes"].append(killed["code"])
        row["rss_train_killed_mb"] = killed["rss_mb"]
        row["killed_at"] = killed["killed_at"]
        if killed["killed_at"] is None:
            row["notes"].append("kill missed: training ended first")
        resumed = run([*train, "--resume_from_checkpoint", "latest"], logs / f"round{number}_train.log", env)
        text = (logs / f"round{number}_train.log").read_text(errors="replace")
        match = re.search(r"resumed from \S+ at step (\d+)", text)
        row["resumed_at_step"] = int(match.group(1)) if match else None
        if killed["killed_at"] not in (None, "timeout") and match is None:
            reused = re.findall(r"(stage \d): reusing \S+ \(it already finished\)", text)
            row["notes"].append("the resume did not continue the killed run" +
                                (f" ({', '.join(reused)} of the previous round reused instead)" if reused else ""))
            row["resume_failed"] = True
        trained = resumed
    else:
        trained = run(train, logs / f"round{number}_train.log", env)
    row["train_codes"].append(trained["code"])
    began = time.time()
    gen = run(["generate_main.py", "--model_dir", str(model), "--output_dir", str(generated),
               "--samples_per_user", str(args.samples_per_user), "--seed", str(number)],
              logs / f"round{number}_generate.log", env)
    val = run(["validate_main.py", "--model_dir", str(model), "--generated_data_dir", str(generated),
               "--output_dir", str(validation), "--judge_epochs", str(args.judge_epochs), "--num_threads", "1"],
              logs / f"round{number}_validate.log", env)
    report = validation / "validation_report.json"
    row.update(gen_code=gen["code"], val_code=val["code"],
               report_written=report.is_file() and _mtime(report) > began,
               rss_train_mb=trained["rss_mb"], rss_generate_mb=gen["rss_mb"], rss_validate_mb=val["rss_mb"],
               seconds_train=trained["seconds"] + (killed["seconds"] if number == args.kill_round else 0.0),
               seconds_generate=gen["seconds"], seconds_validate=val["seconds"])
    row["seconds"] = row["seconds_train"] + row["seconds_generate"] + row["seconds_validate"]
    if row["report_written"]:
        row["val_failed"] = json.loads(report.read_text()).get("failed", [])
    gen_ok = gen["code"] == 0 and (generated / "generation_info.json").is_file()
    train_ok = row["train_codes"][-1] == 0 and (model / "model_index.json").is_file()
    row["passed"] = (train_ok and gen_ok and val["code"] in (0, 1) and row["report_written"]
                     and not row.get("resume_failed"))
    row["files"] = {name: count_files(work / name) for name in FOLDERS}
    row["leftovers"] = leftovers(work)
    return row


# ----------------------------------------------------------------------------------------------------------
# Report


def format_rows(rows: list[dict]) -> list[str]:
    """The printed table, one line per round."""
    header = (f"{'round':>5}  {'train exit':>10}  {'gen':>3}  {'val':>11}  {'passed':>6}  "
              f"{'files model/gen/val':>19}  {'leaked':>6}  {'RSS MiB train/gen/val':>21}  {'s train/gen/val':>15}")
    lines = [header, "-" * len(header)]
    for row in rows:
        train = ",".join(str(c) for c in row["train_codes"])
        val = {0: "0 pass", 1: "1 threshold"}.get(row["val_code"], f"{row['val_code']} CRASH")
        files = "/".join(str(row["files"][name]) for name in FOLDERS)
        rss = "/".join(f"{row[f'rss_{name}_mb']:.0f}" for name in MEASURED)
        seconds = "/".join(f"{row[f'seconds_{name}']:.0f}" for name in MEASURED)
        lines.append(f"{row['round']:>5}  {train:>10}  {row['gen_code']:>3}  {val:>11}  "
                     f"{'yes' if row['passed'] else 'NO':>6}  {files:>19}  {len(row['leftovers']):>6}  {rss:>21}  "
                     f"{seconds:>15}")
    return lines


def verdict(rows: list[dict]) -> tuple[bool, str]:
    """``(ok, one line)``: all passed, nothing leaked, stable file counts, no peak-memory growth."""
    failed = [row["round"] for row in rows if not row["passed"]]
    leaked = sorted({name for row in rows for name in row["leftovers"]})
    counts = {json.dumps(row["files"], sort_keys=True) for row in rows}
    first, last = rows[0], rows[-1]
    growth = {name: last[f"rss_{name}_mb"] / first[f"rss_{name}_mb"] for name in MEASURED}
    grew = [name for name, ratio in growth.items() if ratio > GROWTH_LIMIT]
    ok = not failed and not leaked and len(counts) == 1 and not grew
    parts = [f"all {len(rows)} rounds passed" if not failed else f"rounds {failed} FAILED",
             "nothing leaked" if not leaked else f"LEAKED {leaked[:5]}",
             "same files every round" if len(counts) == 1 else f"file counts CHANGED ({len(counts)} variants)",
             "peak RSS last/first " + ", ".join(f"{name} {ratio:.2f}" for name, ratio in growth.items()) +
             (f" (<= {GROWTH_LIMIT})" if not grew else f" GREW: {grew}")]
    return ok, ("PASS: " if ok else "FAIL: ") + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the verdict; exit 0 when the verdict passes, else 1."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    start_time = time.perf_counter()
    with work_dir("bench_soak_", args.keep_dir) as work:
        (work / "logs").mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
               "VQVAE_TRANSFORMER_CACHE": str(work / "cache")}
        rows = []
        for number in range(1, args.rounds + 1):
            rows.append(run_round(args, work, number, env))
            print(f"round {number}: {'passed' if rows[-1]['passed'] else 'FAILED'} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
            if not rows[-1]["passed"]:
                print(f"  logs: {work / 'logs'} (use --keep_dir to keep them)", flush=True)
        ok, line = verdict(rows)
    print(f"\nsoak: {args.rounds} rounds of train_main -> generate_main -> validate_main (tiny: 3 users x 8 at 32 px, "
          f"{args.vqvae_steps} + {args.prior_steps} steps, checkpoint every {args.checkpointing_steps}), one work "
          f"folder; round {args.kill_round or '-'}: SIGKILL at the first checkpoint, then --resume_from_checkpoint "
          f"latest; val exit 1 = a threshold failed (expected at this size), other codes = crash")
    print("\n".join(format_rows(rows)))
    for row in rows:
        extra = [*row["notes"]]
        if "killed_at" in row:
            extra.append(f"killed after {row['killed_at']} (RSS {row['rss_train_killed_mb']:.0f} MiB), "
                         f"resumed at step {row['resumed_at_step']}")
        if row["leftovers"]:
            extra.append(f"leftovers: {row['leftovers']}")
        if extra:
            print(f"round {row['round']}: " + "; ".join(extra))
    print(f"\n{line}\ntotal {(time.perf_counter() - start_time) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "verdict": line}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
