"""The validated LFP measurement in words: one plain sentence per control, detected or not, and a
table with every τ beside its ceilings (from `reports/runs/{m}-{t}/lfp.json`, stage `measure`)."""

from __future__ import annotations

from typing import Any

from lfp.report.format import ci_after, covers_zero, dec, dec_ci, num, pval

COLUMNS = ["quantity", "value", "95% CI", "beside it"]


def _split_seeds(m: dict[str, Any], key: str) -> str:
    """'mean τ x [lo, hi] over n word splits' (the split varies, not the fine-tune)."""
    seeds = m.get("probe_split_seeds") or []
    return f"mean {dec(num(m, f'{key}_seed_mean'))} {dec_ci(m, f'{key}_seed')} over {len(seeds)} word splits"


def _difference_verdict(m: dict[str, Any]) -> str:
    """Is the difference probe's τ a learned pattern? Not if its CI covers 0, and not if the
    shuffled-reward fine-tune (which learned no valence) reaches an overlapping τ on the same probe."""
    key, null = "probe_tau_word_heldout_difference", "shuffled_probe_tau_word_heldout_difference"
    lo, null_hi = num(m, f"{key}_ci_low"), num(m, f"{null}_ci_high")
    if covers_zero(m, key):
        return " — the CI covers 0: the change fine-tuning made to the representations shows no learned pattern."
    if num(m, null) is None or lo is None or null_hi is None:
        return " (no shuffled-reward control of this probe in this run, so it cannot tell a learned pattern from an artefact)."
    null_text = f"the shuffled-reward fine-tune, which learned no valence, reaches τ {dec(num(m, null))} {dec_ci(m, null)} on the same probe"
    if null_hi >= lo:
        return (f" — but {null_text}: the difference probe also reads something other than learned feedback, so this τ is "
                "no evidence of a learned pattern.")
    return f" — and {null_text}: the change fine-tuning made to the representations encodes the words' feedback."


def _difference_sentence(m: dict[str, Any]) -> str:
    key = "probe_tau_word_heldout_difference"
    planted = (f" (planted fine-tune: τ {dec(num(m, f'planted_{key}'))} {dec_ci(m, f'planted_{key}')})"
               if num(m, f"planted_{key}") is not None else "")
    return (f"**Probe on what fine-tuning changed (same tokens, one dictionary):** the fine-tuned model's codes minus the base "
            f"model's codes through the same (fine-tuned) SAEs predict held-out words' values with τ {dec(num(m, key))} {dec_ci(m, key)} "
            f"(p {pval(num(m, f'{key}_p'))}; {_split_seeds(m, key)}){planted}" + _difference_verdict(m))


def _direction(m: dict[str, Any]) -> str:
    """What the learned values did, in words, from the per-sign means (not from the sign of τ: a
    positive τ also arises when both signs fell, the negative words more)."""
    pos, neg = num(m, "learned_value_mean_positive_words"), num(m, "learned_value_mean_negative_words")
    if pos is None or neg is None:
        tau = num(m, "learned_value_tau") or 0
        return "the model ranked positive above negative words" if tau > 0 else "the learned values did not follow the lexicon"
    moves = f"positive words {'rose' if pos > 0 else 'fell'} (mean {pos:+.3f}) and negative words {'rose' if neg > 0 else 'fell'} (mean {neg:+.3f})"
    gap = "positive above negative, as the reward asks" if pos > neg else "negative above positive, against the reward"
    return f"{moves}: the gap moved {gap}"


