"""Search over memory-caching specs: the search-space file (`space`) and the score of
one candidate spec on MQAR (`objective`)."""
