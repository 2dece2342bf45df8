"""The VADER reward: eq. (3) of the paper, checked against hand-computed values."""

import pytest

from lfp.tasks.lexicon_rl.reward import lexicon, tokens, vader_reward


def test_lexicon_values_are_the_published_means():
    lex = lexicon()
    assert lex["great"] == pytest.approx(3.1)
    assert lex["terrible"] == pytest.approx(-2.1)
    assert lex["love"] == pytest.approx(3.2)


def test_spacy_tokens_are_lowercased_and_split_punctuation():
    assert tokens("GREAT movie!") == ["great", "movie", "!"]


def test_reward_sums_token_valences_divided_by_five():
    # great 3.1 + love 3.2 = 6.3 -> 6.3 / 5 = 1.26 ("this", "movie", "and", "i", "it" are not in the lexicon)
    assert vader_reward(["This movie is great and I love it"]) == pytest.approx([1.26])
    # terrible -2.1 -> -0.42
    assert vader_reward(["terrible"]) == pytest.approx([-0.42])


def test_reward_is_clipped_to_plus_minus_ten():
    assert vader_reward(["good " * 100, "terrible " * 100]) == [10.0, -10.0]


def test_reward_of_neutral_text_is_zero():
    assert vader_reward(["the table and the chair"]) == [0.0]
