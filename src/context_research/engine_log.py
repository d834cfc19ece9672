"""What an engine's log says about why it failed or died."""

from __future__ import annotations

import re
import signal

_ERROR_LINE = re.compile(r"\b\w*(?:Error|Exception)\b:\s|out of memory", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^(?:\([^)]*\)\s+)?(?:[A-Z]+\s+\d\d-\d\d \d\d:\d\d:\d\d\s+\[[^\]]*\]\s*)?")
_WARNING_LINE = re.compile(r"\b(?:WARNING|INFO|DEBUG)\b \d")  # vLLM's "LEVEL MM-DD" prefix
# vLLM's wrappers around the root cause ("See root cause above"): kept only if nothing else is.
_WRAPPER_LINE = re.compile(r"initialization failed|See (?:stack trace|root cause)", re.IGNORECASE)


def engine_error_lines(log_text: str, n: int = 3) -> str:
    """The engine's reason for failing: the last ``n`` distinct "SomethingError: message" lines of
    its log, root causes preferred over vLLM's "initialization failed" wrappers; " | "-joined."""
    found: list[str] = []
    for line in (log_text or "").splitlines():
        if not _ERROR_LINE.search(line) or _WARNING_LINE.search(line):
            continue
        line = _LOG_PREFIX.sub("", line.strip())  # the same error is logged with and without a prefix
        if line not in found:
            found.append(line)
    causes = [line for line in found if not _WRAPPER_LINE.search(line)]
    return " | ".join((causes or found)[-n:])


def exit_description(returncode: int, log_text: str) -> str:
    """Why an engine whose server exited with ``returncode`` died, in one line: the signal that
    killed it (whose sender its log cannot name: its own error lines would be earlier, unrelated
    requests' errors), or its exit code and the error lines at the end of its log."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return (f"engine died: its server was killed by {name}"
                + (" (the kernel's OOM killer, or another process)" if name == "SIGKILL" else ""))
    tail = "\n".join((log_text or "").splitlines()[-200:])
    errors = engine_error_lines(tail)
    return f"engine died (exit code {returncode}): " + (errors or "its log ends without an error line")
