"""The one guarded JSON decoder and the one guarded YAML loader (r1rm.data.files): hostile input is
a LineError / YamlError that says what and where, never a RecursionError, a silently dropped key,
an alias bomb walked or a Python object built."""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from r1rm.data import files
from r1rm.data.files import (
    MAX_JSON_DEPTH,
    LineError,
    YamlError,
    json_depth,
    json_lines,
    jsonl_rows,
    load_yaml,
    loads_json,
    read_json,
    read_rows,
)
from r1rm.errors import DataError

ROW = {"uid": "u1", "question": "q", "response1": "a", "response2": "b", "label": 1}


# ---------------------------------------------------------------- JSON
def test_depth_counts_brackets_outside_strings_only():
    assert json_depth('{"a": [1, {"b": []}]}') == 4  # under the limit: the cheap upper bound
    quoted = json.dumps({"q": "[" * 500 + "{" * 500, "a": [[1]]})
    assert json_depth(quoted) == 3 and loads_json(quoted)["a"] == [[1]]
    escaped = json.dumps({"q": '\\"[' * 300})  # escaped quotes do not end the string
    assert json_depth(escaped) == 1


def test_nesting_at_the_limit_passes_one_more_is_refused():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth(ok) == MAX_JSON_DEPTH and loads_json(ok) is not None
    with pytest.raises(LineError) as e:
        loads_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert e.value.reason == "json_too_deep" and str(MAX_JSON_DEPTH) in e.value.brief


def test_a_hundred_thousand_brackets_are_refused_fast_without_recursing():
    t = time.process_time()
    for text in ("[" * 100_000, '{"a":' * 100_000, "[" * 50_000 + "]" * 50_000):
        with pytest.raises(LineError) as e:
            loads_json(text)
        assert e.value.reason == "json_too_deep"
    assert time.process_time() - t < 1.0


def test_recursion_error_deep_in_a_stack_is_the_same_refusal():
    def at_depth(n):
        return at_depth(n - 1) if n else loads_json("[" * 60 + "]" * 60)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        with pytest.raises(LineError) as e:
            at_depth(150)
    finally:
        sys.setrecursionlimit(limit)
    assert e.value.reason == "json_too_deep"


def test_a_key_given_twice_is_refused_naming_it():
    with pytest.raises(LineError) as e:
        loads_json('{"label": 1, "meta": {"x": 1}, "label": 2}')
    assert e.value.reason == "duplicate_key" and "'label'" in e.value.brief
    with pytest.raises(LineError, match="'x'"):
        loads_json('{"meta": {"x": 1, "x": 1}}')


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_in_user_data(literal):
    with pytest.raises(LineError) as e:
        loads_json(f'{{"score": {literal}}}')
    assert e.value.reason == "invalid_json" and literal in e.value.brief
    # r1rm's own outputs (json.dumps may write NaN) read them back
    value = loads_json(f'{{"score": {literal}}}', allow_nan=True)["score"]
    assert value != value or abs(value) == float("inf")


def test_bytes_bom_and_errors():
    assert loads_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert loads_json('\ufeff{"a": 1}\r\n') == {"a": 1}
    with pytest.raises(LineError) as e:
        loads_json(b'{"a": "\xff"}')
    assert e.value.reason == "not_utf8"
    with pytest.raises(LineError, match="binary file"):
        loads_json(b'{"a": 1}\x00\x00')
    with pytest.raises(LineError, match=r"Extra data at column 9"):
        loads_json('{"a": 1} {"b": 2}')
    with pytest.raises(LineError, match="line 2 column"):
        loads_json('{"a": 1,\n}')


def _write(path, *lines: bytes) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in lines))


def test_json_lines_bom_crlf_and_nul(tmp_path):
    f = tmp_path / "d.jsonl"
    row = json.dumps(ROW).encode()
    _write(f, b"\xef\xbb\xbf" + row + b"\r", row + b"\r", b"\x00" * 8)
    got = list(json_lines(f))
    assert [v for _, _, v in got[:2]] == [ROW, ROW]
    assert got[0][1] == row.decode()  # the shown text has neither the BOM nor the CR
    assert got[2][0] == 3 and got[2][2].reason == "invalid_json" and "binary" in str(got[2][2])


def test_files_joined_with_their_boms_read(tmp_path):
    f = tmp_path / "d.jsonl"  # cat a.jsonl b.jsonl, both saved with a BOM
    _write(f, b"\xef\xbb\xbf" + json.dumps(ROW).encode(), b"\xef\xbb\xbf" + json.dumps(ROW).encode())
    assert [v for _, _, v in json_lines(f)] == [ROW, ROW]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_json_array_in_a_jsonl_file_is_said_once(tmp_path, bom):
    f = tmp_path / "d.jsonl"
    f.write_bytes(bom + json.dumps([ROW, ROW], indent=2).encode())
    with pytest.raises(DataError) as e:
        list(json_lines(f))
    assert "JSON array, not JSON lines" in str(e.value) and e.value.where == f"{f}:1" and "jq -c" in e.value.fix


