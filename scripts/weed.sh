#!/usr/bin/env bash
# Builds SeaweedFS's weed, the S3 server that the blob store's tests start
# (cell/internal/blobstore/s3test), into .dev/tools/weed, once per version.
# SeaweedFS ships no binary we can fetch here: its module comes from the Go
# module proxy, is copied out of the (read-only) module cache into a scratch
# directory and built there with `go build ./weed` (`go install` would
# build it against our go.mod's versions, not its own).
#
# Idempotent and quiet when weed is already built at WEED_VERSION. Measured
# on this project's machine (2 cores, shared with two other builds): 15.7
# minutes wall from a cold module and build cache (1,010 CPU-seconds, so
# about 8 to 9 minutes on two idle cores, plus the downloads), 2.2 GB peak
# memory, a 164 MB binary; under a minute when only the Go build cache is
# warm (a fresh clone on the same machine).
set -euo pipefail
WEED_VERSION=${WEED_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}
GO=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/.dev/tools
out=$tools/weed
stamp=$tools/weed.version
if [ -x "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$WEED_VERSION" ]; then
  exit 0
fi
echo "building weed (SeaweedFS $WEED_VERSION) into .dev/tools, once: about 10 minutes on 2 cores"
mkdir -p "$tools"
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
# Outside any module, so that our go.mod and go.sum are not consulted or
# touched.
dir=$(cd "$scratch" && "$GO" mod download -json "github.com/seaweedfs/seaweedfs@$WEED_VERSION" | jq -r .Dir)
if [ -z "$dir" ] || [ "$dir" = null ] || [ ! -d "$dir" ]; then
  echo "weed.sh: go mod download gave no module directory" >&2
  exit 1
fi
cp -r "$dir" "$scratch/src"
chmod -R u+w "$scratch/src"
(cd "$scratch/src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$out.tmp" ./weed)
mv "$out.tmp" "$out"
echo "$WEED_VERSION" >"$stamp"
