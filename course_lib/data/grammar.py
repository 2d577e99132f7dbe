"""An English-to-German parallel corpus generated from a small grammar of our own.

The sentences are made of real German words with real agreement and word order, so
that a translation model has to learn more than a word-for-word dictionary:

- articles and adjectives agree with the noun's gender and case: "der alte Hund"
  (nominative), "den alten Hund" (accusative, the object), "mit dem alten Hund"
  (dative after "mit"), "ein alter Hund" / "einen alten Hund" / "ein altes Kind";
- verbs are conjugated for the subject: "ich sehe", "du siehst", "er sieht";
- verb-second: a fronted adverb pushes the subject behind the verb
  ("today the man sees the dog" -> "heute sieht der mann den hund");
- verb-final in subordinate clauses after "weil" / "dass"
  ("... , weil der mann den hund sieht");
- separable verbs split in main clauses ("the man calls the woman" ->
  "der mann ruft die frau an") and join at the end of subordinate clauses ("anruft");
- modal verbs send the infinitive to the end ("der mann will den hund sehen").

Everything is lower case, with punctuation as separate words, so a word-level
tokenizer is enough. ``generate_pairs(n, seed)`` is deterministic;
``train_test_split`` gives a held-out set whose English sentences never occur in
the training set.
"""

from __future__ import annotations

import random

# noun: (english, german, gender, animate)
NOUNS = [
    ("man", "mann", "m", True), ("woman", "frau", "f", True), ("child", "kind", "n", True),
    ("dog", "hund", "m", True), ("cat", "katze", "f", True), ("teacher", "lehrer", "m", True),
    ("girl", "mädchen", "n", True), ("friend", "freund", "m", True), ("doctor", "ärztin", "f", True),
    ("book", "buch", "n", False), ("car", "auto", "n", False), ("letter", "brief", "m", False),
    ("apple", "apfel", "m", False), ("door", "tür", "f", False), ("bag", "tasche", "f", False),
]
# adjective: (english, german stem)
ADJECTIVES = [
    ("old", "alt"), ("young", "jung"), ("small", "klein"), ("big", "groß"),
    ("nice", "nett"), ("new", "neu"), ("red", "rot"), ("tired", "müd"),
]
# Persons: ich, du, er/sie/es (and every noun), wir, sie (plural).
PERSONS = ["1sg", "2sg", "3sg", "1pl", "3pl"]
PRONOUNS = {  # person -> list of (english, german)
    "1sg": [("i", "ich")], "2sg": [("you", "du")], "3sg": [("he", "er"), ("she", "sie")],
    "1pl": [("we", "wir")], "3pl": [("they", "sie")],
}


def _conj(ich, du, er, wir, sie):
    return dict(zip(PERSONS, [ich, du, er, wir, sie]))


def _regular(stem: str, infinitive: str | None = None):
    e = "e" if stem.endswith(("t", "d")) else ""  # warten: du wartest, er wartet
    return _conj(stem + "e", stem + e + "st", stem + e + "t", infinitive or stem + "en", infinitive or stem + "en")


# verb: (english base, english 3sg, german conjugation, separable particle, object: None/"any"/"animate"/"thing")
VERBS = [
    ("see", "sees", _conj("sehe", "siehst", "sieht", "sehen", "sehen"), "", "any"),
    ("buy", "buys", _regular("kauf"), "", "thing"),
    ("find", "finds", _regular("find"), "", "any"),
    ("visit", "visits", _regular("besuch"), "", "animate"),
    ("call", "calls", _conj("rufe", "rufst", "ruft", "rufen", "rufen"), "an", "animate"),
    ("open", "opens", _regular("mach"), "auf", "thing"),
    ("pick up", "picks up", _regular("hol"), "ab", "animate"),
    ("invite", "invites", _conj("lade", "lädst", "lädt", "laden", "laden"), "ein", "animate"),
    ("sleep", "sleeps", _conj("schlafe", "schläfst", "schläft", "schlafen", "schlafen"), "", None),
    ("laugh", "laughs", _regular("lach"), "", None),
    ("wait", "waits", _regular("wart"), "", None),
    ("get up", "gets up", _conj("stehe", "stehst", "steht", "stehen", "stehen"), "auf", None),
]
# modal: (english, english 3sg, german conjugation, english "to")
MODALS = [
    ("can", "can", _conj("kann", "kannst", "kann", "können", "können"), ""),
    ("want", "wants", _conj("will", "willst", "will", "wollen", "wollen"), "to "),
]
ADVERBS = [("today", "heute"), ("tomorrow", "morgen"), ("often", "oft"), ("now", "jetzt")]
PREPOSITIONS = [("with", "mit", "dat"), ("for", "für", "acc")]
DETERMINERS = [("the", "def"), ("a", "indef"), ("my", "poss")]
SAY_VERBS = [("know", "knows", _conj("weiß", "weißt", "weiß", "wissen", "wissen")),
             ("think", "thinks", _regular("glaub"))]

# Definite article by case and gender; indefinite (and "mein") by case and gender.
DEF = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"},
       "dat": {"m": "dem", "f": "der", "n": "dem"}}
INDEF = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
         "dat": {"m": "einem", "f": "einer", "n": "einem"}}
# Adjective endings: weak after the definite article, mixed after ein/mein.
WEAK = {"nom": {"m": "e", "f": "e", "n": "e"}, "acc": {"m": "en", "f": "e", "n": "e"},
        "dat": {"m": "en", "f": "en", "n": "en"}}
MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"},
         "dat": {"m": "en", "f": "en", "n": "en"}}


