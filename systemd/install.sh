#!/usr/bin/env bash
# Install (or remove) Perch as a systemd service. Run as root from a checkout:
#
#   sudo systemd/install.sh              install or upgrade, enable and (re)start perch.service
#   sudo systemd/install.sh --no-start   install or upgrade and enable, but leave it stopped
#   sudo systemd/install.sh --uninstall  stop and remove the service and /opt/perch; keep config and state
#   sudo systemd/install.sh --uninstall --purge   also remove /etc/perch, /var/lib/perch and the user
#   systemd/install.sh --dry-run ...     print what would be done, change nothing
#
# How the app is installed: the checkout is copied to a temporary directory, built there with the locked
# dependencies (npm ci, npm run build), pruned to production dependencies (npm prune --omit=dev) and moved
# into /opt/perch as a whole. This keeps package-lock.json in force (a global `npm install -g` of a packed
# tarball ignores it), needs no compiler on the Pi, and never leaves root-owned files in the checkout.
# Running it again upgrades in place; it is idempotent.
set -euo pipefail

readonly APP_DIR=/opt/perch
readonly CONF_DIR=/etc/perch
readonly STATE_DIR=/var/lib/perch
readonly UNIT_PATH=/etc/systemd/system/perch.service
readonly DROPIN_DIR=/etc/systemd/system/perch.service.d
readonly WRAPPER=/usr/local/bin/perch
readonly SVC_USER=perch
readonly MIN_NODE=20.9.0

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC_DIR

mode=install
purge=0
start=1
dry_run=0

usage() {
  sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

say() {
  if ((dry_run)); then printf 'perch-install (dry run): %s\n' "$*"; else printf 'perch-install: %s\n' "$*"; fi
}
die() { printf 'perch-install: error: %s\n' "$*" >&2; exit 1; }

# Every change goes through run, so --dry-run shows exactly what a real run would do.
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Write stdin to a file (mode 0644) through run.
write_file() {
  local dest=$1 content
  content=$(cat)
  if ((dry_run)); then
    printf '+ write %q <<EOF\n%s\nEOF\n' "$dest" "$content"
  else
    printf '%s\n' "$content" >"$dest"
    chmod 0644 "$dest"
  fi
}

version_ge() { # version_ge A B: A >= B
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

parse_args() {
  while (($#)); do
    case $1 in
      --uninstall) mode=uninstall ;;
      --purge) purge=1 ;;
      --no-start) start=0 ;;
      --dry-run) dry_run=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  if ((purge)) && [[ $mode != uninstall ]]; then die "--purge only goes with --uninstall"; fi
}

preflight() {
  if ((!dry_run)) && ((EUID != 0)); then die "run as root (sudo $0)"; fi
  command -v systemctl >/dev/null || die "systemctl not found: this needs a systemd system"
}

