"""Tokenizers, checked against tiktoken, a brute-force BPE trainer and hand-made cases."""

import gzip
import random
import sys
import time
import types
from itertools import pairwise

import pytest
import tiktoken

from course_lib import bpe, tokenizer
from course_lib.data import generated_corpus
from course_lib.exercises import check
from course_lib.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    WordTokenizer,
    get_tokenizer,
    load_tokenizer,
)

SPECIALS = ("<|endoftext|>", "<pad>")
# Held-out text: nothing like it is in the generated corpus the BPEs train on.
HELD_OUT = (
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. "
    "Ça va? 你好，世界! Привет, мир. naïve café 🤗🤗 👩‍👩‍👧 emoji…\n\n\n"
    "   indented  \t\ttabs   and  spaces   \n"
    "Numbers: 3.14159, 1,000,000 and 2024-06-01; it's, we'll, they're, I'm, he'd, YOU'VE.\n"
    "<|endoftext|>A new document<pad><pad> ends here <|endoftext|>\n \n  trailing   "
)


def reference_vocab(merges):
    """Token bytes rebuilt from the merge list, independently of BPETokenizer."""
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def reference_encoding(tok, pattern):
    vocab = reference_vocab(tok.merges)
    specials = {s: len(vocab) + j for j, s in enumerate(SPECIALS)}
    return tiktoken.Encoding(
        "test-bpe", pat_str=pattern, mergeable_ranks={b: i for i, b in enumerate(vocab)}, special_tokens=specials
    )


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(generated_corpus(60_000), 256 + 300 + len(SPECIALS), SPECIALS)


@pytest.mark.parametrize("allowed", ["all", "none", {"<pad>"}])
def test_bpe_ids_equal_tiktoken_on_held_out_text(trained, allowed):
    enc = reference_encoding(trained, bpe.GPT2_PATTERN)
    want = enc.encode(HELD_OUT, allowed_special=set(SPECIALS) if allowed == "all" else
                      (allowed if isinstance(allowed, set) else set()), disallowed_special=())
    assert trained.encode(HELD_OUT, allowed_special=allowed) == want
    assert trained.decode(want) == HELD_OUT


def test_bpe_gpt4_pattern_equals_tiktoken():
    tok = BPETokenizer.train(generated_corpus(30_000, seed=3) + HELD_OUT[:80], 256 + 150 + 2, SPECIALS, pattern="gpt4")
    enc = reference_encoding(tok, bpe.GPT4_PATTERN)
    text = HELD_OUT + generated_corpus(5_000, seed=9)
    assert tok.encode(text, "all") == enc.encode(text, allowed_special="all")


def test_bpe_trained_on_shakespeare_equals_tiktoken_on_multi30k(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:300_000]
    tok = BPETokenizer.train(text, 256 + 400 + 2, SPECIALS)
    held = gzip.open(shared_data / "multi30k" / "val.de.gz", "rt").read()
    held += gzip.open(shared_data / "multi30k" / "val.en.gz", "rt").read()
    assert tok.encode(held) == reference_encoding(tok, bpe.GPT2_PATTERN).encode(held)
    assert tok.decode(tok.encode(held)) == held


def brute_force_merges(text, n_merges):
    """Recount every pair of every chunk occurrence (no deduplication) after each merge."""
    seqs = [list(c.encode()) for c in bpe.regex.findall(bpe.GPT2_PATTERN, text)]
    merges = []
    for k in range(n_merges):
        counts = {}
        for s in seqs:
            for p in pairwise(s):
                counts[p] = counts.get(p, 0) + 1
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        merges.append((pair, best))
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if s[i : i + 2] == list(pair):
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(out)
        seqs = new
    return merges


def test_incremental_and_naive_trainers_match_brute_force():
    text = generated_corpus(20_000, seed=1) + " aaaa aaaaaaa abab " * 30
    want = brute_force_merges(text, 60)
    assert bpe.train_merges(text, 60) == want
    assert bpe.train_merges_naive(text, 60) == want


def test_textbook_example_first_merges():
    # "aaabdaaabac" is one chunk: 'aa' occurs 4 times, then 'aa'+'a' ... by hand:
    merges = [p for p, _ in bpe.train_merges("aaabdaaabac", 3)]
    assert merges == [(97, 97), (97, 98), (256, 257)]  # aa, ab, then aa+ab = "aaab"


def test_tokens_are_unique_byte_strings(trained):
    vocab = reference_vocab(trained.merges)
    assert len(set(vocab)) == len(vocab)


def test_round_trip_random_unicode(trained):
    rng = random.Random(0)
    alphabet = "ab cdé\n\t ß中文🤗!?.,'0123456789 " + "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(50))
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert trained.decode(trained.encode(text)) == text


def test_special_tokens(trained):
    eot = trained.token_to_id("<|endoftext|>")
    assert eot == 256 + 300 and trained.token_to_id("<pad>") == eot + 1
    assert trained.encode("a<|endoftext|>b", allowed_special="all")[1] == eot
    assert eot not in trained.encode("a<|endoftext|>b")  # not allowed: plain text
    assert trained.decode([eot]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="unknown special token"):
        trained.encode("x", allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="not a token"):
        trained.token_to_id("<|im_start|>")


def test_bad_input_errors(trained):
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train("<|endoftext|>", 300, special_tokens=("<|endoftext|>",))
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        BPETokenizer.train("hello", 100)
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        BPETokenizer.train("hello", 257, special_tokens=SPECIALS)
    with pytest.raises(ValueError, match="allows only 4 merges"):
        BPETokenizer.train("hello", 300)
    for bad in (trained.vocab_size, -1, 10**9):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            trained.decode([1, 2, bad])
    with pytest.raises(TypeError):
        trained.encode(b"bytes")