def _within_sign_sentence(m: dict[str, Any]) -> str | None:
    """The primary statistic: does the fine-tune order words *within* a sign as the lexicon does?"""
    key = "learned_value_tau_within_sign"
    if num(m, key) is None:
        return None
    clear = covers_zero(m, key) is False and (num(m, f"{key}_ci_low") or 0) > 0
    null = ""
    if num(m, f"{key}_null_mean") is not None:
        outside = m.get(f"{key}_vs_null_outside") is True
        null = (f" Against {m.get(f'{key}_null_n', '—')} shuffled-reward fine-tunes (their within-sign τ "
                f"{dec(num(m, f'{key}_null_min'))} to {dec(num(m, f'{key}_null_max'))}), the measured run is "
                + (f"above every one (rank p {dec(num(m, f'{key}_vs_null_rank_p'), 2)}, the smallest this many runs allow is "
                   f"{dec(1 / (1 + int(m.get(f'{key}_null_n') or 0)), 2)})." if outside
                   else f"inside their range (rank p {dec(num(m, f'{key}_vs_null_rank_p'), 2)}): no evidence beyond the null."))
    return (f"**Within sign (the primary statistic):** after removing each sign's mean, learned values track the lexicon with "
            f"τ {dec(num(m, key))} {dec_ci(m, key)} (positive words alone {dec(num(m, 'learned_value_tau_positive_words'))}, negative alone "
            f"{dec(num(m, 'learned_value_tau_negative_words'))}; over fine-tuning seeds mean {dec(num(m, f'{key}_seed_mean'))} "
            f"{dec_ci(m, f'{key}_seed')}); the between-sign gap is {dec(num(m, 'learned_value_sign_gap'))} {dec_ci(m, 'learned_value_sign_gap')}. "
            + ("The fine-tune learned which words within a sign are better, not only the sign." if clear
               else "So what the overall τ shows is the gap between the signs, which a predictor that knows only each word's sign "
                    "also reaches, and which any fine-tune may move.") + null)


def _controls(m: dict[str, Any]) -> str:
    """What the planted words are compared with: a drawn plant's undrawn pool words, or (fixed plant) every other positive word."""
    return "controls (undrawn words of the same frequency-matched pools)" if m.get("planted_draw") == "random" else "other positive words"


def _plant_phrase(m: dict[str, Any]) -> str:
    """What was planted, in words: the drawn plant's two parts and how often the base model writes them."""
    if m.get("planted_draw") != "random":
        return f"flips the sign of {m.get('planted_n', '—')} positive words"
    lex, neutral = m.get("planted_lexicon_words") or [], m.get("planted_neutral_words") or []
    values = m.get("planted_values") or {}
    neutral_value = dec(values.get(neutral[0]), 1) if neutral else "—"
    expected = m.get("planted_occurrences_expected_in_training") or {}
    seen = (f" (the base model writes them {dec(sum(expected.values()) / len(expected), 1)} times per word in as many completions as a "
            "fine-tune samples)" if expected else "")
    lex_part = f"{len(lex)} positive probe words sign-flipped ({', '.join(lex)}; held out of every probe)" if lex else "no lexicon word"
    return (f"changes the value of {len(lex) + len(neutral)} words drawn at random, before the run, among the words the base model "
            f"writes — {lex_part} and {len(neutral)} non-lexicon words valued {neutral_value} ({', '.join(neutral)})" + seen)


def _planted_paired_sentence(m: dict[str, Any]) -> str | None:
    if num(m, "planted_paired_auc") is None:
        return None
    detected = m.get("planted_paired_detected") is True
    learned = m.get("planted_learned") is True
    return (f"**Planted control, paired — {'detected' if detected else 'NOT detected'}:** each word's learned value in the planted "
            f"run minus the same word's in the run with the true reward (same data, same seed) separates the "
            f"{m.get('planted_paired_n', '—')} planted words from {m.get('planted_paired_n_other', '—')} {_controls(m)} with AUC "
            f"{dec(num(m, 'planted_paired_auc'), 2)} (permutation p {pval(num(m, 'planted_paired_p'))}; detected means AUC > 0.5 and p < "
            f"{m.get('planted_paired_alpha', 0.01)}); the same test between two fine-tuning seeds of the true reward, where nothing "
            f"was planted, gives AUC {dec(num(m, 'planted_paired_auc_seed_null_mean'), 2)}. The plant "
            + (f"was learned: the planted words' paired change is {dec(num(m, 'planted_paired_mean_change'))} "
               f"{dec_ci(m, 'planted_paired_mean_change')} (controls {dec(num(m, 'planted_paired_mean_change_other'))})."
               if learned else
               f"was NOT clearly learned (planted words' paired change {dec(num(m, 'planted_paired_mean_change'))} "
               f"{dec_ci(m, 'planted_paired_mean_change')}, a CI that does not lie below 0): this control cannot speak."))


