"""CLIP's BPE tokenizer on the `tokenizers` library, built from the vocabulary shipped in the package.

The hub's vocab.json/merges.txt are derived from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (256 byte
tokens, the same with `</w>`, one token per merge, then the two specials), so we derive them at load
time instead of shipping three copies. The text pipeline is the one transformers' fast CLIPTokenizer
uses, so ids match what diffusers and the A1111 web UI feed the SD1.5 text encoder.
"""

from __future__ import annotations

import functools
import gc
import gzip
import warnings
from importlib import resources

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # OpenAI's simple_tokenizer keeps this many merge lines
END_OF_WORD = "</w>"
# OpenAI's split pattern (`simple_tokenizer.py`): letter runs, single digits, punctuation runs and
# English contractions. Digits are split one by one, so "1.5" is three tokens.
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (its order fixes the first 256 ids)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in bs}
    # The other 68 bytes (controls, space, ...) map to chr(256), chr(257), ... in byte order.
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(bs))
    return table


def _read_merges() -> list[tuple[str, str]]:
    data = gzip.decompress(resources.files("animatediff.assets").joinpath(VOCAB_FILE).read_bytes())
    # Line 0 is a version header. Splitting bytes and decoding only the lines kept is 3x faster than
    # decoding the whole file (the merges are a fifth of it).
    lines = data.split(b"\n", NUM_MERGES + 1)[1 : NUM_MERGES + 1]
    return [tuple(line.decode("utf-8").split()) for line in lines]


@functools.cache
def _backend() -> Tokenizer:
    """The `tokenizers` pipeline, built once, on first use (about 50 ms)."""
    # The ~150k small objects made while building set off repeated garbage collections that walk
    # everything torch has allocated, which more than doubles the build time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build()
    finally:
        if enabled:
            gc.enable()


def _build() -> Tokenizer:
    merges = _read_merges()
    byte_tokens = list(bytes_to_unicode().values())
    tokens = [*byte_tokens, *(t + END_OF_WORD for t in byte_tokens), *("".join(m) for m in merges), BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD, unk_token=EOS, fuse_unk=False)
    tok = Tokenizer(bpe)
    # OpenAI's `whitespace_clean(text).lower()`, without its ftfy pass: transformers drops it too, and
    # diffusers and the A1111 web UI tokenize through transformers.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # A literal "<|endoftext|>" in a prompt is the special token, as in transformers.
    tok.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
    return tok


class CLIPTokenizer:
    """Prompts -> [B, 77] token ids for the CLIP text encoder: BOS, tokens, EOS, padded with EOS (as SD)."""

    def __init__(self) -> None:
        self._tok = _backend()
        self.vocab_size: int = self._tok.get_vocab_size()
        self.bos_id: int = self._tok.token_to_id(BOS)
        self.eos_id: int = self._tok.token_to_id(EOS)
        self.pad_id: int = self.eos_id  # SD1.5 was trained with EOS padding, not 0 (open_clip's choice)

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt, without BOS/EOS, padding or truncation."""
        return self._tok.encode(prompt, add_special_tokens=False).ids

    def _wrap(self, ids: list[int], max_length: int) -> list[int]:
        row = [self.bos_id, *ids[: max_length - 2], self.eos_id]
        return row + [self.pad_id] * (max_length - len(row))

    def __call__(self, prompts: list[str] | str, max_length: int = 77) -> torch.Tensor:
        """LongTensor [B, max_length]; prompts longer than max_length - 2 tokens are cut, with a warning."""
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        for enc in self._tok.encode_batch(prompts, add_special_tokens=False):
            dropped = len(enc.ids) - (max_length - 2)
            if dropped > 0:
                tail = self.decode(enc.ids[max_length - 2 :])
                warnings.warn(
                    f"prompt has {len(enc.ids)} tokens but CLIP takes {max_length - 2}; "
                    f"dropped the last {dropped}: {tail!r}",
                    stacklevel=2,
                )
            rows.append(self._wrap(enc.ids, max_length))
        return torch.tensor(rows, dtype=torch.long)

    def chunk_ids(self, ids: list[int], chunk: int = 75) -> torch.Tensor:
        """LongTensor [n_chunks, chunk + 2]: each `chunk` tokens wrapped in BOS/EOS and padded.

        This is how the A1111 web UI encodes prompts longer than 75 tokens (it then concatenates the
        encoded chunks along the sequence axis). An empty prompt still gives one chunk.
        """
        parts = [ids[i : i + chunk] for i in range(0, len(ids), chunk)] or [[]]
        return torch.tensor([self._wrap(p, chunk + 2) for p in parts], dtype=torch.long)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of token ids, special tokens left out; words are separated by single spaces."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = self._tok.decode(ids, skip_special_tokens=True)
        return " ".join(text.replace(END_OF_WORD, " ").split())


@functools.cache
def load_tokenizer() -> CLIPTokenizer:
    """The shared default tokenizer (built on first call)."""
    return CLIPTokenizer()
