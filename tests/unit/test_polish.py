"""Pure pieces of the CLI polish (issue 24, item 7): best-of-N with no decided verdict, the hint for a
{prompt, chosen, rejected} row, the endpoint's refusal messages, dotted names in fix hints, and the
libraries' output kept out of the progress bars."""

import io
import warnings

import pytest

from r1rm.core.ranking import bradley_terry, pick_best
from r1rm.data.files import RowError
from r1rm.data.records import parse_record
from r1rm.errors import ConfigError


def _best(wins):
    return pick_best(wins, bradley_terry(wins))


def test_pick_best_says_why_there_is_none():
    assert _best([[0, 0, 0], [0, 0, 0], [0, 0, 0]]) == (None, "undecided")
    # every pair split one-one (a judge that always picks the first shown): a tie at the top
    assert _best([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) == (None, "tie")
    assert _best([[0, 2, 2], [0, 0, 1], [0, 1, 0]]) == (0, None)
    # one decided verdict is enough to name a best
    assert _best([[0, 0], [1, 0]]) == (1, None)


def test_preference_row_hints_at_format_jsonl():
    with pytest.raises(RowError) as e:
        parse_record({"prompt": "q", "chosen": "a", "rejected": "b"})
    msg = str(e.value)
    assert e.value.reason == "unknown_field" and "{prompt, chosen, rejected}" in msg
    assert "format: jsonl" in msg and "fields" in msg and "build-data" in msg
    with pytest.raises(RowError) as e:  # an unrelated stray key keeps the ordinary hint
        parse_record({"question": "q", "response1": "a", "response2": "b", "label": 1, "notes": "x"})
    assert "format: jsonl" not in str(e.value) and "meta" in str(e.value)


def test_endpoint_refusals_name_the_endpoint_status_and_fix():
    from r1rm.engines.openai_client import endpoint_error

    url = "http://h:8000/v1"
    e = endpoint_error(401, "Incorrect API key", base_url=url, model="m", key_env="MY_KEY", key_set=False)
    assert isinstance(e, ConfigError)
    assert url in e.what and "HTTP 401" in e.what and "$MY_KEY is not set" in e.what
    assert "export MY_KEY=" in e.fix and "engine.api_key_env" in e.fix
    e = endpoint_error(403, "no access", base_url=url, model="m", key_env="MY_KEY", key_set=True,
                       settings="rl.consistency")
    assert "the key in $MY_KEY" in e.what and "'m'" in e.what and "rl.consistency.api_key_env" in e.fix
    e = endpoint_error(404, "The model `m` does not exist.", base_url=url, model="m", key_env=None, key_set=True)
    assert "no model 'm'" in e.what and "engine.base_url" in e.fix and "engine.model_name" in e.fix
    assert f"{url}/models" in e.fix


def test_batch_split_names_the_sections_keys():
    from r1rm.runtime.accel import split_batch

    with pytest.raises(ConfigError) as e:
        split_batch(6, 4, 1, keys=("sft.batch_size", "sft.micro_batch_size"))
    assert "sft.batch_size=6" in e.value.what and "set sft.batch_size to a multiple of 4" in e.value.fix


def test_library_output_prints_each_message_once_above_the_bars():
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from r1rm.runtime.progress import library_output

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, color_system=None)
    root = hf_logging.get_logger()
    before, show_before = list(root.handlers), warnings.showwarning
    with library_output(console):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(3):
                warnings.warn("old argument is deprecated", FutureWarning, stacklevel=1)
        for _ in range(2):
            hf_logging.get_logger("transformers.generation").warning("pad token not set")
    text = buf.getvalue()
    assert text.count("FutureWarning: old argument is deprecated") == 1
    assert text.count("pad token not set") == 1
    # restored: transformers' own handler, Python's showwarning
    assert root.handlers == before and warnings.showwarning is show_before


def test_hf_bars_off():
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    from r1rm.runtime.progress import hf_bars_off

    was_tf, was_hub = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    try:
        hf_bars_off()
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        if was_tf:
            hf_logging.enable_progress_bar()
        if was_hub:
            enable_progress_bars()
