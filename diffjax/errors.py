"""The error classes for bad user input, at the bottom of the import graph (every layer may raise them).

* ``InputError``: an input given as a path (a set to score, an OOD set, a text file) is missing,
  empty or unreadable, or an output path would overwrite something that is not a previous output.
* ``ConfigError``: a config field holds a value outside its valid range (raised before anything
  trains or loads; ``diffjax.tasks.fields`` builds the messages).
"""


class InputError(FileNotFoundError):
    """An input to score or an OOD set given as a path is missing, empty or unreadable, or a score
    output path that would overwrite something other than a previous score output."""


class ConfigError(ValueError):
    """A config field holds a value outside its valid range."""
