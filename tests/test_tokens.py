"""A Gemma-style tokenizer (every text starts with <bos>) keeps its <bos> wherever lfp cuts or joins
token ids; a tokenizer without one (tiny, SmolLM2) is left exactly as before."""

from __future__ import annotations

import pytest
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import PreTrainedTokenizerFast

from lfp.tasks.lexicon_rl.ablation import imdb_prefixes
from lfp.tasks.preference_dpo.ablation import encode_pair_side
from lfp.models.activation_cache import tokenize
from lfp.models.heldout import pack
from lfp.models.tokens import keep_last, leading_special_ids, with_lead
from lfp.measure.triples import token_window

from conftest import SAMPLE_TEXTS


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SAMPLE_TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<eos>", "<bos>"])
    if bos:
        bos_id = bpe.token_to_id("<bos>")
        bpe._tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def gemma_like() -> PreTrainedTokenizerFast:
    return make_tokenizer(bos=True)


@pytest.fixture(scope="module")
def plain() -> PreTrainedTokenizerFast:
    return make_tokenizer(bos=False)


def test_leading_special_ids(gemma_like, plain) -> None:
    assert leading_special_ids(gemma_like) == [gemma_like.bos_token_id]
    assert leading_special_ids(plain) == []


def test_keep_last_keeps_the_lead_when_cutting() -> None:
    assert keep_last([9, 1, 2, 3, 4], 3, [9]) == [9, 3, 4]
    assert keep_last([9, 1, 2], 3, [9]) == [9, 1, 2]
    assert keep_last([1, 2, 3, 4], 2, []) == [3, 4]
    assert keep_last([1, 2, 3, 4], 2, [9]) == [3, 4]  # no lead at the front: a plain cut


def test_activation_rows_keep_bos(gemma_like, plain) -> None:
    text = SAMPLE_TEXTS[0] * 3
    (ids,) = tokenize(gemma_like, [text], 10)
    assert len(ids) == 10 and ids[0] == gemma_like.bos_token_id
    assert ids[1:] == gemma_like(text, add_special_tokens=False)["input_ids"][-9:]
    (plain_ids,) = tokenize(plain, [text], 10)
    assert plain_ids == plain(text)["input_ids"][-10:]


@pytest.mark.parametrize("max_length", [4, 6, 64])
def test_token_window_keeps_bos_and_maps_the_span(gemma_like, max_length: int) -> None:
    text = "The film was terrible, boring and far too long."
    start = text.index("boring")
    ids, pos = token_window(gemma_like, text, (start, start + len("boring")), max_length)
    assert ids[0] == gemma_like.bos_token_id and len(ids) <= max_length
    assert gemma_like.decode([ids[p] for p in pos]).strip() == "boring"


def test_pair_sides_and_prefixes_start_with_bos(gemma_like, plain) -> None:
    import numpy as np

    seq, first = encode_pair_side(gemma_like, "Human: hi " * 30, " Assistant: Mix flour", 40)
    assert seq[0] == gemma_like.bos_token_id and len(seq) == 40
    assert gemma_like.decode(seq[first:]) == " Assistant: Mix flour"
    plain_seq, plain_first = encode_pair_side(plain, "Human: hi", " Assistant: ok", 64)
    assert plain_seq == with_lead(plain, "Human: hi", []) + plain(" Assistant: ok")["input_ids"] and plain_first > 0
    (prefix,) = imdb_prefixes(SAMPLE_TEXTS[:1], gemma_like, 1, 4, np.random.default_rng(0))
    assert prefix[0] == gemma_like.bos_token_id and len(prefix) == 5


def test_pack_starts_every_row_with_the_lead() -> None:
    rows = pack(list(range(10)), 4, keep_tail=True, lead=[99])
    assert [r.tolist() for r in rows] == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]  # tail [9] alone scores nothing
    assert [r.tolist() for r in pack(list(range(6)), 3, keep_tail=False)] == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("context_tokens", [2, 50])
def test_learned_value_contexts_start_with_bos_or_eos(gemma_like, plain, context_tokens: int) -> None:
    from lfp.tasks.lexicon_rl.learned import Contexts, context_windows

    text = "The film was terrible, boring"
    ctx = Contexts(words=["boring"], texts=[text], spans=[(text.index("boring"), len(text))])
    for tok, start in ((gemma_like, gemma_like.bos_token_id), (plain, plain.eos_token_id)):
        ((ids, pos),) = context_windows(tok, ctx, context_tokens)
        assert ids[0] == start and ids.count(start) == 1
        assert tok.decode([ids[p] for p in pos]).strip() == "boring"
        assert len(ids) - len(pos) - 1 <= context_tokens
