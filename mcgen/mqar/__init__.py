"""MQAR (multi-query associative recall, as in Zoology): the data, a small model, a trainer.

One job per module, imported from there (nothing is re-exported here, so that the
module `mcgen.mqar.train` is never shadowed by its function `train`):
config.py, the settings (pydantic); data.py, the generator and its disk cache;
model.py, the language model and its mixers; train.py, the training loop.
"""
