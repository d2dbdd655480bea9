# Shared helpers for scripts/test and scripts/services/*.sh. Source it; do not run it.

DCRON_STATE_DIR="${DCRON_STATE_DIR:-/tmp/dcron-test}"
mkdir -p "$DCRON_STATE_DIR"

log() { printf '[scripts] %s\n' "$*" >&2; }

# apt_install PKG... : installs the Debian packages that are missing, only when running as root.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${missing[*]} and not root: install them or run as root"
    return 1
  fi
  if [ ! -f "$DCRON_STATE_DIR/.apt-updated" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && touch "$DCRON_STATE_DIR/.apt-updated"
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# port_open HOST PORT : true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS : polls until the port accepts connections or the deadline passes.
wait_port() {
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do
    port_open "$1" "$2" && return 0
    sleep 0.2
  done
  return 1
}
