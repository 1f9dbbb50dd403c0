"""The aggregations: how a token combines its memories' reads, one module each."""