def _shuffled_null_sentence(m: dict[str, Any]) -> str | None:
    if num(m, "learned_value_tau_null_mean") is None:
        return None
    centred = m.get("shuffled_null_centred") is True
    learned = m.get("shuffled_learned") is True
    return (f"**Shuffled-reward null over {m.get('shuffled_arms', '—')} fine-tunes"
            + (" (centred permutations" if m.get("shuffle_centred") else " (permutations")
            + (f" within bins of {m['shuffle_bin_words']} words ranked by how often the base model writes them)"
               if m.get("shuffle_bin_words") else ")") + " — "
            + ("centred on 0, as it should be" if centred else "NOT centred on 0") + ":** their learned values track the real lexicon "
            f"with mean τ {dec(num(m, 'learned_value_tau_null_mean'))} {dec_ci(m, 'learned_value_tau_null')} (range "
            f"{dec(num(m, 'learned_value_tau_null_min'))} to {dec(num(m, 'learned_value_tau_null_max'))}); the measured run's τ "
            f"{dec(num(m, 'learned_value_tau'))} is " + ("above all of them" if m.get("learned_value_tau_vs_null_outside") is True
                                                        else "inside their range")
            + f" (rank p {dec(num(m, 'learned_value_tau_vs_null_rank_p'), 2)}). Did the shuffled fine-tunes learn their own reward? "
            + _shuffled_behaviour(m)
            + f"Their learned values track it with τ {dec(num(m, 'shuffled_arms_tau_reward_mean'))} {dec_ci(m, 'shuffled_arms_tau_reward')} "
            "over arms: " + ("a CI above 0, so their silence on the real lexicon means something." if learned
                             else "a CI that does not clear 0, so this null says little about learned values "
                                  "(a control must learn before it can speak)."))


def _shuffled_behaviour(m: dict[str, Any]) -> str:
    """The arms' held-out own-reward gains (behaviour), where the stage measured them."""
    gains = m.get("shuffled_arms_reward_gain")
    if not isinstance(m.get("shuffled_arms_reward_learned"), bool) or not gains:
        return ""
    lows, highs = m.get("shuffled_arms_reward_gain_ci_low") or [], m.get("shuffled_arms_reward_gain_ci_high") or []
    arms = ", ".join(f"{dec(g)} [{dec(lo)}, {dec(hi)}]" for g, lo, hi in zip(gains, lows, highs))
    real = ", ".join(dec(g) for g in m.get("shuffled_arms_reward_lexicon_gain") or [])
    return (("In behaviour, yes" if m["shuffled_arms_reward_learned"] else "In behaviour, not every arm")
            + f": held-out own-reward gain per arm {arms} (under the real lexicon: {real}). ")


