#!/usr/bin/env bash
# CI check of the deployment files: renders the kustomize base and every overlay, lints deploy/ and the
# rendered objects with yamllint, cross-checks manifests, Dockerfile, dashboard and alerts against each other
# and against config/*.yaml (scripts/check-deploy.py), runs promtool on the alert rules when it is installed,
# proves the checks catch broken copies (self-test), and runs shellcheck on scripts/.
#
#   scripts/check-deploy.sh [--bin BERTSTREAM]   all checks; exit 0 when all pass, 1 on a problem, 2 if a tool
#                                               is missing. With a bertstream executable (--bin, or
#                                               $BERTSTREAM_BIN), every container's configuration is also
#                                               loaded by the real parser, and no Secret may show in its output.
#   scripts/check-deploy.sh --check-tools      only report missing tools (exit 2 when one is)
#
# Tools: kubectl with kustomize v4+ (or a standalone kustomize), yamllint, shellcheck, /usr/bin/python3 with
# PyYAML (python3-yaml); promtool (Debian package prometheus) is optional. KUBECTL, KUSTOMIZE and PROMTOOL
# name other binaries.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
kubectl=${KUBECTL:-kubectl}
kustomize=${KUSTOMIZE:-kustomize}
promtool=${PROMTOOL:-$(command -v promtool || true)}

say() { echo "check-deploy: $*"; }

# render DIR: prints the rendered objects of a kustomization. The configMapGenerator reads config/*.yaml and
# the dashboard from outside the kustomization directories, hence the load restrictor flag.
render=()
find_renderer() {
    local v major
    if command -v "$kubectl" >/dev/null 2>&1; then
        v=$("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9][0-9]*\).*/\1/p')
        major=${v:-0}
        if [ "$major" -ge 4 ]; then
            render=("$kubectl" kustomize --load-restrictor LoadRestrictionsNone)
            return 0
        fi
    fi
    if command -v "$kustomize" >/dev/null 2>&1; then
        v=$("$kustomize" version 2>/dev/null | grep -o 'v[0-9][0-9]*' | head -n 1 | tr -d v)
        if [ "${v:-0}" -ge 4 ]; then
            render=("$kustomize" build --load-restrictor LoadRestrictionsNone)
            return 0
        fi
    fi
    return 1
}

missing=()
find_renderer || missing+=("kubectl with kustomize v4+ (or kustomize v4+)")
command -v yamllint >/dev/null 2>&1 || missing+=(yamllint)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
{ [ -x "$py" ] && "$py" -c 'import yaml' 2>/dev/null; } || missing+=("$py with PyYAML (python3-yaml)")
if [ ${#missing[@]} -gt 0 ]; then
    for m in "${missing[@]}"; do say "missing tool: $m"; done
    exit 2
fi
bin=${BERTSTREAM_BIN:-}
case "${1:-}" in
--check-tools)
    say "tools present (${render[0]} ${render[1]})"
    exit 0
    ;;
--bin) bin=${2:?--bin needs the path of the bertstream executable} ;;
"") ;;
*) say "unknown argument '$1' (usage: scripts/check-deploy.sh [--bin BERTSTREAM] | --check-tools)"; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
    say "$*"
    failed=$((failed + 1))
}

cd "$root"
for f in config/worker.yaml config/trainer.yaml; do
    [ -f "$f" ] || fail "$f is missing: the ConfigMap is generated from it"
done

