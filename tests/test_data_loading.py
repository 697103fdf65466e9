"""Data loading: the ID_<k> folder contract, bad inputs, channel handling, the cache, splits, Hub datasets."""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

from vqvae_transformer.data import (
    IMAGE_EXTENSIONS,
    SpectrogramData,
    clear_image_cache,
    default_dataset_dir,
    load_hub_dataset,
    load_image_folder,
    load_split,
    load_training_data,
    save_split,
    scan_user_folders,
    stratified_split,
)
from vqvae_transformer.errors import UserInputError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_image_cache()
    yield
    clear_image_cache()


def _gray(seed: int = 0, size: int = 12) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))


def _colour(seed: int = 0, size: int = 12) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _make_folder(root: pathlib.Path, users: dict[str, int], colour: bool = False) -> pathlib.Path:
    """users: folder name -> image count; PNG images of 12 px."""
    for name, count in users.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            (_colour(i) if colour else _gray(i)).save(folder / f"img_{i}.png")
    return root


# ---------------------------------------------------------------------------------------------- folder contract


def test_natural_order_of_user_folders(tmp_path):
    root = _make_folder(tmp_path, {"ID_2": 1, "ID_10": 1, "ID_9": 1})
    assert list(scan_user_folders(root)) == [2, 9, 10]
    data = load_image_folder(root, 8)
    assert data.user_ids == [2, 9, 10]
    assert data.labels.tolist() == [0, 1, 2]
    assert pathlib.Path(data.paths[2]).parent.name == "ID_10"


def test_id_without_underscore_is_accepted(tmp_path):
    root = _make_folder(tmp_path, {"ID7": 2, "ID_3": 1})
    assert list(scan_user_folders(root)) == [3, 7]


def test_gaps_keep_their_ids(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 2, "ID_3": 2})
    data = load_image_folder(root, 8)
    assert data.user_ids == [1, 3]
    assert data.id_to_label(3) == 1 and data.label_to_id(1) == 3
    with pytest.raises(UserInputError, match="user id 2"):
        data.id_to_label(2)


def test_num_users_takes_the_first_n_by_id(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1, "ID_2": 1, "ID_10": 1})
    assert list(scan_user_folders(root, num_users=2)) == [1, 2]
    assert load_image_folder(root, 8, num_users=2).user_ids == [1, 2]


def test_images_are_sorted_naturally_and_non_images_counted(tmp_path, caplog):
    folder = tmp_path / "ID_1"
    folder.mkdir()
    for name in ("b_10.png", "b_2.PNG", "b_1.Jpg"):
        _gray().save(folder / name, format="JPEG" if name.lower().endswith("jpg") else "PNG")
    (folder / "notes.txt").write_text("x")
    (folder / "labels.csv").write_text("x")
    (folder / ".DS_Store").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="vqvae_transformer.data.folder"):
        files = scan_user_folders(tmp_path)[1]
    assert [f.name for f in files] == ["b_1.Jpg", "b_2.PNG", "b_10.png"]
    assert "Ignored 3 non-image" in caplog.text
    assert ".tiff" in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------------- bad inputs


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserInputError, match="nope.*does not exist"):
        load_image_folder(missing, 8)


def test_directory_without_user_folders_lists_what_was_found(tmp_path):
    (tmp_path / "person_a").mkdir()
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(UserInputError, match="no ID_<k> user folders.*person_a.*readme.md"):
        scan_user_folders(tmp_path)


def test_found_entries_are_truncated(tmp_path):
    for i in range(12):
        (tmp_path / f"user{i:02d}").mkdir()
    with pytest.raises(UserInputError, match=r"\(\+7 more\)") as info:
        scan_user_folders(tmp_path)
    assert "\n" not in str(info.value)


def test_empty_user_folder_is_named(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1})
    (root / "ID_2").mkdir()
    (root / "ID_2" / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="ID_2.*no images"):
        load_image_folder(root, 8)


