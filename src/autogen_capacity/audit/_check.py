"""The verdict of ``autogen-capacity check`` on one file, and the JSON report over several (``--json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._json import finding_to_dict
from ._model import Audit

STDIN = "<stdin>"
"""How a config read from stdin (``-``) is named in messages and reports."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""The command's exit statuses: all is well; the audit failed; a user mistake (unreadable config)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One file checked: its audit, or why it could not be audited."""

    path: str
    audit: Audit | None
    error: str | None
    """Why the file could not be audited (missing, not JSON, not a team config), as one line."""
    strict: bool
    """Whether warnings fail the check."""

    @property
    def status(self) -> int:
        """``EXIT_USAGE`` when unreadable, ``EXIT_FAILED`` on errors (or warnings when strict), else ``EXIT_OK``."""
        if self.audit is None:
            return EXIT_USAGE
        failed = bool(self.audit.errors) or (self.strict and bool(self.audit.warnings))
        return EXIT_FAILED if failed else EXIT_OK

    @property
    def teams(self) -> int:
        return len(list(self.audit.teams())) if self.audit is not None else 0

    @property
    def members(self) -> int:
        return sum(len(t.members) for t in self.audit.teams()) if self.audit is not None else 0


def check_report(results: list[CheckResult], *, strict: bool) -> dict[str, Any]:
    """``{"ok": bool, "strict": bool, "files": [{"path", "ok", "error", "teams", "members", "errors",
    "warnings", "findings"}, ...]}``, one entry per file in the order given."""
    return {
        "ok": all(r.status == EXIT_OK for r in results),
        "strict": strict,
        "files": [_file(r) for r in results],
    }


def _file(result: CheckResult) -> dict[str, Any]:
    audit = result.audit
    return {
        "path": result.path,
        "ok": result.status == EXIT_OK,
        "error": result.error,
        "teams": result.teams,
        "members": result.members,
        "errors": len(audit.errors) if audit is not None else 0,
        "warnings": len(audit.warnings) if audit is not None else 0,
        "findings": [finding_to_dict(f) for f in audit.findings] if audit is not None else [],
    }
