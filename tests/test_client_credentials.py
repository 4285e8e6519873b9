"""Where the client's token comes from: a login renewed before expiry and on refusal, a
token file read again when it changes, a fixed token that has expired said once. Timers
run on a Clock; the HTTP parts are tested against real servers at the end."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from logcapture import LogCapture
from quantum_sync.client.credentials import (
    FILE_CHECK,
    LOGIN_RETRY,
    RENEW_RETRY,
    CredentialsError,
    FixedToken,
    Login,
    TokenFile,
    read_secret_file,
)
from quantum_sync.client.transfer import NotAuthorized, RequestRefused, ServerUnavailable


def now_in_thread(fn, *args):
    return defer.maybeDeferred(fn, *args)


class FakeLogins:
    """Stands in for ``ServerClient.log_in``: each call answers a new token living
    ``life`` seconds, or fails with ``error`` when set."""

    def __init__(self, life=300.0):
        self.life, self.calls, self.error = life, 0, None

    def __call__(self, user, password):
        assert (user, password) == ("alice", "wonderland")
        self.calls += 1
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed((f"token-{self.calls}", self.life))


def run(d):
    """The result of a Deferred that has fired (Clock-driven code never waits for I/O)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_login_renews_at_two_thirds_of_the_token_life():
    clock, logins = Clock(), FakeLogins(life=300.0)
    login = Login(clock, "alice", "wonderland", logins)
    changes = []
    login.on_change(changes.append)
    assert run(defer.ensureDeferred(login.current())) == "token-1"
    assert run(defer.ensureDeferred(login.current())) == "token-1"  # no second login
    clock.advance(199)
    assert logins.calls == 1
    clock.advance(1)
    assert (logins.calls, login.token, changes) == (2, "token-2", ["token-1", "token-2"])
    clock.advance(200)
    assert login.token == "token-3"
    login.stop()
    clock.advance(10_000)
    assert logins.calls == 3 and not clock.getDelayedCalls()


def test_a_refused_token_means_one_new_login_shared_by_every_caller():
    clock, logins = Clock(), FakeLogins()
    login = Login(clock, "alice", "wonderland", logins)
    run(defer.ensureDeferred(login.current()))
    pending = defer.Deferred()
    logins_answer = []

    def slow_login(user, password):
        logins_answer.append(user)
        return pending

    login.log_in = slow_login
    first = defer.ensureDeferred(login.refresh("token-1"))
    second = defer.ensureDeferred(login.refresh("token-1"))
    assert len(logins_answer) == 1  # one login for both
    pending.callback(("token-fresh", 300.0))
    assert run(first) is True and run(second) is True and login.token == "token-fresh"
    # a caller whose refused token is already replaced gets the new one without a login
    assert run(defer.ensureDeferred(login.refresh("token-1"))) is True and len(logins_answer) == 1


def test_an_expired_token_is_replaced_before_a_request_uses_it():
    clock, logins = Clock(), FakeLogins(life=30.0)
    login = Login(clock, "alice", "wonderland", logins)
    run(defer.ensureDeferred(login.current()))
    login.stop()  # no renewal timer: the request itself must notice
    clock.advance(31)
    assert run(defer.ensureDeferred(login.current())) == "token-2"


@pytest.mark.parametrize("error", [
    NotAuthorized(401, "AUTH_FAILED", "invalid username or password"),
    RequestRefused(404, "NOT_FOUND", "authentication is not configured on this server"),
])
def test_a_refused_login_is_not_tried_again_for_a_while(error):
    clock, logins = Clock(), FakeLogins()
    logins.error = error
    login = Login(clock, "alice", "wonderland", logins)
    with LogCapture() as log:
        for _ in range(5):
            with pytest.raises(type(error)):
                run(defer.ensureDeferred(login.current()))
        assert logins.calls == 1
        assert sum("login as alice refused" in line for line in log.text().splitlines()) == 1
    clock.advance(LOGIN_RETRY)
    logins.error = None
    assert run(defer.ensureDeferred(login.current())) == "token-2"


def test_a_renewal_that_fails_is_tried_again_before_the_token_runs_out():
    clock, logins = Clock(), FakeLogins(life=300.0)
    login = Login(clock, "alice", "wonderland", logins)
    run(defer.ensureDeferred(login.current()))
    logins.error = ServerUnavailable("connection refused")
    clock.advance(200)  # the renewal fails: 100 s left, tried again in 25 s
    assert logins.calls == 2 and login.token == "token-1"
    logins.error = None
    clock.advance(25)
    assert logins.calls == 3 and login.token == "token-3"


