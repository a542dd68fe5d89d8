#!/usr/bin/env bash
# Lint and render the Helm chart, validate its values against values.schema.json, build and
# validate k8s/ against the Kubernetes schemas, and check that /metrics stays off the internet.
# Installs its Python tools (pinned) into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if ! "$venv/bin/python" -c "import helm_sdkpy, helm_python, pykustomize, kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
  echo "==> installing the deployment checkers (helm-sdkpy, helm-python-sdk, pykustomize, kubernetes-validate)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python -r scripts/deploy-requirements.txt
fi
exec "$venv/bin/python" scripts/check_deploy.py
