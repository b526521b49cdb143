"""The reward API's pure pieces (r1rm.core.reward_api): p1 over orders and samples, OpenRLHF query parsing."""

import pytest

from r1rm.core.reward_api import (
    SampleVerdict,
    aggregate_p1,
    order_choice,
    pop_data_urls,
    question_from_prompt,
    response_from_query,
    sample_p1,
)

G, S = "as_given", "swapped"


def test_sample_p1_maps_the_swapped_order_back_to_response_1():
    # as given, response 1 is shown first: p1 = P("1")
    assert sample_p1(SampleVerdict(G, 1, {1: 0.8, 2: 0.2})) == pytest.approx(0.8)
    assert sample_p1(SampleVerdict(G, 2, {1: 0.3, 2: 0.7})) == pytest.approx(0.3)
    # swapped, response 1 is shown second: p1 = P("2")
    assert sample_p1(SampleVerdict(S, 1, {1: 0.9, 2: 0.1})) == pytest.approx(0.1)
    assert sample_p1(SampleVerdict(S, 2, {1: 0.25, 2: 0.75})) == pytest.approx(0.75)
    # probabilities that do not sum to 1 are renormalised over {1, 2}
    assert sample_p1(SampleVerdict(G, 1, {1: 0.6, 2: 0.2})) == pytest.approx(0.75)
    # no probabilities: a hard vote
    assert sample_p1(SampleVerdict(G, 1, None)) == 1.0 and sample_p1(SampleVerdict(S, 1, None)) == 0.0
    assert sample_p1(SampleVerdict(S, 2, None)) == 1.0
    # no parsed answer: no p1, even with probabilities
    assert sample_p1(SampleVerdict(G, None, {1: 0.9, 2: 0.1})) is None
    with pytest.raises(ValueError):
        sample_p1(SampleVerdict("chosen_first", 1, None))


def test_aggregate_hand_worked_both_orders_k2():
    # as given: "1" (P1 .9), "2" (P1 .4); swapped: "2" (P2 .7) and one unparsed sample
    # p1 per sample: .9, .4 | .7 → per order .65 | .7 → mean .675
    agg = aggregate_p1([SampleVerdict(G, 1, {1: 0.9, 2: 0.1}), SampleVerdict(G, 2, {1: 0.4, 2: 0.6}),
                        SampleVerdict(S, 2, {1: 0.3, 2: 0.7}), SampleVerdict(S, None, None)])
    assert agg.p1 == pytest.approx(0.675) and agg.choice == 1 and agg.p1_source == "probs"
    assert agg.unparsed == {G: 0, S: 1} and agg.n_unparsed == 1
    assert agg.votes == {1: 2, 2: 1}
    # as given: a 1-1 vote broken by the mean p1 (.65 > .5) → 1; swapped: "2" → response 1 → agree
    assert agg.order_choices == {G: 1, S: 1} and agg.orders_agree is True


def test_orders_that_disagree_follow_the_larger_probability_as_r1rm_judge_does():
    # as given "1" with P .8; swapped "1" (→ response 2) with P .6: p1 = (.8 + .4) / 2 = .6 → 1
    agg = aggregate_p1([SampleVerdict(G, 1, {1: 0.8, 2: 0.2}), SampleVerdict(S, 1, {1: 0.6, 2: 0.4})])
    assert agg.p1 == pytest.approx(0.6) and agg.choice == 1 and agg.orders_agree is False
    # the same with P .6 as given and .8 swapped → 2
    agg = aggregate_p1([SampleVerdict(G, 1, {1: 0.6, 2: 0.4}), SampleVerdict(S, 1, {1: 0.8, 2: 0.2})])
    assert agg.p1 == pytest.approx(0.4) and agg.choice == 2


def test_vote_share_without_probabilities():
    # 3 samples per order, no probabilities: response 1 gets 2 of 3 as given and 1 of 3 swapped → 3 / 6
    agg = aggregate_p1([SampleVerdict(G, 1), SampleVerdict(G, 1), SampleVerdict(G, 2),
                        SampleVerdict(S, 2), SampleVerdict(S, 1), SampleVerdict(S, 1)])
    assert agg.p1 == 0.5 and agg.choice is None and agg.p1_source == "votes"
    assert agg.order_choices == {G: 1, S: 2} and agg.orders_agree is False
    # 4 of 6 → 2/3, choice 1
    agg = aggregate_p1([SampleVerdict(G, 1), SampleVerdict(G, 1), SampleVerdict(S, 2), SampleVerdict(S, 1)])
    assert agg.p1 == pytest.approx(0.75) and agg.choice == 1
    # a position-biased judge that always says "1": the orders cancel out
    agg = aggregate_p1([SampleVerdict(G, 1), SampleVerdict(S, 1)])
    assert (agg.p1, agg.choice, agg.orders_agree) == (0.5, None, False)


