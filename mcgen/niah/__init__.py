"""A single-needle retrieval probe (S-NIAH-like) beside MQAR: one key and its value hidden
in filler, the key asked for again at the end, tested at lengths past the training one.

config.py, the settings (pydantic); data.py, the generator. Training uses MQAR's model
and trainer (mcgen.mqar.model, mcgen.mqar.train): the layout is the same, inputs and
labels [N, T] with -100 where a position is not scored.
"""