def test_duplicate_ids_are_rejected(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1, "ID1": 1})
    with pytest.raises(UserInputError, match="both have id 1"):
        scan_user_folders(root)


def test_num_users_larger_than_available_names_both_numbers(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1, "ID_2": 1})
    with pytest.raises(UserInputError, match="num_users=5.*only 2 user folders"):
        load_image_folder(root, 8, num_users=5)


def test_num_users_below_one(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1})
    with pytest.raises(UserInputError, match="num_users=0"):
        load_image_folder(root, 8, num_users=0)


def test_resolution_below_eight(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1})
    with pytest.raises(UserInputError, match="resolution=4"):
        load_image_folder(root, 4)


def test_unsupported_channels(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1})
    with pytest.raises(UserInputError, match="channels=2"):
        load_image_folder(root, 8, channels=2)


def test_corrupt_image_is_named_and_can_be_skipped(tmp_path, caplog):
    root = _make_folder(tmp_path, {"ID_1": 2, "ID_2": 2})
    bad = root / "ID_2" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    truncated = root / "ID_1" / "cut.png"
    truncated.write_bytes((root / "ID_1" / "img_0.png").read_bytes()[:60])
    with pytest.raises(UserInputError, match="cannot read 2 image.*broken.png") as info:
        load_image_folder(root, 8)
    assert "cut.png" in str(info.value) and "skip_bad_images" in str(info.value)

    with caplog.at_level(logging.WARNING, logger="vqvae_transformer.data.folder"):
        data = load_image_folder(root, 8, skip_bad_images=True)
    assert len(data) == 4
    assert "Skipped 2 unreadable" in caplog.text and "broken.png" in caplog.text


def test_user_with_only_bad_images_fails_even_when_skipping(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 1})
    (root / "ID_2").mkdir()
    (root / "ID_2" / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="ID_2"):
        load_image_folder(root, 8, skip_bad_images=True)


# --------------------------------------------------------------------------------------- sizes, modes, channels


def _write_mixed_modes(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (10, 14), dtype=np.uint8)
    PIL.Image.fromarray(gray).convert("RGBA").save(folder / "a_rgba.png")  # gray content in RGBA
    PIL.Image.fromarray(gray).convert("P").save(folder / "b_p.png")
    PIL.Image.fromarray(gray).save(folder / "c_l.bmp")
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "d_16bit.png")
    PIL.Image.fromarray(gray).save(folder / "e.tif")
    PIL.Image.fromarray(gray).save(folder / "f.jpeg")
    PIL.Image.fromarray(gray > 128).save(folder / "g_bw.png")  # mode "1"


def test_mixed_sizes_and_gray_modes_load_as_one_channel(tmp_path):
    _write_mixed_modes(tmp_path / "ID_1")
    _gray(3, size=20).save(tmp_path / "ID_1" / "h_big.png")
    data = load_image_folder(tmp_path, 8)
    assert isinstance(data, SpectrogramData)
    assert data.images.shape == (8, 1, 8, 8) and data.images.dtype == torch.float32
    assert data.channels == 1 and data.resolution == 8
    assert data.images.min() >= -1.0 and data.images.max() <= 1.0
    assert data.images.min() < -0.5 and data.images.max() > 0.5  # the range is used, not squashed
    # the 16-bit image is scaled by 65535, so it matches its 8-bit twin
    by_name = {pathlib.Path(p).name: i for i, p in enumerate(data.paths)}
    assert torch.allclose(data.images[by_name["d_16bit.png"]], data.images[by_name["c_l.bmp"]], atol=0.02)


