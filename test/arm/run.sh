#!/usr/bin/env bash
# Runs Perch's tests or commands on emulated arm64 (qemu user mode), after test/arm/setup.sh:
#   test/arm/run.sh CPU [vitest args...]      e.g. test/arm/run.sh cortex-a72 test/engine.test.ts
#   test/arm/run.sh CPU perch [perch args...] e.g. test/arm/run.sh cortex-a76 perch ask --raw 'The sky is'
#   test/arm/run.sh CPU node [node args...]
# CPU is cortex-a76 (Raspberry Pi 5: dot product, int8 activations) or cortex-a72 (Pi 4: ARMv8.0, float).
# It runs in a fresh copy of the checkout (tracked and untracked files git does not ignore) whose node_modules
# is the arm64 set from setup.sh and whose dist/ is compiled for it; the checkout's own node_modules, dist and
# test/.tmp are left alone. models/ and reference/.venv are linked in, so the real Gemma 3 270M is reused.
#
# Under qemu user mode, the programs a test starts run natively on the host, so an arm64 `node` child process
# (vitest's forks pool, `perch` run as a command by a test) cannot start unless binfmt_misc sends arm64
# binaries to qemu (the qemu-user-binfmt package; QEMU_CPU and QEMU_LD_PREFIX are exported for that case).
# So vitest runs with --pool=threads, and esbuild, which vite runs as a child, is the host's own binary.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
readonly HERE REPO
readonly CACHE=$HERE/.cache
readonly SYSROOT=/usr/aarch64-linux-gnu
readonly ARM_NODE=$CACHE/node/bin/node
readonly ARM_MODULES=$CACHE/deps/node_modules

log() { printf '[arm] %s\n' "$*" >&2; }
usage() { sed -n '2,5s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }

(($# >= 1)) || usage
readonly CPU=$1
shift
case $CPU in
  cortex-a76 | cortex-a72) ;;
  *) log "CPU must be cortex-a76 or cortex-a72, not: $CPU"; usage ;;
esac

if [[ ! -x $ARM_NODE || ! -d $ARM_MODULES ]] || ! command -v qemu-aarch64 >/dev/null; then
  log "not set up: run test/arm/setup.sh first"
  exit 1
fi
want=$(sha256sum <"$REPO/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$CACHE/deps/.stamp" 2>/dev/null)" != "$want" ]]; then
  log "package-lock.json changed since test/arm/setup.sh: run it again"
  exit 1
fi

TREE=$(mktemp -d "${TMPDIR:-/tmp}/perch-arm.XXXXXX")
readonly TREE
trap 'rm -rf "$TREE"' EXIT

# The checkout as git sees it (what a clone plus uncommitted work would hold), without ignored build outputs.
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$TREE"
ln -s "$ARM_MODULES" "$TREE/node_modules"
mkdir -p "$TREE/models" "$TREE/reference"
for d in "$REPO"/models/*/; do
  [[ -d $d ]] && ln -sfn "${d%/}" "$TREE/models/$(basename "$d")"
done
[[ -d $REPO/reference/.venv ]] && ln -sfn "$REPO/reference/.venv" "$TREE/reference/.venv"

# Host tools where the host has them: they make the same bytes, natively.
host_esbuild=$REPO/node_modules/@esbuild/linux-x64/bin/esbuild
arm_esbuild_version=$(sed -n 's/^ *"version": "\(.*\)",$/\1/p' "$ARM_MODULES/esbuild/package.json" | head -n1)
if [[ -x $host_esbuild && "$("$host_esbuild" --version 2>/dev/null)" == "$arm_esbuild_version" ]]; then
  export ESBUILD_BINARY_PATH=$host_esbuild
else
  log "no host esbuild $arm_esbuild_version (npm ci in the checkout); vite's esbuild needs binfmt_misc then"
fi

export QEMU_CPU=$CPU QEMU_LD_PREFIX=$SYSROOT
QEMU=(qemu-aarch64)
# PERCH_ARM_COUNT=FILE: count guest instructions (npm run bench:arm) with the QEMU and plugin that
# test/arm/setup.sh --counting builds; the readings go to FILE.
if [[ -n ${PERCH_ARM_COUNT-} ]]; then
  if [[ ! -x $CACHE/counting/qemu-aarch64 || ! -f $CACHE/counting/libinsn-count.so ]]; then
    log "no counting QEMU: run test/arm/setup.sh --counting first"
    exit 1
  fi
  [[ $PERCH_ARM_COUNT != *,* ]] || { log "PERCH_ARM_COUNT must not contain a comma: $PERCH_ARM_COUNT"; exit 1; }
  QEMU=("$CACHE/counting/qemu-aarch64" -plugin "$CACHE/counting/libinsn-count.so,out=$PERCH_ARM_COUNT")
fi
readonly QEMU
emulated() { "${QEMU[@]}" -cpu "$CPU" -L "$SYSROOT" "$ARM_NODE" "$@"; }
# Setting-up steps run without the counting plugin, so the readings are the command's alone.
uncounted() { qemu-aarch64 -cpu "$CPU" -L "$SYSROOT" "$ARM_NODE" "$@"; }

# dist/ for `perch` and the tests that run dist/cli.js: compiled in the copy (the output is plain JavaScript).
compile() {
  local tsc=$TREE/node_modules/typescript/bin/tsc
  if command -v node >/dev/null && [[ "$(node -p process.arch 2>/dev/null)" == x64 ]]; then
    (cd "$TREE" && node "$tsc" -p tsconfig.build.json)
  else
    (cd "$TREE" && uncounted "$tsc" -p tsconfig.build.json)
  fi
}

log "$CPU: $(uncounted -p 'process.arch + " node " + process.version') in $TREE"
case ${1-} in
  perch) shift; compile; cd "$TREE"; emulated dist/cli.js "$@" ;;
  node) shift; compile; cd "$TREE"; emulated "$@" ;;
  *)
    # Tests that use dist/ run it as an arm64 child process, which only starts with binfmt_misc.
    if [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 || ${PERCH_ARM_BUILD-} == 1 ]]; then compile; fi
    cd "$TREE"
    emulated node_modules/vitest/vitest.mjs run --pool=threads "$@"
    ;;
esac