def sentences(m: dict[str, Any], paper_tau: float | None) -> list[str]:
    """One sentence per measurement and control, in the order a skeptic asks."""
    out = []
    tau, p = num(m, "learned_value_tau"), num(m, "learned_value_tau_p")
    direction = _direction(m)
    out.append(f"**Ground truth (behaviour):** fine-tuning changed each word's log-probability in its real review contexts; "
               f"those learned values track the VADER lexicon with τ {dec(tau)} {dec_ci(m, 'learned_value_tau')} (p {dec(p, 3) if p is not None and p >= 0.001 else '< 0.001' if p is not None else '—'}): "
               f"{direction}. Across {len(m.get('seeds') or [])} fine-tuning seeds: "
               f"mean τ {dec(num(m, 'learned_value_tau_seed_mean'))} {dec_ci(m, 'learned_value_tau_seed')}.")
    out.extend(x for x in (_within_sign_sentence(m), _planted_paired_sentence(m), _shuffled_null_sentence(m)) if x)
    detected = m.get("planted_detected") is True
    planted_task = f" (reported as its own task `{m['planted_control_task']}`)" if m.get("planted_control_task") else ""
    unpaired = " (unpaired: confounded by word frequency, see the paired test)" if num(m, "planted_paired_auc") is not None else ""
    out.append(f"**Planted control{unpaired} — {'detected' if detected else 'NOT detected'}:** a fine-tune{planted_task} whose reward "
               f"{_plant_phrase(m)}: its learned values separate them from {m.get('planted_n_other', '—')} {_controls(m)} "
               f"with AUC {dec(num(m, 'planted_auc'), 2)} (permutation p {dec(num(m, 'planted_p'), 4)}; mean learned value "
               f"{dec(num(m, 'planted_mean_learned'))} vs {dec(num(m, 'planted_mean_learned_other'))}); the same score on the "
               f"un-planted fine-tune gives AUC {dec(num(m, 'planted_auc_base'), 2)}. Through the probe (the paper-method ridge probe on "
               f"the fine-tuned SAEs' codes of each word in context, planted model minus base): AUC {dec(num(m, 'planted_probe_auc'), 2)} "
               f"(p {dec(num(m, 'planted_probe_p'), 4)}; un-planted fine-tune {dec(num(m, 'planted_probe_auc_base'), 2)}) — "
               + ("the probe sees the plant too." if (num(m, "planted_probe_p") or 1) < 0.05 and (num(m, "planted_probe_auc") or 0) > 0.5
                  else "the probe does not see the plant."))
    shuffled = m.get("shuffled_detected") is True
    out.append(f"**Shuffled-reward control — {'a pattern WAS found (the instrument is fooled)' if shuffled else 'no pattern found, as it should'}:** "
               f"a fine-tune on the lexicon with values permuted across words"
               + (f" (its own task `{m['shuffled_control_task']}`)" if m.get("shuffled_control_task") else "")
               + f" gives learned values with τ "
               f"{dec(num(m, 'shuffled_learned_value_tau'))} {dec_ci(m, 'shuffled_learned_value_tau')} against the real lexicon "
               f"(and {dec(num(m, 'shuffled_learned_value_tau_reward'))} against the shuffled reward it was trained on)"
               + (f"; through the probe its change tracks the lexicon with τ {dec(num(m, 'shuffled_probe_shift_tau'))} "
                  f"{dec_ci(m, 'shuffled_probe_shift_tau')}"
                  + (" (a CI clear of 0: the probe's view of a change is not free of artefacts)"
                     if covers_zero(m, "shuffled_probe_shift_tau") is False else "")
                  if num(m, "shuffled_probe_shift_tau") is not None else "") + ".")
    ft, base, diff = num(m, "probe_tau_word_heldout_finetuned"), num(m, "probe_tau_word_heldout_base"), num(m, "probe_tau_word_heldout_diff")
    lo, hi = num(m, "probe_tau_word_heldout_diff_ci_low"), num(m, "probe_tau_word_heldout_diff_ci_high")
    covers = lo is not None and hi is not None and lo <= 0 <= hi
    out.append(f"**Probe on words it never saw ({m.get('n_words_test', '—')} test words):** τ {dec(ft)}"
               f"{ci_after(m, 'probe_tau_word_heldout_finetuned')} on the fine-tuned model's codes "
               f"and {dec(base)}{ci_after(m, 'probe_tau_word_heldout_base')} on the base model's; difference {dec(diff)} [{dec(lo)}, {dec(hi)}]"
               + (" — the CI covers 0: the probe reads no more from the fine-tuned model than from the base (no learned pattern shown)."
                  if covers else (" — the fine-tuned model encodes more." if (diff or 0) > 0 else " — the base model encodes more."))
               + f" Ceilings on the same split: word identity {dec(num(m, 'identity_ceiling_tau'))} (0 by construction: no test word "
               f"is seen in training), sign only {dec(num(m, 'sign_ceiling_tau'))} (an oracle that knows each test word's sign, not a "
               "trivial predictor). The CIs resample words within this one run and split; split seeds below add split-to-split "
               "variance, fine-tuning seeds run-to-run variance."
               + (f" Over other word splits (split seeds, same models): fine-tuned {_split_seeds(m, 'probe_tau_word_heldout_finetuned')}, "
                  f"base {_split_seeds(m, 'probe_tau_word_heldout_base')}, difference {_split_seeds(m, 'probe_tau_word_heldout_diff')}."
                  if m.get("probe_seed_kind") == "word_split" else ""))
    if num(m, "probe_tau_word_heldout_difference") is not None:
        out.append(_difference_sentence(m))
    if num(m, "error_learned_value_tau") is not None:
        out.append(f"**Probe error vs what was learned (Fig. 4 with a full axis):** over {m.get('error_learned_value_n', '—')} held-out words, "
                   f"τ(|probe error|, learned value) = {dec(num(m, 'error_learned_value_tau'))} (p {pval(num(m, 'error_learned_value_tau_p'))}); "
                   "the paper's axis (times generated) is 0 for almost every word.")
    out.append(f"**What the paper's method says on this run:** Table 4's τ (split by triple) is {dec(paper_tau)}; on that split "
               f"{dec(num(m, 'paper_split_test_words_seen_in_training') and 100 * num(m, 'paper_split_test_words_seen_in_training'), 0)} % "
               f"of test words occur in training rows and a word-identity lookup with no model reaches τ "
               f"{dec(num(m, 'paper_split_identity_ceiling_tau'))} (sign only: {dec(num(m, 'paper_split_sign_ceiling_tau'))}).")
    return out


