#!/usr/bin/env bash
# Prepare, on the machine that holds the checkout, the ignored folders that the GPU calls of bench/README.md carry:
#
#   bash bench/prepare_device.sh [--data-only] [CIFAR10_DIR]   (default: the checkout's ../shared/data/cifar10)
#
# CIFAR10_DIR is read relative to the directory the command runs in. --data-only skips the wheels.
#
#   .device/data/cifar10/  train_00.npz, train_01.npz, train_02.npz, test_first1000.npz, checked against the
#                          folder's SHA256SUMS (the protocol's data; 43 MiB)
#   .whl/                  wheels of papermill and a Python kernel for the GPU machine's Python 3.12, without the
#                          packages its image already has and without the optional debugpy and jedi (a few MiB);
#                          bench/gpu_run.sh installs them there when papermill is missing
#
# The port's folder (.device/port) is prepared by bench/fetch_port.sh. At the end the sizes of what each call
# carries are printed: the working tree that travels (tracked files) plus the carried folders must stay under 64 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheels=1
if [ "${1:-}" = --data-only ]; then wheels=0; shift; fi
SRC=${1:-$ROOT/../shared/data/cifar10}
# an absolute path, read before any cd: the checksums are checked from inside the copy
[ -d "$SRC" ] || { echo "prepare_device.sh: no folder $SRC (give the CIFAR-10 shards' folder)" >&2; exit 1; }
SRC=$(cd "$SRC" && pwd)
cd "$ROOT"
FILES="train_00.npz train_01.npz train_02.npz test_first1000.npz"
for f in $FILES; do
  [ -f "$SRC/$f" ] || { echo "prepare_device.sh: $SRC has no $f (the protocol needs $FILES)" >&2; exit 1; }
done

rm -rf .device/data/cifar10
mkdir -p .device/data/cifar10
for f in $FILES; do cp "$SRC/$f" .device/data/cifar10/; done
if [ -f "$SRC/SHA256SUMS" ]; then
  (cd .device/data/cifar10 && grep -E " (train_0[012]|test_first1000)\.npz$" "$SRC/SHA256SUMS" | sha256sum -c --quiet) \
    || { echo "prepare_device.sh: the copied shards do not match $SRC/SHA256SUMS" >&2; exit 1; }
  echo "data: $FILES checked against SHA256SUMS"
else
  echo "data: $FILES copied ($SRC has no SHA256SUMS to check them against)"
fi
[ $wheels = 1 ] || { echo "data only: .whl left as it is"; exit 0; }

# into a fresh folder first: where the package index cannot be reached, the .whl prepared before stays as it was
staging=$(mktemp -d .whl-staging.XXXXXX)
trap 'rm -rf "$staging"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$staging" papermill ipykernel 2>&1 \
  | grep -v "^WARNING: Location" || true
ls "$staging"/papermill-*.whl "$staging"/ipykernel-*.whl >/dev/null 2>&1 \
  || { echo "prepare_device.sh: the wheels could not be downloaded; .whl is unchanged" >&2; exit 1; }
# the GPU image has these (KINDS.md's package list), in the versions its torch was built against: keep those
for name in aiohappyeyeballs aiohttp aiosignal attrs certifi charset_normalizer click frozenlist idna jinja2 markupsafe \
            multidict packaging propcache psutil pygments python_dateutil pyyaml PyYAML requests setuptools six tqdm \
            typing_extensions urllib3 wheel yarl \
            debugpy jedi parso; do  # optional: the kernel's debugger and IPython's completion
  rm -f "$staging/$name"-*.whl
done
rm -rf .whl && mv "$staging" .whl
ls .whl

size() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.1f MiB", s / 1048576}'; }
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "%.1f MiB", $1 / 1048576}')
echo
echo "what travels: the tracked tree $tracked, plus per call:"
echo "  call 1 (env bench port):  .device/port $(size .device/port)"
echo "  call 2 (main):            .device/data $(size .device/data), .whl $(size .whl)"