# 1. Render the base and every overlay.
rendered=()
targets=(base=deploy/k8s/base)
for d in deploy/k8s/overlays/*/; do
    d=${d%/}
    targets+=("$(basename "$d")=$d")
done
for t in "${targets[@]}"; do
    name=${t%%=*}
    dir=${t#*=}
    if "${render[@]}" "$dir" >"$tmp/$name.yaml" 2>"$tmp/$name.err"; then
        say "rendered $dir ($(grep -c '^kind:' "$tmp/$name.yaml") objects)"
        rendered+=(--rendered "$name=$tmp/$name.yaml")
    else
        fail "cannot render $dir: $(tr '\n' ' ' <"$tmp/$name.err")"
    fi
done

# 2. yamllint: the sources, and the rendered objects (kustomize copies config files and the dashboard in
# verbatim, so their line length is not held against the rendering).
if yamllint -f parsable -c deploy/.yamllint deploy/ >"$tmp/lint.out" 2>&1; then
    say "yamllint deploy/: ok"
else
    fail "yamllint deploy/:"
    sed 's/^/  /' "$tmp/lint.out"
fi
lint_rendered=()
for t in "${targets[@]}"; do
    name=${t%%=*}
    [ -s "$tmp/$name.yaml" ] && lint_rendered+=("$tmp/$name.yaml")
done
if [ ${#lint_rendered[@]} -gt 0 ]; then
    if yamllint -f parsable -d "{extends: $root/deploy/.yamllint, rules: {line-length: disable}}" \
        "${lint_rendered[@]}" >"$tmp/lint2.out" 2>&1; then
        say "yamllint rendered manifests: ok"
    else
        fail "yamllint rendered manifests:"
        sed "s|$tmp/||; s/^/  /" "$tmp/lint2.out"
    fi
fi

# 3. Cross-references, Dockerfile, dashboard, alerts, and the self-test on broken copies.
prom_args=()
if [ -n "$promtool" ] && command -v "$promtool" >/dev/null 2>&1; then
    prom_args=(--promtool "$promtool")
else
    say "promtool not found: alert rule syntax and alert unit tests skipped (Debian package prometheus)"
fi
bin_args=()
if [ -n "$bin" ] && [ -x "$bin" ]; then
    bin_args=(--bin "$bin")
else
    say "no bertstream executable (--bin or BERTSTREAM_BIN): configurations not loaded by the real parser"
fi
if ! "$py" scripts/check-deploy.py --root "$root" "${rendered[@]}" "${prom_args[@]}" "${bin_args[@]}" --self-test; then
    failed=$((failed + 1))
fi

# 4. The same from the outside: a rendered file with the worker's port changed must make the checker fail.
if [ -s "$tmp/production.yaml" ]; then
    port=$(sed -n 's/^ *listen: *"[^"]*:\([0-9][0-9]*\)".*/\1/p' config/worker.yaml | head -n 1)
    port=${port:-9464}
    sed "s/containerPort: $port\$/containerPort: 9000/" "$tmp/production.yaml" >"$tmp/broken.yaml"
    if cmp -s "$tmp/production.yaml" "$tmp/broken.yaml"; then
        fail "self-test: found no containerPort $port to break in the production rendering"
    elif "$py" scripts/check-deploy.py --root "$root" --rendered "production=$tmp/broken.yaml" \
        >"$tmp/broken.out" 2>&1; then
        fail "self-test: the checker accepted a worker whose probes miss http.listen's port"
    elif ! grep -q "livenessProbe port metrics (= 9000) is not the port of http.listen" "$tmp/broken.out"; then
        fail "self-test: the checker failed for another reason: $(tail -n 3 "$tmp/broken.out" | tr '\n' ' ')"
    else
        say "self-test: a rendering with the probe port changed is rejected"
    fi
fi

# 5. shellcheck: the deployment scripts at every severity, the other scripts for warnings and errors.
own=(scripts/check-deploy.sh scripts/fetch-model.sh)
others=()
for f in scripts/*.sh; do
    case " ${own[*]} " in *" $f "*) ;; *) others+=("$f") ;; esac
done
if shellcheck -x "${own[@]}" >"$tmp/sc.out" 2>&1 &&
    { [ ${#others[@]} -eq 0 ] || shellcheck -x -S warning "${others[@]}" >>"$tmp/sc.out" 2>&1; }; then
    say "shellcheck scripts/: ok (${#own[@]} at style level, ${#others[@]} at warning level)"
else
    fail "shellcheck scripts/:"
    sed 's/^/  /' "$tmp/sc.out"
fi

if [ "$failed" -gt 0 ]; then
    say "$failed check(s) failed"
    exit 1
fi
say "all checks passed"
