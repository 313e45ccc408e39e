"""Generated CRDs are structural apiextensions/v1 and match their source; schemas serve editors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from controller.api.v1alpha1 import KINDS
from controller.schemagen import PRINTER_COLUMNS, check_all, crd, render_all
from controller.sources import collect_paths
from controller.yamlio import load_documents
from tests.conftest import EXAMPLES, ROOT

_ALLOWED = {
    "type", "description", "properties", "required", "items", "additionalProperties",
    "enum", "format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
    "maxItems", "maxProperties", "default", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields", "nullable",
}


def _walk(node: dict[str, Any], path: str) -> list[str]:
    problems = []
    unknown = set(node) - _ALLOWED
    if unknown:
        problems.append(f"{path}: keywords not allowed in a structural schema: {unknown}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for name, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    for rule in node.get("x-kubernetes-validations", []):
        if set(rule) - {"rule", "message", "fieldPath", "reason", "messageExpression"}:
            problems.append(f"{path}: unexpected keys in validation rule {rule}")
    return problems


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_schema_is_structural(kind: str) -> None:
    doc = crd(kind)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert "$ref" not in json.dumps(schema) and "anyOf" not in json.dumps(schema)
    assert _walk(schema, kind) == []
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["categories"] == ["cadml"]
    assert doc["spec"]["names"]["shortNames"]


def _has_path(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for part in re.sub(r"\[\?\(.*?\)\]", "[]", json_path).strip(".").split("."):
        name = part.removesuffix("[]")
        if name == "metadata":
            return True
        if name not in node.get("properties", {}):
            return False
        node = node["properties"][name]
        if part.endswith("[]"):
            node = node["items"]
    return True


@pytest.mark.parametrize("kind", list(KINDS))
def test_printer_columns_point_at_declared_fields(kind: str) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for column in PRINTER_COLUMNS[kind]:
        assert _has_path(schema, column["jsonPath"]), column


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_status_field_is_declared(kind: str) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    declared = set(schema["properties"]["status"]["properties"])
    status_cls = KINDS[kind].model_fields["status"].annotation
    model_fields = {f.alias or n for n, f in
                    status_cls.__args__[0].model_fields.items()}  # type: ignore[union-attr]
    assert model_fields <= declared | {"observedGeneration", "conditions"}
    assert {"conditions", "observedGeneration"} <= declared


def test_descriptions_make_kubectl_explain_useful() -> None:
    schema = crd("RolloutPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"]
    spec = schema["properties"]["spec"]["properties"]
    assert "re-read" in spec["refreshSeconds"]["description"]


def test_generated_files_are_committed_and_current() -> None:
    assert check_all(ROOT) == []
    assert set(render_all()) >= {"crds/models.cadml.io.yaml",
                                 "charts/cadml/crds/models.cadml.io.yaml",
                                 "schemas/rolloutpolicy.schema.json"}


def test_gen_check_detects_drift(tmp_path: Path) -> None:
    for rel, text in render_all().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert check_all(tmp_path) == []
    (tmp_path / "crds/models.cadml.io.yaml").write_text("# edited by hand\n")
    (tmp_path / "schemas/model.schema.json").unlink()
    assert check_all(tmp_path) == ["crds/models.cadml.io.yaml", "schemas/model.schema.json"]


def test_json_schemas_accept_every_example() -> None:
    files, _ = collect_paths([str(EXAMPLES)], 10**7)
    checked = 0
    for f in files:
        docs, _ = load_documents(f.data.decode(), f.name)
        for d in docs:
            schema = json.loads((ROOT / "schemas" / f"{d.data['kind'].lower()}.schema.json")
                                .read_text())
            jsonschema.Draft202012Validator(schema).validate(d.data)
            checked += 1
    assert checked >= 20


def test_json_schema_refuses_unknown_fields_for_editors() -> None:
    schema = json.loads((ROOT / "schemas" / "model.schema.json").read_text())
    doc = yaml.safe_load((EXAMPLES / "tenants/globex-cad/fastener-lookup.yaml").read_text()
                         .split("---")[0])
    doc["spec"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(doc)
