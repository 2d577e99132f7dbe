"""Templates and word lists of the generated corpus (``generated_corpus``).

Each story has a hero with a job and a home, a friend, a day when something is found
or lost, a short dialogue, a search and an ending that fits the object, so that a
small language model has both grammar and some longer-range structure to learn.
All wording here was written for this project.
"""

from __future__ import annotations

import random

HEROES = [
    ("Anna", "she"), ("Ben", "he"), ("Clara", "she"), ("David", "he"), ("Emma", "she"),
    ("Felix", "he"), ("Grace", "she"), ("Henry", "he"), ("Ida", "she"), ("Jack", "he"),
    ("Lena", "she"), ("Max", "he"), ("Nora", "she"), ("Oscar", "he"), ("Paula", "she"),
    ("Quinn", "he"), ("Rosa", "she"), ("Sam", "he"), ("Tilda", "she"), ("Victor", "he"),
    ("Wendy", "she"), ("Leo", "he"), ("Mia", "she"), ("Tom", "he"), ("Lucy", "she"),
    ("Hugo", "he"), ("Alice", "she"), ("Peter", "he"), ("Maya", "she"), ("Noah", "he"),
]
JOBS = [
    "baker", "fisherman", "teacher", "farmer", "painter", "sailor", "doctor", "carpenter",
    "gardener", "musician", "librarian", "shepherd", "potter", "tailor", "miller", "weaver",
    "cook", "postman", "blacksmith", "beekeeper", "clockmaker", "bookseller",
]
ANIMALS = ["fox", "cat", "dog", "rabbit", "owl", "mouse", "bear", "goose", "hedgehog", "crow"]
PLACES = [  # (preposition, place)
    ("in", "a quiet village by the sea"), ("in", "a busy town near the mountains"),
    ("in", "a small house at the edge of the forest"), ("in", "an old city on a wide river"),
    ("on", "a farm in a green valley"), ("on", "an island far from the coast"),
    ("in", "a little town with a red bridge"), ("in", "a cold village high in the hills"),
    ("by", "a harbour full of boats"), ("on", "a sunny street behind the market"),
]
ADJECTIVES = [
    "kind", "curious", "brave", "shy", "cheerful", "patient", "clever", "gentle", "quiet",
    "honest", "careful", "friendly", "stubborn", "generous",
]
HOBBIES = [
    "reading old books", "walking by the river", "singing songs", "watching the stars",
    "growing flowers", "telling stories", "drawing maps", "collecting shells", "playing the violin",
    "feeding the birds", "making soup", "climbing trees",
]
ROUTINES = [
    "woke up early and opened the windows", "walked to work along the river", "fed the birds in the garden",
    "went to the market to buy bread", "drank a cup of tea and looked at the sky",
    "swept the floor and sang a little song", "wrote a letter to an old friend",
    "counted the boats in the harbour", "watered the plants by the door",
]
TIMES = [
    "One morning", "One cold evening", "Late one night", "On a rainy afternoon", "Early one spring day",
    "One warm summer day", "On the first day of winter", "One windy morning", "After a long week",
]
SPOTS = [  # (preposition, landmark)
    ("near", "the old bridge"), ("under", "the big oak tree"), ("behind", "the market"),
    ("on the steps of", "the library"), ("by", "the well"), ("next to", "the church"),
    ("at the end of", "the road"), ("on", "the beach"), ("beside", "the mill"),
    ("in front of", "the school"), ("near", "the fountain"),
]
WEATHER = [
    "The sun was shining.", "It was raining softly.", "A cold wind was blowing from the north.",
    "The sky was grey and heavy.", "Snow covered the roofs.", "The air smelled of rain and flowers.",
]
# object -> (how it looks, where it leads, how it ends)
OBJECTS = {
    "key": ("a small silver key", "It was old and a little rusty.",
            ["the key opened a tiny door in the garden wall", "the key belonged to the old clock tower",
             "the key opened a chest full of letters"]),
    "map": ("an old map", "It showed a path through the hills, marked with a red cross.",
            ["the map led them to a hidden spring in the hills", "the map showed the way to a forgotten garden",
             "the red cross marked the place where a lost bell was buried"]),
    "box": ("a wooden box", "Something inside it moved when it was shaken.",
            ["the box was full of seeds, and they planted them together", "inside the box was a music box that still played",
             "the box held the missing pieces of an old puzzle"]),
    "letter": ("a letter with no name on it", "The paper was yellow and the ink was faded.",
               ["the letter was written by the baker's grandmother", "the letter was an invitation to a party fifty years ago",
                "the letter told where a lost ring could be found"]),
    "bell": ("a tiny brass bell", "When it rang, every dog in the street began to bark.",
             ["the bell belonged to the goat of a farmer", "the bell was the one missing from the school door",
              "the bell was returned to the church, and it rang every evening"]),
    "kite": ("a red kite", "Its string was tangled and one corner was torn.",
             ["they mended the kite and flew it over the hills", "the kite belonged to a little boy who had cried all day",
              "the kite flew higher than any kite in the town"]),
    "coin": ("a golden coin", "On one side there was a ship, and on the other a crown.",
             ["the coin was given to the museum, which was very pleased", "the coin bought bread for the whole street",
              "the coin was part of a treasure that a sailor had lost"]),
    "hat": ("a green hat with a long feather", "It was far too big for anyone in the village.",
            ["the hat belonged to a travelling musician", "the hat was lost by a giant, or so the children said",
             "the hat won the prize at the summer fair"]),
}
QUESTIONS = [
    "What is this?", "Where did this come from?", "Who could have left this here?", "Is it yours?",
    "Should we keep it?", "What should we do now?",
]
REPLIES = [
    "I do not know, but let us find out", "I have never seen it before", "Maybe someone lost it",
    "We should ask around the town", "It looks very old to me", "Let us ask someone who knows",
]
HELPERS = ["the old woman at the bakery", "the teacher", "a fisherman on the pier", "the mayor", "a girl with a dog",
           "the man who sold apples", "the librarian"]
