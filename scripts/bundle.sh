#!/usr/bin/env bash
# bundle.sh BIN OUTDIR: gathers bertstream, the GPU test executables and every shared library
# they need into OUTDIR so they run on a bare GPU host, one that brings only glibc, the NVIDIA
# driver and the CUDA runtime libraries (libcudart, libcublas, libcublasLt, libcudnn*).
#
#   OUTDIR/bertstream          RUNPATH $ORIGIN/lib
#   OUTDIR/tests/test_*        the GPU tests (tests/gpu/test_*.c), RUNPATH $ORIGIN/../lib
#   OUTDIR/lib/*               everything else ldd finds, RUNPATH $ORIGIN
#   OUTDIR/unpack.sh           run once first: every file over 1 MiB is stored gzip-compressed
#                              (NAME.gz) and this inflates them in place (needs only sh + gzip)
#   OUTDIR/MANIFEST            what came from where
#
# The bundle must stay under 40 MiB as stored (it is carried to the GPU machine with the tree):
# the Debian libopenblas alone is 36 MiB (DYNAMIC_ARCH) and the executables carry kernels for
# three GPU architectures, hence the compression.
set -euo pipefail

die() { echo "bundle.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: scripts/bundle.sh BIN OUTDIR"
BIN=$1
OUT=$2
[ -x "$BIN" ] || die "$BIN is not an executable"
command -v patchelf >/dev/null || die "patchelf is missing (scripts/install-deps.sh installs it)"
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "$(dirname "$BIN")" && pwd)
LIMIT=$((40 * 1024 * 1024))
COMPRESS_OVER=$((1024 * 1024))

# Base system (glibc family, the GCC runtime) and what the GPU host provides (driver, CUDA
# toolkit runtime libraries, cuDNN and the NVRTC/nvJitLink it loads for runtime-compiled engines).
EXCLUDE='^(linux-vdso|linux-gate|ld-linux.*|libc|libm|libpthread|libdl|librt|libutil|libresolv|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libcudnn.*|libnvrtc.*|libnvJitLink|libnvidia-.*)\.so'

rm -rf "$OUT"
mkdir -p "$OUT/lib" "$OUT/tests"
: >"$OUT/MANIFEST"

cp "$BIN" "$OUT/bertstream"
echo "bertstream <- $BIN" >>"$OUT/MANIFEST"
n_tests=0
for src in "$SRC"/tests/gpu/test_*.c; do
    [ -e "$src" ] || continue
    name=$(basename "$src" .c)
    if [ -x "$BUILD/tests/$name" ]; then
        cp "$BUILD/tests/$name" "$OUT/tests/$name"
        echo "tests/$name <- $BUILD/tests/$name" >>"$OUT/MANIFEST"
        n_tests=$((n_tests + 1))
    else
        echo "bundle.sh: warning: $BUILD/tests/$name not built (is the CUDA engine on?)" >&2
    fi
done

# Debug info stays in the build tree; symbols stay for backtraces.
for f in "$OUT/bertstream" "$OUT"/tests/test_*; do
    [ -e "$f" ] && strip --strip-debug "$f"
done

# ldd gives the whole closure (transitive dependencies included).
missing=""
for exe in "$OUT/bertstream" "$OUT"/tests/test_*; do
    [ -e "$exe" ] || continue
    while read -r line; do
        name=$(echo "$line" | awk '{print $1}')
        path=$(echo "$line" | awk '$2 == "=>" {print $3}')
        [ -n "$name" ] || continue
        if echo "$name" | grep -Eq "$EXCLUDE"; then continue; fi
        case "$path" in
            /*) ;;
            *)
                case "$line" in *"not found"*) missing="$missing $name" ;; esac
                continue
                ;;
        esac
        if [ ! -e "$OUT/lib/$name" ]; then
            cp -L "$path" "$OUT/lib/$name"
            chmod u+w "$OUT/lib/$name"
            echo "lib/$name <- $(readlink -f "$path")" >>"$OUT/MANIFEST"
        fi
    done < <(ldd "$exe")
done
[ -z "$missing" ] || die "libraries not found on this machine:$missing"

# DT_RPATH (not RUNPATH) on the executables so it also applies to the libraries' own
# dependencies; the libraries get $ORIGIN too for dlopen-style loads among themselves.
patchelf --force-rpath --set-rpath '$ORIGIN/lib' "$OUT/bertstream"
for t in "$OUT"/tests/test_*; do
    [ -e "$t" ] && patchelf --force-rpath --set-rpath '$ORIGIN/../lib' "$t"
done
for l in "$OUT"/lib/*; do
    [ -e "$l" ] && patchelf --set-rpath '$ORIGIN' "$l"
done

cat >"$OUT/unpack.sh" <<'EOF'
#!/bin/sh
# Inflates the files bundle.sh stored gzip-compressed (idempotent; needs only sh and gzip).
set -e
cd "$(dirname "$0")"
for f in *.gz tests/*.gz lib/*.gz; do
    [ -e "$f" ] || continue
    gzip -dc "$f" >"${f%.gz}.part"
    chmod 755 "${f%.gz}.part"
    mv "${f%.gz}.part" "${f%.gz}"
    rm -f "$f"
done
EOF
chmod +x "$OUT/unpack.sh"

unpacked=$(du -sb "$OUT" | awk '{print $1}')
for f in "$OUT/bertstream" "$OUT"/tests/* "$OUT"/lib/*; do
    [ -e "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt "$COMPRESS_OVER" ]; then gzip -9 "$f"; fi
done

size=$(du -sb "$OUT" | awk '{print $1}')
n_libs=$(ls "$OUT/lib" | wc -l)
awk -v o="$OUT" -v t="$n_tests" -v l="$n_libs" -v s="$size" -v u="$unpacked" 'BEGIN {
    printf "bundle.sh: %s: bertstream, %d GPU tests, %d libraries; %.1f MiB stored (%.1f MiB unpacked)\n",
        o, t, l, s / 1048576, u / 1048576 }'
[ "$size" -lt "$LIMIT" ] || die "bundle is $size bytes, over the 40 MiB limit"
