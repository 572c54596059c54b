import pytest

from tests.live.wsclient import serving


@pytest.fixture
def live(app):
    """The address of a real server of this test's app (the test is marked slow)."""
    with serving(app) as address:
        yield address
