import pytest

from r1rm.core.prompts import TASK_TYPE_PHRASES
from r1rm.core.rewards import (
    combine,
    format_reward,
    judge_request_text,
    read_judge_reply,
    result_reward,
    rule_consistency,
    stated_conclusion,
    type_reward,
)

GOOD = "<think>Response 1 says red. The image is blue. So Response 2 is correct.</think><answer>2</answer>"


def test_format_and_result():
    assert format_reward(GOOD) == 1.0 and result_reward(GOOD, 2) == 1.0 and result_reward(GOOD, 1) == 0.0
    assert format_reward("x" + GOOD) == 0.0
    assert result_reward("no tags, answer 2", 2) == 0.0  # the fallback never earns the result reward
    assert format_reward("<type>text</type><think>t</think><answer>1</answer>", prompt="msrl") == 1.0
    assert format_reward("<think>t</think><answer>1</answer>", prompt="msrl") == 0.0


def test_rule_consistency():
    assert rule_consistency(GOOD) == 1
    assert rule_consistency(GOOD.replace("<answer>2", "<answer>1")) == -1
    assert rule_consistency("<think>I cannot decide.</think><answer>1</answer>") == 0
    assert rule_consistency("<think>Response 1 is better.</think>") == 0  # no answer
    assert stated_conclusion("Response 1 is better at first sight, but I prefer Response 2") == 2
    assert stated_conclusion("The better response is 1.") == 1
    assert stated_conclusion("Response 2 says the shape is red.") is None


@pytest.mark.parametrize(
    ("result", "consistency", "fmt", "total"),
    [(1, 1, 1, 2.0), (1, 0, 1, 1.5), (1, -1, 1, 1.0), (1, -1, 0, 0.5), (0, 1, 1, 0.5), (0, -1, 0, 0.0), (1, 1, 0, 1.5)],
)
def test_total_reward_table(result, consistency, fmt, total):
    assert combine(fmt=fmt, result=result, consistency=consistency) == total


def test_type_reward_and_weights():
    """MSRL (METHOD §6): naming the sample's task type in <type> earns an extra 0.2; any other type,
    an unknown phrase or no <type> earns nothing."""
    for task, phrase in TASK_TYPE_PHRASES.items():
        text = f"<type>{phrase}</type><think>t</think><answer>1</answer>"
        assert [type_reward(text, t) for t in TASK_TYPE_PHRASES] == [float(t == task) for t in TASK_TYPE_PHRASES]
    assert type_reward("<type> Video Generation </type><think>t</think>", "video_generation") == 1.0
    assert type_reward("<type>video</type><think>t</think>", "video_generation") == 0.0
    assert type_reward("<type></type><think>t</think>", "text") == 0.0
    assert type_reward("<think>t</think>", "text") == 0.0
    text = "<type>image understanding</type><think>t</think><answer>1</answer>"
    right, wrong = type_reward(text, "image_understanding"), type_reward(text, "image_generation")
    assert (right, wrong) == (1.0, 0.0)
    # right answer, good format, no consistency: 1 + 0.5, plus 0.2 for the right type only
    assert combine(fmt=1, result=1, consistency=0, type_score=right, type_weight=0.2) == pytest.approx(1.7)
    assert combine(fmt=1, result=1, consistency=0, type_score=wrong, type_weight=0.2) == 1.5
    # the type counts whatever the result; it is off with its weight (the R1-Reward prompt)
    assert combine(fmt=1, result=0, consistency=0, type_score=right, type_weight=0.2) == pytest.approx(0.7)
    assert combine(fmt=1, result=1, consistency=1, type_score=right, type_weight=0.2) == pytest.approx(2.2)
    assert combine(fmt=1, result=1, consistency=1, type_score=right) == 2.0


def test_judge_request_and_reply():
    t = judge_request_text("<think>line a\nline b\nline c\nline d</think><answer>1</answer>")
    assert "line b;line c;line d" in t and "response 1 is better" in t and "line a" not in t
    assert judge_request_text("<think>x</think>") is None
    assert read_judge_reply("1") == 1 and read_judge_reply("The answer is 0.") == -1
    assert read_judge_reply("yes") is None and read_judge_reply("10 or 11") is None


def test_order_agreement_pays_order_independence_not_position():
    from r1rm.core.rewards import order_agreement

    n = 2
    # item A: right in both orders; item B: right only when shown first (answers by position);
    # item C: wrong in both orders; item D: half right in the swapped order
    res = [1, 1, 1, 1,
           1, 1, 0, 0,
           0, 0, 0, 0,
           1, 1, 1, 0]
    valid = [1.0] * 16
    got = order_agreement(res, valid, n)
    assert got[0:4] == [1.0, 1.0, 1.0, 1.0]
    assert got[4:8] == [0.0, 0.0, 0.0, 0.0]
    assert got[8:12] == [1.0, 1.0, 1.0, 1.0]
    assert got[12:16] == [0.5, 0.5, 1.0, 0.0]
    # a masked sample earns 0 and counts in no mean; an order with no valid sample gives its partner 0
    got = order_agreement([1, 0, 1, 1], [1.0, 0.0, 1.0, 1.0], 2)
    assert got == [1.0, 0.0, 1.0, 1.0]
    assert order_agreement([1, 1, 1, 1], [1.0, 1.0, 0.0, 0.0], 2) == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not items of 2 x 3"):
        order_agreement([1, 0, 1, 0], [1.0] * 4, 3)
