"""Auditing a team's component config before deployment: the contract tree and what is wrong with it.

Pure functions over the JSON config (``ComponentModel`` dicts): nothing is instantiated and no provider
code runs (providers are located on disk and their source is read), so a config whose model clients need
API keys can be audited offline. Contracts are validated with
:meth:`AgentCapacity.model_validate`, and every error names the team, the member and the field.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._check import EXIT_FAILED, EXIT_OK, EXIT_USAGE, STDIN, CheckResult, check_report
from ._json import audit_to_dict, contract_to_dict, finding_to_dict
from ._model import Audit, FieldDerivation, Finding, MemberReport, TeamReport, UnusableConfig
from ._tree import MAX_NESTING, audit_config, load_config_file, parse_config

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_NESTING",
    "STDIN",
    "Audit",
    "CheckResult",
    "FieldDerivation",
    "Finding",
    "MemberReport",
    "TeamReport",
    "UnusableConfig",
    "audit_config",
    "audit_to_dict",
    "check_report",
    "contract_to_dict",
    "finding_to_dict",
    "load_config_file",
    "parse_config",
]
