#!/usr/bin/env bash
# Run one command inside the arm64 userland as a given ARM CPU (used by test-arm.sh).
#
#   bash scripts/arm-enter.sh ROOT CPU [VAR=VALUE ...] -- COMMAND [ARGS...]
#
# CPU is a qemu CPU model (cortex-a72 for a Raspberry Pi 4, cortex-a53 for a
# Zero 2 W). In a mount namespace of its own, the command gets /proc, /dev and
# an ARM /proc/cpuinfo describing that CPU (qemu-user passes the host's x86 one
# through, and ai-edge-litert crashes reading it), and QEMU_CPU is set (else
# qemu's "max" CPU offers SVE, which no Pi has). The command runs through
# binfmt_misc, so the processes it starts (the agent's benchmark child) are
# emulated too. The mounts disappear with the namespace.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: arm-enter.sh ROOT CPU [VAR=VALUE ...] -- COMMAND..." >&2; exit 2; }
ROOT=$1 CPU=$2; shift 2
envs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
[ "${1:-}" = "--" ] || { echo "arm-enter.sh: missing -- before the command" >&2; exit 2; }
shift
case $CPU in
  cortex-a72) part=0xd08 rev=3 ;;
  cortex-a53) part=0xd03 rev=4 ;;
  *) echo "arm-enter.sh: unknown CPU $CPU (cortex-a72 or cortex-a53)" >&2; exit 2 ;;
esac
for d in proc dev; do
  [ -d "$ROOT/$d" ] && ! [ -L "$ROOT/$d" ] ||
    { echo "arm-enter.sh: $ROOT/$d is not a directory (a mount point is needed)" >&2; exit 2; }
done
CPUINFO=$ROOT/../cpuinfo-$CPU
if [ ! -s "$CPUINFO" ]; then
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
    printf 'CPU part\t: %s\nCPU revision\t: %s\n\n' "$part" "$rev"
  done > "$CPUINFO.tmp"
  mv "$CPUINFO.tmp" "$CPUINFO"
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
exec $SUDO unshare --mount --propagation private /bin/sh -c '
  set -e
  root=$1 cpuinfo=$2; shift 2
  mount -t proc proc "$root/proc"
  mount --bind "$cpuinfo" "$root/proc/cpuinfo"
  mount --rbind /dev "$root/dev"
  exec chroot "$root" "$@"
' sh "$ROOT" "$CPUINFO" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 "QEMU_CPU=$CPU" PIP_CERT=/opt/host-ca.crt SSL_CERT_FILE=/opt/host-ca.crt \
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "${envs[@]}" "$@"
