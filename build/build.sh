#!/usr/bin/env bash
# Build dist/ocpp-appliance: one executable (PyInstaller one-file) with Python, the
# dependencies and the OCPP schemas inside; runs on a machine with no Python.
#
#   bash build/build.sh            # from a clean checkout, on the target architecture
#
# PyInstaller cannot cross-compile: run this on x86_64 for x86_64 and on arm64 (a
# Raspberry Pi with the 64-bit OS, an arm64 CI runner, or an emulated arm64 root) for
# arm64. The executable needs the build machine's glibc or newer: build on the oldest
# system you target (Debian bookworm / Raspberry Pi OS bookworm: glibc 2.36).
#
# Environment: PYTHON (default python3, >= 3.11, with its shared libpython),
# BUILD_WORK (default build/work: the venv and PyInstaller's work folder; never ./build
# itself, which holds this script), SOURCE_COMMIT (when building outside git).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
work=${BUILD_WORK:-$root/build/work}
venv=$work/venv

say() { printf '== %s\n' "$*" >&2; }

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "build.sh: $python is $("$python" --version 2>&1); need Python >= 3.11" >&2; exit 1; }

# --- tools: install only what is missing, only through apt, only when we can --------
# PyInstaller needs ldd (libc-bin), objdump and objcopy (binutils); a Debian python3
# needs python3-venv for `-m venv` and libpython3.X for the frozen interpreter.
missing=()
command -v objdump >/dev/null || missing+=(binutils)
command -v git >/dev/null || missing+=(git)
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=("python3-venv")
fi
# the shared libpython PyInstaller bundles (Debian ships it apart from python3)
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
libdir=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
if ! compgen -G "$libdir/libpython$pyver.so*" >/dev/null \
    && ! /sbin/ldconfig -p 2>/dev/null | grep -q "libpython$pyver\.so"; then
    missing+=("libpython$pyver")
fi
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq "${missing[@]}" >/dev/null; }
    else
        echo "build.sh: missing ${missing[*]} (install them and run again)" >&2
        exit 1
    fi
fi

# --- the commit the binary reports (`ocpp-appliance --version`) ------------------------
if [[ -n ${SOURCE_COMMIT:-} ]]; then
    commit=$SOURCE_COMMIT
elif commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null); then
    # a build from edited tracked files must not pass for the commit
    git -C "$root" diff --quiet HEAD -- 2>/dev/null || commit+="-dirty"
else
    commit=unknown
fi
# Generated for this build only and removed afterwards (gitignored, never committed):
# a stale copy would make a dev checkout claim a commit it is not at.
build_module=$root/appliance/_build.py
trap 'rm -f "$build_module"' EXIT
printf '"""Written by build/build.sh for one build; not in git."""\n\nCOMMIT = "%s"\n' \
    "$commit" > "$build_module"

# --- a fresh venv: the runtime dependencies (from pyproject.toml) and PyInstaller ------
# The package itself is not installed: PyInstaller takes it from the source tree (the
# spec's pathex), so the generated _build.py is inside and nothing stale from an older
# install can be picked up.
say "fresh venv in $venv ($("$python" --version))"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" - > "$work/requirements.txt" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
# pyinstaller 6.x: the bootloaders for linux x86_64 and aarch64 are in its wheels
"$venv/bin/python" -m pip install -q --only-binary=:all: \
    -r "$work/requirements.txt" 'pyinstaller>=6.10,<7'

# --- build -------------------------------------------------------------------------------
say "pyinstaller $("$venv/bin/pyinstaller" --version), commit $commit, $(uname -m)"
rm -rf "$root/dist/ocpp-appliance"
"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --workpath "$work/pyinstaller" --distpath "$root/dist" \
    "$root/build/ocpp-appliance.spec"

# --- what must be inside: a missing lazy import or data file only shows at runtime ------
"$venv/bin/pyi-archive_viewer" --list --recursive "$root/dist/ocpp-appliance" \
    > "$work/contents.txt"
for needed in appliance.app appliance.cli appliance._build appliance.transport.server \
    appliance.store trio websockets.server websockets.speedups jsonschema_rs msgspec tomli_w \
    appliance/schemas.zip appliance/web/static/uPlot.iife.min.js \
    appliance/web/templates/overview.html starlette hypercorn.trio jinja2; do
    # a module is listed by name ('trio'), an extension by file ('websockets/speedups.cpython-…so')
    grep -q -F -e "'$needed'" -e "'${needed//.//}." "$work/contents.txt" \
        || { echo "build.sh: $needed is not in dist/ocpp-appliance" >&2; exit 1; }
done

say "dist/ocpp-appliance: $(du -h dist/ocpp-appliance | cut -f1), $(./dist/ocpp-appliance --version)"