def test_orders_weigh_equally_whatever_their_unparsed_samples():
    # a judge that always says "1", k = 4: as given all parsed, swapped one of four: pooled over samples
    # it would be 4/5 for response 1 — position bias; per order it is (1 + 0) / 2
    agg = aggregate_p1([SampleVerdict(G, 1)] * 4 + [SampleVerdict(S, 1)] + [SampleVerdict(S, None)] * 3)
    assert (agg.p1, agg.choice, agg.n_unparsed) == (0.5, None, 3)


def test_mixed_sources_and_nothing_parsed():
    agg = aggregate_p1([SampleVerdict(G, 1, {1: 0.6, 2: 0.4}), SampleVerdict(S, 2, None)])
    assert agg.p1 == pytest.approx(0.8) and agg.p1_source == "mixed"
    agg = aggregate_p1([SampleVerdict(G, None), SampleVerdict(S, None)])
    assert (agg.choice, agg.p1, agg.p1_source, agg.orders_agree) == (None, 0.5, None, None)
    assert agg.unparsed == {G: 1, S: 1}
    # one order undecided, the other decided: the orders do not agree (as `r1rm judge` reports it)
    agg = aggregate_p1([SampleVerdict(G, 2), SampleVerdict(S, None)])
    assert (agg.choice, agg.p1, agg.orders_agree) == (2, 0.0, False)
    # a single order: agreement is not defined
    agg = aggregate_p1([SampleVerdict(G, 2, {1: 0.1, 2: 0.9})])
    assert (agg.choice, agg.p1, agg.orders_agree) == (2, pytest.approx(0.1), None)
    assert order_choice([]) is None


def test_pop_data_urls():
    url = "data:image/png;base64,iVBORw0KGgo="
    text, urls = pop_data_urls(f"<image>{url} What is shown? data:image/jpeg;base64,/9j/4AA=")
    assert urls == [url, "data:image/jpeg;base64,/9j/4AA="] and text == "<image> What is shown? "
    assert pop_data_urls("plain") == ("plain", [])


def test_question_and_response_from_openrlhf_queries():
    prompt = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
              "<|vision_end|>What colour is it?<|im_end|>\n<|im_start|>assistant\n")
    assert question_from_prompt(prompt) == "What colour is it?"
    assert response_from_query(prompt + "Red.<|im_end|><|endoftext|>", prompt) == "Red."
    # a VLM query decodes the image placeholder expanded, so it no longer starts with the prompt: the
    # response is what follows the last assistant opening
    expanded = prompt.replace("<|image_pad|>", "<|image_pad|>" * 4)
    assert response_from_query(expanded + "Blue.<|im_end|>", prompt) == "Blue."
    llama = "<|start_header_id|>user<|end_header_id|>\n\nSay hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert question_from_prompt(llama) == "Say hi" and response_from_query(llama + "hi!<|eot_id|>", llama) == "hi!"
    # plain text prompts: taken whole; the response is the rest of the query
    assert question_from_prompt("<image>Describe it.") == "Describe it."
    assert response_from_query("Q: 2+2? A: 4</s>", "Q: 2+2? A:") == "4"
    assert response_from_query("something else", "Q:") is None


def test_count_win_and_ranking_summary():
    from r1rm.core.ranking import count_win, ranking_summary

    wins = [[0.0] * 3 for _ in range(3)]
    # pair (0, 1): "1" twice (0 beats 1); pair (1, 2): "2" once (2 beats 1), one undecided; pair (0, 2): "1"
    decided = [count_win(wins, 0, 1, 1), count_win(wins, 0, 1, 1), count_win(wins, 1, 2, 2), count_win(wins, 1, 2, None),
               count_win(wins, 0, 2, 1)]
    assert decided == [True, True, True, False, True]
    assert wins == [[0, 2, 1], [0, 0, 0], [0, 1, 0]]
    out = ranking_summary(wins)
    assert [s["win_rate"] for s in out["scores"]] == [1.0, 0.0, 0.5]
    assert out["ranking"] == [0, 2, 1] and (out["best"], out["best_reason"]) == (0, None)
    assert sum(s["strength"] for s in out["scores"]) == pytest.approx(0.0, abs=1e-9)
    assert ranking_summary([[0.0, 0.0], [0.0, 0.0]])["best_reason"] == "undecided"
