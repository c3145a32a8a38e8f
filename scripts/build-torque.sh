#!/usr/bin/env bash
# Builds TORQUE 6.1.3.h5 from its source tarball into a prefix, once per machine.
#
# Debian carries no TORQUE any more, and the project never carries TORQUE's code: the tarball is
# an input (the last open-source TORQUE, adaptivecomputing/torque branch 6.1.3.h5). This script
# installs the build's Debian dependencies, builds it the way GCC 12 and autoconf accept it
# (autoconf 2.69 first on PATH, --disable-gcc-warnings, -fpermissive, one cast patch) and installs
# everything inside the prefix (FROM_TORQUE_BUILD=1 keeps it out of /etc; the server home is
# PREFIX/spool, a pristine PBS_HOME that the provider copies per node).
#
# Usage: scripts/build-torque.sh [TARBALL] [PREFIX]
#   TARBALL  default $CLOUDD_TORQUE_SOURCE, else ../shared/third_party/torque-6.1.3.h5.tar.gz
#            beside the repository
#   PREFIX   default $CLOUDD_TORQUE_PREFIX, else /opt/torque
# Skipped when PREFIX/.cloudd-build names the tarball's sha256 and this script's version.
set -euo pipefail

# Raise it whenever the way of building changes, so machines built the old way rebuild.
SCRIPT_VERSION=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TARBALL="${1:-${CLOUDD_TORQUE_SOURCE:-$REPO/../shared/third_party/torque-6.1.3.h5.tar.gz}}"
PREFIX="${2:-${CLOUDD_TORQUE_PREFIX:-/opt/torque}}"
PATCHES=("$REPO"/scripts/torque/*.patch)
APT_PACKAGES=(autoconf2.69 automake libtool libboost-dev libxml2-dev zlib1g-dev g++ make patch)

fail() { echo "build-torque: $*" >&2; exit 1; }

if [ ! -f "$TARBALL" ]; then
  # `make test` and `make demo` call this without a path: on a machine without the tarball
  # beside the repository they go on, and the TORQUE tests say they were skipped and why.
  if [ -z "${1:-}" ] && [ -z "${CLOUDD_TORQUE_SOURCE:-}" ]; then
    echo "build-torque: no TORQUE source tarball at $TARBALL: TORQUE is not built, and its" \
         "tests are skipped (set CLOUDD_TORQUE_SOURCE to the tarball's path)" >&2
    exit 0
  fi
  fail "no TORQUE source tarball at $TARBALL (pass its path as the first argument)."
fi
case "$PREFIX" in /*) ;; *) fail "the prefix must be an absolute path, not $PREFIX." ;; esac

sha="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
want="tarball=$sha script=$SCRIPT_VERSION"
stamp="$PREFIX/.cloudd-build"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "build-torque: $PREFIX already holds this build ($want); skipped"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "run as root: it installs packages and writes $PREFIX."

started=$SECONDS
# One line per stage, with its own seconds; the stage's output goes to the log, shown on failure.
LOG="$(mktemp /tmp/build-torque.XXXXXX.log)"
WORK="$(mktemp -d /tmp/build-torque.XXXXXX)"
SRC="$WORK/src"
trap 'rm -rf "$WORK"' EXIT
stage() {
  local name="$1"; shift
  local t0=$SECONDS rc=0
  # In the background so that `set -e` holds inside the stage (an `if` would switch it off).
  "$@" >>"$LOG" 2>&1 &
  wait $! || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$LOG" >&2
    fail "stage '$name' failed after $((SECONDS - t0)) s; the whole log is $LOG."
  fi
  echo "build-torque: $name $((SECONDS - t0)) s"
}

apt_deps() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

unpack() {
  mkdir -p "$SRC"
  tar -xzf "$TARBALL" -C "$SRC" --strip-components=1
  [ -x "$SRC/autogen.sh" ] || { echo "no autogen.sh at the top of $TARBALL"; return 1; }
  local p
  for p in "${PATCHES[@]}"; do patch -d "$SRC" -p1 --forward --batch <"$p"; done
}

autogen() {
  # Debian 12's autoconf 2.71 makes a configure that fails ("TORQUE needs pthreads"); 2.69 works.
  mkdir -p "$WORK/bin"
  ln -sf /usr/bin/autoconf2.69 "$WORK/bin/autoconf"
  ln -sf /usr/bin/autoheader2.69 "$WORK/bin/autoheader"
  (cd "$SRC" && PATH="$WORK/bin:$PATH" ./autogen.sh)
}

configure_it() {
  (cd "$SRC" && CFLAGS="-O2 -fpermissive" CXXFLAGS="-O2 -fpermissive" ./configure \
    --prefix="$PREFIX" --with-server-home="$PREFIX/spool" --with-default-server=localhost \
    --disable-gcc-warnings --without-tcl --disable-gui)
}

compile() { make -C "$SRC" -j"$(nproc)"; }

install_it() {
  # The old install goes first, and the stamp last: an interrupted install is never taken as done.
  rm -rf "$PREFIX"
  make -C "$SRC" install FROM_TORQUE_BUILD=1
  echo "$want" >"$stamp"
}

stage "dependencies" apt_deps
stage "unpack+patch" unpack
stage "autogen" autogen
stage "configure" configure_it
stage "make -j$(nproc)" compile
stage "install" install_it
rm -f "$LOG"
echo "build-torque: $PREFIX ready in $((SECONDS - started)) s ($(du -sh "$PREFIX" | cut -f1))"