def test_colour_is_detected_and_gray_can_be_forced(tmp_path):
    _make_folder(tmp_path, {"ID_1": 2}, colour=True)
    _gray(5).save(tmp_path / "ID_1" / "gray.png")
    data = load_image_folder(tmp_path, 8)
    assert data.channels == 3 and data.images.shape == (3, 3, 8, 8)
    forced = load_image_folder(tmp_path, 8, channels=1)
    assert forced.channels == 1 and forced.images.shape == (3, 1, 8, 8)
    assert forced.images.min() >= -1.0 and forced.images.max() <= 1.0


def test_rgb_with_equal_channels_is_gray_and_can_be_forced_to_colour(tmp_path):
    folder = tmp_path / "ID_4"
    folder.mkdir()
    _gray(0).convert("RGB").save(folder / "x.png")
    data = load_image_folder(tmp_path, 8)
    assert data.channels == 1
    colour = load_image_folder(tmp_path, 8, channels=3)
    assert colour.images.shape == (1, 3, 8, 8)
    assert torch.equal(colour.images[:, 0], colour.images[:, 2])
    assert torch.allclose(colour.images[:, :1], data.images)


def test_values_map_to_minus_one_and_one(tmp_path):
    folder = tmp_path / "ID_1"
    folder.mkdir()
    PIL.Image.new("L", (8, 8), 0).save(folder / "black.png")
    PIL.Image.new("L", (8, 8), 255).save(folder / "white.png")
    data = load_image_folder(tmp_path, 8)
    assert data.images[0].eq(-1).all() and data.images[1].eq(1).all()


# -------------------------------------------------------------------------------------------- data object, cache


def test_subset_and_dataset(tmp_path):
    root = _make_folder(tmp_path, {"ID_1": 2, "ID_5": 3})
    data = load_image_folder(root, 8)
    part = data.subset([4, 0])
    assert len(part) == 2 and part.labels.tolist() == [1, 0] and part.user_ids == [1, 5]
    assert part.paths == [data.paths[4], data.paths[0]] and part.num_users == 2
    image, label = part.as_dataset()[0]
    assert image.shape == (1, 8, 8) and int(label) == 1


def test_second_load_uses_the_memory_cache(tmp_path, monkeypatch):
    root = _make_folder(tmp_path, {"ID_1": 2, "ID_2": 2})
    opened = []
    real_open = PIL.Image.open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    first = load_image_folder(root, 8)
    per_load = len(opened)  # 4 images, plus the colour ones once more for colormap="auto"'s detection
    assert per_load >= 4
    second = load_image_folder(root, 8)
    assert len(opened) == per_load and second is first
    load_image_folder(root, 16)  # other settings decode again
    assert len(opened) == 2 * per_load
    _gray(9).save(root / "ID_2" / "img_new.png")  # a changed folder decodes again
    assert len(load_image_folder(root, 8)) == 5


# ---------------------------------------------------------------------------------------------------- splits


def test_stratified_split_is_per_user_and_deterministic(monkeypatch):
    labels = [0] * 10 + [1] * 2 + [2] * 1 + [3] * 5
    train, val = stratified_split(labels, val_fraction=0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    val_labels = [labels[i] for i in val]
    assert val_labels.count(0) == 2 and val_labels.count(1) == 1 and val_labels.count(2) == 0
    assert val_labels.count(3) == 1
    torch.manual_seed(123)
    np.random.seed(123)
    assert stratified_split(torch.tensor(labels), 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)
    with pytest.raises(UserInputError, match="val_fraction=1.5"):
        stratified_split(labels, 1.5)


def test_split_save_load_round_trip(tmp_path):
    root = _make_folder(tmp_path / "data", {"ID_1": 4, "ID_2": 4})
    data = load_image_folder(root, 8)
    train, val = stratified_split(data.labels, 0.25, seed=0)
    path = save_split(tmp_path / "out" / "split.json", data, train, val, seed=0, val_fraction=0.25)
    record = json.loads(path.read_text())
    assert record["user_ids"] == [1, 2] and record["seed"] == 0 and record["val_fraction"] == 0.25
    assert len(record["val"]) == 2 and [p.name for p in path.parent.iterdir()] == ["split.json"]
    assert load_split(path, data) == (train, val)
    # a subset of the data that lacks a listed file is an error naming the file
    smaller = data.subset([i for i in range(len(data)) if i != val[0]])
    with pytest.raises(UserInputError, match=pathlib.Path(data.paths[val[0]]).name):
        load_split(path, smaller)


def test_load_split_missing_file(tmp_path):
    root = _make_folder(tmp_path / "data", {"ID_1": 2})
    with pytest.raises(UserInputError, match="nosplit.json"):
        load_split(tmp_path / "nosplit.json", load_image_folder(root, 8))


# ------------------------------------------------------------------------------------------------ Hub datasets


@pytest.fixture()
def offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))
    datasets = pytest.importorskip("datasets")
    return datasets


