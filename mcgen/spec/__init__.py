"""Specs: the YAML a user writes, validated into a `Spec`."""

from mcgen.spec.loader import LoadedSpec, SpecError, SpecProblem, load_spec, parse_spec, spec_hash
from mcgen.spec.schema import Spec

__all__ = ["LoadedSpec", "Spec", "SpecError", "SpecProblem", "load_spec", "parse_spec", "spec_hash"]
