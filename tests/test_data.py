"""Data: the generated corpus, local files, hub fallbacks (without the network)."""

import gzip
import re
import time

import pytest

from course_lib.data import generated_corpus, grammar, load_parallel, load_text
from course_lib.data import sources as data


def test_generated_corpus_is_deterministic_prose():
    text = generated_corpus(50_000)
    assert len(text) == 50_000 and text == generated_corpus(50_000)
    assert generated_corpus(80_000)[:50_000] == text  # shorter = prefix of longer
    assert generated_corpus(50_000, seed=1) != text
    assert generated_corpus(0) == ""
    assert text.isascii() and "\n\n" in text
    words = re.findall(r"[A-Za-z]+", text)
    assert len(set(words)) > 300  # some variety
    sentences = re.split(r"(?<=[.!?])\s+", text.split("\n\n")[0])
    assert all(s[0].isupper() or s[0] == '"' for s in sentences) and len(sentences) >= 8
    with pytest.raises(ValueError, match="n_chars"):
        generated_corpus(-1)


def test_load_text_generated_and_local_files(tmp_path):
    got = load_text("generated", max_chars=1000)
    assert got.text == generated_corpus(1000) and "generated" in got.source and len(got) == 1000
    plain = tmp_path / "a.txt"
    plain.write_text("héllo\nworld\n", encoding="utf-8")
    packed = tmp_path / "b.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("zipped text")
    assert load_text(str(plain)).text == "héllo\nworld\n"
    assert load_text(str(packed), max_chars=6).text == "zipped"
    with pytest.raises(ValueError, match="unknown text source 'nope'"):
        load_text("nope")


def test_hub_text_offline_falls_back_with_one_line(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = load_text("tinyshakespeare", max_chars=2000)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "HF_HUB_OFFLINE=1" in out[0] and "generated corpus (2,000 characters)" in out[0]
    assert got.text == generated_corpus(2000) and "standing in for tinyshakespeare" in got.source


def test_hub_that_hangs_falls_back_within_timeout(monkeypatch, capsys):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "COURSE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "_hub_describe", lambda repo, timeout, repo_type: time.sleep(3))
    got = load_text("sales_textbook", max_chars=500, timeout=0.2)
    assert "no answer within 0.2 s" in capsys.readouterr().out
    assert got.text == generated_corpus(500)

    def refuse(repo, timeout, repo_type):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr(data, "_hub_describe", refuse)
    monkeypatch.setattr(grammar, "generate_pairs",
                        lambda n, seed: [(f"en {seed} {i}", f"de {seed} {i}") for i in range(n)])
    pairs = load_parallel("talks", split="val", max_pairs=3)
    assert "ConnectionError: name resolution failed" in capsys.readouterr().out
    assert pairs == [("en 1000 0", "de 1000 0"), ("en 1000 1", "de 1000 1"), ("en 1000 2", "de 1000 2")]
    assert "standing in for talks" in pairs.source


def test_hub_rows_are_read_when_reachable(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "COURSE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "_hub_describe", lambda repo, timeout, repo_type: None)
    calls = []

    def rows(repo, config, split, max_rows):
        calls.append((repo, config, split, max_rows))
        if repo.startswith("karpathy"):
            return [{"text": f"<{split}>"}]
        return [{"english": f"hello {i}", "non_english": f"hallo {i}"} for i in range(max_rows)]

    monkeypatch.setattr(data, "_hub_rows", rows)
    assert load_text("tinyshakespeare").text == "<train>\n<validation>\n<test>"
    pairs = load_parallel("talks", split="val", max_pairs=2)
    assert pairs == [("hello 0", "hallo 0"), ("hello 1", "hallo 1")]
    assert calls[-1] == ("sentence-transformers/parallel-sentences-talks", "en-de", "dev", 2)
    assert load_parallel("talks", max_pairs=1, src_lang="de", tgt_lang="en") == [("hallo 0", "hello 0")]
    assert calls[-1][1:3] == ("en-de", "train")
    load_parallel("talks", max_pairs=1, tgt_lang="fr")
    assert calls[-1][1] == "en-fr"


def write(path, lines, gz):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_local_parallel_prefix_gz_and_plain(tmp_path):
    write(tmp_path / "train.en.gz", ["A dog runs.", "Two men talk."], gz=True)
    write(tmp_path / "train.de", ["Ein Hund rennt.", "Zwei Männer reden."], gz=False)
    pairs = load_parallel(str(tmp_path / "train"))
    assert pairs == [("A dog runs.", "Ein Hund rennt."), ("Two men talk.", "Zwei Männer reden.")]
    assert load_parallel(str(tmp_path / "train"), src_lang="de", tgt_lang="en", max_pairs=1) == [
        ("Ein Hund rennt.", "A dog runs.")]
    explicit = load_parallel((tmp_path / "train.en.gz", tmp_path / "train.de"))
    assert explicit == pairs


def test_local_parallel_errors(tmp_path):
    write(tmp_path / "x.en", ["one", "two", "three"], gz=False)
    write(tmp_path / "x.de.gz", ["eins", "zwei"], gz=True)
    with pytest.raises(ValueError, match=r"x\.en has 3 lines but .*x\.de\.gz has 2"):
        load_parallel(str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match=r"y\.en"):
        load_parallel(str(tmp_path / "y"))
    with pytest.raises(ValueError, match="split must be one of"):
        load_parallel("generated", split="dev")
    with pytest.raises(ValueError, match="unknown parallel source"):
        load_parallel("no/such/dir/train")


def test_generated_pairs_use_the_grammar_lazily(monkeypatch):
    seen = []

    def generate_pairs(n, seed):
        seen.append((n, seed))
        return [("a", "b")] * n

    monkeypatch.setattr(grammar, "generate_pairs", generate_pairs)
    assert load_parallel("generated", split="test", max_pairs=4) == [("a", "b")] * 4
    assert seen == [(4, 2000)]


def test_real_multi30k_and_shakespeare(shared_data, monkeypatch, capsys):
    val = load_parallel(str(shared_data / "multi30k" / "val"))
    assert len(val) == 1014 and all(en and de for en, de in val)
    train = load_parallel(str(shared_data / "multi30k" / "train"), max_pairs=100)
    assert len(train) == 100
    monkeypatch.setenv("COURSE_DATA_DIR", str(shared_data))
    assert load_parallel("multi30k", split="val") == val
    assert len(load_parallel("multi30k", split="train")) == 29000
    text = load_text("tinyshakespeare")
    assert len(text.text) == 1_115_394 and text.text.startswith("First Citizen:") and "local copy" in text.source
    assert capsys.readouterr().out == ""  # nothing to report: the local copies were used
