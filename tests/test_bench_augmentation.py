"""The pieces of benchmarks/bench_augmentation.py at tiny size: the k-shot draws (``all`` included) stay disjoint
from the test set, and each mixing strategy trains on what its name says (``filter`` keeps only the generated
images the real-only classifier attributes to their user; ``pretrain`` fine-tunes from the generated-data
classifier, ``pretrain_mix`` from the mixed-data one, each after its share of the steps). The whole benchmark (real
CLIs) is not run here."""

import argparse
import inspect
import json

import pytest
import torch

from benchmarks import bench_augmentation as B
from vqvae_transformer.models.judge import train_judge

USERS, PER_USER, SIZE = 3, 10, 16


@pytest.fixture(scope="module")
def tiny_sets():
    """Real, generated and test sets ``(images [N, 1, 16, 16], labels [N])``: each user is a horizontal band at its
    own height (easy to tell apart); the generated set's last user draws user 0's band (mislabelled samples)."""
    generator = torch.Generator().manual_seed(0)

    def make(labels, band_of):
        images = torch.rand(len(labels), 1, SIZE, SIZE, generator=generator) * 0.2 - 1.0
        for i, label in enumerate(labels.tolist()):
            top = 2 + 5 * band_of[label]
            images[i, :, top:top + 3, :] = 1.0
        return images, labels

    labels = torch.arange(USERS).repeat_interleave(PER_USER)
    identity = {u: u for u in range(USERS)}
    real = make(torch.arange(USERS).repeat_interleave(4), identity)
    generated = make(labels, {**identity, USERS - 1: 0})  # user 2's samples look like user 0
    test = make(labels, identity)
    return real, generated, test


def test_parse_k_and_labels():
    assert B.parse_k("5") == 5 and B.parse_k("all") == B.ALL
    assert B.k_label(B.ALL) == "all" and B.k_label(7) == "7"
    with pytest.raises(argparse.ArgumentTypeError):
        B.parse_k("0")
    assert B.build_parser().parse_args(["--k", "5", "all"]).k == [5, B.ALL]


def test_few_shot_draws_are_nested_disjoint_from_test_and_all_takes_the_pool():
    labels = torch.arange(USERS).repeat_interleave(PER_USER)
    test, pool = B.split_test_and_pool(labels, test_per_user=4)
    assert B.smallest_pool(pool) == PER_USER - 4
    five, three = B.few_shot_indices(pool, 5, seed=1), B.few_shot_indices(pool, 3, seed=1)
    every = B.few_shot_indices(pool, B.ALL, seed=1)
    assert set(three) <= set(five) <= set(every) and len(every) == USERS * (PER_USER - 4)
    assert not set(every) & set(test) and len(test) == USERS * 4
    with pytest.raises(ValueError, match="leaves none"):
        B.split_test_and_pool(labels, test_per_user=PER_USER)


def test_first_per_user_caps_each_label():
    labels = torch.tensor([0, 1, 0, 0, 1, 2])
    chosen = B.first_per_user(labels, 2)
    assert sorted(chosen.tolist()) == [0, 1, 2, 4, 5]


