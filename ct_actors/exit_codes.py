"""The process exit codes every command shares (documented in docs/operations.md): a script, a
systemd unit or an operator tells the outcomes apart by them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed (a check, a mismatch, an unexpected error)
EXIT_CONFIG = 2  # bad configuration or arguments: fix them; restarting will not help
EXIT_DATABASE = 3  # the database could not be used
EXIT_HELD = 4  # no verdict yet: probe/once DEFERRED, a drain that ended with work held back
EXIT_DEFERRED = EXIT_HELD
