"""Exit status, the same for every command and process (`trimmer --help` prints the policy)."""
from __future__ import annotations

import errno
import sys

from _trim.errors import ConfigError, TrimmerError

EXIT_OK = 0
EXIT_FAILED = 1   # the command ran, and what it was asked to do failed or was refused
EXIT_USAGE = 2    # the command line is wrong, or a server cannot start with its settings
EXIT_POLICY = """exit status (every command):
  0  done; a server stopped cleanly after SIGTERM or SIGINT
  1  failed or refused: an input file that cannot be read or fails its checks,
     a change the config store refuses, a config store that cannot be read
     or written (a full disk, a read-only filesystem, no permission), a
     signature that cannot be derived, a key file that exists already, an
     endpoint that is not healthy, `trimmer score` with a failed request or
     a failed model result
  2  usage: an unknown option, a missing argument, a value of the wrong form;
     a root or leaf that cannot start with the settings given (the message
     lists every problem; an endpoint or metrics port a live process holds)"""


def exit_for(command: str, exc: TrimmerError) -> int:
    """Say why ``command`` stopped, on stderr; its exit status under the policy."""
    print(f"trimmer {command}: {exc}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def exit_for_disk(command: str, where: str, exc: OSError) -> int:
    """Say, in one line, which path under ``where`` could not be read or
    written and why (ENOSPC, EROFS, EACCES, ...): no traceback; exit 1."""
    path = exc.filename if exc.filename is not None else "a file in it"
    cause = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    code = f" ({name})" if name else ""
    print(f"trimmer {command}: {where}: cannot read or write {path}: {cause}{code}",
          file=sys.stderr)
    return EXIT_FAILED
