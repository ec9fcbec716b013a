#!/bin/bash
# benchmarks/tree_cpu_seconds.sh ROOTPID OUTFILE: every 5 s, summed utime+stime (s) of ROOTPID and its descendants (last seen value kept for exited ones)
root="$1"; out="$2"; declare -A last
desc() { local p=$1; echo $p; for c in $(pgrep -P $p); do desc $c; done; }
while kill -0 $root 2>/dev/null; do
  for p in $(desc $root); do
    read -r -a f < /proc/$p/stat 2>/dev/null || continue
    last[$p]=$(( ${f[13]} + ${f[14]} ))
  done
  tot=0; for p in "${!last[@]}"; do tot=$(( tot + last[$p] )); done
  echo "$(date +%s) $(( tot / $(getconf CLK_TCK) )) ${#last[@]}" > "$out"
  sleep 5
done
echo done >> "$out"
