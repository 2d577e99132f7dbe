"""Short dialogues with a summary that a template determines (notebook 10's summarization lab).

Two or three people talk for a few turns: they arrange a meeting (and may move it), plan
who brings what to a party, look for something lost, or say they are running late. The
summary states the outcome in the third person ("anna and ben will meet at the cinema on
saturday ."), so copying a turn is not enough: a counter-proposal changes the day, "i"
becomes a name, a refusal changes the whole sentence. Each turn has several phrasings and
some dialogues carry a turn of small talk that the summary leaves out.

Everything is lower case with punctuation as separate words (a word tokenizer suffices).
``generate_dialogues(n, seed)`` is deterministic; ``train_test_split`` gives held-out
dialogues whose text never occurs in the training set, drawn the same way (the same
names, scenarios and lengths). ``shifted_dialogues(n, seed)`` are held out further: other
names (``HELD_OUT_NAMES``), other topics (lending something, helping with a move) and
longer, with small talk before and after the business.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from course_lib import checks

NAMES = ["anna", "ben", "carla", "david", "emma", "felix", "greta", "hugo", "ida", "jonas", "lena", "max"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
PLACES = ["the cafe", "the park", "the cinema", "the station", "the library", "the gym", "the museum"]
FOOD = ["the cake", "the salad", "some drinks", "the bread", "some fruit", "the cheese", "the pizza"]
THINGS = [("keys", True), ("glasses", True), ("phone", False), ("wallet", False), ("umbrella", False),
          ("bag", False), ("book", False)]  # (thing, plural)
ROOMS = ["the kitchen", "the car", "the hall", "the office", "the garden", "the bedroom"]
VEHICLES = ["train", "bus", "tram"]
MINUTES = ["five", "ten", "fifteen", "twenty", "thirty"]
SMALL_TALK = [
    ("how are you ?", "fine , thanks ."), ("nice weather today .", "yes , finally some sun ."),
    ("did you see the game ?", "no , i missed it ."), ("i am so tired today .", "me too , long week ."),
]
SCENARIOS = ("meet", "party", "lost", "late")
HELD_OUT_NAMES = ["olga", "paul", "rita", "sami", "tara", "umar", "vera", "yuki"]
HELD_OUT_SCENARIOS = ("borrow", "move")


@dataclass(frozen=True)
class Dialogue:
    turns: tuple[tuple[str, str], ...]  # (speaker, utterance)
    summary: str
    scenario: str

    @property
    def text(self) -> str:
        """One line per turn: ``name : utterance``."""
        return "\n".join(f"{who} : {said}" for who, said in self.turns)


def _meet(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    day, place = rng.choice(DAYS), rng.choice(PLACES)
    turns = [(a, rng.choice([f"shall we meet on {day} at {place} ?",
                             f"do you want to meet at {place} on {day} ?",
                             f"how about {place} on {day} ?"]))]
    answer = rng.random()
    if answer < 0.4:
        turns.append((b, rng.choice([f"{day} is perfect , see you at {place} .", "yes , good idea !",
                                     f"sure , {day} works for me ."])))
        return turns, f"{a} and {b} will meet at {place} on {day} ."
    if answer < 0.8:
        new = rng.choice([d for d in DAYS if d != day])
        turns.append((b, rng.choice([f"{day} is bad for me . what about {new} ?",
                                     f"i can not on {day} , but {new} is fine .",
                                     f"sorry , i am busy on {day} . {new} ?"])))
        turns.append((a, rng.choice([f"ok , {new} then .", f"{new} is good , see you .", "fine with me ."])))
        return turns, f"{a} and {b} will meet at {place} on {new} ."
    turns.append((b, rng.choice(["sorry , i have no time this week .", "i can not , i am away all week ."])))
    turns.append((a, rng.choice(["no problem , next time .", "ok , maybe next week ."])))
    return turns, f"{b} can not meet {a} this week ."


def _party(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    day = rng.choice(DAYS)
    x, y = rng.sample(FOOD, 2)
    turns = [(a, rng.choice([f"my party is on {day} . who brings what ?",
                             f"party at my place on {day} ! can you bring something ?"])),
             (b, rng.choice([f"i will bring {x} .", f"i can bring {x} .", f"{x} from me ."]))]
    if rng.random() < 0.7:
        turns.append((c, rng.choice([f"then i bring {y} .", f"i will bring {y} .", f"and i can bring {y} ."])))
        turns.append((a, rng.choice(["great , thanks !", "perfect , see you .", "thank you both !"])))
        return turns, f"{b} will bring {x} and {c} will bring {y} to the party of {a} on {day} ."
    turns.append((c, rng.choice([f"sorry , i can not come on {day} .", "i am away , sorry ."])))
    turns.append((a, rng.choice(["what a pity .", "ok , next time ."])))
    return turns, f"{b} will bring {x} to the party of {a} on {day} , {c} can not come ."


def _lost(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    thing, plural = rng.choice(THINGS)
    it, are = ("they", "are") if plural else ("it", "is")
    them = "them" if plural else "it"
    turns = [(a, rng.choice([f"have you seen my {thing} ?", f"i can not find my {thing} .",
                             f"where {are} my {thing} ?"]))]
    if rng.random() < 0.7:
        room = rng.choice(ROOMS)
        turns.append((b, rng.choice([f"yes , {it} {are} in {room} .", f"i saw {them} in {room} .",
                                     f"look in {room} ."])))
        turns.append((a, rng.choice(["thanks !", f"found {them} , thank you .", "oh , of course ."])))
        return turns, f"the {thing} of {a} {are} in {room} ."
    turns.append((b, rng.choice(["no , sorry .", "no idea , ask " + c + " .", f"i have not seen {them} ."])))
    return turns, f"{b} does not know where the {thing} of {a} {are} ."


def _late(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    vehicle, minutes = rng.choice(VEHICLES), rng.choice(MINUTES)
    turns = [(a, rng.choice([f"i am running late , the {vehicle} is delayed .",
                             f"my {vehicle} is late , sorry .", f"the {vehicle} has not come yet ."])),
             (b, rng.choice(["no problem . how late ?", "ok , how long ?", "when will you be here ?"])),
             (a, rng.choice([f"about {minutes} minutes .", f"{minutes} minutes , i think .",
                             f"in {minutes} minutes ."]))]
    return turns, f"{a} will be {minutes} minutes late because of the {vehicle} ."


def _borrow(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    thing, plural = rng.choice(THINGS)
    them = "them" if plural else "it"
    turns = [(a, rng.choice([f"can i borrow your {thing} ?", f"could you lend me your {thing} ?"]))]
    if rng.random() < 0.6:
        day = rng.choice(DAYS)
        turns.append((b, rng.choice([f"sure , you can keep {them} until {day} .",
                                     f"yes , but i need {them} back on {day} ."])))
        turns.append((a, rng.choice(["great , thanks !", "deal ."])))
        return turns, f"{b} will lend the {thing} to {a} until {day} ."
    turns.append((b, rng.choice([f"sorry , i need {them} myself .", "no , not this time ."])))
    return turns, f"{b} will not lend the {thing} to {a} ."


def _move(rng: random.Random, a: str, b: str, c: str) -> tuple[list, str]:
    day = rng.choice(DAYS)
    turns = [(a, rng.choice([f"i move on {day} . can you help me ?", f"could you help me move on {day} ?"]))]
    if rng.random() < 0.6:
        turns.append((b, rng.choice(["of course , i will be there .", f"yes , {day} is fine ."])))
        turns.append((c, rng.choice(["me too , i bring my car .", "i can come as well ."])))
        return turns, f"{b} and {c} will help {a} move on {day} ."
    turns.append((b, rng.choice([f"sorry , i work on {day} .", "i can not , sorry ."])))
    return turns, f"{b} can not help {a} move on {day} ."


_MAKERS = {"meet": _meet, "party": _party, "lost": _lost, "late": _late, "borrow": _borrow, "move": _move}


def dialogue(rng: random.Random, names=NAMES, scenarios=SCENARIOS, chatty: bool = False) -> Dialogue:
    """One random dialogue with its summary. Small talk, which the summary leaves out, comes
    first in 30% of the dialogues; ``chatty``: always, and again at the end."""
    scenario = rng.choice(scenarios)
    a, b, c = rng.sample(names, 3)
    turns, summary = _MAKERS[scenario](rng, a, b, c)
    if chatty:
        (q, r), (q2, r2) = rng.sample(SMALL_TALK, 2)
        turns = [(b, q), (a, r)] + turns + [(c, q2), (b, r2)]
    elif rng.random() < 0.3:
        q, r = rng.choice(SMALL_TALK)
        turns = [(b, q), (a, r)] + turns
    return Dialogue(tuple(turns), summary, scenario)


def generate_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    """``n`` random dialogues, the same for the same seed."""
    checks.count("n", n, minimum=0)
    rng = random.Random(seed)
    return [dialogue(rng) for _ in range(n)]


def train_test_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Dialogue], list[Dialogue]]:
    """Training dialogues and *new* held-out ones (no held-out text occurs in the training
    set, and none is repeated within it)."""
    checks.count("n_test", n_test, minimum=0)
    train = generate_dialogues(n_train, seed)
    seen = {d.text for d in train}
    rng = random.Random(seed + 1_000_003)
    test: list[Dialogue] = []
    for _ in range(100 * n_test + 1000):
        if len(test) == n_test:
            break
        d = dialogue(rng)
        if d.text not in seen:
            seen.add(d.text)
            test.append(d)
    if len(test) < n_test:
        raise ValueError(f"n_test={n_test}: only {len(test)} dialogues differ from the {n_train} training "
                         "ones; ask for fewer.")
    return train, test


def shifted_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    """``n`` dialogues unlike the training ones in names (``HELD_OUT_NAMES``), topics
    (``HELD_OUT_SCENARIOS``) and length (small talk before and after); the same for the same seed."""
    checks.count("n", n, minimum=0)
    rng = random.Random(seed + 2_000_003)
    return [dialogue(rng, HELD_OUT_NAMES, HELD_OUT_SCENARIOS, chatty=True) for _ in range(n)]
