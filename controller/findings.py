"""FieldError: one broken rule at one place, the currency of every validator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Which document an error is about: kind, tenant (namespace) and name."""

    kind: str = ""
    namespace: str = ""
    name: str = ""

    def render(self) -> str:
        if not self.kind:
            return "(document)"
        return f"{self.kind} {self.namespace or '-'}/{self.name or '-'}"


@dataclass(frozen=True, slots=True)
class FieldError:
    """A rule broken at a field path; validators return lists of these and never raise.

    `path` is the field path in the document (`spec.weights[1].weight`), `rule` a
    stable id (`policy.weights-sum-100`) that the CEL rules, the admission webhook
    and `cadml validate` share.
    """

    rule: str
    path: str
    message: str
    obj: ObjectRef = field(default_factory=ObjectRef)
    file: str = ""
    line: int | None = None
    document: int | None = None
    severity: Severity = "error"

    def at(self, *, file: str, line: int | None, document: int | None) -> FieldError:
        return replace(self, file=file, line=line, document=document)

    def render(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        doc = f" (document {self.document})" if self.document is not None else ""
        return (
            f"{where}{doc}: {self.severity}: {self.obj.render()}: {self.path or '(root)'}: "
            f"{self.message} [{self.rule}]"
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["obj"] = asdict(self.obj)
        return data


def errors_only(findings: list[FieldError]) -> list[FieldError]:
    return [f for f in findings if f.severity == "error"]
