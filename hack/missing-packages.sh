#!/usr/bin/env bash
# Prints, one per line, those of the Debian packages named that are not installed.
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
done
