#!/usr/bin/env bash
# Prepare .device/port/: the 2019 PyTorch port of Flow++ (github.com/chrischute/flowplusplus, MIT licence) at a pinned
# commit, with its one-line fix for current PyTorch applied. Its code never enters this repository: .device/ is
# ignored by git, and the GPU machine gets the folder by naming it in the device call's `carry`.
#
#   bash bench/fetch_port.sh [SOURCE] [DEST]
#
# SOURCE: a git directory holding the port's history, e.g. the mirror that a `fetch` call returns for
#         github:chrischute/flowplusplus (/work/.mirror/chrischute+flowplusplus/repo/.git), or a clone URL
#         (default: https://github.com/chrischute/flowplusplus.git, where the network allows a clone).
# DEST:   default .device/port
#
# The fix: models/flowplusplus/nn.py scales the attention queries in place (`q *= key_depth_per_head ** -0.5`), and
# q is a permuted view of one of several views that torch.split returned; current PyTorch refuses to modify such a
# view in place while autograd records ("Output 0 of Permute is a view and is being modified inplace. This view is
# the output of a function that returns multiple views"). The same scaling out of place computes the same numbers:
# `q = q * key_depth_per_head ** -0.5`. Nothing else is changed.
set -euo pipefail
PORT_COMMIT=4f12a4624f6b7c372464f5ce0e7eb0dbb0864c89  # "Add license." (2019-08-23), the repository's last commit
SOURCE=${1:-https://github.com/chrischute/flowplusplus.git}
DEST=${2:-.device/port}
BROKEN='q \*= key_depth_per_head \*\* -0\.5'
FIXED='q = q * key_depth_per_head ** -0.5'

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -d "$SOURCE" ]; then
  git_dir=$SOURCE
else
  git clone -q --bare "$SOURCE" "$tmp/port.git"
  git_dir=$tmp/port.git
fi
if ! git --git-dir="$git_dir" cat-file -e "$PORT_COMMIT^{commit}" 2>/dev/null; then
  echo "fetch_port.sh: $SOURCE does not hold commit $PORT_COMMIT of chrischute/flowplusplus" >&2
  exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
git --git-dir="$git_dir" archive "$PORT_COMMIT" | tar -x -C "$DEST"
nn="$DEST/models/flowplusplus/nn.py"
if [ "$(grep -c "$BROKEN" "$nn")" != 1 ]; then
  echo "fetch_port.sh: expected exactly one in-place query scaling in $nn" >&2
  exit 1
fi
sed -i "s/$BROKEN/$FIXED/" "$nn"
grep -qF "$FIXED" "$nn" && ! grep -q "$BROKEN" "$nn"
cat > "$DEST/PORT_SOURCE.json" <<JSON
{"repository": "https://github.com/chrischute/flowplusplus", "commit": "$PORT_COMMIT", "licence": "MIT",
 "fix": "models/flowplusplus/nn.py: 'q *= key_depth_per_head ** -0.5' -> '$FIXED' (bench/fetch_port.sh)"}
JSON
echo "port at $DEST (commit ${PORT_COMMIT:0:7}, query scaling out of place); $(du -sh "$DEST" | cut -f1)"
