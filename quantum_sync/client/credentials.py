"""Where the client's bearer token comes from, and how it stays valid.

Three sources, one interface (:class:`Credentials`):

- :class:`FixedToken` (``--token``): never changes. Once the server says it has expired
  or is invalid, one log line says so; callers then retry slowly.
- :class:`TokenFile` (``--token-file``): the file is read again when it changes (its
  stat is looked at every :data:`FILE_CHECK` seconds, and at once when the server
  refuses the token), so whatever writes the file renews the client's token.
- :class:`Login` (``--user NAME --password-file PATH``): the client logs in itself
  (``POST /api/v1/auth/login``), renews the token at :data:`RENEW_AT` of its life, and
  at once when the server answers ``AUTH_EXPIRED``.

A renewal changes only what the *next* request carries: requests in flight and the
open WebSocket keep going (the link sends the new token on it, see
:mod:`quantum_sync.client.realtime`). A request refused with a 401 asks
:meth:`Credentials.refresh` for a newer token and is sent once more with it.
"""

import os
import stat

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from quantum_sync.threads import ReactorThreads

#: A token is renewed after this share of its life has passed.
RENEW_AT = 2 / 3
#: Seconds between looks at a token file's stat.
FILE_CHECK = 5.0
#: Seconds before a login the server refused (wrong password, unknown user) is tried again.
LOGIN_RETRY = 60.0
#: A renewal that failed (server unreachable) is tried again after this many seconds at
#: most, or a quarter of what is left of the token's life, whichever is shorter.
RENEW_RETRY = 30.0


class CredentialsError(ValueError):
    """A password or token file that cannot be used (one line, for the start-up error)."""


