"""YAML documents of a GitOps tree whose versions point at real index artifacts."""

from __future__ import annotations

from controller.search.build import BuildResult


def version_doc(tenant: str, model: str, name: str, semver: str, stage: str,
                art: BuildResult, extra: str = "") -> str:
    """A ModelVersion document serving the real artifact `art`; `extra`: more spec lines."""
    return f"""apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata: {{name: {name}, namespace: {tenant}}}
spec:
  modelRef: {model}
  version: {semver}
  stage: {stage}
  artifact:
    uri: {art.manifest_path.as_uri()}
    sha256: {art.manifest_sha256}
    format: faiss-index
{extra}"""
