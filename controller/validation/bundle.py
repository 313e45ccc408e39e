"""Bundle: every resource the cross-object rules may look at, indexed for lookups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from controller.api.v1alpha1 import Model, ModelVersion, ReleaseRecord, Resource, RolloutPolicy
from controller.validation.parse import Loaded


@dataclass
class Bundle:
    """Resources grouped by tenant (namespace); later duplicates are kept aside."""

    items: list[Loaded] = field(default_factory=list)
    duplicates: list[tuple[Loaded, Loaded]] = field(default_factory=list)
    _by_key: dict[tuple[str, str, str], Loaded] = field(default_factory=dict)

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
        first = self._by_key.get(item.key)
        if first is not None:
            self.duplicates.append((first, item))
            return
        self._by_key[item.key] = item
        self.items.append(item)

    def get(self, kind: str, namespace: str, name: str) -> Loaded | None:
        return self._by_key.get((kind, namespace, name))

    def tenants(self) -> list[str]:
        return sorted({item.key[1] for item in self.items})

    def of_kind(self, kind: str, namespace: str | None = None) -> Iterator[Loaded]:
        for item in self.items:
            if item.key[0] == kind and (namespace is None or item.key[1] == namespace):
                yield item

    def models(self, ns: str | None = None) -> list[Model]:
        return [i.resource for i in self.of_kind("Model", ns) if isinstance(i.resource, Model)]

    def versions(self, ns: str | None = None) -> list[ModelVersion]:
        return [i.resource for i in self.of_kind("ModelVersion", ns)
                if isinstance(i.resource, ModelVersion)]

    def policies(self, ns: str | None = None) -> list[RolloutPolicy]:
        return [i.resource for i in self.of_kind("RolloutPolicy", ns)
                if isinstance(i.resource, RolloutPolicy)]

    def releases(self, ns: str | None = None) -> list[ReleaseRecord]:
        return [i.resource for i in self.of_kind("ReleaseRecord", ns)
                if isinstance(i.resource, ReleaseRecord)]

    def versions_of(self, ns: str, model_name: str) -> list[ModelVersion]:
        by_model: dict[str, list[ModelVersion]] = defaultdict(list)
        for v in self.versions(ns):
            by_model[v.spec.model_ref].append(v)
        return by_model.get(model_name, [])