def read_secret_file(path: str, option: str, private: bool) -> str:
    """The first line of ``path``, stripped; ``private``: refuse a file that group or
    others may read. Raises :class:`CredentialsError` naming ``option``."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the start
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise CredentialsError(f"{option} {path}: not a regular file")
            if private and mode & (stat.S_IRGRP | stat.S_IROTH):
                raise CredentialsError(
                    f"{option} {path}: readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                    f"chmod 600 it")
            raw = f.read(64 * 1024)
    except OSError as e:
        raise CredentialsError(f"{option} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"{option} {path}: not UTF-8 text") from None
    lines = text.splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise CredentialsError(f"{option} {path}: the file is empty")
    return value


class _Coalesced:
    """Runs ``make()`` (a Deferred) once at a time; everyone who asks while it runs gets
    its result."""

    def __init__(self, make):
        self._make = make
        self._waiters = None

    def __call__(self) -> defer.Deferred:
        waiter = defer.Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            defer.maybeDeferred(self._make).addBoth(self._done)
        else:
            self._waiters.append(waiter)
        return waiter

    def _done(self, result):
        waiters, self._waiters = self._waiters, None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class Credentials:
    """The token requests carry now (None: none), and how to get a newer one."""

    log = Logger()
    #: Where the token came from, and what to do when the server refuses it (for the log).
    source = "given"
    advice = "give a new one, or let the client log in itself (--user and --password-file); retrying slowly"

    def __init__(self, clock):
        self.clock = clock
        self.token = None
        self._listeners = []
        self._warned = None  # the token the last "refused" line was about

    def on_change(self, listener) -> None:
        """Call ``listener(token)`` whenever the token changes."""
        self._listeners.append(listener)

    def _set(self, token) -> None:
        if token != self.token:
            self.token = token
            for listener in list(self._listeners):
                listener(token)

    def start(self) -> None:
        """Begin watching (token file) or renewing (login)."""

    def stop(self) -> None:
        """Stop every timer."""

    async def current(self):
        """The token to send now (logging in first when needed)."""
        return self.token

    async def refresh(self, refused) -> bool:
        """The server refused ``refused`` (``AUTH_EXPIRED`` or ``AUTH_FAILED``): True when a
        different token is available now, else False (said once per token in the log)."""
        if self.token != refused:
            return True
        self._warn_refused()
        return False

    def _warn_refused(self):
        if self._warned != self.token:
            self._warned = self.token
            self.log.error("the server refused the token {source}; {advice}", source=self.source, advice=self.advice)


class NoCredentials(Credentials):
    """No token at all (a server without ``auth``)."""

    async def refresh(self, refused) -> bool:
        if self._warned is None:
            self._warned = "said"
            self.log.error("the server requires a token: give --token, --token-file, or --user with "
                           "--password-file; retrying slowly")
        return False


class FixedToken(Credentials):
    """``--token``: the same token for the life of the process."""

    source = "given with --token"

    def __init__(self, clock, token):
        super().__init__(clock)
        self.token = token


class TokenFile(Credentials):
    """``--token-file``: read again whenever the file changes."""

    advice = "write a new one into the file (it is read again when it changes); retrying slowly"

    def __init__(self, clock, path, token, run_in_thread=None):
        """``run_in_thread(f, *args)``: a Deferred of ``f(*args)`` run off the reactor (by
        default in ``clock``'s, the reactor's, thread pool)."""
        super().__init__(clock)
        self.path = path
        self.token = token
        self.source = f"in {path}"
        self._run_in_thread = run_in_thread if run_in_thread is not None else ReactorThreads(clock).defer
        self._seen = _file_identity(path)
        self._checker = None
        self.check = _Coalesced(self._check)

    def start(self):
        self._checker = task.LoopingCall(self.check)
        self._checker.clock = self.clock
        self._checker.start(FILE_CHECK, now=False).addErrback(
            lambda f: self.log.failure("checking {path} failed", f, path=self.path))

    def stop(self):
        if self._checker is not None and self._checker.running:
            self._checker.stop()

    def _check(self) -> defer.Deferred:
        """Read the file again if its stat changed (in a thread); never fails."""
        return self._run_in_thread(self._read_if_changed).addBoth(self._read_done)

    def _read_if_changed(self):
        seen = _file_identity(self.path)
        if seen == self._seen:
            return None
        self._seen = seen
        return read_secret_file(self.path, "--token-file", private=False)

    def _read_done(self, result):
        if isinstance(result, Failure):
            self.log.warn("cannot read the token file: {error}", error=result.getErrorMessage())
        elif result is not None and result != self.token:
            self.log.info("read a new token from {path}", path=self.path)
            self._set(result)

    async def refresh(self, refused) -> bool:
        await self.check()
        return await super().refresh(refused)


def _file_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Login(Credentials):
    """``--user``/``--password-file``: logs in, renews before expiry and on refusal.

    ``log_in(user, password)`` is the HTTP call (``ServerClient.log_in``): a Deferred
    firing with ``(token, life)``, ``life`` the seconds the server gives the token, or
    failing as the server's answers do (``ServerUnavailable``, ``RequestRefused``)."""

    def __init__(self, clock, user, password, log_in=None):
        super().__init__(clock)
        self.user = user
        self._password = password
        self.log_in = log_in
        self.source = f"of {user}"
        self.logins = 0
        self._login = _Coalesced(lambda: defer.ensureDeferred(self._do_login()))
        self._expires = None  # clock time the token runs out
        self._renewal = None
        self._refused = None  # (clock time, exception) of the last refused login
        self._renew_failures = 0  # renewals failed in a row
        self._stopped = False

    def __repr__(self):  # never the password
        return f"<Login {self.user}>"

    def stop(self):
        self._stopped = True
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()

    async def current(self):
        if self.token is None or self.clock.seconds() >= self._expires:
            await self._login()
        return self.token

    async def refresh(self, refused) -> bool:
        if self.token != refused:
            return True
        await self._login()
        return self.token != refused

    async def _do_login(self):
        if self._refused is not None:
            when, error = self._refused
            if self.clock.seconds() - when < LOGIN_RETRY:
                raise error
        try:
            token, life = await self.log_in(self.user, self._password)
        except Exception as e:
            if getattr(e, "status", None) in (400, 401, 403, 404):  # 404: a server without accounts
                self._refused = (self.clock.seconds(), e)
                self.log.error("login as {user} refused: {error}; trying again in {seconds:.0f} s",
                               user=self.user, error=str(e), seconds=LOGIN_RETRY)
            raise
        self._refused = None
        self._renew_failures = 0
        self.logins += 1
        life = max(float(life), 1.0)
        now = self.clock.seconds()
        self._expires = now + life
        self.log.info("logged in as {user}; the token lasts {life:.0f} s, renewed after {renew:.0f} s",
                      user=self.user, life=life, renew=life * RENEW_AT)
        self._set(token)
        self._schedule(life * RENEW_AT)

    def _schedule(self, delay):
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        if not self._stopped:
            self._renewal = self.clock.callLater(delay, self._renew)

    def _renew(self):
        self._renewal = None
        d = self._login()

        def failed(failure):
            # a quarter of what is left while the token lasts; once it has run out (a
            # server down for a while), doubling from 1 s to RENEW_RETRY, said once a streak
            left = self._expires - self.clock.seconds()
            retry = min(RENEW_RETRY, max(left / 4, 2.0 ** self._renew_failures))
            if not self._renew_failures:
                self.log.warn("renewing the token of {user} failed ({error}); trying again in {seconds:.0f} s,"
                              " then less and less often (up to every {cap:.0f} s) until it works",
                              user=self.user, error=failure.getErrorMessage(), seconds=retry, cap=RENEW_RETRY)
            self._renew_failures += 1
            self._schedule(retry)

        d.addErrback(failed)


def credentials_for(clock, token=None, token_file=None, user=None, password=None, run_in_thread=None) -> Credentials:
    """The credentials the options ask for: a login, a token file, a token, or none
    (``run_in_thread``: see :class:`TokenFile`)."""
    if user is not None:
        return Login(clock, user, password)
    if token_file is not None:
        return TokenFile(clock, token_file, token, run_in_thread)
    if token:
        return FixedToken(clock, token)
    return NoCredentials(clock)
