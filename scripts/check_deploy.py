"""Checks of what we ship for Kubernetes (run by scripts/check-deploy.sh):

1. the chart lints (Helm's own linter, through helm-sdkpy) with its default values and with
   every ci/*.yaml values file, each of which gives a termination grace covering the shutdown;
2. values.yaml and every ci/*.yaml validate against values.schema.json, and bad values do not;
3. every manifest under k8s/ validates against the Kubernetes schemas;
4. k8s/base agrees with the chart's defaults where they must (probes, grace, security, the
   metrics port and the NetworkPolicy's metrics peers);
5. /metrics stays off the internet, in the chart rendered with every values file and in every
   kustomize build (see check_exposure), and the development overlay runs APP_ENV=development,
   without which the gateway refuses its public key.
"""

import asyncio
import base64
import copy
import glob
import json
import os
import shutil
import sys
import tempfile

import helm_python
import helm_sdkpy
import jsonschema
import kubernetes_validate
import pykustomize
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "presence-gateway")
K8S_VERSION = "1.30.0"
# The public key of k8s/overlays/development; the gateway refuses it outside development.
DEV_JWT_SECRET = "development-only-secret-0123456789"
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


def render(values):
    """The chart's manifests with `values`, rendered offline as `helm template` would."""
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values, name="presence-gateway", namespace="presence", is_install=True)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def kustomize(path):
    return asyncio.run(pykustomize.build_json(path)).resources


def secret_value(secret, key):
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    data = secret.get("data", {}).get(key)
    return base64.b64decode(data).decode() if data else None


def port_of(ports, name):
    return next((p for p in ports if p.get("name") == name), None)


def opens(rule, name, number):
    """Whether a NetworkPolicy ingress rule admits the port `name`/`number` (no ports: all)."""
    ports = rule.get("ports") or [{}]
    return any(
        p.get("port") in (None, name, number) or isinstance(p.get("port"), int) and p["port"] <= number <= p.get("endPort", 0)
        for p in ports
    )


