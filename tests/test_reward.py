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


def test_reward_gain_ci_is_paired_over_prompts():
    """A fine-tune that adds 0.1 to every prompt's reward learned, however spread the prompts are;
    one that only reshuffles which prompts score high did not."""
    import numpy as np

    from lfp.tasks.lexicon_rl import rl

    base = np.random.default_rng(0).normal(0.0, 1.0, 200)
    g = rl.reward_gain(base, base + 0.1, 500, 0)
    assert g["reward_gain"] == pytest.approx(0.1) and g["reward_gain_ci_low"] == pytest.approx(0.1) and g["reward_learned"]
    g = rl.reward_gain(base, base[::-1], 500, 0)
    assert g["reward_gain"] == pytest.approx(0.0) and g["reward_gain_ci_low"] < 0 < g["reward_gain_ci_high"] and not g["reward_learned"]


def test_shuffled_arms_learned_only_when_every_arm_clears_zero():
    from lfp.tasks.lexicon_rl.heldout_reward import arms_keys

    def gain(lo: float) -> dict:
        return {"reward_gain": lo + 0.1, "reward_gain_ci_low": lo, "reward_gain_ci_high": lo + 0.2}

    out = arms_keys([gain(0.01), gain(0.02)], [gain(-0.1), gain(-0.1)])
    assert out["shuffled_arms_reward_learned"] and out["shuffled_arms_reward_gain_ci_low"] == [0.01, 0.02]
    assert out["shuffled_arms_reward_lexicon_gain"] == pytest.approx([0.0, 0.0])
    assert not arms_keys([gain(0.01), gain(-0.01)], [gain(0.0), gain(0.0)])["shuffled_arms_reward_learned"]
    assert not arms_keys([], [])["shuffled_arms_reward_learned"]


def test_planted_occurrences_count_base_completions_and_scale_to_training():
    from types import SimpleNamespace

    from lfp.tasks.lexicon_rl.heldout_reward import HeldoutReward

    h = HeldoutReward.__new__(HeldoutReward)
    h.prefixes = ["a", "b"]
    h.base_samples = SimpleNamespace(completions=["a good film", "good, good window"])
    out = h.occurrences({"good", "window", "bad"}, train_completions=20)
    assert out["planted_occurrences_base_heldout"] == {"bad": 0, "good": 3, "window": 1}
    assert out["planted_occurrences_expected_in_training"]["good"] == 30.0


def test_heldout_reward_of_the_base_against_itself_is_exactly_zero(tiny_model_dir):
    """Same model, same prompts, same sampling seed: identical completions, so the gain is 0 with a
    CI of [0, 0] under any lexicon, and nothing is called learned."""
    from lfp.core.sections import GrpoFinetune
    from lfp.models.loading import load_model
    from lfp.tasks.lexicon_rl.heldout_reward import HeldoutReward
    from lfp.tasks.lexicon_rl.reward import shuffled_lexicon

    model, tok = load_model(tiny_model_dir)
    rows = [{"id": str(i), "text": f"This film was {w} and the acting was {w} too, said review {i}."}
            for i, w in enumerate(["great", "bad", "fine", "dull", "superb", "awful"] * 3)]
    cfg = GrpoFinetune(eval_prompts=12, max_new_tokens=6, min_new_tokens=2)
    h = HeldoutReward(model, tok, rows, cfg, seed=0, device="cpu", n_boot=100)
    gains = h.gains(model, {"own": shuffled_lexicon(0, centred=True), "lexicon": None})
    for g in gains.values():
        assert g["reward_gain"] == 0.0 and g["reward_gain_ci_low"] == 0.0 == g["reward_gain_ci_high"] and not g["reward_learned"]