ENDINGS = [
    "From that day on, {sub} kept {obj_short} on the shelf above {pos} bed.",
    "After that, {name} and {friend} met every week to look for new adventures.",
    "{Sub} told the story to everyone who would listen.",
    "That night, {name} slept better than ever before.",
    "And every time {sub} walked past {landmark}, {sub} smiled.",
    "{Name} learned that small things can lead to big stories.",
]


def _weather_for(time: str) -> list[str]:
    if "winter" in time or "cold" in time:
        return [w for w in WEATHER if "Snow" in w or "cold" in w or "grey" in w]
    return [w for w in WEATHER if "Snow" not in w and ("summer" not in time or "rain" not in w)]


def _pronouns(sub: str) -> dict:
    return {"he": {"sub": "he", "obj": "him", "pos": "his"}, "she": {"sub": "she", "obj": "her", "pos": "her"}}[sub]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def story(rng) -> str:
    """One story (a paragraph of about 10 sentences) drawn with ``rng`` (``random.Random``)."""
    name, sub = rng.choice(HEROES)
    p = _pronouns(sub)
    friend, fsub = rng.choice([h for h in HEROES if h[0] != name])
    fp = _pronouns(fsub)
    animal = job = None
    if rng.random() < 0.25:
        animal = rng.choice(ANIMALS)
        size = rng.choice(["small", "little", "young", "old", "grey", "tiny"])
        who = f"{_article(size)} {size} {animal} called {name}"
    else:
        job = rng.choice(JOBS)
        who = f"{_article(job)} {job} named {name}"
    prep, place = rng.choice(PLACES)
    opening = rng.choice([
        f"Once upon a time, {prep} {place}, there lived {who}.",
        f"{_cap(prep)} {place} lived {who}.",
        f"There was once {who}, who lived {prep} {place}.",
    ])
    adj1, adj2 = rng.sample(ADJECTIVES, 2)
    age = rng.randint(2, 12) if animal else rng.randint(18, 80)
    key = rng.choice(sorted(OBJECTS))
    thing, detail, outcomes = OBJECTS[key]
    at, landmark = rng.choice(SPOTS)
    time = rng.choice(TIMES)
    helper = rng.choice([h for h in HELPERS if h != f"the {job}"])
    sentences = [
        opening,
        f"{name} was {age} years old, {adj1} and {adj2}, and {p['sub']} loved {rng.choice(HOBBIES)}.",
        f"Every day, {p['sub']} {rng.choice(ROUTINES)}.",
        f"{_cap(p['pos'])} best friend was {friend}, who lived {rng.randint(2, 12)} houses away.",
        f"{time}, {name} went out. {rng.choice(_weather_for(time))}",
        f"{_cap(at)} {landmark}, {p['sub']} found {thing}. {detail}",
        f"\"{rng.choice(QUESTIONS)}\" {name} asked {friend}.",
        f"\"{rng.choice(REPLIES)},\" said {friend}, and {fp['sub']} picked up the {key}.",
        f"They went to see {helper}, who looked at the {key} for a long time.",
    ]
    if rng.random() < 0.5:
        (at1, l1), (at2, l2) = rng.sample(SPOTS, 2)
        sentences.append(f"They searched {at1} {l1} and {at2} {l2} until the sun went down.")
    sentences.append(f"In the end, {rng.choice(outcomes)}.")
    ending = rng.choice(ENDINGS).format(
        sub=p["sub"], Sub=_cap(p["sub"]), pos=p["pos"], name=name, Name=name, friend=friend,
        obj_short=f"the {key}", landmark=landmark,
    )
    sentences.append(ending)
    return " ".join(sentences)


GENERATED_CHARS = 1_000_000


def generated_corpus(n_chars: int = GENERATED_CHARS, seed: int = 0) -> str:
    """Exactly ``n_chars`` characters of generated stories, separated by blank lines.

    Deterministic: the same ``(n_chars, seed)`` always gives the same text, and a
    shorter corpus is a prefix of a longer one with the same seed.
    """
    if not isinstance(n_chars, int) or n_chars < 0:
        raise ValueError(f"n_chars must be an integer >= 0, got {n_chars!r}")
    rng = random.Random(seed)
    parts, length = [], 0
    while length < n_chars:
        text = story(rng) + "\n\n"
        parts.append(text)
        length += len(text)
    return "".join(parts)[:n_chars]
