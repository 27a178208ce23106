"""The backends that run the command as a host process (process, landlock, bubblewrap), as
one parametrized fixture: import `backend` into a test module to run its tests on each."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available


def _process(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.process import ProcessBackend

    return ProcessBackend(runner=runner)


def _landlock(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.linux.landlock import LandlockBackend

    return LandlockBackend(runner=runner)


def _bubblewrap(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    return BubblewrapBackend(runner=runner)


@pytest.fixture(params=[_process, _landlock, _bubblewrap], ids=lambda make: make.__name__[1:])
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> Backend:
    make: Callable[[HelperProcessRunner], Backend] = request.param
    made = make(runner)
    require_available(made)
    return made
