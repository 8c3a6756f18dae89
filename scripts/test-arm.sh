#!/usr/bin/env bash
# The agent on real arm64 binaries: an arm64 Debian 12 (bookworm) userland run
# under qemu-user, one agent per device class, every export type the tuner can
# choose for that class deployed from this host.
#
#   bash scripts/test-arm.sh            # build (or reuse) the userland, then test
#   PAODING_ARM_CACHE=DIR bash scripts/test-arm.sh
#
# The userland and its two venvs are cached outside the clone, in
# $PAODING_ARM_CACHE (default /var/cache/paoding-edge/arm64 as root, else
# ~/.cache/paoding-edge/arm64), and rebuilt only when missing or when the
# dependency list in pyproject.toml changes. Needs root (or sudo) for
# debootstrap, binfmt_misc, mount namespaces and chroot.
#
# Latency measured here is qemu's, not a device's: the agent reports it with
# benchmark.cpu_emulator set, and the tuner does not use it for budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
START=$(date +%s)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ "$(id -u)" = 0 ]; then DEFAULT_CACHE=/var/cache/paoding-edge/arm64
else DEFAULT_CACHE=$HOME/.cache/paoding-edge/arm64; fi
CACHE=${PAODING_ARM_CACHE:-$DEFAULT_CACHE}
ROOT=$CACHE/rootfs
MIRROR=${PAODING_ARM_MIRROR:-http://deb.debian.org/debian}
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }

# -- host packages and binfmt -------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v update-binfmts >/dev/null || [ -x /usr/sbin/update-binfmts ] || need+=(binfmt-support)
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! [ -e /proc/sys/fs/binfmt_misc/status ]; then
  $SUDO mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  $SUDO update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || $SUDO update-binfmts --enable
fi
# F (fix binary): the interpreter is opened now, so it works inside the chroot.
if ! grep -qs '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  echo "binfmt_misc: qemu-aarch64 is not registered with the F flag (qemu-user-static)" >&2
  exit 1
fi

# -- the arm64 userland ---------------------------------------------------------
$SUDO mkdir -p "$CACHE"
# one run at a time per cache (a second run waits for the first)
exec 9>>"$CACHE/.lock"
flock 9
# debootstrap's first stage (--foreign) resolves and downloads the package set on
# this host and unpacks the Required ones; the rest (python3 and its libraries, apt)
# are unpacked here too, natively. No maintainer script runs: the second stage would
# run every package's configure step under qemu (minutes, mostly byte-compiling);
# what the agent needs from it is done below (/bin/sh, the user database, ld.so's
# cache). The packages are unpacked, not configured (dpkg's database stays empty).
unpack_rest() {  # the packages of the first stage's list not unpacked yet
  local t=$1 pkg deb
  local required=" $(cat "$t/debootstrap/required") "
  while read -r pkg deb; do
    case $required in *" $pkg "*) continue ;; esac
    dpkg-deb --fsys-tarfile "$t/${deb#/}" | tar -C "$t" --keep-directory-symlink -xf - ||
      { echo "cannot unpack $deb" >&2; return 1; }
  done < "$t/debootstrap/debpaths"
  # in a container the first stage makes /proc a link to the host's; a mount point here
  if [ -L "$t/proc" ]; then rm "$t/proc"; mkdir -m 555 "$t/proc"; fi
  [ -e "$t/usr/bin/sh" ] || ln -s dash "$t/usr/bin/sh"  # dash's postinst
  (cd "$t" && mkdir -p opt srv mnt media etc/opt var/opt usr/local/bin usr/local/lib &&
   mkdir -p -m 1777 run/lock && chmod 1777 tmp)  # base-files' postinst
  for f in passwd group; do  # base-passwd's postinst
    [ -s "$t/etc/$f" ] || cp "$t/usr/share/base-passwd/$f.master" "$t/etc/$f"
  done
}
if [ ! -e "$ROOT/.paoding-base" ]; then
  step "debootstrap --foreign: arm64 Debian bookworm minbase with python3, unpacked on this host"
  $SUDO rm -rf "$ROOT.tmp"
  $SUDO debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3 bookworm "$ROOT.tmp" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  $SUDO bash -c "$(declare -f unpack_rest); unpack_rest '$ROOT.tmp'"
  bash "$SRC/scripts/arm-enter.sh" "$ROOT.tmp" cortex-a72 -- /usr/sbin/ldconfig
  $SUDO sh -c "cut -d' ' -f1 '$ROOT.tmp/debootstrap/debpaths' > '$ROOT.tmp/.paoding-base'"
  $SUDO rm -rf "$ROOT"
  $SUDO mv "$ROOT.tmp" "$ROOT"
fi

# inside: the host's CA bundle (pip must trust what the host trusts)
$SUDO cp /etc/ssl/certs/ca-certificates.crt "$ROOT/opt/host-ca.crt"
inside() { bash "$SRC/scripts/arm-enter.sh" "$ROOT" cortex-a72 -- "$@"; }
[ "$(inside /usr/bin/uname -m)" = aarch64 ] || { echo "the userland does not run as aarch64" >&2; exit 1; }

