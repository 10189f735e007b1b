#!/usr/bin/env bash
# Set up tests/viewer for tests/test_viewer.py (.ci/run calls this): playwright-core as locked
# (npm ci), and OHIF's built app in ohif/, the dist/ of npm's @ohif/app tarball checked against
# the integrity pinned in package.json. The dist/ bundles everything OHIF was built with, so the
# tarball is fetched alone (npm pack) rather than installed with its build-time dependencies.
set -euo pipefail
cd "$(dirname "$0")"

npm ci --silent --no-audit --no-fund --ignore-scripts

package=$(node -p "require('./package.json').ohif.package")
integrity=$(node -p "require('./package.json').ohif.integrity")
if [ "$(cat ohif/.package 2>/dev/null)" != "$package $integrity" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  npm pack --silent --pack-destination "$work" "$package" >/dev/null
  tarball=$(ls "$work"/*.tgz)
  actual=$(node -e "process.stdout.write('sha512-' + require('crypto').createHash('sha512')
    .update(require('fs').readFileSync(process.argv[1])).digest('base64'))" "$tarball")
  if [ "$actual" != "$integrity" ]; then
    echo "tests/viewer: $package is $actual, package.json pins $integrity" >&2
    exit 1
  fi
  rm -rf ohif && mkdir ohif
  tar xzf "$tarball" -C ohif --strip-components=2 package/dist
  echo "$package $integrity" > ohif/.package
fi
