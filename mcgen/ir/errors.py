"""The error raised when a graph IR is malformed."""

from __future__ import annotations


class IRError(ValueError):
    """A graph IR that breaks an invariant: a cycle, a missing input, inconsistent attributes.

    Raised by `mcgen.passes.validate.validate_ir` and by consumers of the IR (the plan) when
    they are handed a graph they cannot interpret. The message names the node at fault.
    """