def table(m: dict[str, Any], paper_tau: float | None) -> list[list[str]]:
    return [
        ["learned-value τ vs lexicon (seed of params)", dec(num(m, "learned_value_tau")), dec_ci(m, "learned_value_tau"), f"p {dec(num(m, 'learned_value_tau_p'), 4)}"],
        ["learned-value τ, mean over seeds", dec(num(m, "learned_value_tau_seed_mean")), dec_ci(m, "learned_value_tau_seed"), f"seeds {m.get('seeds')}"],
        ["learned-value τ within sign (primary)", dec(num(m, "learned_value_tau_within_sign")), dec_ci(m, "learned_value_tau_within_sign"),
         f"seeds: mean {dec(num(m, 'learned_value_tau_within_sign_seed_mean'))} {dec_ci(m, 'learned_value_tau_within_sign_seed')}; "
         f"shuffled null {dec(num(m, 'learned_value_tau_within_sign_null_min'))} to {dec(num(m, 'learned_value_tau_within_sign_null_max'))}"],
        ["learned-value gap, positive − negative words", dec(num(m, "learned_value_sign_gap")), dec_ci(m, "learned_value_sign_gap"),
         f"means +: {dec(num(m, 'learned_value_mean_positive_words'))}, −: {dec(num(m, 'learned_value_mean_negative_words'))}"],
        ["learned-value τ, shuffled-reward null over arms", dec(num(m, "learned_value_tau_null_mean")), dec_ci(m, "learned_value_tau_null"),
         f"{m.get('shuffled_arms', '—')} arms; measured run rank p {dec(num(m, 'learned_value_tau_vs_null_rank_p'), 2)}; "
         f"arms' τ vs own reward {dec(num(m, 'shuffled_arms_tau_reward_mean'))} {dec_ci(m, 'shuffled_arms_tau_reward')}"],
        ["planted control AUC, paired (planted − true-reward run)", dec(num(m, "planted_paired_auc"), 2), "—",
         f"p {pval(num(m, 'planted_paired_p'))}; seed-vs-seed null {dec(num(m, 'planted_paired_auc_seed_null_mean'), 2)}; "
         f"planted words' change {dec(num(m, 'planted_paired_mean_change'))} {dec_ci(m, 'planted_paired_mean_change')}"],
        ["probe τ, word-held-out, fine-tuned", dec(num(m, "probe_tau_word_heldout_finetuned")), dec_ci(m, "probe_tau_word_heldout_finetuned"),
         f"within sign +/−: {dec(num(m, 'probe_tau_word_heldout_finetuned_positive_words'))} / {dec(num(m, 'probe_tau_word_heldout_finetuned_negative_words'))}"],
        ["probe τ, word-held-out, base", dec(num(m, "probe_tau_word_heldout_base")), dec_ci(m, "probe_tau_word_heldout_base"),
         f"within sign +/−: {dec(num(m, 'probe_tau_word_heldout_base_positive_words'))} / {dec(num(m, 'probe_tau_word_heldout_base_negative_words'))}"],
        ["probe τ, fine-tuned − base (paired)", dec(num(m, "probe_tau_word_heldout_diff")), dec_ci(m, "probe_tau_word_heldout_diff"), ""],
        ["probe τ on the difference of representations (ft − base, ft SAEs)", dec(num(m, "probe_tau_word_heldout_difference")),
         dec_ci(m, "probe_tau_word_heldout_difference"), f"p {pval(num(m, 'probe_tau_word_heldout_difference_p'))}; same tokens, one dictionary"],
        ["  same probe, shuffled-reward fine-tune − base (null)", dec(num(m, "shuffled_probe_tau_word_heldout_difference")),
         dec_ci(m, "shuffled_probe_tau_word_heldout_difference"), "a learned pattern must beat this"],
        ["  same probe, planted fine-tune − base", dec(num(m, "planted_probe_tau_word_heldout_difference")),
         dec_ci(m, "planted_probe_tau_word_heldout_difference"), ""],
        *[[f"probe τ, {label}, mean over word splits", dec(num(m, f"probe_tau_word_heldout_{key}_seed_mean")),
           dec_ci(m, f"probe_tau_word_heldout_{key}_seed"), f"split seeds {m.get('probe_split_seeds')} (not fine-tuning seeds)"]
          for key, label in (("finetuned", "fine-tuned"), ("base", "base"), ("diff", "fine-tuned − base"), ("difference", "difference probe"))
          if m.get("probe_seed_kind") == "word_split"],
        ["identity-only ceiling (same split)", dec(num(m, "identity_ceiling_tau")), "—", "one-hot word lookup: 0 by construction on a word-held-out split"],
        ["sign-only ceiling (same split)", dec(num(m, "sign_ceiling_tau")), "—", "an oracle: true sign, random order within sign"],
        ["planted control AUC (unpaired, frequency-confounded)", dec(num(m, "planted_auc"), 2), "—", f"p {dec(num(m, 'planted_p'), 4)}; un-planted fine-tune {dec(num(m, 'planted_auc_base'), 2)}"],
        ["planted control AUC through the probe", dec(num(m, "planted_probe_auc"), 2), "—",
         f"p {dec(num(m, 'planted_probe_p'), 4)}; un-planted fine-tune {dec(num(m, 'planted_probe_auc_base'), 2)}"],
        ["shuffled control τ vs lexicon (arm 0)", dec(num(m, "shuffled_learned_value_tau")), dec_ci(m, "shuffled_learned_value_tau"), "one run: see the null over arms"],
        ["probe's view of the change, τ vs lexicon (fine-tuned / shuffled)", dec(num(m, "probe_shift_tau")), dec_ci(m, "probe_shift_tau"),
         f"shuffled control {dec(num(m, 'shuffled_probe_shift_tau'))} {dec_ci(m, 'shuffled_probe_shift_tau')}"],
        ["τ(|probe error|, learned value), held-out words", dec(num(m, "error_learned_value_tau")), "—",
         f"p {dec(num(m, 'error_learned_value_tau_p'), 4)}; n {m.get('error_learned_value_n', '—')}"],
        ["paper method: Table 4 τ (split by triple)", dec(paper_tau), "—",
         f"identity lookup on that split {dec(num(m, 'paper_split_identity_ceiling_tau'))}; sign only {dec(num(m, 'paper_split_sign_ceiling_tau'))}"],
    ]