def _saved_dataset(datasets, path: pathlib.Path, labels: list, colour: bool = False) -> pathlib.Path:
    images = [(_colour(i) if colour else _gray(i)) for i in range(len(labels))]
    table = datasets.Dataset.from_dict({"image": images, "label": labels})
    table.cast_column("image", datasets.Image()).save_to_disk(str(path))
    return path


def test_hub_dataset_with_zero_based_int_labels(tmp_path, offline_hf, caplog):
    path = _saved_dataset(offline_hf, tmp_path / "ds", [0, 0, 1, 1, 2])
    with caplog.at_level(logging.INFO, logger="vqvae_transformer.data.hub_dataset"):
        data = load_hub_dataset(path, 8)
    assert data.user_ids == [1, 2, 3] and data.labels.tolist() == [0, 0, 1, 1, 2]
    assert "start at 0" in caplog.text
    assert data.images.shape == (5, 1, 8, 8) and data.channels == 1
    assert data.paths[4] == f"hub:{path}/train/4"
    assert load_hub_dataset(path, 8) is data  # decoded once per process


def test_hub_dataset_with_string_labels_orders_numerically(tmp_path, offline_hf):
    path = _saved_dataset(offline_hf, tmp_path / "ds", ["ID_10", "ID_2", "ID_9", "7", "ID_2"], colour=True)
    data = load_hub_dataset(path, 8, num_users=3)
    assert data.user_ids == [2, 7, 9] and data.channels == 3
    assert data.labels.tolist() == [0, 2, 1, 0]
    assert data.paths == [f"hub:{path}/train/{row}" for row in (1, 2, 3, 4)]


def test_hub_dataset_dict_split_and_class_labels(tmp_path, offline_hf):
    datasets = offline_hf
    names = ["ID_1", "ID_10", "ID_2"]  # lexicographic ClassLabel order, as imagefolder makes it
    table = datasets.Dataset.from_dict({"img": [_gray(i) for i in range(3)], "user": [0, 1, 2]})
    table = table.cast_column("user", datasets.ClassLabel(names=names)).cast_column("img", datasets.Image())
    datasets.DatasetDict(train=table).save_to_disk(str(tmp_path / "dd"))
    data = load_hub_dataset(tmp_path / "dd", 8, image_column="img", label_column="user")
    assert data.user_ids == [1, 2, 10] and data.labels.tolist() == [0, 2, 1]
    with pytest.raises(UserInputError, match="split 'test'.*train"):
        load_hub_dataset(tmp_path / "dd", 8, split="test", image_column="img", label_column="user")


def test_hub_dataset_missing_column_names_available(tmp_path, offline_hf):
    path = _saved_dataset(offline_hf, tmp_path / "ds", [1, 2])
    with pytest.raises(UserInputError, match="'pixels'.*columns: image, label"):
        load_hub_dataset(path, 8, image_column="pixels")


def test_hub_dataset_bad_label_and_unknown_name(tmp_path, offline_hf):
    path = _saved_dataset(offline_hf, tmp_path / "ds", ["ID_1", "walker"])
    with pytest.raises(UserInputError, match="'walker'"):
        load_hub_dataset(path, 8)
    with pytest.raises(UserInputError, match="no-such-org/no-such-set"):
        load_hub_dataset("no-such-org/no-such-set", 8)


