"""density.runtime.outputs and density.runtime.safe_yaml: the shared rules every command's outputs and
configuration files go through."""

import pytest

from density.runtime.outputs import OutputError, confined, plan_outputs, writable_file
from density.runtime.safe_yaml import YAMLError, load_yaml


def test_confined_refuses_escaping_names(tmp_path):
    assert confined(tmp_path, "eight/a.pt") == tmp_path / "eight" / "a.pt"
    for bad in ("../victim.pt", "a/../../victim.pt", "/etc/passwd"):
        with pytest.raises(OutputError, match="outside"):
            confined(tmp_path, bad, source="row 3")


def test_plan_refuses_collisions_and_existing_files_before_work(tmp_path):
    with pytest.raises(OutputError, match="a.wav and b/a.wav would both be written"):
        plan_outputs(tmp_path, [("a.wav", "x.wav"), ("b/a.wav", "x.wav")], overwrite=True)
    (tmp_path / "x.wav").write_bytes(b"mine")
    with pytest.raises(OutputError, match="exists already: give --overwrite"):
        plan_outputs(tmp_path, [("a", "x.wav"), ("b", "y.wav")], overwrite=False)
    assert plan_outputs(tmp_path, [("a", "x.wav")], overwrite=True) == [tmp_path / "x.wav"]
    assert (tmp_path / "x.wav").read_bytes() == b"mine"  # planning writes nothing


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\nb: [1, 2\n", "cfg.yaml, line 3"),
        ("a: 1\nb: 2\na: 3\n", "cfg.yaml, line 3: key 'a' is given twice"),
        ("a: &x [1, 2]\nb: *x\n", "line 2: anchors and aliases"),
        (
            "a: !!python/object/apply:os.system ['echo hi']\n",
            "line 1: tag .*python/object/apply:os.system.* not allowed",
        ),
    ],
)
def test_yaml_problems_name_the_file_and_line(text, message):
    with pytest.raises(YAMLError, match=message):
        load_yaml(text, "cfg.yaml")


def test_alias_bomb_is_refused_at_once():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(YAMLError, match="anchors and aliases"):
        load_yaml(bomb, "bomb.yaml")


def test_plain_data_loads():
    assert load_yaml("lr: 1e-3\nspecs: [[1, 2], [3, 4]]\nname: x\nday: 2022-01-01\n", "c") == {
        "lr": 1e-3,
        "day": "2022-01-01",
        "specs": [[1, 2], [3, 4]],
        "name": "x",
    }


def test_a_file_written_at_the_end_is_checked_writable_first(tmp_path):
    assert writable_file(tmp_path / "new" / "deeper" / "out.json", "--json") == tmp_path / "new" / "deeper" / "out.json"
    with pytest.raises(OutputError, match=f"--json {tmp_path} is a directory; give a file path, e.g. --json "):
        writable_file(tmp_path, "--json")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=f"lies below the file {tmp_path / 'file'}"):
        writable_file(tmp_path / "file" / "out.json", "--json")
    assert not (tmp_path / "new").exists()  # checking creates nothing
