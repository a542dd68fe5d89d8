#!/usr/bin/env bash
# The image builds from exactly what the Dockerfile gives its build stage, without Docker:
# every `COPY` of the first stage is copied into an empty directory (less what .dockerignore
# keeps from the daemon), and the gateway is compiled there (`cargo check --locked --offline`,
# which expands `include_str!` and `sqlx::migrate!` as the release build does). A file the
# code embeds but the Dockerfile forgets (`ui/`, before session 13) fails here, not at release.
# Run after the workspace was built once (the dependencies are then in the registry and in
# target/, which this shares, so only the gateway's own crate is checked again).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# COPY lines of the first stage, without --from (which copy from another stage).
awk '/^FROM /{stage++} stage == 1 && /^COPY / && !/--from/' Dockerfile | while read -r _ args; do
  read -ra parts <<<"$args"
  dest=${parts[-1]}
  for src in "${parts[@]:0:${#parts[@]}-1}"; do
    if [ "${dest: -1}" = / ] || [ "$dest" = . ]; then
      mkdir -p "$dir/$dest" && cp -r "$src" "$dir/$dest"
    elif [ -d "$src" ]; then
      mkdir -p "$dir/$dest" && cp -r "$src/." "$dir/$dest"
    else
      mkdir -p "$(dirname "$dir/$dest")" && cp "$src" "$dir/$dest"
    fi
  done
done

# What .dockerignore keeps from the daemon is not there either.
shopt -s globstar nullglob dotglob
while read -r pattern; do
  case "$pattern" in ''|'#'*) continue ;; esac
  for f in "$dir"/${pattern%/}; do rm -rf "$f"; done
done < .dockerignore

echo "files the Dockerfile copies: $(find "$dir" -type f | wc -l)"
CARGO_TARGET_DIR="$PWD/target" cargo check --quiet --locked --offline -p presence-gateway \
  --manifest-path "$dir/Cargo.toml"
echo "the gateway builds from them"
