"""Atomic JSON records: a whole new file or the old one, never a truncated one."""

import json

import pytest

from tda import atomic
from tda.atomic import write_json


def test_json_records_are_indented_and_end_in_a_newline(tmp_path):
    path = tmp_path / "results" / "r.json"
    write_json(path, {"lds": 0.25, "seeds": [0, 1]})
    assert path.read_text() == json.dumps({"lds": 0.25, "seeds": [0, 1]}, indent=2) + "\n"
    write_json(path, {"lds": 0.5})
    assert json.loads(path.read_text()) == {"lds": 0.5}


def test_a_record_that_cannot_be_written_leaves_the_old_one_whole(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"lds": 0.25})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"lds": object()})
    assert json.loads(path.read_text()) == {"lds": 0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_directories_made_for_a_file_are_fsynced_into_their_parents(tmp_path, monkeypatch):
    """A power loss must not drop a new directory entry holding a published file."""
    synced = []
    monkeypatch.setattr(atomic, "fsync_directory", synced.append)
    write_json(tmp_path / "a" / "b" / "record.json", {"x": 1})
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    synced.clear()
    write_json(tmp_path / "a" / "b" / "other.json", {"x": 2})  # nothing new to make
    assert synced == [tmp_path / "a" / "b"]
