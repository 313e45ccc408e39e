"""A GitOps tree of one model whose versions point at real index artifacts, committed to a
real Git repository: the fixture of the tests that reconcile in Git mode and serve."""

from __future__ import annotations

import shutil
from pathlib import Path

from controller.search.build import BuildResult
from tests.conftest import git

# canary analysis that aborts a canary failing more than 10 % of 20+ runs, at once
ANALYSIS = """  analysis:
    metrics:
      - name: success_rate
        min: 0.9
    minSampleSize: 20
    failureLimit: 1
    windowSeconds: 3600
"""


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


def model_tree(tenant: str, model: str, versions: list[str], weights: list[tuple[str, int]],
               refresh_seconds: int, extra: str = "") -> str:
    """The Model, its version documents and a RolloutPolicy with these weights; `extra`:
    more policy spec lines (e.g. ANALYSIS)."""
    rows = "".join(f"    - version: {v}\n      weight: {w}\n" for v, w in weights)
    return "---\n".join([f"""apiVersion: cadml.io/v1alpha1
kind: Model
metadata: {{name: {model}, namespace: {tenant}}}
spec: {{modelKey: {model}, provider: acme, displayName: Parts}}
""", *versions, f"""apiVersion: cadml.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: {model}, namespace: {tenant}}}
spec:
  modelRef: {model}
  weights:
{rows}  refreshSeconds: {refresh_seconds}
{extra}"""])


def canary_tree(tenant: str, model: str, stable: BuildResult, canary: BuildResult,
                canary_similarity: float, refresh_seconds: int, extra: str) -> str:
    """STABLE 1.0.0 (similarity 0.3) and CANARY 1.1.0 (`canary_similarity`: near 1 makes
    its runs fail their threshold) at 70/30, the policy with `extra` lines (analysis,
    steps): the governance loop's tree."""
    def version(semver: str, stage: str, art: BuildResult, sim: float) -> str:
        return version_doc(tenant, model, f"{model}-{semver.replace('.', '-')}", semver,
                           stage, art, f"  thresholdDefaults: {{similarity: {sim}}}\n")
    return model_tree(tenant, model, [version("1.0.0", "STABLE", stable, 0.3),
                                      version("1.1.0", "CANARY", canary, canary_similarity)],
                      [("1.0.0", 70), ("1.1.0", 30)], refresh_seconds, extra)


def copy_artifacts(root: Path, index: BuildResult, names: list[str]) -> list[BuildResult]:
    """One copy of the built index per name, under `root`, each its own artifact."""
    out = []
    for name in names:
        shutil.copytree(index.manifest_path.parent, root / name)
        out.append(BuildResult(root / name / "manifest.json", index.manifest_sha256, 0, []))
    return out


def commit_tree(root: Path, model: str, tree: str) -> Path:
    """A new Git repository at root/gitops with `tree` as models/<model>.yaml, committed."""
    repo = root / "gitops"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / f"{model}.yaml").write_text(tree)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"{model}")
    return repo
