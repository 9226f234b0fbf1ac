"""The base of every named error a user can cause and fix (bad flags, a missing key, a
corrupt store, a run directory that is not there...). Each package's own errors derive
from it, so the `evolve` CLI turns any of them into one line and exit code 1 without
knowing the packages' error classes. Programming errors stay ordinary exceptions and keep
their tracebacks. It lives in `arena`, the package every other one may import (and the
one Ray ships to worker nodes)."""


class EvolveError(Exception):
    """A failure the message explains and the user can fix."""
