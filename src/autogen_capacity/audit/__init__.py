"""Auditing a team's component config before deployment: the contract tree and what is wrong with it.

Pure functions over the JSON config (``ComponentModel`` dicts): nothing is instantiated, so a config whose
model clients need API keys can be audited offline. Contracts are validated with
:meth:`AgentCapacity.model_validate`, and every error names the team, the member and the field.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._json import audit_to_dict, contract_to_dict
from ._model import Audit, FieldDerivation, Finding, MemberReport, TeamReport, UnusableConfig
from ._tree import audit_config, load_config_file

__all__ = [
    "Audit",
    "FieldDerivation",
    "Finding",
    "MemberReport",
    "TeamReport",
    "UnusableConfig",
    "audit_config",
    "audit_to_dict",
    "contract_to_dict",
    "load_config_file",
]
