#!/usr/bin/python3
"""Cross-reference checks on bertstream's deployment files; scripts/check-deploy.sh runs it.

Reads the manifests kustomize rendered for each overlay, deploy/Dockerfile with scripts/install-deps.sh,
the Grafana dashboard and the alert rules, and checks that they agree with each other and with the
configuration the pods actually load (config/*.yaml as the rendered ConfigMap carries it, overridden by the
containers' BERTSTREAM_* variables and -o arguments, the way worker/config.c reads them).

  check-deploy.py --root DIR --rendered NAME=FILE [--rendered NAME=FILE ...] [--promtool PATH] [--bin BERTSTREAM]
                  [--self-test]

With --bin, every container that runs `bertstream worker|train` is started with its rendered configuration
(file, environment with Secret values replaced by a sentinel, arguments) in a scratch directory: the real
parser must accept it (exit status 2 means a configuration error), and the sentinel must not appear in the
output at log.level debug. The run then stops at the missing model.

--self-test breaks copies of the inputs in known ways (a wrong probe port, a missing GPU limit, a package
dropped from the Dockerfile...) and fails unless the checks catch every one. Exit status 0 when every check
passes, 1 otherwise; each problem is one line on stdout.
"""
import argparse
import copy
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

# Sections of the configuration (worker/config.c). The librdkafka ones are free-form maps whose
# environment names spell '.' as '_' (BERTSTREAM_KAFKA_SASL_PASSWORD -> kafka sasl.password).
SECTIONS = ("kafka", "consumer", "producer", "topics", "format", "model", "head", "batch", "http", "delivery",
            "worker", "log", "train")
MAP_SECTIONS = ("kafka", "consumer", "producer")
DEFAULTS = {("http", "listen"): "0.0.0.0:9464", ("model", "device"): "auto", ("topics", "input"): "reviews",
            ("model", "dir"): "models/bert-base-uncased"}
