"""The custom resources of cadml (group cadml.io): typed models, the schema's single source."""

from controller.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    Model,
    ModelVersion,
    ReleaseRecord,
    Resource,
    RolloutPolicy,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Model",
    "ModelVersion",
    "ReleaseRecord",
    "Resource",
    "RolloutPolicy",
]
