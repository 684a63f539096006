#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, for scripts/check-chart.sh.

  validate_k8s.py manifests --kube-version 1.33 FILE...
      Every object of a rendered chart against the Kubernetes OpenAPI schemas of that version
      (kubernetes-validate, strict: unknown fields are errors), ServiceMonitors against the
      subset of monitoring.coreos.com/v1 the chart uses, then the references between objects
      (Service -> pods and their port names, ServiceMonitor -> Service port, workload ->
      ServiceAccount and ConfigMap, binding -> role, no two objects with one name).

  validate_k8s.py custom --crds DIR --kube-version 1.33 FILE...
      Custom resources (TrainingJob, EnergyPolicy) against the openAPIV3Schema of the CRDs in
      DIR, as an API server with strict field validation would check them (unknown fields are
      errors, `nullable`, int-or-string), then the schema's CEL rules (x-kubernetes-validations)
      with each rule's message; built-in kinds in the same files as above.

  validate_k8s.py crds --crds DIR --expect trainingjobs.offpeak.dev ...
      The CRDs named are present in DIR.

  validate_k8s.py readme --values values.yaml --readme README.md
      The README's values table names every key of values.yaml, and only those.

Exits 1 and names every object and field that failed. CEL rules are evaluated with the
`cel` module (common-expression-language); transition rules (those reading `oldSelf`) need an
update, so they are counted and skipped.
"""

import argparse
import copy
import glob
import os
import re
import sys

import cel
import jsonschema
import kubernetes_validate
import yaml

# The subset of monitoring.coreos.com/v1 ServiceMonitor the chart renders (field names from the
# Prometheus Operator API reference). Its CRD is not bundled with kubernetes-validate, so this
# checks the chart's own use of it: known fields only, with the right types.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}

WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}


class Loader(yaml.SafeLoader):
    """YAML as the API server reads it here: timestamps stay strings (RFC 3339 fields are
    `type: string, format: date-time` in the schemas), not Python datetimes."""


Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Failures:
    """Collects every failure so that one run reports them all."""

    def __init__(self):
        self.messages = []

    def add(self, where, message):
        self.messages.append(f"{where}: {message}")

    def report(self, what):
        for m in self.messages:
            print(f"ERROR {m}", file=sys.stderr)
        if self.messages:
            print(f"FAILED: {len(self.messages)} error(s) in {what}", file=sys.stderr)
            return 1
        return 0


def load(path):
    """(file, index, object) for every non-empty document of a YAML file."""
    with open(path, encoding="utf-8") as f:
        try:
            docs = list(yaml.load_all(f, Loader=Loader))
        except yaml.YAMLError as e:
            raise SystemExit(f"ERROR {path}: not valid YAML: {e}")
    out = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise SystemExit(f"ERROR {path} document {i + 1}: not a Kubernetes object")
        out.append((path, i, doc))
    return out


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name', '?')}"


def field_path(error):
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_builtin(doc, version, failures, where):
    """Checks one object of a built-in kind; returns False when the kind is unknown."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        failures.add(where, f"{field_path(e)}: {e.message} (Kubernetes {e.version}, strict)")
    except kubernetes_validate.SchemaNotFoundError:
        return False
    return True


def validate_service_monitor(doc, failures, where):
    for e in jsonschema.Draft7Validator(SERVICE_MONITOR).iter_errors(doc):
        failures.add(where, f"{field_path(e)}: {e.message}")