# A key is a secret when it contains one of these (config_is_secret in worker/config.c).
SECRET_WORDS = ("password", "secret", "hmac_key", "sasl.oauthbearer", "ssl.key")
# Environment variables outside the configuration that still carry secrets.
SECRET_ENV = re.compile(r"(TOKEN|PASSWORD|SECRET|HMAC|CREDENTIAL|API_KEY)")
# The image's data directory (deploy/Dockerfile WORKDIR): relative config paths resolve against it, and its
# models/ is a symlink to the /models volume.
IMAGE_WORKDIR = "/usr/share/bertstream"
PARTITIONS_ANNOTATION = "bertstream.io/input-partitions"
# Metrics of DESIGN.md's Observability section (+ bertstream_gpu_busy_ratio); used when worker/*.c cannot
# be read. Histograms expose _bucket, _sum and _count series.
DESIGN_METRICS = {
    "bertstream_messages_consumed_total", "bertstream_messages_scored_total", "bertstream_dead_letters_total",
    "bertstream_batch_sequences", "bertstream_batch_tokens", "bertstream_encode_seconds",
    "bertstream_end_to_end_seconds", "bertstream_head_version", "bertstream_consumer_lag",
    "bertstream_gpu_busy_ratio",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def is_secret_key(key):
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


# ---------------------------------------------------------------------------------------------------------
# Rendered manifests


def kind_name(obj):
    return "%s/%s" % (obj.get("kind"), (obj.get("metadata") or {}).get("name"))


def pod_spec(obj):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        return ((((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
    return None


def pod_labels(obj):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Rendering:
    """One overlay's rendered objects, with the look-ups the checks need."""

    def __init__(self, name, docs):
        self.name = name
        self.docs = [d for d in docs if isinstance(d, dict)]

    def objects(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind, name):
        for d in self.objects(kind):
            if (d.get("metadata") or {}).get("name") == name:
                return d
        return None

    def workloads(self):
        return [d for d in self.docs if pod_spec(d) is not None]


class Checker:
    def __init__(self):
        self.errors = []

    def err(self, scope, msg):
        self.errors.append("%s: %s" % (scope, msg))


def container_args(c):
    return [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]


def bertstream_command(c):
    """'worker', 'train', ... when the container runs the bertstream executable with a subcommand."""
    args = c.get("args") or []
    if c.get("command"):
        return None
    return str(args[0]) if args else None


def resolve_port(container, port):
    """A probe's or Service's port (number or name) as a number, or None."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def mount_for(container, spec, path):
    """(volume, path inside the volume) of the longest mount that holds path, or (None, None)."""
    best = None
    for m in container.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None, None, None
    mp, m = best
    rel = path[len(mp):].lstrip("/")
    if m.get("subPath"):
        rel = posixpath.join(m["subPath"], rel) if rel else m["subPath"]
    vol = next((v for v in spec.get("volumes") or [] if v.get("name") == m.get("name")), None)
    return vol, rel, m


class PodConfig:
    """The configuration one container loads: its --config file from a ConfigMap, then BERTSTREAM_*
    environment variables, then -o arguments (worker/config.c's order)."""

    def __init__(self):
        self.values = {}   # (section, key) -> value; key None for scalar sections (delivery)
        self.origin = {}   # (section, key) -> where the value came from
        self.source = None  # "ConfigMap NAME key KEY"

    def get(self, section, key):
        return self.values.get((section, key), DEFAULTS.get((section, key)))

    def where(self, section, key):
        return self.origin.get((section, key), "default")


def env_to_key(name):
    """BERTSTREAM_KAFKA_SASL_PASSWORD -> ("kafka", "sasl.password"); None when not configuration."""
    if not name.startswith("BERTSTREAM_"):
        return None
    rest = name[len("BERTSTREAM_"):]
    for s in SECTIONS:
        su = s.upper()
        if rest == su:
            return (s, None)
        if rest.startswith(su + "_"):
            key = rest[len(su) + 1:].lower()
            if s in MAP_SECTIONS:
                key = key.replace("_", ".")
            return (s, key)
    return None


def load_pod_config(chk, scope, r, obj, container):
    spec = pod_spec(obj)
    cfg = PodConfig()
    args = container_args(container)
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        chk.err(scope, "runs bertstream without --config FILE")
        return cfg
    path = args[args.index("--config") + 1]
    vol, rel, _ = mount_for(container, spec, path)
    if vol is None or "configMap" not in vol:
        chk.err(scope, "--config %s is not inside a mounted ConfigMap" % path)
        return cfg
    cm_name = vol["configMap"].get("name")
    key = rel
    items = vol["configMap"].get("items")
    if items:
        item = next((i for i in items if i.get("path") == rel), None)
        if item is None:
            chk.err(scope, "--config %s: volume %s maps no item to %s" % (path, vol.get("name"), rel))
            return cfg
        key = item.get("key")
    cm = r.get("ConfigMap", cm_name)
    if cm is None:
        chk.err(scope, "--config %s: ConfigMap %s does not exist" % (path, cm_name))
        return cfg
    text = (cm.get("data") or {}).get(key)
    if text is None:
        chk.err(scope, "--config %s: ConfigMap %s has no key %s" % (path, cm_name, key))
        return cfg
    cfg.source = "ConfigMap %s key %s" % (cm_name, key)
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        chk.err(scope, "%s is not YAML: %s" % (cfg.source, str(e).splitlines()[0]))
        return cfg
    for section, body in doc.items():
        if isinstance(body, dict):
            for k, v in body.items():
                cfg.values[(section, str(k))] = "" if v is None else str(v)
                cfg.origin[(section, str(k))] = cfg.source
        else:
            cfg.values[(section, None)] = "" if body is None else str(body)
            cfg.origin[(section, None)] = cfg.source
    for e in container.get("env") or []:
        sk = env_to_key(e.get("name", ""))
        if sk is None:
            continue
        value = env_value(chk, scope, r, e)
        if value is not None:
            cfg.values[sk] = value
            cfg.origin[sk] = "env %s" % e["name"]
    for i, a in enumerate(args):
        if a == "-o" and i + 1 < len(args) and "=" in args[i + 1]:
            k, v = args[i + 1].split("=", 1)
            section, _, key = k.partition(".")
            cfg.values[(section, key or None)] = v
            cfg.origin[(section, key or None)] = "-o %s" % k
    return cfg


def env_value(chk, scope, r, e):
    """An env var's value as the pod sees it; '<secret>' / '<field>' for values only the cluster knows."""
    if "value" in e:
        return "" if e["value"] is None else str(e["value"])
    vf = e.get("valueFrom") or {}
    if "configMapKeyRef" in vf:
        ref = vf["configMapKeyRef"]
        cm = r.get("ConfigMap", ref.get("name"))
        if cm is None or ref.get("key") not in (cm.get("data") or {}):
            if not ref.get("optional"):
                chk.err(scope, "env %s: ConfigMap %s has no key %s" % (e.get("name"), ref.get("name"), ref.get("key")))
            return None
        return str(cm["data"][ref["key"]])
    if "secretKeyRef" in vf:
        return "<secret>"
    return "<field>"


def listen_port(listen):
    m = re.match(r"^(.*):(\d+)$", listen or "")
    return int(m.group(2)) if m else None


def image_path(cfg_path):
    """A config path as an absolute path in the image (relative ones start at the image's WORKDIR)."""
    p = cfg_path if cfg_path.startswith("/") else posixpath.join(IMAGE_WORKDIR, cfg_path)
    p = posixpath.normpath(p)
    # models/ in the WORKDIR is a symlink to the /models volume.
    link = IMAGE_WORKDIR + "/models"
    if p == link or p.startswith(link + "/"):
        p = "/models" + p[len(link):]
    return p


def volume_location(container, spec, path):
    """('pvc NAME', path inside it) for a path on a PersistentVolumeClaim, else None."""
    vol, rel, mount = mount_for(container, spec, path)
    if vol is None or "persistentVolumeClaim" not in vol:
        return None
    return ("pvc " + vol["persistentVolumeClaim"].get("claimName", "?"), posixpath.normpath(rel or "."), mount, vol)


def check_rendering(r, policy, image_uid=None):
    """Every check on one rendered overlay; returns the list of problems."""
    chk = Checker()
    scope0 = "overlay %s" % r.name

    # -- the objects a deployment of bertstream consists of
    required = ["Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget", "CronJob", "Job",
                "PersistentVolumeClaim", "ConfigMap", "PrometheusRule"]
    if policy.get("keda"):
        required += ["ScaledObject", "TriggerAuthentication"]
    for k in required:
        if not r.objects(k):
            chk.err(scope0, "no %s rendered" % k)

    # -- secrets never travel in manifests
    for obj in r.docs:
        if obj.get("kind") == "Secret":
            chk.err(kind_name(obj), "a Secret in the manifests: create it out of band (docs/operations.md)")
    text = yaml.safe_dump_all(r.docs)
    if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
        chk.err(scope0, "a PEM private key appears in the manifests")
    for cm in r.objects("ConfigMap"):
        for key, body in (cm.get("data") or {}).items():
            if not key.endswith((".yaml", ".yml")):
                if is_secret_key(key) and body:
                    chk.err(kind_name(cm), "key %s holds a secret in a ConfigMap" % key)
                continue
            try:
                doc = yaml.safe_load(body) or {}
            except yaml.YAMLError:
                continue
            for section, vals in (doc.items() if isinstance(doc, dict) else []):
                for k, v in (vals.items() if isinstance(vals, dict) else []):
                    if is_secret_key("%s.%s" % (section, k)) and v not in (None, ""):
                        chk.err(kind_name(cm), "%s: %s.%s holds a secret literal; set it from a Secret "
                                "(BERTSTREAM_%s_%s via secretKeyRef)" % (key, section, k, section.upper(),
                                                                         str(k).upper().replace(".", "_")))

    images = {}
    worker = None
    for obj in r.workloads():
        spec = pod_spec(obj)
        name = kind_name(obj)
        if spec.get("enableServiceLinks") is not False:
            chk.err(name, "enableServiceLinks must be false: service links inject BERTSTREAM_*_SERVICE_HOST "
                    "variables that the configuration reads")
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            chk.err(name, "securityContext.runAsNonRoot is not true")
        pod_uid = psc.get("runAsUser")
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            scope = "%s container %s" % (name, c.get("name"))
            csc = c.get("securityContext") or {}
            uid = csc.get("runAsUser", pod_uid)
            if uid == 0:
                chk.err(scope, "runs as root (runAsUser 0)")
            if image_uid is not None and uid is not None and uid != image_uid:
                chk.err(scope, "runAsUser %s differs from the image's USER %s (deploy/Dockerfile)" % (uid, image_uid))
            if csc.get("readOnlyRootFilesystem") is not True:
                chk.err(scope, "securityContext.readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                chk.err(scope, "securityContext.allowPrivilegeEscalation is not false")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                chk.err(scope, "securityContext.capabilities.drop lacks ALL")
            res = c.get("resources") or {}
            for part, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if key not in (res.get(part) or {}):
                    chk.err(scope, "resources.%s.%s missing" % (part, key))
            images.setdefault(c.get("image"), []).append(scope)
            for e in c.get("env") or []:
                check_env_secret(chk, scope, r, e)
            vols = {v.get("name") for v in spec.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in vols:
                    chk.err(scope, "mounts volume %s, which the pod does not define" % m.get("name"))
        for v in spec.get("volumes") or []:
            if "configMap" in v:
                cm = r.get("ConfigMap", v["configMap"].get("name"))
                if cm is None:
                    chk.err(name, "volume %s: ConfigMap %s does not exist"
                            % (v.get("name"), v["configMap"].get("name")))
                else:
                    for item in v["configMap"].get("items") or []:
                        if item.get("key") not in (cm.get("data") or {}):
                            chk.err(name, "volume %s: ConfigMap %s has no key %s"
                                    % (v.get("name"), v["configMap"].get("name"), item.get("key")))
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"].get("claimName")
                if r.get("PersistentVolumeClaim", claim) is None:
                    chk.err(name, "volume %s: PersistentVolumeClaim %s does not exist" % (v.get("name"), claim))
        for c in spec.get("containers") or []:
            if bertstream_command(c) == "worker":
                worker = (obj, c)

    # -- one image everywhere, pinned
    if len(images) > 1:
        chk.err(scope0, "containers use different images: %s" % "; ".join(
            "%s (%s)" % (img, ", ".join(s)) for img, s in sorted(images.items(), key=lambda kv: str(kv[0]))))
    if policy.get("pinned_image"):
        for img, scopes in images.items():
            tag = (img or "").rsplit("/", 1)[-1]
            if ":" not in tag and "@" not in (img or ""):
                chk.err(scopes[0], "image %s has no tag (set images: newTag in the overlay)" % img)
            elif tag.endswith(":latest"):
                chk.err(scopes[0], "image %s uses :latest; pin a version" % img)

    model_locations = []
    if worker is None:
        chk.err(scope0, "no container runs `bertstream worker`")
    else:
        check_worker(chk, r, worker, policy, model_locations)
    for obj in r.objects("CronJob"):
        check_trainer(chk, r, obj, model_locations)
    for obj in r.objects("Job"):
        for c in pod_spec(obj).get("containers") or []:
            cmd = container_args(c)
            if cmd and posixpath.basename(cmd[0]) == "fetch-model.sh":
                if "--out" not in cmd or cmd.index("--out") + 1 >= len(cmd):
                    chk.err("%s container %s" % (kind_name(obj), c.get("name")), "fetch-model.sh without --out")
                    continue
                out = cmd[cmd.index("--out") + 1]
                loc = volume_location(c, pod_spec(obj), image_path(out))
                scope = "%s container %s" % (kind_name(obj), c.get("name"))
                if loc is None:
                    chk.err(scope, "--out %s is not on a PersistentVolumeClaim: the model would vanish" % out)
                else:
                    if loc[2].get("readOnly") or loc[3]["persistentVolumeClaim"].get("readOnly"):
                        chk.err(scope, "--out %s is on a read-only mount" % out)
                    model_locations.append((scope, "--out " + out, loc[:2]))
    if model_locations:
        first = model_locations[0]
        for scope, what, loc in model_locations[1:]:
            if loc != first[2]:
                chk.err(scope, "model directory %s is %s:%s, but %s's %s is %s:%s"
                        % (what, loc[0], loc[1], first[0], first[1], first[2][0], first[2][1]))
    if not any(what.startswith("--out") for _, what, _ in model_locations):
        chk.err(scope0, "no Job runs fetch-model.sh --out to fill the model volume")
    return chk.errors


def check_env_secret(chk, scope, r, e):
    name = e.get("name", "")
    sk = env_to_key(name)
    sensitive = (sk is not None and sk[1] is not None and is_secret_key(sk[1])) or \
        (sk is None and SECRET_ENV.search(name) is not None) or \
        (sk is not None and sk[1] in ("sasl.username",))
    if not sensitive:
        return
    vf = e.get("valueFrom") or {}
    if "secretKeyRef" not in vf:
        chk.err(scope, "env %s carries a secret but is not a secretKeyRef (literal values end up in the "
                "manifests, in `kubectl describe` and in logs)" % name)


def check_worker(chk, r, worker, policy, model_locations):
    obj, c = worker
    spec = pod_spec(obj)
    name = kind_name(obj)
    scope = "%s container %s" % (name, c.get("name"))
    cfg = load_pod_config(chk, scope, r, obj, c)
    labels = pod_labels(obj)

    # -- probes and ports against http.listen
    listen = cfg.get("http", "listen")
    port = listen_port(listen)
    src = "http.listen %r from %s" % (listen, cfg.where("http", "listen"))
    if port is None or port == 0:
        chk.err(scope, "%s: the worker needs a fixed port for its probes and /metrics" % src)
    else:
        if not any(p.get("containerPort") == port for p in c.get("ports") or []):
            chk.err(scope, "no containerPort %d (%s)" % (port, src))
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            p = c.get(probe)
            if p is None:
                if probe != "startupProbe":
                    chk.err(scope, "no %s" % probe)
                continue
            hg = p.get("httpGet") or {}
            got = resolve_port(c, hg.get("port"))
            if got != port:
                chk.err(scope, "%s port %s (= %s) is not the port of %s" % (probe, hg.get("port"), got, src))
            if hg.get("path") != path:
                chk.err(scope, "%s path %s, expected %s" % (probe, hg.get("path"), path))
        services = [s for s in r.objects("Service") if selects((s.get("spec") or {}).get("selector"), labels)]
        if not services:
            chk.err(name, "no Service selects the worker pods")
        monitors = r.objects("ServiceMonitor")
        for sm in monitors:
            sel = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            svc = [s for s in services if selects(sel, (s.get("metadata") or {}).get("labels") or {})]
            if not svc:
                chk.err(kind_name(sm), "selects no Service of the worker pods")
                continue
            for ep in (sm.get("spec") or {}).get("endpoints") or []:
                for s in svc:
                    sport = next((p for p in (s.get("spec") or {}).get("ports") or []
                                  if p.get("name") == ep.get("port")), None)
                    if sport is None:
                        chk.err(kind_name(sm), "endpoint port %r is not a port name of %s"
                                % (ep.get("port"), kind_name(s)))
                    elif resolve_port(c, sport.get("targetPort", sport.get("port"))) != port:
                        chk.err(kind_name(s), "port %s targets %s, not the worker's %s"
                                % (sport.get("name"), sport.get("targetPort"), src))
                if ep.get("path", "/metrics") != "/metrics":
                    chk.err(kind_name(sm), "scrapes %s, the worker serves /metrics" % ep.get("path"))

    # -- GPU: one worker per GPU unless the config runs it on the CPU
    check_gpu(chk, scope, spec, c, cfg)

    # -- drain on SIGTERM
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < 60:
        chk.err(name, "terminationGracePeriodSeconds %s is shorter than a drain (finish batches, flush, commit); "
                "use 60 or more" % grace)

    # -- the model: where the worker reads it is where the fetch Job writes it
    mdir = cfg.get("model", "dir")
    loc = volume_location(c, spec, image_path(mdir))
    if loc is None:
        chk.err(scope, "model.dir %s (%s) is not on a PersistentVolumeClaim" % (mdir, cfg.where("model", "dir")))
    else:
        if not (loc[2].get("readOnly") or loc[3]["persistentVolumeClaim"].get("readOnly")):
            chk.err(scope, "the model volume is mounted read-write; workers only read it")
        model_locations.insert(0, (scope, "model.dir " + mdir, loc[:2]))
    for ic in spec.get("initContainers") or []:
        for e in ic.get("env") or []:
            if e.get("name") == "BERTSTREAM_MODEL_DIR":
                iloc = volume_location(ic, spec, image_path(str(e.get("value"))))
                model_locations.append(("%s init container %s" % (name, ic.get("name")),
                                        "BERTSTREAM_MODEL_DIR " + str(e.get("value")), iloc[:2] if iloc else None))

    # -- Kafka TLS: the CA file is a mounted Secret (or ConfigMap) key
    check_ca(chk, scope, spec, c, cfg)

    # -- PDB
    pdbs = [p for p in r.objects("PodDisruptionBudget")
            if selects(((p.get("spec") or {}).get("selector") or {}).get("matchLabels"), labels)]
    if policy.get("required", True) and not pdbs:
        chk.err(name, "no PodDisruptionBudget selects the worker pods")

    # -- KEDA
    scaled = [s for s in r.objects("ScaledObject")
              if ((s.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == obj["metadata"]["name"]]
    for s in r.objects("ScaledObject"):
        target = ((s.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
        if r.get("Deployment", target) is None:
            chk.err(kind_name(s), "scaleTargetRef names Deployment %s, which does not exist" % target)
    if scaled:
        if "replicas" in (obj.get("spec") or {}):
            chk.err(name, "spec.replicas is set but KEDA owns the replica count: every apply would reset it")
        for s in scaled:
            check_scaledobject(chk, r, s, c, spec, cfg)
    elif "replicas" not in (obj.get("spec") or {}):
        chk.err(name, "neither a KEDA ScaledObject nor spec.replicas sets the number of workers")


def check_gpu(chk, scope, spec, c, cfg):
    device = cfg.get("model", "device")
    limits = ((c.get("resources") or {}).get("limits")) or {}
    requests = ((c.get("resources") or {}).get("requests")) or {}
    gpu = limits.get("nvidia.com/gpu")
    if device == "cpu":
        if gpu not in (None, 0, "0"):
            chk.err(scope, "model.device is cpu (%s) but the container holds nvidia.com/gpu %s"
                    % (cfg.where("model", "device"), gpu))
        return
    if str(gpu) != "1":
        chk.err(scope, "model.device %s (%s) needs resources.limits nvidia.com/gpu: 1 (one process per GPU), got %s"
                % (device, cfg.where("model", "device"), gpu))
    if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(gpu):
        chk.err(scope, "nvidia.com/gpu request %s differs from its limit %s" % (requests["nvidia.com/gpu"], gpu))
    if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or []):
        chk.err(scope, "no toleration for nvidia.com/gpu: GPU nodes are tainted with it")


def check_ca(chk, scope, spec, c, cfg):
    ca = cfg.get("kafka", "ssl.ca.location")
    if not ca or ca.startswith("<"):
        return
    vol, rel, _ = mount_for(c, spec, ca)
    if vol is None or not ("secret" in vol or "configMap" in vol):
        chk.err(scope, "kafka ssl.ca.location %s (%s) is not in a mounted Secret"
                % (ca, cfg.where("kafka", "ssl.ca.location")))
        return
    src = vol.get("secret") or vol.get("configMap")
    items = src.get("items")
    if items and not any(i.get("path") == rel for i in items):
        chk.err(scope, "kafka ssl.ca.location %s: volume %s maps no item to %s" % (ca, vol.get("name"), rel))


SASL_KEDA = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256", "PLAIN": "plaintext",
             "OAUTHBEARER": "oauthbearer", "GSSAPI": "gssapi"}


def secret_ref(c, env_name):
    for e in c.get("env") or []:
        if e.get("name") == env_name:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                return (ref.get("name"), ref.get("key"))
    return None


def check_scaledobject(chk, r, s, c, spec, cfg):
    name = kind_name(s)
    sspec = s.get("spec") or {}
    ann = ((s.get("metadata") or {}).get("annotations")) or {}
    mx = sspec.get("maxReplicaCount")
    if mx is None:
        chk.err(name, "no maxReplicaCount: KEDA's default (100) ignores the input topic's partition count")
    parts = ann.get(PARTITIONS_ANNOTATION)
    if parts is None:
        chk.err(name, "no %s annotation (the input topic's partition count)" % PARTITIONS_ANNOTATION)
    elif mx is not None and str(mx) != str(parts):
        chk.err(name, "maxReplicaCount %s is not the input partition count %s (%s): extra workers idle, "
                "fewer leave partitions to share" % (mx, parts, PARTITIONS_ANNOTATION))
    mn = sspec.get("minReplicaCount", 0)
    if mx is not None and int(mn) > int(mx):
        chk.err(name, "minReplicaCount %s > maxReplicaCount %s" % (mn, mx))
    triggers = [t for t in sspec.get("triggers") or [] if t.get("type") == "kafka"]
    if not triggers:
        chk.err(name, "no kafka trigger (KEDA must scale on the consumer group's lag)")
    for t in triggers:
        md = t.get("metadata") or {}
        want = {
            "topic": (cfg.get("topics", "input"), "topics.input", cfg.where("topics", "input")),
            "consumerGroup": (cfg.get("consumer", "group.id") or cfg.get("kafka", "group.id"), "consumer group.id",
                              cfg.where("consumer", "group.id")),
            "bootstrapServers": (cfg.get("kafka", "bootstrap.servers"), "kafka bootstrap.servers",
                                 cfg.where("kafka", "bootstrap.servers")),
        }
        for key, (value, what, where) in want.items():
            if str(md.get(key)) != str(value):
                chk.err(name, "kafka trigger %s %r differs from the worker's %s %r (%s)"
                        % (key, md.get(key), what, value, where))
        proto = (cfg.get("kafka", "security.protocol") or "PLAINTEXT").upper()
        mech = (cfg.get("kafka", "sasl.mechanism") or cfg.get("kafka", "sasl.mechanisms") or "GSSAPI").upper()
        want_sasl = SASL_KEDA.get(mech, mech.lower()) if proto.startswith("SASL") else "none"
        want_tls = "enable" if proto in ("SSL", "SASL_SSL") else "disable"
        if str(md.get("sasl", "none")) != want_sasl:
            chk.err(name, "kafka trigger sasl %r, but the worker uses security.protocol %s with %s (expected %r)"
                    % (md.get("sasl"), proto, mech, want_sasl))
        if str(md.get("tls", "disable")) != want_tls:
            chk.err(name, "kafka trigger tls %r, but the worker uses security.protocol %s (expected %r)"
                    % (md.get("tls"), proto, want_tls))
        auth = (t.get("authenticationRef") or {}).get("name")
        ta = r.get("TriggerAuthentication", auth) if auth else None
        if want_sasl != "none" or want_tls == "enable":
            if ta is None:
                chk.err(name, "authenticationRef %r: no such TriggerAuthentication" % auth)
                continue
            params = {p.get("parameter"): (p.get("name"), p.get("key"))
                      for p in (ta.get("spec") or {}).get("secretTargetRef") or []}
            if want_sasl != "none":
                for param, env in (("username", "BERTSTREAM_KAFKA_SASL_USERNAME"),
                                   ("password", "BERTSTREAM_KAFKA_SASL_PASSWORD")):
                    if params.get(param) != secret_ref(c, env):
                        chk.err(kind_name(ta), "%s comes from Secret %s, the worker's %s from %s"
                                % (param, params.get(param), env, secret_ref(c, env)))
            ca = cfg.get("kafka", "ssl.ca.location")
            if want_tls == "enable" and ca and not ca.startswith("<"):
                vol, rel, _ = mount_for(c, spec, ca)
                worker_ca = None
                if vol is not None and "secret" in vol:
                    items = vol["secret"].get("items")
                    key = next((i.get("key") for i in items if i.get("path") == rel), None) if items else rel
                    worker_ca = (vol["secret"].get("secretName"), key)
                if params.get("ca") != worker_ca:
                    chk.err(kind_name(ta), "ca comes from Secret %s, the worker's CA from %s"
                            % (params.get("ca"), worker_ca))


def check_trainer(chk, r, obj, model_locations):
    name = kind_name(obj)
    spec = obj.get("spec") or {}
    runs_train = [c for c in pod_spec(obj).get("containers") or [] if bertstream_command(c) == "train"]
    if not runs_train:
        return
    if spec.get("concurrencyPolicy") != "Forbid":
        chk.err(name, "concurrencyPolicy %s: two trainers would race to publish heads (use Forbid)"
                % spec.get("concurrencyPolicy", "Allow"))
    for c in runs_train:
        scope = "%s container %s" % (name, c.get("name"))
        cfg = load_pod_config(chk, scope, r, obj, c)
        check_gpu(chk, scope, pod_spec(obj), c, cfg)
        check_ca(chk, scope, pod_spec(obj), c, cfg)
        mdir = cfg.get("model", "dir")
        loc = volume_location(c, pod_spec(obj), image_path(mdir))
        if loc is None:
            chk.err(scope, "model.dir %s (%s) is not on a PersistentVolumeClaim" % (mdir, cfg.where("model", "dir")))
        else:
            model_locations.append((scope, "model.dir " + mdir, loc[:2]))
        for key in ("cache_dir", "out_dir"):
            path = cfg.get("train", key)
            if path is None:
                continue
            vol, _, m = mount_for(c, pod_spec(obj), image_path(path))
            if vol is None or m.get("readOnly") or "configMap" in vol or "secret" in vol:
                chk.err(scope, "train.%s %s (%s) is not on a writable volume (the root filesystem is read-only)"
                        % (key, path, cfg.where("train", key)))


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


def parse_dockerfile(text):
    """(global ARG defaults, stages, check-deploy directives). A stage: {"from", "alias", "instr": [(op, arg)]}."""
    args, stages, directives = {}, [], {}
    logical = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            m = re.match(r"#\s*check-deploy:\s*([a-z-]+):\s*(.*)$", line)
            if m:
                directives.setdefault(m.group(1), []).extend(m.group(2).split())
            continue
        if not line and not buf:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        arg = arg.strip()
        if op == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            image = m.group(1)
            for k, v in args.items():
                image = image.replace("${%s}" % k, v).replace("$%s" % k, v)
            stages.append({"from": image, "alias": m.group(2), "instr": []})
        elif stages:
            stages[-1]["instr"].append((op, arg))
        elif op == "ARG":
            k, _, v = arg.partition("=")
            args[k.strip()] = v.strip().strip('"')
    return args, stages, directives


def install_deps_packages(text):
    m = re.search(r"^PKGS=\((.*?)^\)", text, re.S | re.M)
    if not m:
        return None
    words = []
    for line in m.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return words


def check_dockerfile(root, text, deps_text, dockerignore, worker_port):
    chk = Checker()
    scope = "deploy/Dockerfile"
    args, stages, directives = parse_dockerfile(text)
    image_uid = None
    if len(stages) < 2:
        chk.err(scope, "needs a build stage and a runtime stage (multi-stage), found %d stage(s)" % len(stages))
        return chk.errors, image_uid
    b = re.match(r"^nvidia/cuda:([0-9.]+)-cudnn-devel-(ubuntu[0-9.]+)$", stages[0]["from"])
    rt = re.match(r"^nvidia/cuda:([0-9.]+)-cudnn-runtime-(ubuntu[0-9.]+)$", stages[-1]["from"])
    if not b:
        chk.err(scope, "build stage FROM %s is not nvidia/cuda:<version>-cudnn-devel-<os>" % stages[0]["from"])
    if not rt:
        chk.err(scope, "runtime stage FROM %s is not nvidia/cuda:<version>-cudnn-runtime-<os>" % stages[-1]["from"])
    if b and rt and b.groups() != rt.groups():
        chk.err(scope, "build (%s) and runtime (%s) images differ in CUDA version or OS"
                % (stages[0]["from"], stages[-1]["from"]))

    # -- package lists against scripts/install-deps.sh
    deps = install_deps_packages(deps_text)
    build = args.get("BUILD_PACKAGES", "").split()
    runtime = args.get("RUNTIME_PACKAGES", "").split()
    notin = directives.get("not-in-image", [])
    if deps is None:
        chk.err("scripts/install-deps.sh", "no PKGS=( ... ) list")
    elif not build:
        chk.err(scope, "no ARG BUILD_PACKAGES before the first FROM")
    else:
        ds, bs, ns = set(deps), set(build), set(notin)
        if ds - bs - ns:
            chk.err(scope, "install-deps.sh packages neither in BUILD_PACKAGES nor on a not-in-image line: %s"
                    % " ".join(sorted(ds - bs - ns)))
        if bs - ds:
            chk.err(scope, "BUILD_PACKAGES not in install-deps.sh: %s" % " ".join(sorted(bs - ds)))
        if bs & ns:
            chk.err(scope, "packages both built with and not-in-image: %s" % " ".join(sorted(bs & ns)))
        if ns - ds:
            chk.err(scope, "not-in-image names packages install-deps.sh does not have: %s" % " ".join(sorted(ns - ds)))
    runtime_of = dict(p.split("=", 1) for p in directives.get("runtime-of", []) if "=" in p)
    for p in build:
        if p.endswith("-dev"):
            lib = runtime_of.get(p)
            if lib is None:
                chk.err(scope, "%s has no runtime-of entry: which runtime library does the image need for it?" % p)
            elif lib not in runtime:
                chk.err(scope, "RUNTIME_PACKAGES lacks %s (the runtime library of %s)" % (lib, p))
    for p in runtime:
        if p.endswith("-dev"):
            chk.err(scope, "RUNTIME_PACKAGES holds the development package %s" % p)

    def runs(stage, var):
        return any(op == "RUN" and ("${%s}" % var in a or "$%s " % var in a) for op, a in stage["instr"])

    if not (any(op == "ARG" and a.split("=")[0] == "BUILD_PACKAGES" for op, a in stages[0]["instr"])
            and runs(stages[0], "BUILD_PACKAGES")):
        chk.err(scope, "the build stage does not install ${BUILD_PACKAGES}")
    final = stages[-1]
    if not (any(op == "ARG" and a.split("=")[0] == "RUNTIME_PACKAGES" for op, a in final["instr"])
            and runs(final, "RUNTIME_PACKAGES")):
        chk.err(scope, "the runtime stage does not install ${RUNTIME_PACKAGES}")

    # -- the runtime stage
    instr = final["instr"]
    users = [a for op, a in instr if op == "USER"]
    if not users:
        chk.err(scope, "the runtime stage has no USER: it would run as root")
    else:
        u = users[-1].split(":")[0]
        if not u.isdigit():
            chk.err(scope, "USER %s is not numeric: Kubernetes' runAsNonRoot can only verify a numeric UID" % users[-1])
        elif int(u) == 0:
            chk.err(scope, "USER %s is root" % users[-1])
        else:
            image_uid = int(u)
    eps = [a for op, a in instr if op == "ENTRYPOINT"]
    try:
        ep = json.loads(eps[-1]) if eps else None
    except ValueError:
        ep = None
    if not (isinstance(ep, list) and ep and posixpath.basename(ep[0]) == "bertstream"):
        chk.err(scope, "ENTRYPOINT must be the exec form [\".../bertstream\"], got %s" % (eps[-1] if eps else None))
    vols = " ".join(a for op, a in instr if op == "VOLUME")
    if "/models" not in re.findall(r"[\w/.-]+", vols):
        chk.err(scope, "no VOLUME /models: the model is mounted, never baked in")
    exposed = re.findall(r"\d+", " ".join(a for op, a in instr if op == "EXPOSE"))
    if worker_port is not None and str(worker_port) not in exposed:
        chk.err(scope, "EXPOSE %s does not include http.listen's port %s" % (" ".join(exposed), worker_port))
    copies = [a for op, a in instr if op == "COPY" and "--from" not in a]
    for d in ("schemas/", "config/"):
        if not any(a.split()[0].rstrip("/") + "/" == d for a in copies):
            chk.err(scope, "the runtime stage does not COPY %s" % d)
    sources = []
    for st in stages:
        for op, a in st["instr"]:
            if op in ("COPY", "ADD"):
                parts = [p for p in a.split() if not p.startswith("--")]
                if "--from" in a:
                    continue
                sources += parts[:-1]
                if op == "ADD" and any(re.match(r"https?://", p) for p in parts):
                    chk.err(scope, "ADD from a URL: fetch at build time with a checked download instead")
    for src in sources:
        if re.search(r"(^|/)models(/|$)|\.safetensors$|\.bin$", src):
            chk.err(scope, "copies %s into the image: the model belongs on the /models volume" % src)

    # -- the build context: .dockerignore lets in exactly what the Dockerfile copies, never models/
    if dockerignore is None:
        chk.err(".dockerignore", "missing: the whole repository (models/, build trees, .git) would be sent")
    else:
        pats = [p.strip() for p in dockerignore.splitlines() if p.strip() and not p.strip().startswith("#")]
        if pats and pats[0] == "*":
            allowed = [p[1:].rstrip("/") for p in pats if p.startswith("!")]
            for src in sources:
                s = src.rstrip("/")
                if not any(s == a or s.startswith(a + "/") for a in allowed):
                    chk.err(".dockerignore", "excludes %s, which deploy/Dockerfile copies" % src)
            if any(a == "models" or a.startswith("models/") for a in allowed):
                chk.err(".dockerignore", "lets models/ into the build context")
        elif not any(p.rstrip("/") in ("models", "/models", "**/models") for p in pats):
            chk.err(".dockerignore", "does not exclude models/")
    return chk.errors, image_uid


# ---------------------------------------------------------------------------------------------------------
# Dashboard and alerts


def exported_metrics(root):
    """Metric names registered in worker/*.c, or DESIGN_METRICS when the sources cannot be read."""
    names = set()
    wdir = os.path.join(root, "worker")
    for f in sorted(os.listdir(wdir)) if os.path.isdir(wdir) else []:
        if f.endswith(".c"):
            with open(os.path.join(wdir, f), encoding="utf-8", errors="replace") as fh:
                names |= set(re.findall(r'"(bertstream_[a-z0-9_]+)"', fh.read()))
    return names or set(DESIGN_METRICS)


def metric_known(name, known, recorded):
    if name in known or name in recorded:
        return True
    for suf in HISTOGRAM_SUFFIXES:
        if name.endswith(suf) and name[: -len(suf)] in known:
            return True
    return False


def metric_names(expr):
    # Names of series: bertstream_* and recorded level:metric:operation names; not label values in quotes.
    stripped = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b((?:[a-z_]+:)?bertstream_[a-z0-9_]+(?::[a-z0-9_]+)?)\b", stripped))


def dashboard_exprs(dash):
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels") or [])
                continue
            for t in p.get("targets") or []:
                out.append((p.get("title"), t.get("expr", "")))
    walk(dash.get("panels") or [])
    return out


def check_dashboard(dash, known):
    chk = Checker()
    scope = "deploy/grafana/bertstream-dashboard.json"
    if not dash.get("uid") or not dash.get("title"):
        chk.err(scope, "needs a uid and a title")
    ids = []
    for p in dash.get("panels") or []:
        ids.append(p.get("id"))
        if "gridPos" not in p:
            chk.err(scope, "panel %r has no gridPos" % p.get("title"))
        if p.get("type") != "row":
            if not p.get("targets"):
                chk.err(scope, "panel %r has no query" % p.get("title"))
            ds = (p.get("datasource") or {}).get("uid")
            if ds != "${datasource}":
                chk.err(scope, "panel %r uses datasource %r, not the ${datasource} variable" % (p.get("title"), ds))
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        chk.err(scope, "duplicate panel ids %s" % sorted(dup))
    exprs = dashboard_exprs(dash)
    used = set()
    for title, e in exprs:
        for m in metric_names(e):
            used.add(m)
            if not metric_known(m, known, set()):
                chk.err(scope, "panel %r queries unknown metric %s" % (title, m))
    need = [
        ("bertstream_messages_consumed_total", r"bertstream_messages_consumed_total", "consumed rate"),
        ("bertstream_messages_scored_total", r"bertstream_messages_scored_total", "scored rate"),
        ("dead letters by code", r"by \(code\)[^;]*bertstream_dead_letters_total", "dead letters by code"),
        ("batch sequences histogram", r"bertstream_batch_sequences_bucket", "batch size histogram"),
        ("batch tokens histogram", r"bertstream_batch_tokens_bucket", "batch tokens histogram"),
        ("encode p50", r"histogram_quantile\(0\.5, [^;]*bertstream_encode_seconds_bucket", "encode latency p50"),
        ("encode p99", r"histogram_quantile\(0\.99, [^;]*bertstream_encode_seconds_bucket", "encode latency p99"),
        ("end-to-end p99", r"histogram_quantile\(0\.99, [^;]*bertstream_end_to_end_seconds_bucket", "end-to-end p99"),
        ("head version", r"bertstream_head_version", "head version"),
        ("lag per partition", r"by \(partition\) \(bertstream_consumer_lag", "lag per partition"),
        ("GPU busy", r"bertstream_gpu_busy_ratio", "GPU busy ratio"),
    ]
    joined = ";".join(e for _, e in exprs)
    for _, pattern, what in need:
        if not re.search(pattern, joined):
            chk.err(scope, "no panel shows %s" % what)
    return chk.errors, exprs


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def doc_anchors(root):
    path = os.path.join(root, "docs", "operations.md")
    if not os.path.exists(path):
        return None
    anchors = set()
    with open(path, encoding="utf-8") as fh:
        in_code = False
        for line in fh:
            if line.startswith("```"):
                in_code = not in_code
            if not in_code and re.match(r"^#{1,6} ", line):
                anchors.add(slug(line.lstrip("#")))
    return anchors


def check_alerts(rule_obj, known, anchors):
    chk = Checker()
    scope = "deploy/prometheus/alerts.yaml"
    if rule_obj.get("kind") != "PrometheusRule":
        chk.err(scope, "is not a PrometheusRule")
        return chk.errors
    groups = (rule_obj.get("spec") or {}).get("groups") or []
    recorded = {r["record"] for g in groups for r in g.get("rules") or [] if "record" in r}
    alerts = {}
    for g in groups:
        for rule in g.get("rules") or []:
            expr = str(rule.get("expr", ""))
            for m in metric_names(expr):
                if not metric_known(m, known, recorded):
                    chk.err(scope, "%s uses unknown metric %s" % (rule.get("alert") or rule.get("record"), m))
            if "alert" not in rule:
                continue
            name = rule["alert"]
            alerts[name] = expr
            if (rule.get("labels") or {}).get("severity") not in ("warning", "critical"):
                chk.err(scope, "%s: severity label must be warning or critical" % name)
            ann = rule.get("annotations") or {}
            if not ann.get("summary"):
                chk.err(scope, "%s has no summary annotation" % name)
            rb = ann.get("runbook", "")
            m = re.match(r"^docs/operations\.md#(.+)$", rb)
            if not m:
                chk.err(scope, "%s: runbook %r is not docs/operations.md#<section>" % (name, rb))
            elif anchors is not None and m.group(1) not in anchors:
                chk.err(scope, "%s: runbook %s: docs/operations.md has no such section" % (name, rb))
    need = [
        ("lag growing", lambda e: "consumer_lag" in e and re.search(r"deriv|delta|increase", e)),
        ("dead-letter rate", lambda e: "dead_letters" in e),
        ("no head published for 7 days", lambda e: "head_version" in e and "changes(" in e and "7d" in e),
        ("GPU idle while lagging", lambda e: "gpu_busy_ratio" in e and "consumer_lag" in e),
    ]
    for what, test in need:
        if not any(test(e) for e in alerts.values()):
            chk.err(scope, "no alert for %s" % what)
    return chk.errors


def run_promtool(promtool, root, rule_obj, exprs):
    """promtool check rules on the alerts and on every dashboard query (wrapped as recording rules), then
    promtool test rules on deploy/prometheus/alerts-test*.yaml. Returns a list of problems."""
    errors = []
    tmp = tempfile.mkdtemp(prefix="check-deploy-prom.")
    try:
        rules = os.path.join(tmp, "alerts.rules.yaml")
        with open(rules, "w") as fh:
            yaml.safe_dump(rule_obj.get("spec") or {}, fh, sort_keys=False)
        subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$namespace": "bertstream",
                 "$pod": ".*"}
        dash_rules = {"groups": [{"name": "dashboard", "rules": []}]}
        for i, (title, e) in enumerate(exprs):
            for k, v in subst.items():
                e = e.replace(k, v)
            dash_rules["groups"][0]["rules"].append({"record": "dashboard:query_%d" % i, "expr": e})
        dpath = os.path.join(tmp, "dashboard.rules.yaml")
        with open(dpath, "w") as fh:
            yaml.safe_dump(dash_rules, fh, sort_keys=False)
        for path, scope in ((rules, "deploy/prometheus/alerts.yaml"),
                            (dpath, "deploy/grafana/bertstream-dashboard.json")):
            p = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
            if p.returncode != 0:
                out = (p.stdout + p.stderr).strip().replace(tmp + "/", "")
                errors.append("%s: promtool check rules: %s" % (scope, " | ".join(out.splitlines()[-4:])))
        tests = sorted(f for f in os.listdir(os.path.join(root, "deploy", "prometheus"))
                       if re.match(r"alerts-test.*\.ya?ml$", f))
        for t in tests:
            shutil.copy(os.path.join(root, "deploy", "prometheus", t), tmp)
        if tests:
            p = subprocess.run([promtool, "test", "rules"] + tests, cwd=tmp, capture_output=True, text=True)
            if p.returncode != 0:
                out = (p.stdout + p.stderr).strip()
                errors.append("deploy/prometheus: promtool test rules failed:\n" + out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return errors


# ---------------------------------------------------------------------------------------------------------
# The real configuration parser: every bertstream container's file + environment + -o, through the binary

SECRET_SENTINEL = "bs-check-deploy-secret-7f3a"
BINARY_TIMEOUT_S = 20


def binary_runs(r):
    """(scope, argv, env, config text) for every container of r that runs a bertstream subcommand with a
    --config file, as the pod would start it: the ConfigMap's file, its environment (ConfigMap values
    resolved, Secret values replaced by a sentinel), its arguments."""
    runs = []
    for obj in r.workloads():
        for c in pod_spec(obj).get("containers") or []:
            cmd = bertstream_command(c)
            if cmd not in ("worker", "train"):
                continue
            scope = "%s container %s" % (kind_name(obj), c.get("name"))
            chk = Checker()
            load_pod_config(chk, scope, r, obj, c)
            args = container_args(c)
            path = args[args.index("--config") + 1] if "--config" in args else None
            vol, rel, _ = mount_for(c, pod_spec(obj), path) if path else (None, None, None)
            if chk.errors or vol is None:
                continue  # check_rendering reports these
            items = vol["configMap"].get("items") or []
            key = next((i.get("key") for i in items if i.get("path") == rel), rel)
            text = r.get("ConfigMap", vol["configMap"]["name"])["data"][key]
            env = {}
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                if "value" in e:
                    env[e["name"]] = "" if e["value"] is None else str(e["value"])
                elif "configMapKeyRef" in vf:
                    cm = r.get("ConfigMap", vf["configMapKeyRef"].get("name"))
                    val = ((cm or {}).get("data") or {}).get(vf["configMapKeyRef"].get("key"))
                    if val is not None:
                        env[e["name"]] = str(val)
                elif "secretKeyRef" in vf:
                    env[e["name"]] = SECRET_SENTINEL
                elif "fieldRef" in vf:
                    env[e["name"]] = "bertstream-pod-0"
            runs.append((scope, args, env, text))
    return runs


def run_binary(binary, args, env, text, log_level="debug"):
    """Runs the container's command with its configuration in a scratch directory. Returns (rc, output);
    rc 2 is a usage or configuration error, anything else means the configuration was accepted (the run
    then stops at the missing model, or is stopped after BINARY_TIMEOUT_S)."""
    tmp = tempfile.mkdtemp(prefix="check-deploy-bin.")
    try:
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w", encoding="utf-8") as fh:
            fh.write(text)
        argv = list(args)
        argv[argv.index("--config") + 1] = cfg
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                full_env[k] = os.environ[k]
        full_env.update(env)
        full_env["BERTSTREAM_LOG_LEVEL"] = log_level
        if argv and argv[0] == "worker" and "BERTSTREAM_HTTP_LISTEN" not in env:
            # Any free loopback port: the run must not collide with a port in use (http.listen's own
            # value is checked against the probes elsewhere).
            full_env["BERTSTREAM_HTTP_LISTEN"] = "127.0.0.1:0"
        try:
            p = subprocess.run([binary] + argv, cwd=tmp, env=full_env, capture_output=True, text=True,
                               errors="replace", timeout=BINARY_TIMEOUT_S, stdin=subprocess.DEVNULL)
            return p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            return None, out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_with_binary(binary, renderings):
    """Every container's configuration must load in the real parser (no unknown key, no value out of
    range), and no Secret value may appear in what the process prints, even at log.level debug."""
    problems, n = [], 0
    for r in renderings:
        for scope, args, env, text in binary_runs(r):
            n += 1
            rc, out = run_binary(binary, args, env, text)
            where = "overlay %s: %s" % (r.name, scope)
            if rc == 2:
                last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
                problems.append("%s: bertstream rejects its configuration: %s" % (where, last[0]))
            if SECRET_SENTINEL in out:
                problems.append("%s: a Secret's value appears in bertstream's output" % where)
    return problems, n



def find(r, kind, pred=lambda o: True):
    return next(o for o in r.docs if o.get("kind") == kind and pred(o))


def worker_container(r):
    d = find(r, "Deployment")
    return next(c for c in pod_spec(d)["containers"] if bertstream_command(c) == "worker")


def env_entry(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def set_worker_listen(r, port):
    vol = next(v for v in pod_spec(find(r, "Deployment"))["volumes"] if v["name"] == "config")
    cm = r.get("ConfigMap", vol["configMap"]["name"])
    cm["data"]["worker.yaml"] = re.sub(r'listen: "[^"]*"', 'listen: "0.0.0.0:%d"' % port, cm["data"]["worker.yaml"])


def trainer_container(r):
    return pod_spec(find(r, "CronJob"))["containers"][0]


MANIFEST_MUTATIONS = [
    ("liveness probe on a wrong port",
     lambda r: worker_container(r)["livenessProbe"]["httpGet"].__setitem__("port", 9000), "livenessProbe port"),
    ("readiness probe on /healthz",
     lambda r: worker_container(r)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz"), "readinessProbe path"),
    ("http.listen moved in config/worker.yaml", lambda r: set_worker_listen(r, 9555), "not the port of http.listen"),
    ("GPU limit removed",
     lambda r: worker_container(r)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
    ("GPU toleration removed",
     lambda r: pod_spec(find(r, "Deployment")).pop("tolerations"), "no toleration for nvidia.com/gpu"),
    ("ServiceMonitor scrapes a port the Service lacks",
     lambda r: find(r, "ServiceMonitor")["spec"]["endpoints"][0].__setitem__("port", "http"), "not a port name"),
    ("CronJob allows concurrent trainers",
     lambda r: find(r, "CronJob")["spec"].__setitem__("concurrencyPolicy", "Allow"), "concurrencyPolicy"),
    ("KEDA maxReplicaCount removed",
     lambda r: find(r, "ScaledObject")["spec"].pop("maxReplicaCount"), "no maxReplicaCount"),
    ("KEDA maxReplicaCount above the partition count",
     lambda r: find(r, "ScaledObject")["spec"].__setitem__("maxReplicaCount", 99), "not the input partition count"),
    ("KEDA watches another topic",
     lambda r: find(r, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("topic", "other"),
     "trigger topic"),
    ("KEDA watches another consumer group",
     lambda r: find(r, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("consumerGroup", "x"),
     "trigger consumerGroup"),
    ("KEDA without TLS against SASL_SSL",
     lambda r: find(r, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("tls", "disable"),
     "trigger tls"),
    ("replicas set beside KEDA", lambda r: find(r, "Deployment")["spec"].__setitem__("replicas", 3), "spec.replicas"),
    ("SASL password as a literal",
     lambda r: worker_container(r)["env"].__setitem__(
         worker_container(r)["env"].index(env_entry(worker_container(r), "BERTSTREAM_KAFKA_SASL_PASSWORD")),
         {"name": "BERTSTREAM_KAFKA_SASL_PASSWORD", "value": "hunter2"}), "not a secretKeyRef"),
    ("password in the config file",
     lambda r: [cm["data"].__setitem__("worker.yaml", cm["data"]["worker.yaml"].replace(
         "kafka:\n", "kafka:\n  sasl.password: hunter2\n", 1))
         for cm in r.objects("ConfigMap") if "worker.yaml" in (cm.get("data") or {})], "secret literal"),
    ("a Secret in the manifests",
     lambda r: r.docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                              "stringData": {"password": "hunter2"}}), "a Secret in the manifests"),
    ("worker config key missing from the ConfigMap",
     lambda r: next(v for v in pod_spec(find(r, "Deployment"))["volumes"] if v["name"] == "config")
     ["configMap"]["items"][0].__setitem__("key", "worker-typo.yaml"), "has no key worker-typo.yaml"),
    ("env from a ConfigMap key that does not exist",
     lambda r: env_entry(worker_container(r), "BERTSTREAM_KAFKA_BOOTSTRAP_SERVERS")["valueFrom"]["configMapKeyRef"]
     .__setitem__("key", "bootstrap"), "has no key bootstrap"),
    ("trainer on another image tag",
     lambda r: trainer_container(r).__setitem__("image", trainer_container(r)["image"] + "-other"), "different images"),
    ("writable root filesystem",
     lambda r: worker_container(r)["securityContext"].__setitem__("readOnlyRootFilesystem", False),
     "readOnlyRootFilesystem"),
    ("pod may run as root",
     lambda r: pod_spec(find(r, "Deployment"))["securityContext"].__setitem__("runAsNonRoot", False), "runAsNonRoot"),
    ("short grace period",
     lambda r: pod_spec(find(r, "Deployment")).__setitem__("terminationGracePeriodSeconds", 10),
     "terminationGracePeriodSeconds"),
    ("fetch Job writes the model elsewhere",
     lambda r: [c["args"].__setitem__(c["args"].index("--out") + 1, "/models/other")
                for c in pod_spec(find(r, "Job"))["containers"]], "model directory"),
    ("service links enabled",
     lambda r: pod_spec(find(r, "Deployment")).__setitem__("enableServiceLinks", True), "enableServiceLinks"),
]


def dockerfile_mutations():
    return [
        ("a build package dropped",
         lambda t: re.sub(r'(BUILD_PACKAGES="[^"]*?) libmicrohttpd-dev', r"\1", t), "neither in BUILD_PACKAGES"),
        ("a runtime library dropped",
         lambda t: re.sub(r'(RUNTIME_PACKAGES="[^"]*?) libavro23', r"\1", t), "RUNTIME_PACKAGES lacks libavro23"),
        ("root user", lambda t: re.sub(r"^USER .*$", "USER 0", t, flags=re.M), "is root"),
        ("shell-form entrypoint",
         lambda t: re.sub(r"^ENTRYPOINT .*$", "ENTRYPOINT bertstream", t, flags=re.M), "ENTRYPOINT"),
        ("model baked in",
         lambda t: t.replace("COPY schemas/ /usr/share/bertstream/schemas/",
                             "COPY schemas/ /usr/share/bertstream/schemas/\nCOPY models/ /models/", 1),
         "copies models/"),
        ("no VOLUME /models", lambda t: re.sub(r"^VOLUME .*$", "", t, flags=re.M), "no VOLUME /models"),
        ("runtime on a devel image",
         lambda t: t.replace("-cudnn-runtime-", "-cudnn-devel-"), "runtime stage FROM"),
    ]


def self_test(renderings, policies, dockerfile_args, dash, rule_obj, known, anchors):
    failures = []
    count = 0
    target = next((r for r in renderings if policies[r.name].get("keda")), None)
    if target is None:
        return ["self-test: no rendering with KEDA to mutate"], 0
    for what, mutate, expect in MANIFEST_MUTATIONS:
        r = Rendering(target.name, copy.deepcopy(target.docs))
        mutate(r)
        errs = check_rendering(r, policies[r.name], dockerfile_args[-1])
        count += 1
        if not any(expect in e for e in errs):
            failures.append("self-test: %s (overlay %s) was not caught (expected %r; got %s)"
                            % (what, r.name, expect, errs or "no error"))
    root, text, deps, ignore, port, _ = dockerfile_args
    for what, mutate, expect in dockerfile_mutations():
        t2 = mutate(text)
        if t2 == text:
            failures.append("self-test: Dockerfile mutation %r changed nothing" % what)
            continue
        errs, _ = check_dockerfile(root, t2, deps, ignore, port)
        count += 1
        if not any(expect in e for e in errs):
            failures.append("self-test: Dockerfile %s was not caught (expected %r; got %s)" % (what, expect, errs))
    d2 = copy.deepcopy(dash)
    d2["panels"][-1]["targets"][0]["expr"] = "rate(bertstream_no_such_metric_total[5m])"
    errs, _ = check_dashboard(d2, known)
    count += 1
    if not any("unknown metric bertstream_no_such_metric_total" in e for e in errs):
        failures.append("self-test: dashboard query on an unknown metric was not caught (%s)" % errs)
    a2 = copy.deepcopy(rule_obj)
    for g in a2["spec"]["groups"]:
        g["rules"] = [x for x in g["rules"] if "gpu_busy_ratio" not in str(x.get("expr"))]
    errs = check_alerts(a2, known, anchors)
    count += 1
    if not any("GPU idle while lagging" in e for e in errs):
        failures.append("self-test: a missing GPU-idle alert was not caught (%s)" % errs)
    return failures, count


# ---------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--rendered", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--promtool")
    ap.add_argument("--bin", help="the bertstream executable: load every container's configuration with it")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    root = a.root
    problems = []

    renderings, policies = [], {}
    for spec in a.rendered:
        name, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as fh:
            docs = list(yaml.safe_load_all(fh))
        r = Rendering(name, docs)
        renderings.append(r)
        # The base and production scale with KEDA (dev runs one replica); every overlay pins its image.
        policies[name] = {"keda": name in ("base", "production"), "pinned_image": name != "base"}

    # The worker's HTTP port as the image is built: from config/worker.yaml.
    worker_port = None
    cfg_path = os.path.join(root, "config", "worker.yaml")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as fh:
            wc = yaml.safe_load(fh) or {}
        worker_port = listen_port(str(((wc.get("http") or {}).get("listen")) or DEFAULTS[("http", "listen")]))

    def read(rel):
        p = os.path.join(root, rel)
        if not os.path.exists(p):
            return None
        with open(p, encoding="utf-8") as fh:
            return fh.read()

    dockerfile = read("deploy/Dockerfile")
    deps = read("scripts/install-deps.sh") or ""
    ignore = read(".dockerignore")
    image_uid = None
    if dockerfile is None:
        problems.append("deploy/Dockerfile: missing")
    else:
        errs, image_uid = check_dockerfile(root, dockerfile, deps, ignore, worker_port)
        problems += errs
        print("check-deploy: deploy/Dockerfile: %s" % ("ok" if not errs else "%d problem(s)" % len(errs)))

    for r in renderings:
        errs = check_rendering(r, policies[r.name], image_uid)
        problems += ["overlay %s: %s" % (r.name, e) for e in errs]
        print("check-deploy: overlay %s: %s (%d objects)" % (r.name, "ok" if not errs else "%d problem(s)" % len(errs),
                                                             len(r.docs)))

    known = exported_metrics(root)
    anchors = doc_anchors(root)
    if anchors is None:
        problems.append("docs/operations.md: missing (the alerts' runbooks point into it)")
    with open(os.path.join(root, "deploy", "grafana", "bertstream-dashboard.json"), encoding="utf-8") as fh:
        dash = json.load(fh)
    errs, exprs = check_dashboard(dash, known)
    problems += errs
    with open(os.path.join(root, "deploy", "prometheus", "alerts.yaml"), encoding="utf-8") as fh:
        rule_obj = yaml.safe_load(fh)
    errs2 = check_alerts(rule_obj, known, anchors)
    problems += errs2
    print("check-deploy: dashboard and alerts: %s (%d queries, %d metrics known from worker/*.c)"
          % ("ok" if not errs + errs2 else "%d problem(s)" % len(errs + errs2), len(exprs), len(known)))
    if a.promtool:
        errs = run_promtool(a.promtool, root, rule_obj, exprs)
        problems += errs
        print("check-deploy: promtool check rules + test rules: %s" % ("ok" if not errs else "failed"))

    if a.bin:
        a.bin = os.path.abspath(a.bin)
        errs, n = check_with_binary(a.bin, renderings)
        problems += errs
        print("check-deploy: %d container configurations through %s: %s"
              % (n, a.bin, "ok" if not errs else "%d problem(s)" % len(errs)))
        if a.self_test:
            r = next((r for r in renderings if binary_runs(r)), None)
            if r is not None:
                scope, args, env, text = binary_runs(r)[0]
                env = dict(env, BERTSTREAM_BATCH_MAX_SEQUENCS="64")
                rc, out = run_binary(a.bin, args, env, text)
                if rc != 2 or "BERTSTREAM_BATCH_MAX_SEQUENCS" not in out:
                    problems.append("self-test: bertstream accepted an unknown key from the environment (exit %s: %s)"
                                    % (rc, out.strip()[-200:]))
                else:
                    print("check-deploy: self-test: a misspelt BERTSTREAM_ variable is rejected by bertstream")

    if a.self_test:
        failures, n = self_test(renderings, policies, (root, dockerfile or "", deps, ignore, worker_port, image_uid),
                                dash, rule_obj, known, anchors)
        problems += failures
        print("check-deploy: self-test: %d of %d broken copies caught" % (n - len(failures), n))

    for p in problems:
        print("check-deploy: %s" % p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