def test_save_load_to_tiktoken_and_pieces(trained, tmp_path):
    loaded = load_tokenizer(trained.save(tmp_path / "bpe.json"))
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    assert loaded.encode(HELD_OUT, "all") == trained.encode(HELD_OUT, "all")
    assert trained.to_tiktoken().encode(HELD_OUT, allowed_special="all") == trained.encode(HELD_OUT, "all")
    assert "".join(trained.tokens("Once upon a time")) == "Once upon a time"
    assert trained.id_to_token(ord("A")) == "A"


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("hello world", special_tokens=("<pad>",))
    assert tok.special_tokens == {"<pad>": 0}
    assert tok.itos[1:] == sorted(set("hello world"))
    ids = tok.encode("low<pad>", allowed_special="all")
    assert ids == [tok.stoi["l"], tok.stoi["o"], tok.stoi["w"], 0]
    assert tok.decode(ids) == "low<pad>"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tok.encode("z")
    unk = CharTokenizer.from_text("abc", special_tokens=("<unk>",))
    assert unk.encode("az") == [unk.stoi["a"], 0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    assert load_tokenizer(tok.save(tmp_path / "c.json")).encode("hello") == tok.encode("hello")
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")


def test_word_tokenizer(tmp_path):
    texts = ["The cat sat. The dog sat!", "the cat ran, the cat saw"]
    tok = WordTokenizer.from_texts(texts)
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    # by falling count, ties alphabetically: cat 3, the 2 (lowercase), sat 2, The 2, ...
    assert tok.itos[4:8] == ["cat", "The", "sat", "the"]
    ids = tok.encode("The bird sat.")
    assert ids == [tok.stoi["The"], 3, tok.stoi["sat"], tok.stoi["."]]
    assert tok.decode(ids) == "The <unk> sat."
    assert tok.encode("<bos>cat<eos>", allowed_special={"<bos>", "<eos>"}) == [1, tok.stoi["cat"], 2]
    lower = WordTokenizer.from_texts(texts, lower=True, min_freq=2)
    assert "The" not in lower.stoi and "dog" not in lower.stoi and lower.itos[4] == "the"
    assert WordTokenizer.from_texts(texts, max_size=6).vocab_size == 6
    again = load_tokenizer(lower.save(tmp_path / "w.json"))
    assert again.encode("THE CAT") == lower.encode("THE CAT") == [4, 5]


def test_tiktoken_wrapper_with_a_local_encoding(trained, tmp_path):
    wrapped = TiktokenTokenizer(trained.to_tiktoken())
    assert wrapped.vocab_size == trained.vocab_size
    assert wrapped.special_tokens == trained.special_tokens
    assert wrapped.encode(HELD_OUT, "all") == trained.encode(HELD_OUT, "all")
    assert wrapped.decode(wrapped.encode(HELD_OUT)) == HELD_OUT
    with pytest.raises(ValueError, match="outside the vocabulary"):
        wrapped.decode([trained.vocab_size])


def test_gpt2_known_ids_when_available():
    encoding, why = tokenizer.load_tiktoken("gpt2", timeout=5)
    if encoding is None:
        pytest.skip(f"tiktoken gpt2 not available here ({why})")
    tok = TiktokenTokenizer(encoding)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.special_tokens == {"<|endoftext|>": 50256}


def test_get_tokenizer_falls_back_fast_when_tiktoken_hangs(monkeypatch, capsys):
    def hang(name):
        time.sleep(3)

    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=hang))
    tok = get_tokenizer(timeout=0.2)
    out = capsys.readouterr().out.strip().splitlines()
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 1024
    assert len(out) == 1 and "no answer within 0.2 s" in out[0] and "course BPE with 1,024 tokens" in out[0]
    assert tok.special_tokens == {"<|endoftext|>": 1023}
    text = generated_corpus(2_000, seed=7)
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text) / 3  # it learned the corpus' words


def test_get_tokenizer_course_and_failure(monkeypatch, capsys):
    def fail(name):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=fail))
    get_tokenizer()
    assert "ConnectionError: offline" in capsys.readouterr().out
    assert isinstance(get_tokenizer("course", verbose=False), BPETokenizer)


def test_exercise_solutions_nb01():
    """Each solution against tiktoken built from the same merges (one chunk: no pre-split)."""
    from course_lib.solutions import nb01

    rng = random.Random(0)
    texts = ["aaabdaaabac", "hello hello, ll!", "héllo wörld 🤗", generated_corpus(300, seed=4)]
    for merges in (nb01.MERGES_A, nb01.MERGES_HELLO, [p for p, _ in bpe.train_merges(texts[-1], 40)]):
        vocab = nb01.token_bytes(merges)
        enc = tiktoken.Encoding("ex", pat_str=r"[\s\S]+", special_tokens={},
                                mergeable_ranks={b: i for i, b in enumerate(vocab)})
        assert vocab == [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
        for text in texts:
            assert nb01.encode_chunk(text, merges) == enc.encode(text)
        ids = [rng.randrange(len(vocab)) for _ in range(30)]
        assert nb01.decode_ids(ids, merges) == enc.decode(ids)
    for name in ("token_bytes", "decode_ids", "encode_chunk"):
        assert not check(lambda *a: None, f"nb01.{name}", verbose=False)
    assert not check(lambda text, merges: list(text.encode()), "nb01.encode_chunk", verbose=False)
