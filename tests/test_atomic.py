"""Atomic writes: whole files or nothing, and no shared temporary name between writers."""

import json
import threading

import pytest

from vqvae_transformer.atomic import write_json_atomic, write_text_atomic


def test_write_json_atomic_round_trips_and_leaves_no_temp_files(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "info.json", {"a": 1, "path": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "path": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["info.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = write_text_atomic(tmp_path / "report.md", "old\n")
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # fails while writing the temporary file
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_concurrent_writers_of_one_path_never_collide(tmp_path):
    """What every rank of ``accelerate launch`` does with data_info.json: all writes succeed, one wins whole."""
    path = tmp_path / "data_info.json"
    records = [{"rank": rank, "payload": "x" * 100_000} for rank in range(8)]
    errors = []

    def write(record):
        try:
            for _ in range(5):
                write_json_atomic(path, record)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(r,)) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text()) in records
    assert [p.name for p in tmp_path.iterdir()] == ["data_info.json"]
