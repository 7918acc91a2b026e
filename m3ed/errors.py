"""The kinds of failure, and the exit code each gives every command.

- A **data error** concerns one dialogue or utterance (a broken video, a bad annotation row). It is
  recorded in ``failures.jsonl`` and the rest of the batch goes on.
- A **configuration error** concerns the whole run (a model that cannot be loaded, an output
  directory that cannot be written, an option that makes no sense). The run stops before any work.
- A **resource error** (a full disk) stops the run; everything finished stays, and re-running
  the same command resumes.
"""
from __future__ import annotations

EXIT_OK = 0             # done
EXIT_DATA_FAILURES = 1  # done, but some dialogues or utterances failed (see failures.jsonl)
EXIT_USAGE = 2          # usage or configuration error: nothing was done, fix the command
EXIT_INTERNAL = 3       # internal error: a bug; please report it with the --debug traceback
EXIT_RESOURCES = 4      # out of resources (disk full): free them and re-run (it resumes)


class ConfigurationError(Exception):
    """The run cannot start or go on as configured; the message says what to change."""
