#!/usr/bin/env bash
# Gather everything `install.sh --wheelhouse DIR` needs to install a station with no internet:
# the swapd wheel built from this checkout, requirements/daemon.txt, and every locked
# dependency as a CPython 3.11 wheel for each architecture (hash-checked against the lock).
#
#   systemd/wheelhouse.sh DIR [ARCH...]      ARCH: x86_64 (default: x86_64 aarch64)
#   PYTHON=.venv/bin/python systemd/wheelhouse.sh wheelhouse
#
# Wheels are Linux wheels for glibc 2.17 or newer (manylinux2014 up to manylinux_2_28), which
# covers Debian 10+, Ubuntu 20.04+ and RHEL 8+. Run it with Python 3.11, the stations' Python:
# the lock's environment markers are evaluated against the interpreter that runs pip.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 DIR [ARCH...]" >&2; exit 2; }
out=$(realpath -m "$1")
shift
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { echo "wheelhouse.sh: run it with Python 3.11 (PYTHON=...)" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"
"$python" -m pip wheel --quiet --no-deps -w "$out" "$src"
for arch in "${arches[@]}"; do
  platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux2014; do
    platforms+=(--platform "${tag}_$arch")
  done
  "$python" -m pip download --quiet --require-hashes -r "$src/requirements/daemon.txt" \
    -d "$out" --only-binary=:all: "${platforms[@]}" --python-version 3.11 --implementation cp
done
cp "$src/requirements/daemon.txt" "$out/"
echo "wheelhouse: $out ($(ls "$out"/*.whl | wc -l) wheels for ${arches[*]})"
