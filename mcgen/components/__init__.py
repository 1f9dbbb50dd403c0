"""Components: each recurrence, aggregation and segmentation, one module each.

`base` holds what a component declares, `fields` the optional spec fields some of them
read, and `registry` lists them all and answers lookups by name.
"""
