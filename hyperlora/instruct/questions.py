"""A built-in pool of everyday user requests, made from templates and word lists (nothing downloaded).

``QUESTIONS`` holds every request in a fixed order; ``TRAIN_QUESTIONS`` and
``UNSEEN_QUESTIONS`` cut it in two by a stable checksum of the text
(``zlib.crc32(text) % UNSEEN_MODULUS == 0`` is the unseen side), so the cut never
depends on the seed, the process or the order in which the pool was built, and no
request is on both sides.
"""

from __future__ import annotations

import zlib

__all__ = ["TEMPLATES", "QUESTIONS", "TRAIN_QUESTIONS", "UNSEEN_QUESTIONS", "UNSEEN_MODULUS", "is_unseen"]

UNSEEN_MODULUS = 4  # one request in four is kept for evaluation

_RELATIONS = ("mother", "father", "sister", "brother", "best friend", "neighbour", "manager", "coworker",
              "teacher", "roommate", "grandmother", "landlord")
_NOTE_TOPICS = ("the party on Saturday", "my new job", "moving to another city", "the broken dishwasher",
                "our weekend plans", "a late birthday present", "the book I borrowed", "starting a garden",
                "the school concert", "a trip to the mountains")
_THINGS = ("a refrigerator", "a rainbow", "a bicycle gear system", "the internet", "a vaccine", "a solar panel",
           "a microwave oven", "a compass", "the stock market", "a hot air balloon", "photosynthesis",
           "a credit score", "a heat pump", "an electric car battery", "the water cycle", "a search engine",
           "a thermostat", "a camera lens", "recycling", "a lighthouse", "the human heart", "an airplane wing",
           "a coffee machine", "tides", "a music streaming service")
_ACTIVITIES = ("running a first marathon", "learning to cook", "saving money on groceries", "sleeping better",
               "studying for exams", "learning a new language", "working from home", "keeping houseplants alive",
               "hiking in hot weather", "planning a wedding", "starting a small business", "public speaking",
               "training a puppy", "reducing screen time", "cycling to work", "writing a resume",
               "making friends in a new city", "taking better photos with a phone", "camping with kids",
               "staying focused while reading")
_HABITS = ("drinking more water", "walking every day", "keeping a journal", "meditating", "reading before bed",
           "cooking at home", "getting up early", "stretching in the morning", "learning to play an instrument",
           "volunteering", "spending time outdoors", "eating more vegetables", "keeping a budget",
           "taking short breaks at work", "gardening")
_PLACES = ("a busy night market", "a quiet mountain village", "a public library", "a beach at sunrise",
           "an old train station", "a farmers market", "a rainforest", "a small island", "a snowy forest",
           "a modern art museum", "a desert at night", "a harbour town")
_POEM_TOPICS = ("autumn leaves", "the ocean", "a rainy afternoon", "friendship", "the first snow", "a city at night",
                "an old oak tree", "summer holidays", "the moon", "a cup of tea", "a lost key", "spring flowers")
_TASKS = ("fix a leaky faucet", "change a flat tire", "make a budget", "clean a cast iron pan", "set up a home Wi-Fi network",
          "bake bread", "write a cover letter", "prepare for a job interview", "organise a closet", "plant tomatoes",
          "paint a room", "back up my phone", "choose a good password", "brew good coffee", "unclog a drain",
          "start running", "make a paper airplane", "remove a coffee stain", "pack for a long flight",
          "negotiate a salary")
_MEALS = ("breakfast", "lunch", "dinner", "snack", "dessert")
_INGREDIENTS = ("eggs", "lentils", "spinach", "chicken", "rice", "potatoes", "mushrooms", "chickpeas", "apples", "tofu")
_HISTORY = ("the printing press", "the bicycle", "chocolate", "the Olympic Games", "paper money", "the telephone",
            "public libraries", "coffee", "the calendar", "trains")
_PAIRS = (("cats", "dogs"), ("tea", "coffee"), ("renting", "buying a home"), ("trains", "planes"),
          ("e-books", "paper books"), ("running", "swimming"), ("city life", "country life"),
          ("laptops", "desktop computers"), ("summer", "winter"), ("saving", "investing"))
