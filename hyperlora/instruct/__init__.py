"""The instruction suite for real LMs: IFEval-style verifiable instructions on everyday requests.

- ``verifiers``: ``verify(answer, params) -> bool`` per type (IFEval's semantics where it has them);
- ``languages``: which language a text is in, from built-in stop-word lists;
- ``rewriters``: turn a model's own answer into one that passes a verifier, changing it little;
- ``phrasings``: six wordings per type, the last held out;
- ``instructions``: the types (verifier, phrasings, parameter pools, rewriter, conflicts);
- ``questions``: the built-in pool of everyday requests, cut into train and unseen;
- ``suite``: examples and splits (``build_split``, ``as_records``, ``follows``).

The character-level toy suite (``hyperlora.toy.tasks``) stays for tests and selfcheck.
"""

from hyperlora.instruct.instructions import HELDOUT_TYPES, INSTRUCTION_TYPES, TRAIN_TYPES, get_type
from hyperlora.instruct.suite import SPLITS, Example, Instruction, as_records, build_split, follows, index_by_record

__all__ = [
    "HELDOUT_TYPES",
    "INSTRUCTION_TYPES",
    "TRAIN_TYPES",
    "SPLITS",
    "Example",
    "Instruction",
    "as_records",
    "build_split",
    "follows",
    "get_type",
    "index_by_record",
]