def test_local_hub_style_folder(tmp_path, offline_hf):
    datasets = offline_hf
    table = datasets.Dataset.from_dict({"image": [_gray(i) for i in range(3)], "label": [3, 1, 3]})
    (tmp_path / "hubstyle" / "data").mkdir(parents=True)
    table.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "hubstyle" / "data" / "train-0.parquet"))
    data = load_hub_dataset(tmp_path / "hubstyle", 8)
    assert data.user_ids == [1, 3] and data.labels.tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------------- default and dispatcher


def _fake_simulator(monkeypatch, calls: list) -> None:
    """Install a stand-in ``vqvae_transformer.data.simulate`` that writes tiny gray PNGs."""

    def simulate_dataset(output_dir, num_users=31, samples_per_user=64, resolution=128, seed=0,
                         colormap="gray", show_progress=False):
        calls.append(dict(num_users=num_users, samples_per_user=samples_per_user, resolution=resolution))
        output_dir = pathlib.Path(output_dir)
        for user in range(1, num_users + 1):
            (output_dir / f"ID_{user}").mkdir(parents=True)
            for i in range(samples_per_user):
                _gray(seed + 100 * user + i, size=resolution).save(output_dir / f"ID_{user}" / f"{i}.png")
        return output_dir

    module = types.ModuleType("vqvae_transformer.data.simulate")
    module.simulate_dataset = simulate_dataset
    monkeypatch.setitem(sys.modules, "vqvae_transformer.data.simulate", module)


def test_default_dataset_is_simulated_once_and_keyed(tmp_path, monkeypatch):
    calls: list = []
    _fake_simulator(monkeypatch, calls)
    folder = default_dataset_dir(num_users=3, samples_per_user=2, resolution=8, seed=1, cache_dir=tmp_path)
    assert folder == tmp_path / "simulated" / "u3_s2_r8_seed1_v1"
    assert sorted(p.name for p in folder.iterdir()) == ["ID_1", "ID_2", "ID_3"]
    assert default_dataset_dir(num_users=3, samples_per_user=2, resolution=8, seed=1, cache_dir=tmp_path) == folder
    assert len(calls) == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind

    monkeypatch.setenv("VQVAE_TRANSFORMER_CACHE", str(tmp_path / "env"))
    other = default_dataset_dir(num_users=2, samples_per_user=1, resolution=8)
    assert other == tmp_path / "env" / "simulated" / "u2_s1_r8_seed0_v1" and len(calls) == 2


def test_load_training_data_dispatch(tmp_path, monkeypatch):
    calls: list = []
    _fake_simulator(monkeypatch, calls)
    data = load_training_data(resolution=8, num_users=2, samples_per_user=3, cache_dir=tmp_path)
    assert data.user_ids == [1, 2] and len(data) == 6 and data.source.startswith("simulated:")
    root = _make_folder(tmp_path / "real", {"ID_4": 1, "ID_6": 1})
    assert load_training_data(data_dir=root, resolution=8, num_users=None).user_ids == [4, 6]
    with pytest.raises(UserInputError, match="data_dir=.*dataset_name='x/y'"):
        load_training_data(data_dir=root, dataset_name="x/y")


@pytest.mark.skipif(
    importlib.util.find_spec("vqvae_transformer.data.simulate") is None,
    reason="vqvae_transformer.data.simulate is not written yet",
)
def test_default_dataset_with_the_real_simulator(tmp_path):
    folder = default_dataset_dir(num_users=2, samples_per_user=2, resolution=16, seed=0, cache_dir=tmp_path)
    data = load_image_folder(folder, 16)
    assert data.user_ids == [1, 2] and len(data) == 4 and data.channels == 1