def pod_spec(doc):
    if doc["kind"] in WORKLOADS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def pod_labels(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(objects, failures):
    """What the schemas cannot see: objects that point at each other."""
    by_key = {}
    for path, _, doc in objects:
        meta = doc.get("metadata") or {}
        key = (doc["kind"], meta.get("namespace", ""), meta.get("name"))
        if key in by_key:
            failures.add(path, f"{name_of(doc)} is rendered twice")
        by_key[key] = doc
    names = lambda kind: {k[2] for k in by_key if k[0] == kind}
    service_accounts, config_maps = names("ServiceAccount"), names("ConfigMap")
    roles, cluster_roles = names("Role"), names("ClusterRole")
    workloads = [d for _, _, d in objects if d["kind"] in WORKLOADS]
    services = [d for _, _, d in objects if d["kind"] == "Service"]

    for w in workloads:
        where = name_of(w)
        selector = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not matches(selector, pod_labels(w)):
            failures.add(where, f"selector {selector} does not match its pod template's labels")
        spec = pod_spec(w)
        sa = spec.get("serviceAccountName", "default")
        if sa != "default" and sa not in service_accounts:
            failures.add(where, f"serviceAccountName {sa} is not rendered")
        ports = set()
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ports |= {p["name"] for p in c.get("ports", []) if "name" in p}
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            missing = mounts - {v["name"] for v in spec.get("volumes", [])}
            if missing:
                failures.add(where, f"container {c['name']} mounts undeclared volumes {sorted(missing)}")
        for c in spec.get("containers", []):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    failures.add(where, f"{probe} uses port {port}, which no container names")
        for v in spec.get("volumes", []):
            cm = (v.get("configMap") or {}).get("name")
            if cm and cm not in config_maps:
                failures.add(where, f"volume {v['name']} needs ConfigMap {cm}, which is not rendered")

    for s in services:
        where = name_of(s)
        selector = (s.get("spec") or {}).get("selector") or {}
        backends = [w for w in workloads if matches(selector, pod_labels(w))]
        if not backends:
            failures.add(where, f"selector {selector} matches no rendered pod template")
        for p in (s.get("spec") or {}).get("ports", []):
            target = p.get("targetPort")
            for w in backends:
                named = {q.get("name") for c in pod_spec(w).get("containers", []) for q in c.get("ports", [])}
                if isinstance(target, str) and target not in named:
                    failures.add(where, f"targetPort {target} is not a container port of {name_of(w)}")

    for _, _, sm in objects:
        if sm["kind"] != "ServiceMonitor":
            continue
        selector = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        targets = [s for s in services if matches(selector, (s.get("metadata") or {}).get("labels") or {})]
        if not targets:
            failures.add(name_of(sm), f"selector {selector} matches no rendered Service")
        for e in (sm.get("spec") or {}).get("endpoints", []):
            for s in targets:
                if e.get("port") not in {p.get("name") for p in s["spec"].get("ports", [])}:
                    failures.add(name_of(sm), f"endpoint port {e.get('port')} is not a port of {name_of(s)}")

    for _, _, b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = b.get("roleRef") or {}
        known = roles if ref.get("kind") == "Role" else cluster_roles
        if ref.get("name") not in known:
            failures.add(name_of(b), f"roleRef {ref.get('kind')}/{ref.get('name')} is not rendered")
        for subject in b.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and subject.get("name") not in service_accounts:
                failures.add(name_of(b), f"subject ServiceAccount {subject.get('name')} is not rendered")


def cmd_manifests(args):
    failures = Failures()
    objects = [o for path in args.files for o in load(path)]
    if not objects:
        raise SystemExit(f"ERROR {' '.join(args.files)}: no objects rendered")
    kinds = {}
    for path, i, doc in objects:
        where = f"{path} {name_of(doc)}"
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["kind"] == "ServiceMonitor":
            validate_service_monitor(doc, failures, where)
        elif not validate_builtin(doc, args.kube_version, failures, where):
            failures.add(where, f"no Kubernetes {args.kube_version} schema for {doc['apiVersion']} {doc['kind']}")
    check_references(objects, failures)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    status = failures.report(" ".join(args.files))
    if status == 0:
        print(f"ok: {len(objects)} objects valid against Kubernetes {args.kube_version} (strict): {summary}")
    return status


def structural(schema):
    """A CRD's openAPIV3Schema as the JSON Schema an API server with strict field validation
    applies: objects with declared properties reject other fields (unless they preserve
    unknown fields), `nullable` admits null, int-or-string admits both."""
    s = copy.deepcopy(schema)
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = s.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable"):
        if "type" in s:
            s["type"] = [s["type"], "null"]
        s.pop("nullable")
    if "properties" in s:
        s["properties"] = {k: structural(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = structural(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = structural(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [structural(x) for x in s[key]]
    return s


def load_crds(directory):
    """{(group/version, kind): (CRD name, scope, JSON schema, openAPIV3Schema)} for every served
    version."""
    crds = {}
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml")))
    for path in files:
        for _, _, doc in load(path):
            if doc["kind"] != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                raw = (v.get("schema") or {}).get("openAPIV3Schema")
                if raw is None:
                    raise SystemExit(f"ERROR {path}: {doc['metadata']['name']} {v['name']} has no openAPIV3Schema")
                schema = structural(raw)
                # The API server fills these; a manifest may carry only name, namespace, labels...
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{v['name']}"}
                schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
                key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
                crds[key] = (doc["metadata"]["name"], spec["scope"], schema, raw)
    return crds


def apply_defaults(schema, value):
    """Fills absent fields with their schema `default`, as the API server does before it
    validates (so that a rule may read a defaulted field)."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                apply_defaults(extra, item)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def check_rules(schema, value, path, failures, where, tally):
    """Evaluates the CEL rules of `schema` and of its sub-schemas on `value`, as the API server
    does: a rule applies where its field is present, with `self` bound to the field's value."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        expression = rule["rule"]
        if "oldSelf" in expression:
            tally["transition"] += 1
            continue
        tally["evaluated"] += 1
        try:
            ok = cel.evaluate(expression, {"self": value})
        except Exception as e:  # a rule that cannot run is as bad as one that fails
            failures.add(where, f"{path or '(top level)'}: CEL rule {expression!r} could not be evaluated: {e}")
            continue
        if ok is not True:
            message = rule.get("message") or f"failed rule: {expression}"
            failures.add(where, f"{path or '(top level)'}: {message}")
    at = lambda key: f"{path}.{key}" if path else str(key)
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                check_rules(sub, value[key], at(key), failures, where, tally)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                check_rules(extra, item, at(key), failures, where, tally)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            check_rules(schema["items"], item, f"{path}[{i}]", failures, where, tally)


def cmd_custom(args):
    crds = load_crds(args.crds)
    if not crds:
        raise SystemExit(f"ERROR {args.crds}: no CustomResourceDefinition found")
    failures, counts, tally = Failures(), {}, {"evaluated": 0, "transition": 0}
    for path in args.files:
        for _, _, doc in load(path):
            where = f"{path} {name_of(doc)}"
            key = (doc["apiVersion"], doc["kind"])
            if key in crds:
                crd, scope, schema, raw = crds[key]
                meta = doc.get("metadata") or {}
                if not meta.get("name"):
                    failures.add(where, "metadata.name is missing")
                if scope == "Cluster" and "namespace" in meta:
                    failures.add(where, f"{crd} is cluster-scoped, yet metadata.namespace is set")
                errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
                for e in errors:
                    failures.add(where, f"{field_path(e)}: {e.message} (CRD {crd})")
                # As the API server: defaults first; rules run on objects of the right shape.
                if not errors:
                    defaulted = copy.deepcopy(doc)
                    apply_defaults(raw, defaulted)
                    check_rules(raw, defaulted, "", failures, where, tally)
                counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
            elif not validate_builtin(doc, args.kube_version, failures, where):
                failures.add(where, f"{doc['apiVersion']} {doc['kind']} is neither a Kubernetes "
                             f"{args.kube_version} kind nor defined by a CRD in {args.crds}")
    status = failures.report(" ".join(args.files))
    if status == 0:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        skipped = f", {tally['transition']} transition rules skipped" if tally["transition"] else ""
        print(f"ok: {summary} valid against the CRD schemas in {args.crds} "
              f"({tally['evaluated']} CEL rule evaluations passed{skipped})")
    return status


def cmd_crds(args):
    present = {name for name, _, _, _ in load_crds(args.crds).values()} if os.path.isdir(args.crds) else set()
    missing = [n for n in args.expect if n not in present]
    if missing:
        print(f"ERROR {args.crds}: no CustomResourceDefinition for {', '.join(missing)} "
              f"(found: {', '.join(sorted(present)) or 'none'}). The operator's crdgen binary "
              "writes them: cargo run -p offpeak-operator --bin crdgen", file=sys.stderr)
        return 1
    print(f"ok: CRDs present: {', '.join(sorted(present))}")
    return 0


# Maps whose entries are Kubernetes fields or free-form, documented as one key.
OPAQUE_MAPS = {"resources", "nodeSelector", "updateStrategy"}


def value_paths(values, prefix=""):
    """Documented keys of a values tree: leaves, empty maps and the opaque maps."""
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict) and value and key not in OPAQUE_MAPS:
            yield from value_paths(value, path)


def cmd_readme(args):
    with open(args.values, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    with open(args.readme, encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `")]
    documented = set()
    for row in rows:
        first_column = row.split("|")[1]
        documented |= set(re.findall(r"`([^`]+)`", first_column))
    paths = set(value_paths(values))
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    failures = Failures()
    for path in sorted(leaves - documented):
        failures.add(args.readme, f"values key {path} is not in the values table")
    for path in sorted(documented - paths):
        failures.add(args.readme, f"the values table names {path}, which values.yaml does not have")
    status = failures.report(args.readme)
    if status == 0:
        print(f"ok: {args.readme} documents the {len(leaves)} keys of {args.values}")
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("--kube-version", required=True)
    m.add_argument("files", nargs="+")
    c = sub.add_parser("custom")
    c.add_argument("--crds", required=True)
    c.add_argument("--kube-version", required=True)
    c.add_argument("files", nargs="+")
    d = sub.add_parser("crds")
    d.add_argument("--crds", required=True)
    d.add_argument("--expect", nargs="+", required=True)
    r = sub.add_parser("readme")
    r.add_argument("--values", required=True)
    r.add_argument("--readme", required=True)
    args = parser.parse_args()
    commands = {"manifests": cmd_manifests, "custom": cmd_custom, "crds": cmd_crds, "readme": cmd_readme}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