def test_renewals_during_a_long_outage_back_off_and_are_said_once():
    clock, logins = Clock(), FakeLogins(life=30.0)
    login = Login(clock, "alice", "wonderland", logins)
    run(defer.ensureDeferred(login.current()))
    logins.error = ServerUnavailable("connection refused")
    with LogCapture() as log:
        clock.advance(20)  # the first renewal fails; then the token runs out, the server still down
        for _ in range(300):
            clock.advance(1)
        failed = logins.calls - 1
        # every second would be 300 tries; doubling to RENEW_RETRY makes about a dozen
        assert 5 <= failed <= 20, failed
        assert sum("renewing the token of alice failed" in line for line in log.text().splitlines()) == 1
    logins.error = None
    clock.advance(RENEW_RETRY)
    assert login.token == f"token-{logins.calls}"


def test_the_password_never_shows(tmp_path):
    login = Login(Clock(), "alice", "wonderland", FakeLogins())
    assert "wonderland" not in repr(login)


def test_a_token_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "token"
    path.write_text("first\n")
    clock = Clock()
    tokens = TokenFile(clock, str(path), "first", run_in_thread=now_in_thread)
    changes = []
    tokens.on_change(changes.append)
    tokens.start()
    clock.advance(FILE_CHECK)
    assert tokens.token == "first" and changes == []
    path.write_text("second\n")
    clock.advance(FILE_CHECK)
    assert tokens.token == "second" and changes == ["second"]
    # on a refusal it is looked at at once, not at the next tick
    path.write_text("third, longer\n")
    assert run(defer.ensureDeferred(tokens.refresh("second"))) is True and tokens.token == "third, longer"
    tokens.stop()
    assert not clock.getDelayedCalls()


def test_an_expired_fixed_token_is_said_once(tmp_path):
    tokens = FixedToken(Clock(), "old")
    with LogCapture() as log:
        for _ in range(5):
            assert run(defer.ensureDeferred(tokens.refresh("old"))) is False
    lines = [line for line in log.text().splitlines() if "refused the token" in line]
    assert len(lines) == 1 and "--password-file" in lines[0]


def test_secret_files(tmp_path):
    path = tmp_path / "password"
    path.write_text("wonderland\nignored second line\n")
    os.chmod(path, 0o600)
    assert read_secret_file(str(path), "--password-file", private=True) == "wonderland"
    os.chmod(path, 0o640)
    with pytest.raises(CredentialsError, match="readable by group or others"):
        read_secret_file(str(path), "--password-file", private=True)
    with pytest.raises(CredentialsError, match="No such file"):
        read_secret_file(str(tmp_path / "missing"), "--password-file", private=True)
    os.mkfifo(tmp_path / "fifo", 0o600)  # never opened for reading: it would block
    with pytest.raises(CredentialsError, match="not a regular file"):
        read_secret_file(str(tmp_path / "fifo"), "--password-file", private=True)


@pytest_twisted.ensureDeferred
async def test_a_request_refused_as_expired_is_sent_once_more_with_the_new_token(reactor, tmp_path):
    from twisted.internet.task import deferLater

    from quantum_sync.client.transfer import ServerClient
    from support import start_server
    from test_e2e_tls_auth import log_in, short_lived_auth

    running = await start_server(reactor, tmp_path, auth=short_lived_auth(tmp_path, 1))
    client = None
    try:
        old = await log_in(reactor, running)
        path = tmp_path / "token"
        path.write_text(old)
        tokens = TokenFile(reactor, str(path), old)  # not started: only a refusal makes it look
        client = ServerClient(reactor, running.url, "c", tokens)
        assert await client.list() == []
        await deferLater(reactor, 1.2, lambda: None)  # the old token's life
        path.write_text(await log_in(reactor, running) + "\n")
        assert await client.list() == []  # refused as expired, then sent with the file's new token
        assert tokens.token != old
        await deferLater(reactor, 1.2, lambda: None)
        with pytest.raises(NotAuthorized, match="AUTH_EXPIRED"):
            await client.list()  # nothing newer in the file: the refusal stands
    finally:
        if client is not None:
            await client.close()
        await running.stop()
