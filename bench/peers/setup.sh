#!/usr/bin/env bash
# Builds the peers' own environment (bench/peers/.venv, git-ignored) and the reference
# repositories' checkouts (bench/peers/repos/, git-ignored). prunelab's venv is not touched:
# llm-compressor pins its own transformers / compressed-tensors.
#
#   bash bench/peers/setup.sh            # venv + llm-compressor + modelopt + reference repos
#
# torch stays pinned to the project's CPU build (torch==2.13.0 from /opt/wheels).
# Reference repositories: cloned from GitHub when reachable, otherwise extracted from bare
# mirrors under $PEERS_MIRRORS (default /work/.mirror, e.g. made by the fetch tool).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
repos="$here/repos"
mirrors="${PEERS_MIRRORS:-/work/.mirror}"
find_links="${PEERS_FIND_LINKS:-/opt/wheels}"
log="$here/setup.log"
: > "$log"

status() { echo "$*" | tee -a "$log"; }

python3.11 -m venv "$venv" || python3 -m venv "$venv"
pip=("$venv/bin/pip" install --quiet --find-links "$find_links")
"${pip[@]}" --upgrade pip >>"$log" 2>&1
if "${pip[@]}" "torch==2.13.0" >>"$log" 2>&1; then status "torch: ok"; else status "torch: FAILED"; exit 1; fi
# llm-compressor may not be allowed to replace torch: the constraint keeps the pin
echo "torch==2.13.0" > "$here/constraints.txt"
if "${pip[@]}" -c "$here/constraints.txt" "llmcompressor==0.14.0.1" >>"$log" 2>&1; then
  status "llmcompressor: ok ($("$venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("llmcompressor","transformers","compressed-tensors","torch")))'))"
else
  status "llmcompressor: FAILED to install (see $log)"
fi
if "${pip[@]}" -c "$here/constraints.txt" "nvidia-modelopt==0.47.0" >>"$log" 2>&1; then
  status "nvidia-modelopt: ok"
else
  status "nvidia-modelopt: FAILED to install (see $log)"
fi

mkdir -p "$repos"
for pair in wanda:locuslab/wanda sparsegpt:IST-DASLab/sparsegpt gptq:IST-DASLab/gptq; do
  name="${pair%%:*}"; slug="${pair#*:}"
  dest="$repos/$name"
  if [ -d "$dest" ]; then status "$name: present"; continue; fi
  bare=$(ls -d "$mirrors/${slug/\//+}"* 2>/dev/null | head -1)
  if [ -n "$bare" ]; then
    gitdir=$(find "$bare" -maxdepth 3 -name HEAD -printf '%h\n' | head -1)
    mkdir -p "$dest" && git --git-dir="$gitdir" archive HEAD | tar -x -C "$dest" \
      && status "$name: from mirror $gitdir ($(git --git-dir="$gitdir" rev-parse HEAD))"
  elif git clone --quiet --depth 1 "https://github.com/$slug" "$dest" >>"$log" 2>&1; then
    status "$name: cloned ($(git -C "$dest" rev-parse HEAD))"
  else
    status "$name: not obtainable (no mirror at $mirrors, no network)"
  fi
done
