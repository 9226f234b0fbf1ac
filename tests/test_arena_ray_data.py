"""What a Ray worker node does with the head's data cache, without Ray: every file is
checked against the head's hashes before the copy is put in place."""

import pytest
from arena_helpers import build_cache

from arena.ray_backend import DataMismatch, ship_data, write_checked


def test_a_node_copy_is_put_in_place_only_when_every_hash_matches(tmp_path):
    data_dir = build_cache(tmp_path / "data")
    hashes, files = ship_data(data_dir)
    assert "train/tokens.bin" in files and "eval/val.bin" in files and "manifest.json" in files

    val = files["eval/val.bin"]
    bad = dict(files, **{"eval/val.bin": bytes([val[0] ^ 1]) + val[1:]})
    with pytest.raises(DataMismatch, match="eval/val.bin arrived with the wrong hash"):
        write_checked(tmp_path / "node" / "copy", bad, hashes)
    missing = {k: v for k, v in files.items() if k != "tokenizer.json"}
    with pytest.raises(DataMismatch, match="incomplete"):
        write_checked(tmp_path / "node" / "copy", missing, hashes)
    assert list((tmp_path / "node").iterdir()) == []  # nothing half-written is left

    write_checked(tmp_path / "node" / "copy", files, hashes)
    for rel, content in files.items():
        assert (tmp_path / "node" / "copy" / rel).read_bytes() == content


def test_the_head_refuses_to_ship_a_corrupt_cache(tmp_path):
    data_dir = build_cache(tmp_path / "data")
    path = data_dir / "train" / "tokens.bin"
    tokens = path.read_bytes()
    path.write_bytes(bytes([tokens[0] ^ 1]) + tokens[1:])
    with pytest.raises(ValueError, match="fails its hash check.*prepare.py --force"):
        ship_data(data_dir)
