"""Search over memory-caching specs, scored on MQAR: the search-space file (`space`),
one candidate's score (`objective`), the Optuna study and its storage (`study`), a
trial's records in it (`trials`), the worker process (`worker`), the local run of N
workers (`local_run`), the Pareto report (`report`) and `mcgen search` (`cli`)."""