def test_a_pretty_printed_object_is_said_once(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(ROW, indent=2))
    with pytest.raises(DataError, match="one JSON object written over many lines, not JSON lines") as e:
        list(json_lines(f))
    assert "jq -c '.'" in e.value.fix


def test_a_one_line_array_stays_a_line_error(tmp_path):
    f = tmp_path / "d.jsonl"
    _write(f, b'["a", "b"]')
    assert [fr.error.reason for fr in jsonl_rows(f)] == ["not_object"]


def test_a_line_over_the_bound_is_read_past_not_held(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 1000)
    f = tmp_path / "d.jsonl"
    row = json.dumps(ROW).encode()
    _write(f, row, b'{"q": "' + b"x" * 5000 + b'"}', row)
    got = list(json_lines(f))
    assert [i for i, _, _ in got] == [1, 2, 3]
    assert got[1][2].reason == "line_too_long" and got[1][1].startswith('{"q": "xxx')
    assert got[0][2] == got[2][2] == ROW


def test_json_array_file_items_are_guarded(tmp_path):
    f = tmp_path / "b.json"
    f.write_text('[\n  {"a": 1},\n  ' + "[" * 5000 + "]" * 5000 + "\n]")
    with pytest.raises(DataError) as e:
        list(read_rows(f, folder_fix=""))
    assert "nested deeper" in str(e.value) and e.value.where == f"{f}:3"
    f.write_text('[\n  {"a": 1},\n  {"a": 1, "a": 2}\n]')
    with pytest.raises(DataError, match="given twice") as e:
        list(read_rows(f, folder_fix=""))
    assert e.value.where == f"{f}:3"


def test_read_json_names_the_file(tmp_path):
    f = tmp_path / "manifest.json"
    f.write_text("[" * 10_000)
    with pytest.raises(DataError) as e:
        read_json(f, fix="rebuild it")
    assert e.value.where == str(f) and e.value.fix == "rebuild it" and "nested deeper" in e.value.what


# ---------------------------------------------------------------- YAML
BOMB = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
               for p, k in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


def test_billion_laughs_is_refused_while_composing():
    assert len(BOMB) < 400
    t = time.process_time()
    with pytest.raises(YamlError) as e:
        load_yaml(BOMB)
    assert time.process_time() - t < 0.5
    assert "alias bomb" in e.value.brief and e.value.line == 5  # 9 * 9**3 > 10_000 at the fifth line


def test_aliases_within_the_budget_load_as_pyyaml_does():
    text = "base: &b {lr: 1.0e-5, epochs: 2}\nsft: *b\nlist: &l [1, 2]\nmore: [*l, *l]\nmerged:\n  <<: *b\n  lr: 3\n"
    data, node = load_yaml(text)
    assert data == yaml.safe_load(text) and data["merged"] == {"lr": 3, "epochs": 2}
    assert isinstance(node, yaml.MappingNode)


def test_recursive_alias_python_tags_and_depth():
    with pytest.raises(YamlError, match="recursive alias") as e:
        load_yaml("a: 1\nb: &x [1, *x]\n")
    assert e.value.line == 2
    with pytest.raises(YamlError, match="recursive alias"):
        load_yaml("&m {a: *m}")
    for tag in ("!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/tuple [1]"):
        with pytest.raises(YamlError, match="never builds Python objects") as e:
            load_yaml(f"x:\n  y: {tag}\n")
        assert e.value.line == 2
    with pytest.raises(YamlError, match="deeper than 50"):
        load_yaml("a: " + "[" * 100_000)
    assert load_yaml("a: " + "[" * 40 + "]" * 40)[0] is not None


def test_a_key_twice_names_its_path_and_both_lines():
    with pytest.raises(YamlError) as e:
        load_yaml("sft:\n  lr: 1\n  epochs: 2\n  lr: 3\n")
    assert e.value.brief == "'sft.lr' is given twice, on lines 2 and 4" and e.value.line == 4
    with pytest.raises(YamlError, match="'sft' is given twice, on lines 1 and 4"):
        load_yaml("sft:\n  lr: 1\nrl: {}\nsft:\n  epochs: 2\n")
    with pytest.raises(YamlError, match="'build.sources.name' is given twice"):
        load_yaml("build:\n  sources:\n    - {name: a, name: b}\n")
    # a dataset card is read as the hub reads it
    assert load_yaml("a: 1\na: 2\n", unique_keys=False)[0] == {"a": 2}


def test_yaml_syntax_errors_keep_their_line():
    with pytest.raises(YamlError) as e:
        load_yaml("a: 1\nb: [1\n")
    assert e.value.brief.startswith("not valid YAML") and e.value.line is not None
