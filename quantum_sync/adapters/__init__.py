"""The one place each library's private details are used.

quantum-sync uses public APIs of Twisted, Autobahn and watchdog everywhere else. Where a
private detail earns a measured gain (or is the only way to a needed behaviour), it is
read here, in one module per library, with a test per adapter
(``tests/test_adapters_*.py``) that pins the behaviour relied on, so that a library upgrade
fails that test rather than a user's stream; setup.cfg pins those libraries to the
tested range. ``tests/test_private_names.py`` fails on a private name of another library
used anywhere else in the package.
"""
