#!/usr/bin/env bash
# Fetch the page's pinned front-end libraries from npm and copy only the files it loads
# (plus their licences and source maps) into chat/static/chat/vendor/. The result is
# committed: the site needs no Node and no bundler at run time; run this only to upgrade.
#
#   scripts/vendor.sh            # needs npm and network access to the npm registry
#
# Source maps are vendored alongside the ES modules because `collectstatic` with a
# manifest storage follows `sourceMappingURL` comments and fails on a missing map
# (PITFALLS #13).
set -euo pipefail

MARKED=18.2.1
DOMPURIFY=3.4.18
HIGHLIGHT=11.12.0
KATEX=0.19.1

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/chat/static/chat/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" "katex@$KATEX" >/dev/null
for tgz in *.tgz; do
  mkdir -p "x/${tgz%.tgz}"
  tar xzf "$tgz" -C "x/${tgz%.tgz}"
done

rm -rf "$dest"
mkdir -p "$dest/marked" "$dest/dompurify" "$dest/highlight/styles" "$dest/katex"

m="x/marked-$MARKED/package"
cp "$m/lib/marked.esm.js" "$m/lib/marked.esm.js.map" "$m/LICENSE" "$dest/marked/"

d="x/dompurify-$DOMPURIFY/package"
cp "$d/dist/purify.es.mjs" "$d/dist/purify.es.mjs.map" "$d/LICENSE" "$d/LICENSE-MPL" "$dest/dompurify/"

h="x/highlightjs-cdn-assets-$HIGHLIGHT/package"
cp "$h/es/highlight.min.js" "$h/LICENSE" "$dest/highlight/"
cp "$h/styles/github.min.css" "$h/styles/github-dark.min.css" "$dest/highlight/styles/"

# KaTeX renders to MathML only (the browser lays it out): no fonts, no CSS, no inline styles.
k="x/katex-$KATEX/package"
cp "$k/dist/katex.mjs" "$k/LICENSE" "$dest/katex/"

{
  echo "# Written by scripts/vendor.sh; do not edit by hand."
  echo "marked $MARKED lib/marked.esm.js"
  echo "dompurify $DOMPURIFY dist/purify.es.mjs"
  echo "@highlightjs/cdn-assets $HIGHLIGHT es/highlight.min.js styles/github.min.css styles/github-dark.min.css"
  echo "katex $KATEX dist/katex.mjs"
  echo
  echo "# sha256"
  (cd "$dest" && find . -type f ! -name VERSIONS.txt | LC_ALL=C sort | xargs sha256sum)
} > "$dest/VERSIONS.txt"

echo "vendored into $dest"
