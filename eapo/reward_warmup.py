"""Imported by the multiprocessing fork server (its preload list, set by ``eapo.reward``): runs one math-verify check
there, so that every reward worker forked from it starts with math-verify imported and its parser initialised."""

from eapo.reward import _warm_up

_warm_up()
