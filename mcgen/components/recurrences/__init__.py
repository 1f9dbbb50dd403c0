"""The recurrences: how a memory is updated token by token, one module each."""