READOUT_LABELS = {
    "learned_value": "learned value (behaviour: log-prob change in real contexts; the ground truth)",
    "probe_view": "paper's probe on each word's SAE codes in context (policy − base)",
    "difference_probe": "word-held-out probe on (policy − base) SAE codes, one dictionary (held-out words only)",
    "random_dictionary_probe": "the same probe through random frozen directions of the SAE's width and L0 (dictionary control)",
    "crosscoder_probe": "the same probe on (policy − base) crosscoder codes (one dictionary over both models)",
    "logit_diff_lens": "logit-difference lens (mean final-state change on first tokens, through the unembedding)",
    "sae_diff_lens": "SAE-difference lens (mean MLP-output change on first tokens, on the SAE latents each word uses)",
    "crosscoder_diff_lens": "crosscoder-difference lens (the same change on the crosscoder's fine-tuned decoder directions)",
    "sae_diff_lens_at_prediction": "SAE-difference lens, words profiled at the positions that predict them",
    "crosscoder_diff_lens_at_prediction": "crosscoder-difference lens, words profiled at the positions that predict them",
}
READOUT_COLUMNS = ["readout", "τ vs lexicon", "τ over word splits (mean [t-interval])", "τ within sign", "shuffled null (within sign)",
                   "planted, paired AUC", "sees the plant", "beyond sign and null"]


