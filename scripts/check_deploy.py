"""Checks of what we ship for Kubernetes (run by scripts/check-deploy.sh):

1. the chart lints (Helm's own linter, through helm-sdkpy) with its default values and with
   every ci/*.yaml values file, each of which gives a termination grace covering the shutdown;
2. values.yaml and every ci/*.yaml validate against values.schema.json, and bad values do not;
3. every manifest under k8s/ validates against the Kubernetes schemas;
4. k8s/base agrees with the chart's defaults where they must (probes, grace, security).
"""

import asyncio
import copy
import glob
import json
import os
import shutil
import sys
import tempfile

import helm_sdkpy
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "presence-gateway")
K8S_VERSION = "1.30.0"
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def lint(values, name):
    """Lint a copy of the chart whose values.yaml is `values`; returns the problems."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = os.path.join(tmp, "presence-gateway")
        shutil.copytree(CHART, chart)
        with open(os.path.join(chart, "values.yaml"), "w") as f:
            yaml.safe_dump(values, f)
        try:
            r = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart))
        except Exception as e:  # the linter reports a failed lint as an exception
            return [f"{name}: {e}"]
    # Severity: 1 info, 2 warning, 3 error.
    problems = [f"{name}: {m.get('Path')}: {m.get('Err')}" for m in r.get("Messages") or [] if m.get("Severity", 0) >= 2]
    problems += [f"{name}: {e}" for e in r.get("Errors") or []]
    return problems


def main():
    with open(os.path.join(CHART, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(os.path.join(CHART, "values.schema.json")) as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(schema)

    variants = {"values.yaml": defaults}
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml"))):
        with open(path) as f:
            variants[os.path.relpath(path, CHART)] = merge(defaults, yaml.safe_load(f) or {})
    for name, values in variants.items():
        for e in validator.iter_errors(values):
            fail(f"schema: {name}: {'/'.join(map(str, e.path))}: {e.message}")
        for p in lint(values, name):
            fail(f"lint: {p}")
        print(f"ok   chart with {name}")

    # What must be refused.
    bad = {
        "a typo in a value name": merge(defaults, {"replicas": 3}),
        "a bad Redis URL": merge(defaults, {"secrets": {"redisUrl": "http://redis"}}),
        "an unknown APP_ENV": merge(defaults, {"config": {"APP_ENV": "staging"}}),
    }
    for what, values in bad.items():
        if validator.is_valid(values):
            fail(f"schema accepted {what}")
        else:
            print(f"ok   schema refuses {what}")
    # The grace period must cover the shutdown. The templates `fail` otherwise, but Helm's
    # linter only logs a template's `fail`, so the rule is checked here on every shipped file.
    for name, values in variants.items():
        if values["terminationGracePeriodSeconds"] < values["shutdownDelaySeconds"] + 12:
            fail(f"{name}: terminationGracePeriodSeconds shorter than shutdownDelaySeconds + 12")
    with open(os.path.join(CHART, "templates", "_helpers.tpl")) as f:
        if "add .Values.shutdownDelaySeconds 12" not in f.read():
            fail("the chart lost its termination-grace guard (templates/_helpers.tpl)")

    # k8s/: every document of every manifest (kustomization files are kustomize's, not the API's).
    docs = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "k8s", "**", "*.yaml"), recursive=True)):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            for i, doc in enumerate(d for d in yaml.safe_load_all(f) if d):
                rel = os.path.relpath(path, ROOT)
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    docs[(rel, doc["kind"])] = doc
                    print(f"ok   {rel} {doc['kind']}/{doc['metadata']['name']}")
                except Exception as e:
                    fail(f"k8s: {rel} #{i}: {getattr(e, 'message', e)}")
    for kust in glob.glob(os.path.join(ROOT, "k8s", "**", "kustomization.yaml"), recursive=True):
        with open(kust) as f:
            k = yaml.safe_load(f)
        for r in k.get("resources", []):
            target = os.path.normpath(os.path.join(os.path.dirname(kust), r))
            if not os.path.exists(target):
                fail(f"k8s: {os.path.relpath(kust, ROOT)} lists missing {r}")

    # k8s/base against the chart's defaults.
    dep = docs.get(("k8s/base/deployment.yaml", "Deployment"))
    if dep:
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        checks = {
            "terminationGracePeriodSeconds": (pod["terminationGracePeriodSeconds"], defaults["terminationGracePeriodSeconds"]),
            "SHUTDOWN_DELAY_MS": (env.get("SHUTDOWN_DELAY_MS"), str(defaults["shutdownDelaySeconds"] * 1000)),
            "pod securityContext": (pod["securityContext"], defaults["podSecurityContext"]),
            "container securityContext": (c["securityContext"], defaults["securityContext"]),
            "liveness path": (c["livenessProbe"]["httpGet"]["path"], "/healthz"),
            "readiness path": (c["readinessProbe"]["httpGet"]["path"], "/readyz"),
            "resources": (c["resources"], defaults["resources"]),
        }
        for what, (got, want) in checks.items():
            if got != want:
                fail(f"k8s/base differs from the chart on {what}: {got!r} != {want!r}")
        print("ok   k8s/base agrees with the chart's defaults")
    else:
        fail("k8s/base/deployment.yaml has no Deployment")

    if failures:
        print(f"{len(failures)} deployment check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("deployment checks passed")


if __name__ == "__main__":
    main()
