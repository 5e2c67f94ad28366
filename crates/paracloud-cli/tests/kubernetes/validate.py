"""Validates Kubernetes objects against the official OpenAPI schemas of several Kubernetes
versions (kubernetes-validate, strict: unknown fields are errors too), and custom resources
against their CustomResourceDefinition's own schema.

usage: validate.py OBJECTS.json [--crd CRD.json] [--versions 1.31,1.32,...]
OBJECTS.json is a List (`paracloud k8s render -o json`). Prints one line per object and
version checked, and every error; exits 1 on any error."""

import argparse
import json
import sys

import jsonschema
import kubernetes_validate


def crd_schemas(path):
    """(group, kind, version) -> the openAPIV3Schema of a served version."""
    schemas = {}
    if not path:
        return schemas
    with open(path) as f:
        crd = json.load(f)
    for item in crd.get("items", [crd]):
        spec = item["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                key = (spec["group"], spec["names"]["kind"], version["name"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("objects")
    parser.add_argument("--crd")
    parser.add_argument("--versions", default="1.31,1.32,1.33,1.34,1.35")
    args = parser.parse_args()
    with open(args.objects) as f:
        objects = json.load(f)["items"]
    custom = crd_schemas(args.crd)
    failures = 0
    checked = 0
    for obj in objects:
        name = f'{obj.get("kind")} {obj.get("metadata", {}).get("name")}'
        group, _, version = obj["apiVersion"].rpartition("/")
        key = (group, obj["kind"], version)
        if key in custom:
            errors = sorted(
                jsonschema.Draft202012Validator(custom[key]).iter_errors(obj),
                key=lambda e: list(e.path),
            )
            for error in errors:
                failures += 1
                print(f"{name} against its CRD: {'/'.join(map(str, error.path))}: {error.message}")
            checked += 1
            continue
        for k8s in args.versions.split(","):
            try:
                kubernetes_validate.validate(obj, k8s, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                failures += 1
                print(f"{name} against Kubernetes {k8s}: {'/'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failures += 1
                print(f"{name} against Kubernetes {k8s}: no schema: {e}")
    print(f"{checked} checks, {failures} errors")
    sys.exit(1 if failures or not checked else 0)


if __name__ == "__main__":
    main()
