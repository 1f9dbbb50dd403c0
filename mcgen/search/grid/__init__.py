"""The report of a study trained fairly (seeds, a learning-rate sweep): one cell per
(base, variant, width), its accuracy as mean +- standard deviation over seeds at its best
rate (cells), its tables (tables), plots (plots), what it cost, measured and extrapolated
to another space (cost), and grid.md, which gathers them (report).
"""
