"""The search's own error for a request it cannot serve (bad study name, missing or
damaged study, unreachable database...): the command line reports its message alone."""


class SearchError(Exception):
    """A problem with the request or with the study's storage, said in one line."""