def german_np(det: str, adj: str | None, noun: tuple, case: str) -> str:
    """A German noun phrase in the given case: article + adjective + noun, in agreement."""
    _, de, gender, _ = noun
    if det == "def":
        article, endings = DEF[case][gender], WEAK
    else:
        article = INDEF[case][gender]
        if det == "poss":
            article = "m" + article
        endings = MIXED
    words = [article]
    if adj is not None:
        words.append(adj + endings[case][gender])
    return " ".join(words + [de])


def english_np(det: str, adj: str | None, noun: tuple) -> str:
    first = adj if adj is not None else noun[0]
    article = {"def": "the", "poss": "my"}.get(det) or ("an" if first[0] in "aeiou" else "a")
    return " ".join([article] + ([adj] if adj else []) + [noun[0]])


def _random_np(rng: random.Random, animate: bool | None):
    nouns = [n for n in NOUNS if animate is None or n[3] == animate]
    noun = rng.choice(nouns)
    det = rng.choice(DETERMINERS)[1]
    adj = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
    return det, adj, noun


def _clause(rng: random.Random) -> dict:
    """The parts of one clause: subject, verb, object, prepositional phrase, modal."""
    if rng.random() < 0.35:
        person = rng.choice(PERSONS)
        en, de = rng.choice(PRONOUNS[person])
        subj = {"en": en, "de": de, "person": person}
    else:
        det, adj, noun = _random_np(rng, animate=True)
        subj = {"en": english_np(det, adj[0] if adj else None, noun),
                "de": german_np(det, adj[1] if adj else None, noun, "nom"), "person": "3sg"}
    verb = rng.choice(VERBS)
    obj = None
    if verb[4] is not None:
        det, adj, noun = _random_np(rng, {"any": None, "animate": True, "thing": False}[verb[4]])
        obj = {"en": english_np(det, adj[0] if adj else None, noun),
               "de": german_np(det, adj[1] if adj else None, noun, "acc")}
    pp = None
    if rng.random() < 0.3:
        en_p, de_p, case = rng.choice(PREPOSITIONS)
        det, adj, noun = _random_np(rng, animate=True)
        pp = {"en": en_p + " " + english_np(det, adj[0] if adj else None, noun),
              "de": de_p + " " + german_np(det, adj[1] if adj else None, noun, case)}
    modal = rng.choice(MODALS) if rng.random() < 0.25 else None
    return {"subj": subj, "verb": verb, "obj": obj, "pp": pp, "modal": modal}


def english_clause(c: dict) -> str:
    third = c["subj"]["person"] == "3sg"
    verb, modal = c["verb"], c["modal"]
    if modal is not None:
        vp = (modal[1] if third else modal[0]) + " " + modal[3] + verb[0]
    else:
        vp = verb[1] if third else verb[0]
    words = [c["subj"]["en"], vp]
    if c["obj"] is not None:
        # English keeps the object after the whole verb ("picks up the child").
        words.append(c["obj"]["en"])
    if c["pp"] is not None:
        words.append(c["pp"]["en"])
    return " ".join(words)


def german_clause(c: dict, order: str, adverb: str | None = None) -> str:
    """``order``: "main" (subject-verb), "v2" (adverb-verb-subject) or "sub" (verb-final)."""
    person = c["subj"]["person"]
    conj, particle = c["verb"][2], c["verb"][3]
    infinitive = particle + conj["1pl"]
    middle = [p["de"] for p in (c["obj"], c["pp"]) if p is not None]
    if c["modal"] is not None:
        finite, tail = c["modal"][2][person], [infinitive]
    else:
        finite, tail = conj[person], ([particle] if particle else [])
    subj = c["subj"]["de"]
    if order == "sub":
        last = [infinitive, finite] if c["modal"] is not None else [particle + finite]
        return " ".join([subj] + middle + last)
    if order == "v2":
        return " ".join([adverb, finite, subj] + middle + tail)
    return " ".join([subj, finite] + middle + tail)


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One random (English, German) sentence pair."""
    kind = rng.random()
    c = _clause(rng)
    if kind < 0.45:
        return english_clause(c) + " .", german_clause(c, "main") + " ."
    if kind < 0.65:
        en_a, de_a = rng.choice(ADVERBS)
        return f"{en_a} {english_clause(c)} .", german_clause(c, "v2", de_a) + " ."
    if kind < 0.85:
        main = _clause(rng)
        main["pp"] = None  # keep the sentences short
        return (f"{english_clause(main)} because {english_clause(c)} .",
                f"{german_clause(main, 'main')} , weil {german_clause(c, 'sub')} .")
    person = rng.choice(PERSONS)
    en_s, de_s = rng.choice(PRONOUNS[person])
    say = rng.choice(SAY_VERBS)
    en_v = say[1] if person == "3sg" else say[0]
    return f"{en_s} {en_v} that {english_clause(c)} .", f"{de_s} {say[2][person]} , dass {german_clause(c, 'sub')} ."


def generate_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` random (English, German) pairs, the same for the same seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    rng = random.Random(seed)
    return [sentence_pair(rng) for _ in range(n)]


def train_test_split(n_train: int, n_test: int, seed: int = 0):
    """A training set and a held-out set of *new* sentences (no English sentence of the
    held-out set occurs in the training set, and none is repeated within it)."""
    train = generate_pairs(n_train, seed)
    seen = {en for en, _ in train}
    rng = random.Random(seed + 1_000_003)
    test: list[tuple[str, str]] = []
    for _ in range(100 * n_test + 1000):
        if len(test) == n_test:
            break
        en, de = sentence_pair(rng)
        if en not in seen:
            seen.add(en)
            test.append((en, de))
    return train, test
