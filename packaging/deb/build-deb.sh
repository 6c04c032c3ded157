#!/bin/bash
# Build pacslb_<version>_amd64.deb from this checkout (`make deb` runs it).
#
#   packaging/deb/build-deb.sh [OUTPUT_DIR]      (default: the repository)
#
# The package holds a virtual environment at /opt/pacslb made with Debian's own interpreter
# (/usr/bin/python3.11, so `Depends: python3.11` is the interpreter it runs on), pacslb's wheel
# with its C module compiled for that interpreter, and its dependencies as wheels.
#
# Relocation: the venv is created directly in a staging tree (STAGE/opt/pacslb), not at
# /opt/pacslb, so that building needs no root and touches nothing outside the build folder. A
# venv made there is correct at /opt/pacslb as long as nothing in it names the staging path,
# which the script makes true and then checks: pyvenv.cfg's `command` line and pip's
# direct_url.json are dropped, the console scripts of the dependencies (uvicorn, fastapi, ...:
# not needed) are removed, and bin/pacslb is a launcher that finds its interpreter next to
# itself. The interpreter link (bin/python3.11 -> /usr/bin/python3.11) and pyvenv.cfg's
# `home = /usr/bin` are absolute and the same everywhere. No .pyc is shipped: the postinst
# compiles them with the paths they run from (and the prerm removes them), as Debian's
# Python packages do.
#
# Speed: dependency wheels come from pip's cache (and the machine's wheel mirror), the pacslb
# wheel is built once per run; a build takes ~20-30 s here (see docs/install.md).
set -euo pipefail

# The build's interpreters see only the venv being made (a PYTHONPATH pointing at a checkout
# would make pip think pacslb is installed already, and leave it out).
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO}
PYTHON=${DEB_PYTHON:-/usr/bin/python3.11}       # Debian's interpreter the package runs on
PIP=(${PIP:-$REPO/.venv/bin/python -m pip})     # a pip to drive the build (any recent one)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/src/pacslb/__init__.py")
ARCH=$(dpkg --print-architecture)
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"${PIP[@]}" --version >/dev/null || { echo "build-deb: no pip at ${PIP[*]} (make deb sets it up)" >&2; exit 1; }
[ -n "$VERSION" ] || { echo "build-deb: no __version__ in src/pacslb/__init__.py" >&2; exit 1; }
"$PYTHON" -c 'import venv' || { echo "build-deb: $PYTHON has no venv (apt-get install python3-venv)" >&2; exit 1; }
[ -f "/usr/include/python$PYVER/Python.h" ] || { echo "build-deb: no Python.h for $PYTHON (apt-get install python3-dev)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pacslb-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE/opt/pacslb
start=$(date +%s%N)

# 1. the venv, pacslb's wheel (C module built by setup.py for $PYTHON), its dependencies
"$PYTHON" -m venv --without-pip "$VENV"
# From a clean copy of the sources: setuptools builds in the source tree and never removes a
# stale file from its build/ folder (a module deleted from src/ would still be packaged).
mkdir "$WORK/src"
cp -r "$REPO/pyproject.toml" "$REPO/setup.py" "$REPO/README.md" "$REPO/src" "$WORK/src/"
find "$WORK/src" \( -name '__pycache__' -o -name '*.so' -o -name '*.egg-info' \) -prune \
  -exec rm -rf {} +
"${PIP[@]}" --python "$VENV/bin/python" wheel -q --no-deps -w "$WORK/wheels" "$WORK/src"
"${PIP[@]}" --python "$VENV/bin/python" install -q --no-compile --no-warn-script-location \
  "$WORK"/wheels/pacslb-"$VERSION"-*.whl
(cd / && "$VENV/bin/python" -I -c 'import pacslb.cli, pacslb.core._headfast') \
  || { echo "build-deb: the C module did not build" >&2; exit 1; }

# 2. make it a tree for /opt/pacslb (see the top)
sed -i '/^command = /d' "$VENV/pyvenv.cfg"
find "$VENV/bin" -mindepth 1 ! -name 'python*' -delete
find "$VENV" -name direct_url.json -delete
find "$VENV" -name '__pycache__' -prune -exec rm -rf {} +
# Debian ships shared objects stripped (their debug symbols are of no use to an operator).
find "$VENV" -name '*.so' -type f -exec strip --strip-unneeded {} +
install -m 0755 "$HERE/pacslb-launcher" "$VENV/bin/pacslb"
if grep -rIl --exclude=RECORD "$WORK" "$STAGE" >"$WORK/leaks"; then
  echo "build-deb: these files name the build folder, they would break at /opt/pacslb:" >&2
  cat "$WORK/leaks" >&2
  exit 1
fi

# 3. the rest of the package
install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/etc/logrotate.d" \
  "$STAGE/usr/share/doc/pacslb" "$STAGE/usr/share/lintian/overrides" "$STAGE/DEBIAN"
ln -s /opt/pacslb/bin/pacslb "$STAGE/usr/bin/pacslb"
install -m 0644 "$HERE/pacslb.service" "$STAGE/lib/systemd/system/pacslb.service"
install -m 0644 "$HERE/logrotate" "$STAGE/etc/logrotate.d/pacslb"
install -m 0644 "$HERE/copyright" "$STAGE/usr/share/doc/pacslb/copyright"
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$(date -R -d @${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)})/" "$HERE/changelog.in" | gzip -9n >"$STAGE/usr/share/doc/pacslb/changelog.gz"
install -m 0644 "$HERE/lintian-overrides" "$STAGE/usr/share/lintian/overrides/pacslb"
for script in postinst prerm postrm; do
  install -m 0755 "$HERE/$script" "$STAGE/DEBIAN/$script"
done
echo /etc/logrotate.d/pacslb >"$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
  -e "s/@PYTHON@/python$PYVER/" "$HERE/control.in" >"$STAGE/DEBIAN/control"

DEB="$OUT/pacslb_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz -z1 --build "$STAGE" "$DEB" >/dev/null
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
printf "built %s (%s KiB installed) in %d.%d s\n" "$DEB" "$SIZE" $((ms / 1000)) $((ms % 1000 / 100))