find_node() {
  command -v node >/dev/null || die "node not found: install Node.js >= $MIN_NODE (e.g. Debian's nodejs or NodeSource)"
  command -v npm >/dev/null || die "npm not found"
  NODE_BIN=$(command -v node)
  local version
  version=$(node -p 'process.versions.node')
  version_ge "$version" "$MIN_NODE" || die "Node.js $version is too old; Perch needs >= $MIN_NODE"
  case $(readlink -f "$NODE_BIN") in
    /home/* | /root/*) die "node is at $NODE_BIN, which the service cannot see (ProtectHome=yes); install a system-wide Node.js" ;;
  esac
  [[ "$(node -p 'process.arch')" == arm ]] && die "32-bit ARM: ONNX Runtime needs a 64-bit OS"
  return 0
}

ensure_user() {
  if getent passwd "$SVC_USER" >/dev/null; then
    say "user $SVC_USER exists"
  else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "Perch daemon" "$SVC_USER"
  fi
  local group
  for group in audio video; do
    if getent group "$group" >/dev/null; then
      run usermod --append --groups "$group" "$SVC_USER"
    else
      say "group $group does not exist; skipping"
    fi
  done
}

build_app() {
  [[ -f "$SRC_DIR/package-lock.json" ]] || die "$SRC_DIR is not a Perch checkout (no package-lock.json)"
  local stage
  stage=$(mktemp -d /tmp/perch-build.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
  trap "rm -rf '$stage'" EXIT
  say "building in $stage"
  run tar -C "$SRC_DIR" --exclude=./node_modules --exclude=./dist --exclude=./.git --exclude=./models \
    -cf "$stage/src.tar" .
  run tar -C "$stage" -xf "$stage/src.tar"
  run rm -f "$stage/src.tar"
  # The linux-arm64 onnxruntime-node downloads nothing; on x86-64 skip its optional CUDA download.
  cd "$stage"
  run env ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
  run npm run build
  run npm prune --omit=dev --no-audit --no-fund
  cd /

  local next=$APP_DIR.new
  run rm -rf "$next" "$APP_DIR.old"
  run mkdir -p "$next"
  local item
  for item in dist config systemd docs node_modules package.json package-lock.json README.md LICENSE; do
    if ((dry_run)) || [[ -e "$stage/$item" ]]; then run cp -a "$stage/$item" "$next/"; fi
  done
  run chown -R root:root "$next"
  run chmod -R u=rwX,go=rX "$next"
  if [[ -e $APP_DIR ]]; then run mv "$APP_DIR" "$APP_DIR.old"; fi
  run mv "$next" "$APP_DIR"
  run rm -rf "$APP_DIR.old"
}

install_files() {
  # The perch command for administrators (model pull, config check, ...).
  printf '#!/bin/sh\nexec %q %q "$@"\n' "$NODE_BIN" "$APP_DIR/dist/cli.js" | write_file "$WRAPPER"
  run chmod 0755 "$WRAPPER"

  run install -d -m 0755 -o root -g "$SVC_USER" "$CONF_DIR"
  if [[ -e "$CONF_DIR/config.yaml" ]]; then
    say "keeping existing $CONF_DIR/config.yaml"
  else
    [[ -f "$SRC_DIR/config/perch.example.yaml" ]] || die "config/perch.example.yaml missing in $SRC_DIR"
    run install -m 0640 -o root -g "$SVC_USER" "$SRC_DIR/config/perch.example.yaml" "$CONF_DIR/config.yaml"
  fi
  # LoadCredential= needs the file to exist; empty means no password.
  if [[ ! -e "$CONF_DIR/mqtt_password" ]]; then
    run install -m 0600 -o root -g root /dev/null "$CONF_DIR/mqtt_password"
  fi
  run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE_DIR" "$STATE_DIR/models"

  run install -m 0644 -o root -g root "$SRC_DIR/systemd/perch.service" "$UNIT_PATH"
  if [[ $NODE_BIN != /usr/bin/node ]]; then
    run install -d -m 0755 "$DROPIN_DIR"
    # shellcheck disable=SC2016 # ${PERCH_CONFIG} is for systemd to expand, not the shell
    printf '# Written by install.sh: node is not at /usr/bin/node here.\n[Service]\nExecStart=\nExecStart=%s %s run --config ${PERCH_CONFIG}\n' \
      "$NODE_BIN" "$APP_DIR/dist/cli.js" | write_file "$DROPIN_DIR/10-node.conf"
  elif [[ -e "$DROPIN_DIR/10-node.conf" ]]; then
    run rm -f "$DROPIN_DIR/10-node.conf"
  fi
}

start_service() {
  run systemctl daemon-reload
  run systemctl enable perch.service
  if ((!start)); then
    say "installed and enabled; start it with: systemctl start perch"
  elif systemctl is-active --quiet perch.service 2>/dev/null; then
    run systemctl restart perch.service
  else
    run systemctl start perch.service
  fi
  say "done. Config: $CONF_DIR/config.yaml, MQTT password: $CONF_DIR/mqtt_password, logs: journalctl -u perch -f"
}

uninstall() {
  if systemctl cat perch.service >/dev/null 2>&1; then
    run systemctl disable --now perch.service
  fi
  run rm -f "$UNIT_PATH" "$WRAPPER"
  run rm -rf "$DROPIN_DIR" "$APP_DIR" "$APP_DIR.new" "$APP_DIR.old"
  run systemctl daemon-reload
  if ((purge)); then
    run rm -rf "$CONF_DIR" "$STATE_DIR"
    if getent passwd "$SVC_USER" >/dev/null; then run userdel "$SVC_USER"; fi
    say "removed Perch, its configuration, state and user"
  else
    say "removed Perch; kept $CONF_DIR, $STATE_DIR and user $SVC_USER (--purge removes them)"
  fi
}

main() {
  parse_args "$@"
  preflight
  if [[ $mode == uninstall ]]; then
    uninstall
    return
  fi
  find_node
  ensure_user
  build_app
  install_files
  start_service
}

main "$@"
