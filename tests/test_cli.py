"""The command shell's own rules: how a SIGTERM becomes exit 75 whatever code it lands in."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from job.cli import _stop_on_sigterm
from job.errors import EXIT_TRANSIENT, Interrupted


def _loader_that_swallows_errors() -> None:
    """What transformers' AutoProcessor does: try a loader, catch any Exception, raise its own ValueError."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises Interrupted here
    except Exception:
        raise ValueError("Unrecognized processing class") from None


def test_a_sigterm_swallowed_by_library_code_still_stops_the_step_as_interrupted() -> None:
    """A SIGTERM during a model load came out as 'not a sentence-transformers model' and exit 2 (seen in
    the stop-in-each-step test): an orchestrator would not retry a run that only needed a retry."""
    stop, checkpointing = threading.Event(), threading.Event()
    with pytest.raises(Interrupted) as caught, _stop_on_sigterm(stop, checkpointing, "evaluate"):
        _loader_that_swallows_errors()
    assert caught.value.exit_code == EXIT_TRANSIENT
    assert isinstance(caught.value.__cause__, ValueError)


def test_an_error_without_a_sigterm_is_left_as_it_is() -> None:
    stop, checkpointing = threading.Event(), threading.Event()
    with pytest.raises(ValueError), _stop_on_sigterm(stop, checkpointing, "evaluate"):
        raise ValueError("a real bad model")
