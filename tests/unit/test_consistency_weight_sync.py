"""The consistency checker with fake engines (failures counted, never a free reward) and the
stale-weights check of colocated rollouts."""

import pytest
import torch

from r1rm.engines.base import Sample
from r1rm.runtime.consistency import ConsistencyStats, consistency_scores
from r1rm.runtime.weight_sync import StaleWeightsError, check_gap

T_AGREE = "<think>a\nb\nSo Response 2 is better.</think><answer>2</answer>"


class ScriptedEngine:
    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def generate(self, requests, params, progress=None):
        out = []
        for r in requests:
            self.prompts.append(r.messages[0]["content"][-1]["text"])
            reply = self.replies.pop(0)
            out.append([Sample(text="", error=reply[6:]) if reply.startswith("ERROR:") else Sample(text=reply)])
        return out


def test_model_judge_reads_first_digit_and_retries():
    # replies in request order: attempt 1 asks about text 1 ("garbage") then text 2 ("1");
    # attempt 2 asks again about text 1 only ("0")
    eng = ScriptedEngine(["garbage", "1", "0"])
    stats = ConsistencyStats()
    got = consistency_scores("model", [T_AGREE, T_AGREE.replace("<answer>2", "<answer>1")], engine=eng, retries=3, stats=stats)
    assert got == [-1, 1]
    assert stats.failures == 0 and stats.calls == 3 and stats.engine_errors == 0
    assert ["response 2 is better" in p for p in eng.prompts] == [True, False, True]
    assert "response 1 is better" in eng.prompts[1]


def test_model_checker_failures_give_zero_and_are_counted():
    eng = ScriptedEngine(["ERROR:http_500"] * 3 + ["no digit"] * 3)
    stats = ConsistencyStats()
    got = consistency_scores("model", [T_AGREE, T_AGREE], engine=eng, retries=3, stats=stats)
    # attempt 1: both http_500; attempt 2: text 1 http_500, text 2 no digit; attempt 3: no digit twice
    assert got == [0, 0] and stats.failures == 2 and stats.calls == 6 and stats.engine_errors == 3
    # an output with no <answer> is never sent to the judge and earns 0
    assert consistency_scores("model", ["<think>x</think>"], engine=ScriptedEngine([]), stats=ConsistencyStats()) == [0]


class RaisingEngine(ScriptedEngine):
    """A local (hf / vllm) engine: its first `fails` generate calls raise, later ones reply as scripted."""

    def __init__(self, replies, *, fails: int):
        super().__init__(replies)
        self.fails = fails
        self.generate_calls = 0

    def generate(self, requests, params, progress=None):
        self.generate_calls += 1
        if self.generate_calls <= self.fails:
            raise RuntimeError("CUDA out of memory")
        return super().generate(requests, params, progress)


def test_local_engine_exceptions_are_counted_failures_with_consistency_zero():
    texts = [T_AGREE, T_AGREE, T_AGREE.replace("<answer>2", "<answer>1")]
    eng = RaisingEngine([], fails=99)
    stats = ConsistencyStats()
    assert consistency_scores("model", texts, engine=eng, retries=2, stats=stats) == [0, 0, 0]
    assert eng.generate_calls == 2  # every attempt was made
    assert stats.failures == 3 and stats.calls == 6 and stats.engine_errors == 6
    assert stats.first_error == "RuntimeError: CUDA out of memory"  # kept for summary.json
    # the first attempt raises, the second answers every text
    eng = RaisingEngine(["1", "0", "1"], fails=1)
    stats = ConsistencyStats()
    assert consistency_scores("model", texts, engine=eng, retries=2, stats=stats) == [1, -1, 1]
    assert eng.generate_calls == 2
    assert stats.failures == 0 and stats.calls == 6 and stats.engine_errors == 3


def test_rule_and_none_judges():
    assert consistency_scores("rule", [T_AGREE]) == [1]
    assert consistency_scores("none", [T_AGREE]) == [0]


def test_stale_weights_are_caught():
    lp = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    assert check_gap(lp, lp + 0.01, mask, tol=0.05) == pytest.approx(0.01)
    with pytest.raises(StaleWeightsError, match="stale"):
        check_gap(lp, lp + 0.5, mask, tol=0.05)
    with pytest.raises(StaleWeightsError):
        check_gap(lp, torch.full_like(lp, float("nan")), mask, tol=0.05)
