"""Search over memory-caching specs, scored on MQAR: the search-space file (`space`),
one candidate's score (`objective`), the Optuna study and its storage (`study`), the
worker process (`worker`), the Pareto report (`report`) and `mcgen search` (`cli`)."""
