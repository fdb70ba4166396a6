#!/usr/bin/env bash
# Renders every deploy/kubernetes overlay offline and checks it: yamllint on the sources and
# the output, kubernetes-validate (strict) against the Kubernetes schemas, and
# scripts/k8s_check.py (the InferencePool against the vendored GIE CRD, labels, EPP metric
# mapping, drain timing, HPA). No cluster is needed or used. Tools pinned, in a venv under
# target/. `make test` runs it (test-scale-out).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/k8s-venv
OUT=target/k8s-check
K8S_VERSION=1.32.0
want="kubernetes-validate==1.37.0 yamllint==1.38.0 jsonschema==4.26.0 PyYAML==6.0.3"
if ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qxF "kubernetes-validate==1.37.0" ||
   ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qxF "jsonschema==4.26.0"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $want
fi
rm -rf "$OUT" && mkdir -p "$OUT"

# kubectl writes sequences unindented; accept either style.
lint='{extends: default, rules: {line-length: {max: 120}, document-start: disable, indentation: {indent-sequences: whatever}}}'
"$VENV/bin/yamllint" -d "$lint" deploy/kubernetes/base deploy/kubernetes/overlays
rendered=()
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$OUT/$name.yaml"
  "$VENV/bin/yamllint" -d "$lint" "$OUT/$name.yaml"
  # Strict: unknown fields fail. InferencePool and PodMonitor are CRDs it has no schema for
  # (a warning); the InferencePool is checked against the vendored CRD below.
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/$name.yaml"
  rendered+=("$OUT/$name.yaml")
done
"$VENV/bin/python" scripts/k8s_check.py deploy/kubernetes/crds/inferencepools.yaml "${rendered[@]}"
echo "k8s-check: ${#rendered[@]} overlays render and validate"
