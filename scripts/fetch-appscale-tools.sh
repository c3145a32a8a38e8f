#!/usr/bin/env bash
# Puts appscale-tools 3.8.1's source distribution (AppScale's own command-line tools, Python 2
# code) in the third-party cache, for the tests that check cloudd's AppScale layouts and
# AppScalefile against the tools' own parser. Never used at run time.
# Idempotent: a cached copy with the pinned digest is kept without asking the network; a
# missing or altered one is fetched from PyPI with pip; when that fails the script fails, since
# the tests need the file (they fail, never skip, without it).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${CLOUDD_THIRD_PARTY:-/var/cache/cloudd/third_party}
NAME=appscale-tools-3.8.1.tar.gz
SHA256=277d882b18dcb70603467dd66f2665878347274915bc82dabe975ea6e729dbb0
PIP=${PIP:-.venv/bin/pip}

ok() { [ -f "$DIR/$NAME" ] && echo "$SHA256  $DIR/$NAME" | sha256sum --quiet -c - 2>/dev/null; }

if ok; then exit 0; fi
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching $NAME into $DIR"
if ! "$PIP" download -q --no-deps --no-binary :all: \
    appscale-tools==3.8.1 -d "$tmp" >"$tmp/pip.log" 2>&1 || [ ! -f "$tmp/$NAME" ]; then
  cat "$tmp/pip.log" >&2
  echo "setup: could not download $NAME (the AppScale layout tests need it)" >&2
  exit 1
fi
if ! echo "$SHA256  $tmp/$NAME" | sha256sum --quiet -c -; then
  echo "setup: $NAME from PyPI does not have the pinned digest $SHA256" >&2
  exit 1
fi
mv "$tmp/$NAME" "$DIR/$NAME"
