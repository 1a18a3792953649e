# Shared by the .ci scripts: messages and Debian package installs.
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    die "need root to install Debian packages: run 'sudo apt-get install -y $*' and try again."
  fi
  say "apt-get install $*"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
