#!/usr/bin/env bash
# Install the Debian packages that pacslb's test tiers use as real peers, only when missing.
# Runs as root (CI does); elsewhere it says what is missing and the tiers that need them skip.
set -euo pipefail
want=()
for pkg in $(grep -v '^#' "$(dirname "$0")/sysdeps.txt"); do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want+=("$pkg")
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-sysdeps: not root; missing Debian packages: ${want[*]} (tests that need them skip)" >&2
  exit 0
fi
echo "install-sysdeps: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