# -- two venvs: [device] (ai-edge-litert) and tflite-runtime 2.14 (numpy<2) ------
# The venvs are made inside (the userland's own python3); the wheels (aarch64,
# cp311) are resolved and unpacked by the host's pip, which is many times faster
# than pip under qemu. Interpreter versions follow the shipped profiles.
quiet_pip() {  # drop this machine's notes about absent local indexes; keep real errors
  grep -v -e "is ignored: it is neither" -e "already exists" >&2 || true
}
HOSTPY=${PYTHON:-.venv/bin/python}
[ -x "$HOSTPY" ] || HOSTPY=python3
pyver() {
  PYTHONPATH="$SRC" "$HOSTPY" -c "import device_profiles as d; print(d.load('$1').runtime.version)"
}
LITERT_VERSION=$(pyver raspberry-pi-4)
TFLITE_VERSION=$(pyver raspberry-pi-zero-2w)
case "$LITERT_VERSION/$TFLITE_VERSION" in
  [0-9]*.[0-9]*/[0-9]*.[0-9]*) ;;
  *) echo "cannot read the runtime versions of the profiles" >&2; exit 1 ;;
esac
PLATFORMS=(--platform linux_aarch64 --platform manylinux2014_aarch64)
for v in 17 24 27 28 31 34 35 36; do PLATFORMS+=(--platform "manylinux_2_${v}_aarch64"); done
ARM_PIP=("$HOSTPY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --only-binary=:all:
         --python-version 3.11 --implementation cp --abi cp311 "${PLATFORMS[@]}")
step "building this clone's wheel (from a copy: the clone gets no build/)"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
mkdir "$WHEELS/src"
git ls-files -z --cached --others --exclude-standard |
  tar --null -T - -cf - 2>/dev/null | tar -xf - -C "$WHEELS/src"
"$HOSTPY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$WHEELS/src" \
  >/dev/null 2>&1 || "$HOSTPY" -m pip wheel -q --no-deps -w "$WHEELS" "$WHEELS/src" 2>&1 | quiet_pip
WHEEL=$(ls "$WHEELS"/paoding_edge-*.whl)
DEPS_KEY=$( (sed -n '/^dependencies = \[/,/^\]/p;/^device = /p;/^tflite-runtime = /p' pyproject.toml;
             echo "$LITERT_VERSION $TFLITE_VERSION") | sha256sum | cut -c1-16)
build_venv() {  # name, extra, pinned interpreter requirements...
  local name=$1 extra=$2; shift 2
  local venv=/opt/paoding/$name site=$ROOT/opt/paoding/$name/lib/python3.11/site-packages
  if [ "$(cat "$ROOT$venv/.deps-key" 2>/dev/null)" != "$DEPS_KEY" ]; then
    step "venv $name: the agent with [$extra] and $* (aarch64 wheels)"
    inside /usr/bin/python3 -m venv --clear --without-pip "$venv"
    $SUDO "${ARM_PIP[@]}" --target "$site" "$WHEEL[$extra]" "$@" 2>&1 | quiet_pip
    echo "$DEPS_KEY" | $SUDO tee "$ROOT$venv/.deps-key" >/dev/null
  else
    step "venv $name: cached; reinstalling this clone's agent"
    $SUDO "${ARM_PIP[@]}" --no-deps --upgrade --target "$site" "$WHEEL" 2>&1 |
      quiet_pip
  fi
  # the console script pip would write, with the userland's interpreter
  printf '#!%s/bin/python3\nimport sys\nfrom agent.cli import main\nsys.exit(main())\n' "$venv" |
    $SUDO tee "$ROOT$venv/bin/paoding-agent" >/dev/null
  $SUDO chmod 755 "$ROOT$venv/bin/paoding-agent"
}
build_venv litert device "ai-edge-litert==$LITERT_VERSION.*"
build_venv tflite tflite-runtime "tflite-runtime==$TFLITE_VERSION.*" "numpy<2"
inside /opt/paoding/litert/bin/python3 -c "import agent, ai_edge_litert.interpreter" ||
  { echo "the [device] venv does not import" >&2; exit 1; }
inside /opt/paoding/tflite/bin/python3 -c "import agent, tflite_runtime.interpreter" ||
  { echo "the tflite-runtime venv does not import" >&2; exit 1; }
step "userland ready ($(du -sh "$ROOT" 2>/dev/null | cut -f1))"

# -- the host's own tflite-runtime, for the host-side outputs of that device ----
HOST_TFL=$CACHE/host-tflite
if [ "$(cat "$HOST_TFL/.deps-key" 2>/dev/null)" != "$TFLITE_VERSION" ]; then
  step "host venv: tflite-runtime $TFLITE_VERSION (numpy<2)"
  $SUDO python3 -m venv --clear "$HOST_TFL"
  $SUDO "$HOST_TFL/bin/pip" install -q "tflite-runtime==$TFLITE_VERSION.*" "numpy<2" 2>&1 |
    quiet_pip
  echo "$TFLITE_VERSION" | $SUDO tee "$HOST_TFL/.deps-key" >/dev/null
fi

# -- deploy from the host -------------------------------------------------------
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
step "deploying every export type the tuner can choose, per profile"
$SUDO env TF_CPP_MIN_LOG_LEVEL=3 PYTHONPATH="$SRC" "$PY" scripts/arm_check.py --root "$ROOT" \
  --tflite-python "$HOST_TFL/bin/python" --report "$CACHE/last-report.json"
step "done"
