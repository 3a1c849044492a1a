"""The policy file, read once and handed out: each area gets its own tables and parses them (edge: [[rule]]
and [registration]; defense: [detector], [prompts], [probing], [scoring]; inference: [admission];
accounts: [sign_in]). Policy is data: the file says what each level does, the areas apply it."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from floodwall.accounts.sign_in_codes import new_device_modes
from floodwall.config import ConfigError
from floodwall.defense.detector import DetectorPolicy
from floodwall.defense.probing import ProbingPolicy
from floodwall.defense.prompts import PromptPolicy
from floodwall.defense.scoring import ScoringPolicy
from floodwall.edge import policy as edge_policy
from floodwall.inference.terms import AdmissionPolicy

DEFAULT_POLICY = edge_policy.DEFAULT_POLICY
TABLES = frozenset({"rule", "admission", "registration", "detector", "prompts", "probing", "scoring", "sign_in"})


@dataclasses.dataclass(frozen=True)
class PolicyFile:
    edge: edge_policy.Policy
    admission: AdmissionPolicy
    detector: DetectorPolicy
    prompts: PromptPolicy
    probing: ProbingPolicy | None  # None: no behavioural probe detection
    scoring: ScoringPolicy | None  # None: requests are not scored
    # per level: a right password from a device new to the account signs in (allow), or also needs a code
    # sent to the account's e-mail (confirm)
    new_device: dict[str, str]

    @classmethod
    def load(cls, path: str | Path | None = None) -> PolicyFile:
        source = Path(path) if path else DEFAULT_POLICY
        try:
            data = tomllib.loads(source.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the edge policy {source}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return cls.from_data(data, str(source))

    @classmethod
    def from_data(cls, data: dict[str, Any], source: str) -> PolicyFile:
        unknown = set(data) - TABLES
        if unknown:
            raise ConfigError(f"{source}: unknown tables {', '.join(sorted(unknown))}")
        return cls(
            edge=edge_policy.Policy.from_data(data.get("rule", []), data.get("registration", {}), source),
            admission=AdmissionPolicy.from_data(data.get("admission", {}), f"{source} [admission]"),
            detector=DetectorPolicy.from_data(data.get("detector", {}), f"{source} [detector]"),
            prompts=PromptPolicy.from_data(data.get("prompts", {}), f"{source} [prompts]"),
            probing=ProbingPolicy.from_data(data["probing"], f"{source} [probing]") if "probing" in data else None,
            scoring=ScoringPolicy.from_data(data["scoring"], f"{source} [scoring]") if "scoring" in data else None,
            new_device=new_device_modes(data.get("sign_in", {}), f"{source} [sign_in]"),
        )