def check_exposure(docs, where, need_policy):
    """/metrics is for Prometheus only: the gateway serves it on METRICS_PORT, the container
    port `metrics`; a Service of the gateway names that port `metrics`; every Ingress backend
    is the http port; every ServiceMonitor scrapes `metrics`; the NetworkPolicies that select
    the pods (with `need_policy`, at least one) admit the http port and let through to the
    metrics port only the peers they name. Returns the kinds in `docs`."""
    of = lambda kind: [d for d in docs if d["kind"] == kind]
    gateways = [d for d in of("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["name"] == "gateway"]
    if len(gateways) != 1:
        fail(f"{where}: {len(gateways)} gateway Deployments, not 1")
        return set()
    pod = gateways[0]["spec"]["template"]
    labels = pod["metadata"]["labels"].items()
    c = pod["spec"]["containers"][0]
    http, metrics = port_of(c.get("ports", []), "http"), port_of(c.get("ports", []), "metrics")
    if not http or not metrics or http["containerPort"] == metrics["containerPort"]:
        fail(f"{where}: the gateway container needs two ports, named http and metrics")
        return set()
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("METRICS_PORT") != str(metrics["containerPort"]):
        fail(f"{where}: METRICS_PORT {env.get('METRICS_PORT')!r} is not the `metrics` port {metrics['containerPort']}")

    # Service ports by (service, name) and (service, number): an Ingress backend uses either.
    svc_ports = {}
    for svc in of("Service"):
        if svc["spec"].get("selector", {}).items() <= labels:
            for p in svc["spec"]["ports"]:
                svc_ports[(svc["metadata"]["name"], p.get("name"))] = p
                svc_ports[(svc["metadata"]["name"], p["port"])] = p
    if not any(p.get("name") == "metrics" and p["targetPort"] in ("metrics", metrics["containerPort"]) for p in svc_ports.values()):
        fail(f"{where}: no Service of the gateway has a port named metrics (to the container's)")
    for ing in of("Ingress"):
        spec = ing["spec"]
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        backends += [p["backend"] for r in spec.get("rules", []) for p in r.get("http", {}).get("paths", [])]
        for b in backends:
            port = b["service"]["port"]
            p = svc_ports.get((b["service"]["name"], port.get("name", port.get("number"))))
            if not p or p["targetPort"] not in ("http", http["containerPort"]):
                fail(f"{where}: Ingress {ing['metadata']['name']} routes to {b['service']}, not the http port")
    for sm in of("ServiceMonitor"):
        for e in sm["spec"]["endpoints"]:
            if e.get("port") != "metrics":
                fail(f"{where}: ServiceMonitor scrapes {e.get('port') or e.get('targetPort')!r}, not `metrics`")

    policies = [np for np in of("NetworkPolicy") if np["spec"]["podSelector"].get("matchLabels", {}).items() <= labels]
    if need_policy and not policies:
        fail(f"{where}: no NetworkPolicy selects the gateway's pods")
    for np in policies:
        name, rules = np["metadata"]["name"], np["spec"].get("ingress", [])
        if "Ingress" not in np["spec"].get("policyTypes", ["Ingress"]):
            fail(f"{where}: NetworkPolicy {name} does not restrict ingress")
        # A rule without `from` admits every peer.
        if any(opens(r, "metrics", metrics["containerPort"]) and not r.get("from") for r in rules):
            fail(f"{where}: NetworkPolicy {name} lets anyone reach the metrics port")
        if not any(opens(r, "http", http["containerPort"]) for r in rules):
            fail(f"{where}: NetworkPolicy {name} shuts the http port")
    return {d["kind"] for d in docs}


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
        "METRICS_PORT under config (metrics.port sets it)": merge(defaults, {"config": {"METRICS_PORT": "3000"}}),
        "a typo in a NetworkPolicy peer": merge(defaults, {"networkPolicy": {"metricsFrom": [{"namespaceSelectors": {}}]}}),
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

    # The chart as rendered: Kubernetes-valid, and /metrics off the internet with every values
    # file. The defaults enable neither Ingress nor ServiceMonitor, so a ci/ file must.
    seen = set()
    for name, values in variants.items():
        try:
            rendered = render(values)
        except Exception as e:
            fail(f"render: {name}: {e}")
            continue
        for d in rendered:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # Prometheus Operator CRDs: not in the Kubernetes schemas
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except Exception as e:
                fail(f"render: {name}: {d['kind']}/{d['metadata']['name']}: {getattr(e, 'message', e)}")
        kinds = check_exposure(rendered, f"chart with {name}", values["networkPolicy"]["enabled"])
        if name == "values.yaml" and "NetworkPolicy" not in kinds:
            fail("the chart's defaults render no NetworkPolicy")
        seen |= kinds
        print(f"ok   chart rendered with {name}: metrics on their own port")
    for kind in ("Ingress", "ServiceMonitor", "NetworkPolicy"):
        if kind not in seen:
            fail(f"no values file renders a {kind}: its checks ran on nothing")
    try:
        render(merge(defaults, {"metrics": {"port": defaults["service"]["port"]}}))
        fail("the chart rendered metrics.port equal to service.port")
    except Exception as e:
        if "metrics.port" in str(e):
            print("ok   chart refuses metrics.port equal to service.port")
        else:
            fail(f"render: metrics.port equal to service.port: {e}")

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

    # What kustomize builds: base and every overlay.
    for kust in sorted(glob.glob(os.path.join(ROOT, "k8s", "**", "kustomization.yaml"), recursive=True)):
        where = os.path.relpath(os.path.dirname(kust), ROOT)
        try:
            built = kustomize(os.path.dirname(kust))
        except Exception as e:
            fail(f"kustomize: {where}: {e}")
            continue
        check_exposure(built, where, need_policy=True)
        secrets = [d for d in built if d["kind"] == "Secret"]
        if any(secret_value(s, "JWT_SECRET") == DEV_JWT_SECRET for s in secrets):
            envs = [
                {e["name"]: e.get("value") for e in c.get("env", [])}
                for d in built if d["kind"] == "Deployment"
                for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
            ]
            if not envs or any(env.get("APP_ENV") != "development" for env in envs):
                fail(f"{where}: the public development key without APP_ENV=development (the gateway refuses it)")
        print(f"ok   kustomize {where}: metrics on their own port")

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
            "metrics port": ((port_of(c["ports"], "metrics") or {}).get("containerPort"), defaults["metrics"]["port"]),
        }
        np = docs.get(("k8s/base/networkpolicy.yaml", "NetworkPolicy"))
        rules = np["spec"]["ingress"] if np else []
        peers = [r.get("from") for r in rules if any(p.get("port") == "metrics" for p in r.get("ports", []))]
        checks["NetworkPolicy metrics peers"] = (peers, [defaults["networkPolicy"]["metricsFrom"]])
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
