"""Our CLIP tokenizer against transformers' CLIPTokenizer built from hub-style vocab.json/merges.txt."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import CLIPTokenizer as RefTokenizer

from animatediff.models.tokenizer import CLIPTokenizer, load_tokenizer
from reference import write_clip_vocab

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "masterpiece, best quality, 1girl, solo, 8k uhd, dslr, (film grain:1.2), 1.5",
    "it's a dog; don't you think? they're we've I'm you'll he'd",
    "(word:1.2), [negative], {braces}, <lora:name:0.8>, ((double)), a_b-c/d\\e",
    "Crème brûlée at the café, naïve Zoë, São Paulo, Ærøskøbing",
    "東京の夜景, 한국어, Москва, Ελλάδα, عربى, हिन्दी",
    "emoji 😀🔥👩‍👩‍👧 flags 🇫🇷 and ™ © ½ ²",
    "  lots   of\twhitespace\n\nand\r\nnewlines   ",
    "ALL CAPS Prompt With MixedCase",
    "e\u0301 decomposed accent, fullwidth ＡＢＣ１２３, nbsp\u00a0here, zero\u200bwidth",
    "<|startoftext|> literal specials <|endoftext|> in text",
    "",
    " ",
    "!!!???...,,,;;;",
    "3.14159 2024-01-01 #hashtag @user $100 50% a&b",
]
LONG = ", ".join(f"detailed word{i} (thing:1.{i % 10})" for i in range(40))  # ~280 tokens


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> RefTokenizer:
    return RefTokenizer.from_pretrained(write_clip_vocab(tmp_path_factory.mktemp("clip_tokenizer")))


def ref_ids(ref: RefTokenizer, prompts: list[str]) -> torch.Tensor:
    out = ref(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return out.input_ids


def test_matches_transformers(ref):
    tok = load_tokenizer()
    ours = tok(PROMPTS)
    assert ours.shape == (len(PROMPTS), 77) and ours.dtype == torch.long
    for prompt, row, expected in zip(PROMPTS, ours, ref_ids(ref, PROMPTS)):
        assert row.tolist() == expected.tolist(), prompt
        assert tok.tokenize(prompt) == ref(prompt, add_special_tokens=False).input_ids, prompt


def test_random_strings_match_transformers(ref):
    alphabet = "abcXYZ019 ,.:;'\"()[]<>-_\t\néüßÅ東京😀\u0301\u200b\u00a0'sd"
    rng = random.Random(0)
    prompts = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(300)]
    assert load_tokenizer()(prompts).tolist() == ref_ids(ref, prompts).tolist()


def test_long_prompt_truncates_with_warning(ref):
    tok = load_tokenizer()
    n = len(tok.tokenize(LONG))
    assert n > 75
    with pytest.warns(UserWarning, match=f"dropped the last {n - 75}"):
        ours = tok(LONG)
    assert ours.tolist() == ref_ids(ref, [LONG]).tolist()
    assert ours[0, -1] == tok.eos_id


def test_padding_and_specials():
    tok = load_tokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49408, 49406, 49407, 49407)
    ids = tok(["", "a cat"])
    assert ids[0].tolist() == [49406] + [49407] * 76
    assert ids[1, :4].tolist() == [49406, *tok.tokenize("a cat"), 49407]
    assert (ids[1, 4:] == 49407).all()
    assert load_tokenizer() is tok


def test_decode_round_trip():
    tok = load_tokenizer()
    text = tok.decode(tok("A photo of an Astronaut riding a horse")[0])
    assert text == "a photo of an astronaut riding a horse"
    assert tok.decode(tok.tokenize("hello world")) == "hello world"


def test_chunk_ids():
    tok = load_tokenizer()
    ids = tok.tokenize(LONG)
    chunks = tok.chunk_ids(ids)
    n = -(-len(ids) // 75)
    assert chunks.shape == (n, 77) and chunks.dtype == torch.long
    assert (chunks[:, 0] == tok.bos_id).all()
    for i, row in enumerate(chunks):
        part = ids[75 * i : 75 * (i + 1)]
        assert row.tolist() == [tok.bos_id, *part, tok.eos_id] + [tok.pad_id] * (75 - len(part))
    assert tok.chunk_ids([]).tolist() == tok("").tolist()
    with pytest.warns(UserWarning):
        truncated = tok(LONG)
    assert tok.chunk_ids(ids[:75]).tolist() == truncated.tolist() == chunks[:1].tolist()
    assert tok.chunk_ids(ids[:10], chunk=5).shape == (2, 7)


def test_fresh_instance_equals_cached():
    assert CLIPTokenizer()(PROMPTS).tolist() == load_tokenizer()(PROMPTS).tolist()
