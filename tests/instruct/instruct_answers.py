"""Realistic assistant answers written without any instruction, shared by the instruct suite's tests."""

from __future__ import annotations

# (request, answer): the kinds of answers a small instruct model gives, with lists, commas, digits.
PLAIN_ANSWERS: tuple[tuple[str, str], ...] = (
    (
        "Give me tips for sleeping better.",
        "Here are a few tips that can help you sleep better:\n\n"
        "1. Keep a regular schedule, even on weekends.\n"
        "2. Avoid caffeine after 2 p.m., since it can stay in your body for hours.\n"
        "3. Make your bedroom dark, quiet and cool.\n"
        "4. Put your phone away at least 30 minutes before bed.\n\n"
        "If you still have trouble sleeping, it may be worth talking to a doctor.",
    ),
    (
        "Explain how a refrigerator works.",
        "A refrigerator works by moving heat from the inside of the fridge to the outside. "
        "A liquid called a refrigerant flows through coils and evaporates, which absorbs heat and cools the air "
        "inside. The compressor then squeezes the gas, making it hot, and the coils on the back release that heat "
        "into the kitchen. This cycle repeats over and over, keeping your food cold and fresh.",
    ),
    (
        "Write a short note to my sister about the party on Saturday.",
        "Hi Anna,\n\nJust a quick reminder that the party is this Saturday at 7 pm at my place. "
        "Feel free to bring a friend, and let me know if you have any food allergies. "
        "I'm really looking forward to seeing you!\n\nLove,\nTom",
    ),
    (
        "What are the benefits of walking every day?",
        "Walking every day has many benefits:\n\n"
        "* **Better heart health:** it lowers blood pressure and improves circulation.\n"
        "* **Weight control:** a brisk 30-minute walk burns about 150 calories.\n"
        "* **Mood:** walking outside reduces stress and helps you think clearly.\n\n"
        "It is also free, simple and easy to fit into a busy day.",
    ),
    (
        "Summarize the history of the bicycle in simple terms.",
        "The first bicycle, called the draisine, appeared in Germany in 1817 and had no pedals. "
        "In the 1860s, French inventors added pedals to the front wheel. "
        "Later came the penny-farthing, with its huge front wheel, which was fast but dangerous. "
        "By the 1890s, the safety bicycle, with two equal wheels and a chain, made cycling popular around the world.",
    ),
    (
        "Why is the sky blue?",
        "The sky looks blue because of Rayleigh scattering. Sunlight contains all colours, "
        "but blue light has a shorter wavelength and is scattered much more by the gases in the air.",
    ),
)
