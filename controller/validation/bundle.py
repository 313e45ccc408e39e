"""Bundle: every resource the cross-object rules may look at, indexed for lookups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from controller.api.v1alpha1 import Model, ModelVersion, ReleaseRecord, Resource, RolloutPolicy
from controller.validation.parse import Loaded


@dataclass
class Bundle:
    """Resources indexed by identity, by (kind, tenant) and versions by (tenant, model).

    A second object with the identity of an earlier one is kept aside in
    `duplicates`, for the `meta.duplicate-object` rule.
    """

    items: list[Loaded] = field(default_factory=list)
    duplicates: list[tuple[Loaded, Loaded]] = field(default_factory=list)
    _by_key: dict[tuple[str, str, str], Loaded] = field(default_factory=dict)
    _by_kind: dict[tuple[str, str], list[Resource]] = field(
        default_factory=lambda: defaultdict(list))
    _versions_of: dict[tuple[str, str], list[ModelVersion]] = field(
        default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, loaded: Iterable[Loaded]) -> Bundle:
        bundle = cls()
        for item in loaded:
            bundle.add(item)
        return bundle

    @classmethod
    def of_resources(cls, resources: Iterable[Resource]) -> Bundle:
        return cls.of(Loaded(r, None) for r in resources)

    def add(self, item: Loaded) -> None:
        key = item.key
        first = self._by_key.get(key)
        if first is not None:
            self.duplicates.append((first, item))
            return
        self._by_key[key] = item
        self.items.append(item)
        kind, ns, _ = key
        self._by_kind[(kind, ns)].append(item.resource)
        self._by_kind[(kind, "*")].append(item.resource)
        if isinstance(item.resource, ModelVersion):
            self._versions_of[(ns, item.resource.spec.model_ref)].append(item.resource)

    def get(self, kind: str, namespace: str, name: str) -> Loaded | None:
        return self._by_key.get((kind, namespace, name))

    def tenants(self) -> list[str]:
        return sorted({ns for (_, ns) in self._by_kind if ns != "*"})

    def _of(self, kind: str, ns: str | None) -> list[Resource]:
        return self._by_kind.get((kind, "*" if ns is None else ns), [])

    def models(self, ns: str | None = None) -> list[Model]:
        return [r for r in self._of("Model", ns) if isinstance(r, Model)]

    def versions(self, ns: str | None = None) -> list[ModelVersion]:
        return [r for r in self._of("ModelVersion", ns) if isinstance(r, ModelVersion)]

    def policies(self, ns: str | None = None) -> list[RolloutPolicy]:
        return [r for r in self._of("RolloutPolicy", ns) if isinstance(r, RolloutPolicy)]

    def releases(self, ns: str | None = None) -> list[ReleaseRecord]:
        return [r for r in self._of("ReleaseRecord", ns) if isinstance(r, ReleaseRecord)]

    def versions_of(self, ns: str, model_name: str) -> list[ModelVersion]:
        return list(self._versions_of.get((ns, model_name), []))
