"""The toy world: everything a test, ``hyperlora selfcheck`` or the bench needs to run in seconds.

- ``models``: tiny configs of every supported family, built with the real transformers classes;
- ``tokenizer``: a character-level tokenizer with a chat template;
- ``tasks``: the built-in suite of seeded text transformations and its splits;
- ``teacher``: a small Llama trained from scratch on that suite (a teacher that uses its prompt);
- ``reference``: random per-row adapters and the dense merged-weight and PEFT references.
"""
