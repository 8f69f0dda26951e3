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
  apt_install "${missing[@]}"
}

# apt_install PACKAGE...: runs `apt-get update`, then installs PACKAGE... with apt-get.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing $* and no apt-get to install them; install them by hand" >&2
    return 1
  fi
  step "Installing $*"
  as_root apt-get update
  # redis-server's postinst starts a system Redis on 6379: through systemd where it runs
  # (a failure there is ignored), else through invoke-rc.d, which starts nothing when a
  # policy-rc.d forbids it (Docker-style images) or no init system is running. The demo
  # and the tests start their own redis-server on other ports, so either way is fine.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# redis_py_ok: whether python3 has redis-py 8 or later.
redis_py_ok() {
  python3 -c 'import redis, sys; sys.exit(int(redis.__version__.split(".")[0]) < 8)' \
    >/dev/null 2>&1
}

# ensure_redis_py: makes sure python3 has redis-py 8 or later (tests/redis_py.rs runs a
# Python script with it). Installs python3 and its pip with apt-get when they are missing,
# then redis-py with pip. Debian's own python3 refuses pip installs outside a virtualenv
# (PEP 668) unless told --break-system-packages, so that is the second try.
ensure_redis_py() {
  ensure_commands python3:python3
  redis_py_ok && return 0
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  local pip=(env PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    python3 -m pip install --quiet)
  local first_try
  step "python3 -m pip install 'redis>=8'"
  if ! first_try=$("${pip[@]}" 'redis>=8' 2>&1); then
    # Shown only if the second try fails too: Debian's refusal is long.
    "${pip[@]}" --break-system-packages 'redis>=8' || {
      printf '%s\n' "$first_try" >&2
      return 1
    }
  fi
  if ! redis_py_ok; then
    echo "error: python3 still has no redis-py >= 8 after pip install 'redis>=8'" >&2
    return 1
  fi
}