def test_strategies_train_on_what_their_names_say(tiny_sets, monkeypatch):
    real, generated, test = tiny_sets
    seen = []
    original = B.classifier_accuracy

    def recording(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs).arguments
        seen.append((bound["images"].shape[0], bound.get("init_state") is not None, bound["steps"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(B, "classifier_accuracy", recording)
    results = B.run_strategies(list(B.STRATEGIES), real, generated, test, USERS, k_per_user=4, seed=0, steps=40,
                               pretrain_fraction=0.25)
    assert set(results) == set(B.STRATEGIES)
    n_real, n_gen = real[0].shape[0], generated[0].shape[0]
    sizes = [size for size, _, _ in seen]
    assert sizes[:3] == [n_real, n_real + n_gen, n_real + USERS * 4]  # real, mix, mix_1to1 (4 generated per user)
    assert B.balanced_repeats(n_real, n_gen) == 2 and sizes[3] == 2 * n_real + n_gen  # 12 real, 30 generated
    # filter: the real-only classifier learnt the bands, so user 2's samples (user 0's band) are dropped
    assert results["filter"]["train_images"] == n_real + round(results["filter"]["acceptance"] * n_gen)
    assert results["filter"]["acceptance"] <= (USERS - 1) / USERS + 1e-9
    # pretrain: a quarter of the steps on the generated images, the rest tuning on the real ones from those weights;
    # pretrain_mix: the same on real + generated first
    assert seen[-4:] == [(n_gen, False, 10), (n_real, True, 30), (n_real + n_gen, False, 10), (n_real, True, 30)]
    assert results["pretrain_mix"]["train_images"] == 2 * n_real + n_gen
    assert all(seen[i][2] == 40 for i in range(len(seen) - 4))  # every other classifier: the whole budget
    assert results["real"]["accuracy"] > 0.9  # the bands are easy: the baseline works
    assert all("judge" not in r for r in results.values())


def test_train_judge_starts_from_init_state():
    images = torch.rand(8, 1, SIZE, SIZE) * 2 - 1
    labels = torch.tensor([0, 1] * 4)
    first = train_judge(images, labels, 2, epochs=1, seed=0, min_steps=3, batch_size=4)
    state = {k: v.clone() for k, v in first.model.state_dict().items()}
    tuned = train_judge(images, labels, 2, epochs=1, seed=5, min_steps=1, batch_size=4, lr=1e-12, init_state=state)
    fresh = train_judge(images, labels, 2, epochs=1, seed=5, min_steps=1, batch_size=4, lr=1e-12)
    weight = "blocks.0.weight"
    assert torch.allclose(tuned.model.state_dict()[weight], state[weight], atol=1e-6)
    assert not torch.allclose(fresh.model.state_dict()[weight], state[weight], atol=1e-3)


@pytest.mark.parametrize("images_count, batch_size, steps, total", [(8, 4, 1, 2), (10, 2, 5, 5), (9, 1, 9, 9)])
def test_train_judge_runs_any_small_step_count(images_count, batch_size, steps, total):
    """(10, 2, 5) is exactly 5 steps in all: OneCycleLR's warm-up length would be 0 there (it used to crash)."""
    images, labels = torch.rand(images_count, 1, SIZE, SIZE) * 2 - 1, torch.arange(images_count) % 2
    judge = train_judge(images, labels, 2, epochs=1, seed=0, min_steps=steps, batch_size=batch_size)
    assert judge.epochs_run * (images_count // batch_size) == total


def _row(strength, seed, real, mix):
    return {"k": "5", "init_from": "none", "strength": strength, "seed": seed, "generator_train_per_user": 5,
            "accuracy": {"real": real, "mix": mix}, "gain_pp": {"mix": 100 * (mix - real)},
            "filter_acceptance": None, "seconds": {"train_generator": 1.0, "generate": 1.0}}


def test_rows_and_summary_are_per_strength():
    rows = [_row(1.0, 0, 0.5, 0.4), _row(0.5, 0, 0.5, 0.6), _row(1.0, 1, 0.7, 0.5), _row(0.5, 1, 0.7, 0.8)]
    table = B.format_rows(rows)
    assert table[0].startswith("| k | init | strength | seed |") and "| 5 | none | 0.5 | 0 | 5 |" in table[3]
    lines, record = B.summarize(rows)
    assert sorted(record) == ["k=5 init=none strength=0.5", "k=5 init=none strength=1"]
    assert record["k=5 init=none strength=0.5"]["gain_pp"]["mix"][0] == pytest.approx(10.0)
    assert record["k=5 init=none strength=1"]["gain_pp"]["mix"][0] == pytest.approx(-15.0)
    assert record["k=5 init=none strength=1"]["best"] == "mix" and len(lines) == 4


def test_strength_flag_is_checked():
    args = B.build_parser().parse_args(["--strength", "1", "0.5"])
    assert args.strength == [1.0, 0.5]
    B.validate_args(args)
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(ValueError, match="--strength"):
            B.validate_args(B.build_parser().parse_args(["--strength", bad]))
    for bad in ("0", "1", "nan"):
        with pytest.raises(ValueError, match="--pretrain_fraction"):
            B.validate_args(B.build_parser().parse_args(["--pretrain_fraction", bad]))


@pytest.mark.parametrize("flags, passed", [
    ([], {"--vqvae_steps": "1600", "--prior_steps": "300", "--eval_steps": "1600", "--checkpointing_steps": "1600"}),
    (["--prior_steps", "preset"], {"--vqvae_steps": "1600"}),
    (["--vqvae_steps", "preset", "--prior_steps", "preset"], {}),
])
def test_preset_steps_leave_the_budget_to_train_main(flags, passed, tmp_path, monkeypatch):
    """``preset`` passes no step flag (nor the once-per-stage evaluation), so train_main's preset and its small-data
    rule choose, as for the README's command; the steps actually trained come back from the summary."""
    args = B.build_parser().parse_args(flags)
    B.validate_args(args)
    commands = []

    def fake_run(command, log, threads):
        commands.append(command)
        (tmp_path / "training_summary.json").write_text(
            '{"data": {"train_images": 62}, "vqvae": {"steps": 2800}, "prior": {"steps": 2200}}')
        return 1.5

    monkeypatch.setattr(B, "run_script", fake_run)
    seconds, images, steps = B.train_generator(args, tmp_path / "data", tmp_path, seed=3)
    assert (seconds, images, steps) == (1.5, 62, {"vqvae": 2800, "prior": 2200})
    command = commands[0]
    step_flags = {f: command[command.index(f) + 1] for f in
                  ("--vqvae_steps", "--prior_steps", "--eval_steps", "--checkpointing_steps") if f in command}
    assert step_flags == passed
    assert command[command.index("--seed") + 1] == "3" and "--val_fraction" in command
    with pytest.raises(SystemExit):
        B.build_parser().parse_args(["--prior_steps", "0"])


def test_generators_from_reuses_a_kept_generator_only_for_the_same_k_shot_files(tmp_path):
    """``--generators_from``: a kept run's model is reused when its k-shot folder holds exactly this draw's files;
    another draw, or a missing model, is refused with the folder named."""
    kept_run, draw = tmp_path / "kept" / "k5_init0_seed1", tmp_path / "draw"
    for folder in (kept_run / "data", draw):
        for name in ("ID_1/a.png", "ID_2/b.jpg"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")
    (kept_run / "model").mkdir()
    (kept_run / "model" / "training_summary.json").write_text(
        '{"wall_seconds": 1234.5, "data": {"train_images": 10}, "vqvae": {"steps": 2800}, "prior": {"steps": 2200}}')
    with pytest.raises(FileNotFoundError, match="data_info.json is missing"):
        B.reuse_generator(kept_run, draw, tmp_path / "copy0")
    gone = str(tmp_path / "moved_away" / "data")  # the earlier run's temporary k-shot folder, now gone
    (kept_run / "model" / "data_info.json").write_text(json.dumps({"data_dir": gone, "resolution": 64}))
    (kept_run / "model" / "checkpoints" / "prior").mkdir(parents=True)
    seconds, images, steps, model = B.reuse_generator(kept_run, draw, tmp_path / "copy")
    assert (seconds, images, steps, model) == (1234.5, 10, {"vqvae": 2800, "prior": 2200}, tmp_path / "copy")
    assert json.loads((model / "data_info.json").read_text()) == {"data_dir": str(draw.resolve()), "resolution": 64}
    assert (model / "training_summary.json").is_file() and not (model / "checkpoints").exists()
    assert json.loads((kept_run / "model" / "data_info.json").read_text())["data_dir"] == gone  # only read

    (draw / "ID_1" / "a.png").write_bytes(b"y")  # same name, other image (another data folder)
    with pytest.raises(ValueError, match="differs from this run's k-shot draw in 1 files .*ID_1/a.png"):
        B.reuse_generator(kept_run, draw, tmp_path / "copy2")
    (draw / "ID_1" / "a.png").write_bytes(b"x")
    (draw / "ID_2" / "c.png").write_bytes(b"x")  # another draw: one file more
    with pytest.raises(ValueError, match="differs from this run's k-shot draw in 1 files .*ID_2/c.png"):
        B.reuse_generator(kept_run, draw, tmp_path / "copy2")
    (kept_run / "model" / "training_summary.json").write_text('{"data": {"train_images": 10}, "vqvae": {"steps": 9}}')
    with pytest.raises(FileNotFoundError, match="did not finish training"):  # stopped after stage 1
        B.reuse_generator(kept_run, draw, tmp_path / "copy2")
    with pytest.raises(FileNotFoundError, match="no trained generator"):
        B.reuse_generator(tmp_path / "kept" / "k5_init0_seed2", draw, tmp_path / "copy3")
    with pytest.raises(ValueError, match="--generators_from .*no such folder"):
        B.validate_args(B.build_parser().parse_args(["--generators_from", str(tmp_path / "nowhere")]))
