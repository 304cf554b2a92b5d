"""User prompts of the text generation tasks (``masked_lm``, ``ar2diff``): a prompt longer than its
share of the static row is cut from the left (its last tokens, next to the output, survive) and the cut
is reported per prompt (printed, and ``"prompt_truncated": {"tokens_in", "tokens_kept"}`` in
generate.json; null when the prompt is whole). A prompt that leaves too few slots for the output is a
``ConfigError`` naming the prompt, its length, the room left and the field to change.
"""

from __future__ import annotations

from diffjax.tasks.fields import ConfigError


def short(text: str, n: int = 60) -> str:
    """``repr`` of ``text``, cut to ``n`` characters (for messages)."""
    return repr(text if len(text) <= n else text[:n] + "...")


def truncation(tokens_in: int, tokens_kept: int) -> dict | None:
    """The generate.json record of one prompt: None when whole."""
    tokens_in, tokens_kept = int(tokens_in), int(tokens_kept)
    return None if tokens_kept >= tokens_in else {"tokens_in": tokens_in, "tokens_kept": tokens_kept}


def note(cut: dict, hint: str) -> str:
    """The printed line of a cut prompt; ``hint`` says which field keeps more of it."""
    return (f"(prompt truncated: kept its last {cut['tokens_kept']} of {cut['tokens_in']} tokens to leave room for "
            f"the output; {hint})")


def no_room(index: int, prompt: str, tokens_in: int, detail: str) -> ConfigError:
    """The error of prompt ``index`` that leaves no room: ``detail`` names the room left and the field to change."""
    return ConfigError(f"prompt {index} {short(prompt)} is {int(tokens_in)} tokens: {detail}")
