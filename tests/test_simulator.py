"""Physics and I/O tests of the embedded micro-Doppler simulator (short recordings, a few users)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import median_filter, uniform_filter
from scipy.signal import find_peaks

from vqvae_transformer.cli import run_cli
from vqvae_transformer.data import simulate as simulate_mod
from vqvae_transformer.data.simulate import main, simulate_dataset, simulate_user_images
from vqvae_transformer.data.simulator import (
    PersonTraits,
    RadarConfig,
    Spectrogram,
    draw_persons,
    simulate_spectrogram,
    spectrogram_to_image,
)
from vqvae_transformer.errors import UserInputError

PERSONS = draw_persons(31, seed=0)
# Slowest, fastest (by relative velocity) and a middle person: the physics must hold across the range.
_BY_RV = sorted(PERSONS, key=lambda p: p.speed / p.leg_length)
TEST_PERSONS = [_BY_RV[0], _BY_RV[15], _BY_RV[-1]]


def _simulate(person: PersonTraits, seed: int = 0, **radar_kwargs) -> Spectrogram:
    return simulate_spectrogram(person, np.random.default_rng(seed), RadarConfig(**radar_kwargs))


def torso_doppler(spec: Spectrogram) -> float:
    """Doppler of the strongest return, averaged over the frames where it sits on the torso line.

    Frames whose strongest return is a limb far from the median (stance legs near zero Doppler) are
    left out, then the remaining per-frame peaks are averaged (the torso's own ±10 % oscillation averages out).
    """
    peak = spec.doppler_hz[np.argmax(spec.db, axis=0)]  # [frames] Hz
    centre = np.median(peak)
    on_line = np.abs(peak - centre) < 0.3 * abs(centre)
    return float(peak[on_line].mean())


def upper_envelope(spec: Spectrogram, margin_db: float = 3.0) -> np.ndarray:
    """Highest Doppler per frame whose (3 bins × 5 frames smoothed) power clears the noise by ``margin_db``.

    The noise reference is the 99.5th percentile of the smoothed power in the far negative Doppler half,
    where an approaching walker returns nothing.
    """
    power = uniform_filter(10.0 ** (spec.db / 10.0), size=(3, 5), mode="nearest")
    db = 10.0 * np.log10(power)
    noise_rows = spec.doppler_hz < -0.5 * spec.doppler_hz.max()
    threshold = np.percentile(db[noise_rows], 99.5) + margin_db
    above = db > threshold  # [D, F]
    first = np.argmax(above, axis=0)  # row 0 is the highest Doppler
    envelope = np.where(above.any(axis=0), spec.doppler_hz[first], 0.0)
    return median_filter(envelope, size=3)  # drop single-frame noise spikes


@pytest.mark.parametrize("person", TEST_PERSONS, ids=lambda p: f"ID_{p.user_id}")
def test_torso_line_at_two_v_over_lambda(person):
    spec = _simulate(person, seed=person.user_id)
    expected = 2.0 * spec.speed / spec.wavelength
    assert expected == pytest.approx(spec.torso_doppler_hz)
    assert torso_doppler(spec) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("person", TEST_PERSONS, ids=lambda p: f"ID_{p.user_id}")
def test_foot_peak_is_three_to_six_times_torso(person):
    spec = _simulate(person, seed=person.user_id)
    ratio = upper_envelope(spec).max() / torso_doppler(spec)
    assert 3.0 <= ratio <= 6.0, f"peak foot Doppler / torso Doppler = {ratio:.2f}"


def test_image_orientation_and_axes():
    spec = _simulate(TEST_PERSONS[1])
    assert spec.db.shape == (spec.doppler_hz.size, spec.time_s.size)
    assert np.all(np.diff(spec.doppler_hz) < 0), "row 0 must be the highest Doppler"
    assert spec.db.max() == 0.0 and spec.db.min() >= -RadarConfig().dynamic_range_db
    # Approaching walker: far more energy above zero Doppler than below.
    power = 10.0 ** (spec.db / 10.0)
    assert power[spec.doppler_hz > 0].sum() > 10 * power[spec.doppler_hz < 0].sum()


@pytest.mark.parametrize("person", [_BY_RV[-1], max(PERSONS, key=lambda p: p.speed)], ids=lambda p: f"ID_{p.user_id}")
def test_no_energy_wraps_around_the_doppler_axis(person):
    radar = RadarConfig()
    # Noise-free: anything in the outer bins would be signal that aliased across ±PRF/2.
    clean = _simulate(person, seed=3, snr_db=(300.0, 300.0))
    edge = np.r_[clean.db[:6], clean.db[-6:]]
    assert edge.max() <= -radar.dynamic_range_db + 1.0, f"edge bins reach {edge.max():.1f} dB"
    # With noise: the outer bins look like the pure-noise region, never brighter.
    noisy = _simulate(person, seed=3)
    noise_rows = (noisy.doppler_hz < -0.5 * noisy.doppler_hz.max()) & (noisy.doppler_hz > -0.9 * noisy.doppler_hz.max())
    noise_level = np.mean(10.0 ** (noisy.db[noise_rows] / 10.0))
    for rows in (slice(0, 6), slice(-6, None)):
        assert np.mean(10.0 ** (noisy.db[rows] / 10.0)) < 2.0 * noise_level


@pytest.mark.parametrize("person", TEST_PERSONS[::2], ids=lambda p: f"ID_{p.user_id}")
def test_envelope_period_matches_gait_cycle(person):
    # 8 s recorded from far away so that the walker stays well in front of the radar.
    spec = _simulate(person, seed=7, duration_s=8.0, range_m=(20.0, 25.0))
    envelope = upper_envelope(spec)
    envelope = envelope - envelope.mean()
    autocorr = np.correlate(envelope, envelope, mode="full")[envelope.size - 1 :]
    autocorr /= autocorr[0]
    dt = float(spec.time_s[1] - spec.time_s[0])
    peaks, _ = find_peaks(autocorr, prominence=0.1)
    peaks = peaks[peaks * dt > 0.2]  # skip the zero-lag lobe
    step = peaks[0] * dt  # first repetition: one step (the envelope peaks once per foot)
    assert step == pytest.approx(spec.cycle_duration_s / 2.0, rel=0.05)


def test_persons_are_deterministic_and_distinct():
    assert draw_persons(5, seed=0) == PERSONS[:5]
    assert draw_persons(31, seed=0) == PERSONS
    assert [p.user_id for p in PERSONS] == list(range(1, 32))
    assert len({(p.height, p.speed, p.cadence, p.arm_swing) for p in PERSONS}) == 31
    assert draw_persons(3, seed=1) != PERSONS[:3]
    for p in PERSONS:
        assert 1.55 <= p.height <= 1.95 and 0.9 <= p.speed <= 1.6 and 0.9 <= p.cadence <= 1.1
        assert 0.5 <= p.arm_swing <= 1.5 and 60.0 <= p.knee_peak <= 75.0
    json.dumps(PERSONS[0].to_dict())  # serialisable


def test_same_seed_same_images_and_persons_differ():
    a = simulate_user_images(PERSONS[0], 2, 32, seed=0, radar=RadarConfig(duration_s=1.0))
    b = simulate_user_images(PERSONS[0], 2, 32, seed=0, radar=RadarConfig(duration_s=1.0))
    c = simulate_user_images(PERSONS[1], 2, 32, seed=0, radar=RadarConfig(duration_s=1.0))
    assert a.dtype == np.uint8 and a.shape == (2, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1]), "two recordings of one person must differ (nuisances)"


def test_spectrogram_to_image_shapes():
    spec = _simulate(PERSONS[0], duration_s=1.0)
    gray = spectrogram_to_image(spec, 48)
    jet = spectrogram_to_image(spec, 48, colormap="jet")
    assert gray.shape == (48, 48) and gray.dtype == np.uint8 and gray.max() > 150
    assert jet.shape == (48, 48, 3) and jet.dtype == np.uint8
    with pytest.raises(ValueError, match="colormap"):
        spectrogram_to_image(spec, 48, colormap="no-such-map")


def test_cli_writes_folders_pngs_and_persons(tmp_path):
    out = tmp_path / "sim"
    assert main(["--num_users", "3", "--samples_per_user", "2", "--resolution", "32",
                 "--output_dir", str(out), "--seed", "5", "--no_progress"]) == 0
    users = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert users == ["ID_1", "ID_2", "ID_3"]
    for user in users:
        files = sorted((out / user).glob("*.png"))
        assert [f.name for f in files] == ["sample_0000.png", "sample_0001.png"]
        with Image.open(files[0]) as img:
            assert img.mode == "L" and img.size == (32, 32)
    persons = json.loads((out / "persons.json").read_text())
    assert [p["user_id"] for p in persons["persons"]] == [1, 2, 3]
    assert persons["parameters"]["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_dataset_is_byte_identical_reusable_and_guarded(tmp_path):
    kwargs = dict(num_users=2, samples_per_user=2, resolution=24, seed=1)
    first = simulate_dataset(tmp_path / "a", **kwargs)
    second = simulate_dataset(tmp_path / "b", **kwargs)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    # Same parameters again: the complete run is reused; different parameters: refused, naming the folder.
    assert simulate_dataset(first, **kwargs) == first
    with pytest.raises(UserInputError, match="not empty"):
        simulate_dataset(first, **{**kwargs, "seed": 2})
    jet = simulate_dataset(tmp_path / "jet", num_users=1, samples_per_user=1, resolution=24, colormap="jet")
    with Image.open(jet / "ID_1" / "sample_0000.png") as img:
        assert img.mode == "RGB"


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = simulate_mod.simulate_user_images

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(simulate_mod, "simulate_user_images", failing)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(tmp_path / "out", num_users=3, samples_per_user=1, resolution=16, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_parallel_simulation_writes_the_same_files(tmp_path):
    """Users are simulated by several processes; every file equals the one-process run's."""
    kwargs = dict(num_users=3, samples_per_user=2, resolution=16, seed=5)
    one = simulate_dataset(tmp_path / "one", workers=1, **kwargs)
    two = simulate_dataset(tmp_path / "two", workers=2, **kwargs)
    files = sorted(f.relative_to(one) for f in one.rglob("*") if f.is_file())
    assert len(files) == 3 * 2 + 1  # the PNGs and persons.json
    assert files == sorted(f.relative_to(two) for f in two.rglob("*") if f.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


@pytest.mark.parametrize(
    "argv",
    [
        ["--num_users", "0"],
        ["--samples_per_user", "-1"],
        ["--resolution", "abc"],
        ["--colormap", "viridis-nope"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    code = run_cli(main, argv + ["--output_dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_cli_module_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vqvae_transformer.data.simulate", "--num_users", "0", "--output_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--num_users" in lines[0], proc.stderr