_PRODUCTS = ("a reusable water bottle", "a pair of hiking boots", "a desk lamp", "a backpack", "a wireless speaker",
             "a coffee mug", "a houseplant", "a board game", "a rain jacket", "a notebook")
_CITIES = ("Paris", "Tokyo", "Lisbon", "New York", "Rome", "Kyoto", "Barcelona", "Cape Town", "Vienna", "Sydney")
_DAYS = (2, 3, 5)
_GIFTS = ("the birthday present", "helping me move", "the lovely dinner", "looking after my cat",
          "the book recommendation", "driving me to the airport")
_PURCHASES = ("a used car", "a laptop", "running shoes", "a mattress", "a bicycle", "a tent", "a smartphone",
              "a sofa", "a winter coat", "a kitchen knife")
_CHARACTERS = ("a lonely robot", "a curious cat", "an old fisherman", "a young inventor", "a talking tree",
               "a lost dog", "a shy dragon", "a baker")
_PLOTS = ("finds a map", "learns to swim", "makes a new friend", "gets lost in the city", "wins a prize",
          "discovers a secret garden")
_WHY = ("the sky is blue", "leaves change colour in autumn", "we need sleep", "bread rises", "ice floats",
        "cats purr", "the sea is salty", "we yawn", "onions make us cry", "stars twinkle")

# (template, slot values): every combination of the slot values is one request.
TEMPLATES: tuple[tuple[str, dict[str, tuple]], ...] = (
    ("Write a short note to my {a} about {b}.", {"a": _RELATIONS, "b": _NOTE_TOPICS}),
    ("Explain how {a} works.", {"a": _THINGS}),
    ("How does {a} work in simple terms?", {"a": _THINGS}),
    ("Give me tips for {a}.", {"a": _ACTIVITIES}),
    ("What should a beginner know about {a}?", {"a": _ACTIVITIES}),
    ("What are the benefits of {a}?", {"a": _HABITS}),
    ("How can I get into the habit of {a}?", {"a": _HABITS}),
    ("Describe {a} to someone who has never been there.", {"a": _PLACES}),
    ("Write a short poem about {a}.", {"a": _POEM_TOPICS}),
    ("How do I {a}?", {"a": _TASKS}),
    ("Suggest a {a} recipe with {b}.", {"a": _MEALS, "b": _INGREDIENTS}),
    ("Summarize the history of {a} in simple terms.", {"a": _HISTORY}),
    ("Compare {a} and {b}.", {"a": tuple(p[0] for p in _PAIRS), "b": tuple(p[1] for p in _PAIRS)}),
    ("Write a product description for {a}.", {"a": _PRODUCTS}),
    ("Plan a {a}-day trip to {b}.", {"a": _DAYS, "b": _CITIES}),
    ("Write a thank-you message to my {a} for {b}.", {"a": _RELATIONS, "b": _GIFTS}),
    ("What should I consider when buying {a}?", {"a": _PURCHASES}),
    ("Write a short story about {a} who {b}.", {"a": _CHARACTERS, "b": _PLOTS}),
    ("Why {a}?", {"a": _WHY}),
)


def _expand(template: str, slots: dict[str, tuple]) -> list[str]:
    # "Compare {a} and {b}" pairs values by position; every other template takes the product.
    if template.startswith("Compare"):
        return [template.format(a=a, b=b) for a, b in zip(slots["a"], slots["b"])]
    keys = sorted(slots)
    out = [template]
    for key in keys:
        out = [t.replace("{" + key + "}", str(v)) for t in out for v in slots[key]]
    return out


def _pool() -> tuple[str, ...]:
    seen: dict[str, None] = {}  # ordered and distinct
    for template, slots in TEMPLATES:
        for text in _expand(template, slots):
            seen.setdefault(text, None)
    return tuple(seen)


def is_unseen(question: str) -> bool:
    """``question`` is on the unseen side of the cut (decided by its text alone)."""
    return zlib.crc32(question.encode("utf-8")) % UNSEEN_MODULUS == 0


QUESTIONS: tuple[str, ...] = _pool()
TRAIN_QUESTIONS: tuple[str, ...] = tuple(q for q in QUESTIONS if not is_unseen(q))
UNSEEN_QUESTIONS: tuple[str, ...] = tuple(q for q in QUESTIONS if is_unseen(q))
