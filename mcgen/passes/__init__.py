"""Passes over the graph IR: each module holds one rewrite (or check), IR -> IR.

Every pass returns a new graph and leaves its input untouched; `pipeline` runs them in
order. Modules are named after what they do, so `soup_to_grm.py` is where soup becomes grm.
"""
