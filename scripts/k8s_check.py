"""Offline checks of rendered deploy/kubernetes overlays that kubernetes-validate cannot do.

Usage: k8s_check.py CRD.yaml RENDERED.yaml...
  * the InferencePool validates against the vendored GIE CRD's openAPIV3Schema (jsonschema);
  * its selector matches the Deployment's pod labels and its target port a container port;
  * pods carry llm-d.ai/engine-type and the EPP ConfigMap has an engineConfig of that name
    whose metric names Metrum exports (looked up in metrics/src and server/src);
  * terminationGracePeriodSeconds covers the preStop sleep plus --shutdown-timeout;
  * the HPA scales the Deployment on a metric Metrum exports.
"""
import pathlib
import re
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPORTED = "\n".join(
    p.read_text() for d in ("metrics/src", "server/src") for p in (ROOT / d).rglob("*.rs")
)


def fail(msg):
    sys.exit(f"k8s-check: FAIL: {msg}")


def exported(metric):
    name = metric.split("{")[0]
    if f'"{name}"' not in EXPORTED:
        fail(f"{name} is not a metric Metrum exports")


def crd_schema(path):
    crd = yaml.safe_load(pathlib.Path(path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return f"{crd['spec']['group']}/v1", version["schema"]["openAPIV3Schema"]


def seconds(duration):
    m = re.fullmatch(r"(\d+)s", duration)
    if not m:
        fail(f"cannot read duration {duration!r}")
    return int(m.group(1))


def check(docs, api_version, schema):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("Deployment", "Service", "InferencePool", "ConfigMap", "PodMonitor",
                 "HorizontalPodAutoscaler"):
        if kind not in by_kind:
            fail(f"no {kind} rendered")
    pool = by_kind["InferencePool"][0]
    if pool["apiVersion"] != api_version:
        fail(f"InferencePool apiVersion {pool['apiVersion']}, the CRD serves {api_version}")
    try:
        jsonschema.validate(pool, schema)
    except jsonschema.ValidationError as e:
        fail(f"InferencePool does not match the GIE CRD: {e.message} at {list(e.path)}")

    deploy = by_kind["Deployment"][0]
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for k, v in pool["spec"]["selector"]["matchLabels"].items():
        if labels.get(k) != v:
            fail(f"InferencePool selects {k}={v}; the pods have {labels}")
    container = pod["spec"]["containers"][0]
    ports = {p["containerPort"] for p in container["ports"]}
    for p in pool["spec"]["targetPorts"]:
        if p["number"] not in ports:
            fail(f"InferencePool targets port {p['number']}; the container has {ports}")

    engine = labels.get("llm-d.ai/engine-type")
    if not engine:
        fail("pods lack the llm-d.ai/engine-type label")
    epp = next(c for c in by_kind["ConfigMap"] if "epp-config.yaml" in c.get("data", {}))
    config = yaml.safe_load(epp["data"]["epp-config.yaml"])
    engines = [e for p in config["plugins"] if p["type"] == "core-metrics-extractor"
               for e in p["parameters"]["engineConfigs"]]
    mapping = next((e for e in engines if e["name"] == engine), None)
    if mapping is None:
        fail(f"no engineConfig named {engine}")
    for key, spec in mapping.items():
        if key.endswith("Spec"):
            exported(spec)
    for custom in mapping.get("customMetrics", []):
        exported(custom["metricSpec"])

    args = container["args"]
    drain = next((seconds(a.split("=", 1)[1]) for a in args if a.startswith("--shutdown-timeout=")), 30)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = int(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    if grace < sleep + drain:
        fail(f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + drain {drain} s")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if container[probe]["httpGet"]["path"] != "/health":
            fail(f"{probe} is not on /health")

    hpa = by_kind["HorizontalPodAutoscaler"][0]
    if hpa["spec"]["scaleTargetRef"]["name"] != deploy["metadata"]["name"]:
        fail("the HPA scales something else")
    for m in hpa["spec"]["metrics"]:
        exported(m["pods"]["metric"]["name"])


def main():
    api_version, schema = crd_schema(sys.argv[1])
    for path in sys.argv[2:]:
        docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        check(docs, api_version, schema)
        print(f"ok {path}: InferencePool matches the GIE CRD; labels, EPP mapping, drain, HPA")


if __name__ == "__main__":
    main()
