# shellcheck shell=bash
# Helpers shared by scripts/demo and scripts/test. Source it; it only defines functions.

# step TEXT: prints a header for the next step.
step() {
  printf '\n==> %s\n' "$*"
}

# as_root CMD...: runs CMD as root: directly when we are root, through sudo when it exists.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

# ensure_commands CMD:PACKAGE...: installs with apt-get the Debian package of each
# command that is missing. Runs `apt-get update` first, and only when something is missing.
ensure_commands() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0

  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]} and no apt-get to install them; install them by hand" >&2
    return 1
  fi
  step "Installing ${missing[*]}"
  as_root apt-get update
  # redis-server's postinst starts a system Redis on 6379: through systemd where it runs
  # (a failure there is ignored), else through invoke-rc.d, which starts nothing when a
  # policy-rc.d forbids it (Docker-style images) or no init system is running. The demo
  # and the tests start their own redis-server on other ports, so either way is fine.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}