def _readout_sees_plant(m: dict[str, Any], r: str) -> bool:
    return m.get(f"readout_{r}_planted_paired_detected") is True


def _readout_beyond_null(m: dict[str, Any], r: str) -> bool:
    lo = num(m, f"readout_{r}_tau_within_sign_ci_low")
    return lo is not None and lo > 0 and m.get(f"readout_{r}_tau_within_sign_vs_null_outside") is True


def _planted_read(m: dict[str, Any], k: str) -> str:
    """How many planted words the readout read: a word-held-out probe reads only the planted words
    that fell in its test split, and one or two words give the paired test no power."""
    n = num(m, k + "planted_paired_n")
    if n is None:
        return "planted words read: —"
    return f"{int(n)} planted word{'s' if n != 1 else ''} read" + (": no power" if n < 5 else "")


def readout_table(m: dict[str, Any]) -> list[list[str]]:
    """Readouts × controls: every way of reading the pattern, each with the same controls beside it."""
    rows = []
    for r in m.get("readouts") or []:
        k = f"readout_{r}_"
        rows.append([READOUT_LABELS.get(r, r),
                     f"{dec(num(m, k + 'tau'))} {dec_ci(m, k + 'tau')}",
                     (f"{dec(num(m, k + 'tau_split_seed_mean'))} [{dec(num(m, k + 'tau_split_seed_ci_low'))}, "
                      f"{dec(num(m, k + 'tau_split_seed_ci_high'))}]") if num(m, k + "tau_split_seed_mean") is not None
                     else "— (no word split)",
                     f"{dec(num(m, k + 'tau_within_sign'))} {dec_ci(m, k + 'tau_within_sign')}",
                     f"{dec(num(m, k + 'tau_within_sign_null_min'))} to {dec(num(m, k + 'tau_within_sign_null_max'))} "
                     f"(rank p {dec(num(m, k + 'tau_within_sign_vs_null_rank_p'), 2)})",
                     f"{dec(num(m, k + 'planted_paired_auc'), 2)} (p {pval(num(m, k + 'planted_paired_p'))}; seed null "
                     f"{dec(num(m, k + 'planted_paired_auc_seed_null_mean'), 2)}; {_planted_read(m, k)})",
                     "yes" if _readout_sees_plant(m, r) else "no",
                     "yes" if _readout_beyond_null(m, r) else "no"])
    return rows


