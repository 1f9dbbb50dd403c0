"""mcgen: a compiler-style toolkit for Memory Caching (recurrent models with growing memory)."""

__version__ = "0.1.0"
