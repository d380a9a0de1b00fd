"""Question tokenisation exactly as the reference VQA pipeline does it.

The reference's rules: lower-case; delete ``,`` and ``?``; ``'s`` becomes `` 's`` (a separate token); split on
whitespace. Nothing else is touched, so ``"what's"`` gives ``["what", "'s"]`` and ``"don't"`` stays one token.
"""

from __future__ import annotations


def tokenize(text: str) -> list[str]:
    """Split a question into tokens.

    >>> tokenize("What's on the man's plate, left?")
    ['what', "'s", 'on', 'the', 'man', "'s", 'plate', 'left']
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.split()