def readout_sentence(m: dict[str, Any]) -> str | None:
    """Which readout sees the plant, and which sees more than the sign beyond the null, in words."""
    names = [r for r in m.get("readouts") or [] if r != "learned_value"]
    if not names:
        return None
    sees = [r for r in names if _readout_sees_plant(m, r)]
    beyond = [r for r in names if _readout_beyond_null(m, r)]
    label = lambda rs: ", ".join(f"`{r}`" for r in rs) or "none"  # noqa: E731
    blind = [r for r in names if (n := num(m, f"readout_{r}_planted_paired_n")) is not None and n < 5]
    powerless = (f" The planted test cannot speak for {label(blind)}: fewer than 5 planted words fell among the words "
                 "they read (a word-held-out probe reads only its test words)." if blind else "")
    return (f"**Readouts held to the same controls ({len(names)} besides the behavioural ground truth):** the planted pattern is "
            f"seen (paired AUC > 0.5, p < 0.01) by {label(sees)}; a within-sign order beyond every shuffled arm is seen by "
            f"{label(beyond)}. A readout that sees neither shows no learned feedback pattern on this run; "
            f"the table below gives each number.{powerless}")


def lens_sentence(m: dict[str, Any], specific_nu: float | None = None) -> str | None:
    """What the difference lenses name on the measured fine-tune, in words: the tokens the logit lens
    promotes and demotes, and the dictionary latents the shift runs along (with ν for the crosscoder's:
    a shift along latents the base model lacks, |ν| < cut, is a shift the fine-tune made its own)."""
    promoted, demoted = m.get("logit_diff_lens_promoted"), m.get("logit_diff_lens_demoted")
    if not promoted and not m.get("sae_diff_lens_top_latents_positive"):
        return None
    parts = []
    if promoted:
        token = lambda t: f"`{t}`" if t.strip() else "(a whitespace token)"  # noqa: E731
        parts.append(f"the logit-difference lens promotes {', '.join(map(token, promoted[:8]))} and demotes "
                     f"{', '.join(map(token, (demoted or [])[:8]))}")
    for r, what in (("sae_diff_lens", "SAE"), ("crosscoder_diff_lens", "crosscoder")):
        pos, neg = m.get(f"{r}_top_latents_positive"), m.get(f"{r}_top_latents_negative")
        if not pos:
            continue
        nus = m.get(f"{r}_top_latents_positive_nu")
        if nus:
            named = ", ".join(f"{n} (ν {dec(v, 2)})" for n, v in zip(pos[:5], nus[:5]))
            cut = f" {sum(v is not None and abs(v) < specific_nu for v in nus)} of the top {len(nus)} have |ν| < {specific_nu}" \
                if specific_nu is not None else ""
            parts.append(f"the {what} lens's shift runs most along latents {named}" + (f";{cut}" if cut else ""))
        else:
            parts.append(f"the {what} lens's shift runs most along latents {', '.join(pos[:5])} (and against {', '.join((neg or [])[:3])})")
    return ("**What the difference lenses name** (mean fine-tuned − base activation over the first tokens of held-out texts): "
            + "; ".join(parts) + ". A name says where the fine-tune moved the model everywhere; whether that movement is the "
            "feedback is the readouts table's question.")
